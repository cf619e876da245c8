"""Which headers cross the proxy, in each direction.

Hop-by-hop headers (RFC 9110 section 7.6.1) never cross: `Connection`, every
header it names, and the fixed set below. On the way up the client's own
`Authorization` and `Host` are dropped (the proxy sets both), as are headers a
client could use to steer routing or identity upstream. On the way down CORS
headers (every `Access-Control-*`) are dropped, since the proxy decides CORS
itself, and every response gets the browser safety headers below.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy, MutableMultiMapping

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

_REQUEST_DROPPED = _HOP_BY_HOP | {
    "authorization",
    "host",
    "expect",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "cookie2",
}

_RESPONSE_DROPPED = _HOP_BY_HOP

# A document served through the proxy (an HTML or SVG file in a catalogue, say)
# would run on the proxy's own origin, where requests get the user's tokens.
# The CSP sandbox gives it an opaque origin instead, so its requests carry
# `Origin: null` and `Sec-Fetch-Site: cross-site` and the guards reject them.
# nosniff stops a browser from reading a JSON or text body as HTML.
CONTENT_SECURITY_POLICY = "sandbox"


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(token.strip().lower() for token in value.split(","))
    return tokens


def _is_dropped(name: str, dropped: frozenset[str], named: set[str]) -> bool:
    lower = name.lower()
    return (
        lower in dropped
        or lower in named
        or lower.startswith("proxy-")
        or lower.startswith("x-forwarded-")
    )


def _is_dropped_response(name: str, named: set[str]) -> bool:
    return _is_dropped(name, _RESPONSE_DROPPED, named) or name.lower().startswith(
        "access-control-"
    )


def upstream_request_headers(
    client_headers: CIMultiDictProxy[str], authorization: str | None
) -> CIMultiDict[str]:
    """Build the headers sent upstream; the vault token's header is set last."""
    named = _connection_tokens(client_headers)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in client_headers.items():
        if not _is_dropped(name, _REQUEST_DROPPED, named):
            headers.add(name, value)
    if authorization is not None:
        headers["Authorization"] = authorization
    return headers


def client_response_headers(
    upstream_headers: CIMultiDictProxy[str],
) -> Iterable[tuple[str, str]]:
    """Yield the upstream response headers that reach the client, duplicates kept."""
    named = _connection_tokens(upstream_headers)
    for name, value in upstream_headers.items():
        if not _is_dropped_response(name, named):
            yield name, value


def add_browser_safety_headers(headers: MutableMultiMapping[str]) -> None:
    """Add the CSP sandbox, and nosniff unless the upstream already set X-Content-Type-Options.

    An upstream CSP is kept: a browser enforces every policy it receives, so
    the sandbox applies whatever else the upstream sent.
    """
    headers.add("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    if "X-Content-Type-Options" not in headers:
        headers["X-Content-Type-Options"] = "nosniff"
