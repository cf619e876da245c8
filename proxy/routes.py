"""Resolve a raw request target to the workspace whose token it gets.

Rules this module keeps:

1. The workspace it resolves is the one the upstream will route to. The target
   is read twice: once as raw segments (what the proxy matches) and once the way
   a strict server reads it (percent-decode once, split on the slashes that
   gives, merge empty segments, resolve dot segments). If the two readings
   disagree on the route family or the workspace, the request is rejected.
2. Anything a server might read in more than one way is rejected before any
   token is chosen: dot segments, raw or encoded; encoded slashes and
   backslashes; doubly encoded characters; empty segments; control characters;
   characters outside RFC 3986's path grammar. Lenient servers are counted too:
   a segment that becomes a dot segment once its ";" parameters are stripped
   (Tomcat and Jetty strip them), or once Unicode compatibility normalisation
   (NFKC) is applied, is rejected, as are escapes that are not valid UTF-8
   (overlong forms such as "%C0%AE" decode to "." in some old decoders).
3. The target is forwarded byte for byte. Nothing here re-encodes or decodes
   what goes upstream: `Route.upstream_target` is a slice of the raw target.
4. A workspace mount, `/as/<workspace>/<path>`, is a deliberate choice of
   token: `<path>` goes to the API upstream with that workspace's token,
   whatever workspace `<path>` names. Rules 1 and 2 apply to the whole target,
   and the mount segments must read the same both ways.
5. `/files-of/<workspace>/<path>` sends `/<path>` to that workspace's files
   host (a URL template, see `upstream_url`) with that workspace's token.

Everything here is pure: no I/O, no vault, no settings object.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote

from proxy.errors import PathRejected
from proxy.names import WORKSPACE_NAME, WORKSPACE_NAME_RULE, has_upper_case

DEFAULT_FAMILIES = (
    "/api/catalogue/stac/catalogs/user/catalogs",
    "/api/workspaces",
    "/api/catalogue/manage/catalogs/user-datasets",
    "/ades",
    "/workspaces",
)

MOUNT_SEGMENT = "as"
FILES_SEGMENT = "files-of"
ADMIN_SEGMENT = "_proxy"
# First path segments the proxy reserves for itself. No route family may start with one.
RESERVED_SEGMENTS = (MOUNT_SEGMENT, FILES_SEGMENT, ADMIN_SEGMENT)
WORKSPACE_PLACEHOLDER = "{workspace}"

# RFC 3986 pchar plus "/": unreserved, sub-delims, ":", "@" and percent escapes.
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*\Z")
# A query is forwarded as sent; only characters that can never be in one are rejected.
_QUERY_CHARS = re.compile(r"[\x21-\x22\x24-\x7e]*\Z")
_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Escapes whose decoded form changes how a server splits or normalises a path:
# "/" and "\" (segment separators), "%" (double encoding), and control characters.
_UNSAFE_ESCAPE = re.compile(r"%(?:2[Ff]|5[Cc]|25|[01][0-9A-Fa-f]|7[Ff])")


class UpstreamKind(Enum):
    """The upstream a route goes to."""

    API = "api"
    FILES = "files"


@dataclass(frozen=True, slots=True)
class Route:
    """The proxy's decision for one request target: workspace, upstream and raw target."""

    family: str | None
    """The route family or mount prefix that matched, or None for a path that names no workspace."""
    workspace: str | None
    upstream_target: str
    """The raw path and query to send upstream, byte for byte as received."""
    mount: str = ""
    """The client-side prefix cut off before forwarding, such as `/as/my-ws`, or ""."""
    kind: UpstreamKind = UpstreamKind.API

    @property
    def chosen_explicitly(self) -> bool:
        """Whether the path names whose token to use, so the default workspace is never used instead."""
        return bool(self.mount)


