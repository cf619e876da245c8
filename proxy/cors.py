"""CORS for the browser origins listed in `allowed_origins`, and nothing else.

With no origins configured the proxy sends no CORS header at all, and the
upstream's own (the platform sends `Access-Control-Allow-Origin: *`) are
dropped in `headers.py`, so a page on another origin can never read a
response made with the user's token.

For a listed origin the proxy responds to the preflight itself. The upstream
never receives it, so the upstream's CORS policy never becomes the proxy's. Credentials
are never allowed (`Access-Control-Allow-Credentials` is never sent) because
the page needs none: the proxy adds the token. Everything here is pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.errors import ClientRequestError

ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
PREFLIGHT_MAX_AGE = "600"
# RFC 9110 token, the grammar of method and header field names.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    """Tell whether a request is a CORS preflight (Fetch standard, "CORS-preflight request")."""
    return (
        method == "OPTIONS"
        and "Origin" in headers
        and "Access-Control-Request-Method" in headers
    )


def preflight_headers(origin: str, headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Return the headers of the local response to an allowed origin's preflight.

    The requested header names are echoed back once each is checked to be a
    valid field name. A malformed list raises `ClientRequestError`.
    """
    method = headers.get("Access-Control-Request-Method", "").strip()
    if not _TOKEN.match(method):
        raise ClientRequestError("Access-Control-Request-Method is not a valid method name")
    requested = [
        name.strip()
        for name in headers.get("Access-Control-Request-Headers", "").split(",")
        if name.strip()
    ]
    if not all(_TOKEN.match(name) for name in requested):
        raise ClientRequestError("Access-Control-Request-Headers is not a list of header names")

    allowed = [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Methods", ALLOWED_METHODS),
        ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
        ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    ]
    if requested:
        allowed.append(("Access-Control-Allow-Headers", ", ".join(requested)))
    # Chrome's Private Network Access sends a preflight before a public page may
    # reach a loopback address. The origin is one the user listed, so it is allowed.
    if headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
        allowed.append(("Access-Control-Allow-Private-Network", "true"))
    return allowed


def response_headers(origin: str) -> list[tuple[str, str]]:
    """Return the CORS headers for a response to an allowed origin's request."""
    return [
        ("Access-Control-Allow-Origin", origin),
        # "*" exposes every response header (Location of a new job, say), which
        # the Fetch standard allows only because credentials are never allowed.
        ("Access-Control-Expose-Headers", "*"),
        ("Vary", "Origin"),
    ]
