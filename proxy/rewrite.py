"""Translate URLs on the upstream origin to the origin the client used, and back.

Only a URL whose scheme, host and port all equal the source origin is
translated; the rest of the URL is kept byte for byte. Any other origin (an
object store, say) is left alone, so the client follows it without a token.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def same_origin(url: str, origin: str) -> bool:
    """Tell whether `url` is on `origin` (scheme://host[:port], default ports normalised)."""
    try:
        url_parts = urlsplit(url)
        origin_parts = urlsplit(origin)
        if url_parts.username is not None or url_parts.password is not None:
            return False
        return (
            url_parts.scheme.lower() == origin_parts.scheme.lower()
            and (url_parts.hostname or "") == (origin_parts.hostname or "")
            and _port(url_parts.scheme, url_parts.port) == _port(
                origin_parts.scheme, origin_parts.port
            )
        )
    except ValueError:
        return False


def translate_url(url: str, source: str, target: str) -> str:
    """Return `url` moved from origin `source` to origin `target`, or unchanged."""
    if not same_origin(url, source):
        return url
    parts = urlsplit(url)
    prefix_length = len(parts.scheme) + 3 + len(parts.netloc)
    return target + url[prefix_length:]


def _port(scheme: str, port: int | None) -> int:
    if port is not None:
        return port
    return 443 if scheme.lower() == "https" else 80