def parse_families(prefixes: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Split route family prefixes into segment tuples, longest first."""
    families = [tuple(prefix.strip("/").split("/")) for prefix in prefixes]
    return tuple(sorted(families, key=len, reverse=True))


def check_family_prefix(prefix: str) -> str | None:
    """Return why `prefix` is not a usable route family, or None when it is."""
    if not prefix.startswith("/") or prefix == "/":
        return "it must start with '/' and name at least one segment"
    if prefix.endswith("/"):
        return "it must not end with '/'"
    if not _PATH_CHARS.match(prefix) or "%" in prefix:
        return "it may only hold unreserved path characters, with no percent escapes"
    segments = prefix[1:].split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "it must not hold empty, '.' or '..' segments"
    if segments[0] in RESERVED_SEGMENTS:
        return f"'/{segments[0]}' is reserved for workspace mounts, files and admin endpoints"
    return None


def resolve(target: str, families: tuple[tuple[str, ...], ...]) -> Route:
    """Return the `Route` for a raw origin-form request target, or raise `PathRejected`."""
    path, separator, query = target.partition("?")
    _check_path_syntax(path, target)
    if separator and not _QUERY_CHARS.match(query):
        raise PathRejected("the query contains a character that is not allowed in a URL")

    raw_segments = path[1:].split("/")
    _check_segments(raw_segments)
    raw_reading = _match(raw_segments, families)
    strict_reading = _match(_strict_segments(path), families)
    if raw_reading != strict_reading:
        raise PathRejected(
            "the path can be read as naming two different workspaces or routes; "
            "send it without percent escapes in the route and workspace segments"
        )

    family, workspace = raw_reading
    if workspace is not None and has_upper_case(workspace):
        raise PathRejected(
            f"workspace names are lower case: use {workspace.lower()!r} in the path, "
            f"not {workspace!r}"
        )
    if workspace is not None and not WORKSPACE_NAME.match(workspace):
        raise PathRejected(f"invalid workspace name in path (expected {WORKSPACE_NAME_RULE})")
    if family is None or workspace is None:
        if raw_segments[0] in RESERVED_SEGMENTS:
            raise PathRejected(
                f"'/{raw_segments[0]}' must be followed by a workspace name: "
                f"/{raw_segments[0]}/<workspace>/<path>"
            )
        return Route(family=None, workspace=None, upstream_target=target)
    family_prefix = "/" + "/".join(family)
    if family in ((MOUNT_SEGMENT,), (FILES_SEGMENT,)):
        mount = f"{family_prefix}/{workspace}"
        rest = target[len(mount) :]
        upstream_target = rest if rest.startswith("/") else "/" + rest
        kind = UpstreamKind.FILES if family == (FILES_SEGMENT,) else UpstreamKind.API
        return Route(family_prefix, workspace, upstream_target, mount=mount, kind=kind)
    return Route(family=family_prefix, workspace=workspace, upstream_target=target)


def files_base(files_upstream: str, workspace: str) -> str:
    """Return a workspace's files host URL from the template, such as `https://ws.example.org`."""
    return files_upstream.replace(WORKSPACE_PLACEHOLDER, workspace)


def upstream_url(route: Route, api_origin: str, files_upstream: str) -> str:
    """Return the full URL a route is sent to: its upstream's base and the raw target."""
    if route.kind is UpstreamKind.FILES:
        assert route.workspace is not None
        return files_base(files_upstream, route.workspace) + route.upstream_target
    return api_origin + route.upstream_target


def _check_path_syntax(path: str, target: str) -> None:
    if not path.startswith("/"):
        if "://" in target:
            raise PathRejected("absolute-form request targets are not accepted; send only the path")
        raise PathRejected("the request target must be a path starting with '/'")
    if not _PATH_CHARS.match(path):
        raise PathRejected(
            "the path contains a character that is not allowed in a URL path "
            "(backslash, space, control character, '#' or non-ASCII)"
        )
    if _PERCENT_ESCAPE.search(path):
        raise PathRejected("the path contains a '%' that does not start a two-digit hex escape")
    if _UNSAFE_ESCAPE.search(path):
        raise PathRejected(
            "the path contains an encoded slash, backslash, percent sign or control character"
        )
    try:
        unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise PathRejected("the path contains percent escapes that are not valid UTF-8") from None


def _check_segments(segments: list[str]) -> None:
    # An empty last segment is a trailing slash; any other empty segment is "//".
    for index, segment in enumerate(segments):
        if segment == "" and index != len(segments) - 1:
            raise PathRejected("the path contains an empty segment ('//')")
        if _reads_as_dot_or_slash(segment):
            raise PathRejected(
                "the path contains a '.' or '..' segment (raw, percent-encoded, followed by "
                "';' or as a Unicode look-alike) or a look-alike of '/' or '\\'"
            )


def _reads_as_dot_or_slash(segment: str) -> bool:
    """Tell whether a lenient server could read `segment` as a dot segment or a separator."""
    decoded = unquote(segment)
    for reading in (decoded, unicodedata.normalize("NFKC", decoded)):
        if reading.partition(";")[0] in (".", ".."):
            return True
        if "/" in reading or "\\" in reading:
            return True
    return False


def _strict_segments(path: str) -> list[str]:
    """Read `path` the way a strict server routes it: decode once, merge, resolve dots."""
    resolved: list[str] = []
    for segment in unquote(path).split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if resolved:
                resolved.pop()
            continue
        resolved.append(segment)
    return resolved


def _match(
    segments: list[str], families: tuple[tuple[str, ...], ...]
) -> tuple[tuple[str, ...] | None, str | None]:
    for family in ((MOUNT_SEGMENT,), (FILES_SEGMENT,), *families):
        size = len(family)
        if len(segments) > size and tuple(segments[:size]) == family and segments[size]:
            return family, segments[size]
    return None, None
