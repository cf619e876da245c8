"""How servers route a request path, written apart from `proxy.routes` so the tests check it.

`strict_route` is the reading RFC 3986 implies: percent-decode once, merge
empty segments, resolve dot segments. The lenient readings are what some
real servers do on top: strip ";" parameters from each segment (Tomcat,
Jetty), treat a backslash as a slash (IIS, some frameworks), decode
overlong UTF-8, or apply Unicode NFKC normalisation to the decoded path.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from proxy.routes import DEFAULT_FAMILIES

# Workspace mounts (/as/<workspace>/..., /files-of/<workspace>/...) come first,
# then the route families, longest first.
FAMILIES = [["as"], ["files-of"]] + sorted(
    (prefix.strip("/").split("/") for prefix in DEFAULT_FAMILIES), key=len, reverse=True
)
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")

Route = tuple[str | None, str | None]
"""Route family prefix and workspace, or (None, None) for a path outside every family."""


def percent_decode(path: str) -> str:
    """Decode each %XX escape once; the bytes are read as UTF-8 with replacement characters."""
    raw = _ESCAPE.sub(lambda found: bytes([int(found.group(1), 16)]), path.encode("latin-1", "replace"))
    return raw.decode("utf-8", "replace")


def _route_of(segments: list[str]) -> Route:
    resolved: list[str] = []
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if resolved:
                resolved.pop()
            continue
        resolved.append(segment)
    for family in FAMILIES:
        if len(resolved) > len(family) and resolved[: len(family)] == family:
            return "/" + "/".join(family), resolved[len(family)]
    return None, None


def strict_route(target: str) -> Route:
    """Route `target` as a strict server does: decode once, split, merge, resolve dots."""
    path = target.partition("?")[0]
    return _route_of(percent_decode(path).split("/"))


def _params_stripped(target: str) -> Route:
    path = target.partition("?")[0]
    return _route_of([segment.partition(";")[0] for segment in percent_decode(path).split("/")])


def _backslash_as_slash(target: str) -> Route:
    path = target.partition("?")[0]
    return _route_of(percent_decode(path).replace("\\", "/").split("/"))


# Overlong UTF-8 forms of "." and "/" that old decoders (IIS before 2001, say) accepted.
_OVERLONG = {"%C0%AE": ".", "%E0%80%AE": ".", "%C0%AF": "/", "%E0%80%AF": "/"}


def _overlong_utf8(target: str) -> Route:
    path = target.partition("?")[0]
    for escape, character in _OVERLONG.items():
        path = re.sub(re.escape(escape), character, path, flags=re.IGNORECASE)
    return _route_of(percent_decode(path).split("/"))


def _nfkc(target: str) -> Route:
    path = target.partition("?")[0]
    return _route_of(unicodedata.normalize("NFKC", percent_decode(path)).split("/"))


LENIENT_READINGS: dict[str, Callable[[str], Route]] = {
    "params stripped": _params_stripped,
    "backslash as slash": _backslash_as_slash,
    "NFKC": _nfkc,
    "overlong UTF-8": _overlong_utf8,
}
