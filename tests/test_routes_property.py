"""One reading of the path: `routes.resolve` agrees with a strict server, or rejects.

The property test builds raw targets from pieces that have broken path
handling in other proxies (dot segments, encoded slashes, backslashes,
";" parameters, overlong UTF-8, Unicode look-alikes) mixed with route
family prefixes and workspace names.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.errors import PathRejected
from proxy.routes import DEFAULT_FAMILIES, parse_families, resolve
from proxy.standin import USER_CATALOGS
from tests.strict import LENIENT_READINGS, strict_route

PARSED_FAMILIES = parse_families(DEFAULT_FAMILIES)
WORKSPACES = ["alpha-ws", "beta-ws", "ALPHA-WS", "a", "alpha%2Dws", "beta-ws;x"]
# Segments some server reads as "." or "..": encoded, with ";" parameters,
# overlong UTF-8, or Unicode look-alikes that NFKC maps to dots.
DOT_LIKE = [
    ".", "..", "%2e", "%2E%2e", ".%2e", "%252e%252e", "..;", ".;", "..;x=1", "%2e%2e;", "..%3b",
    "%C0%AE", "%C0%AE%C0%AE", "%E0%80%AE%E0%80%AE", "%EF%BC%8E", "%EF%BC%8E%EF%BC%8E",
    "%E2%80%A4", "%E2%80%A5",
]
# Characters some server reads as a segment separator, or that end a string early.
SEPARATOR_LIKE = ["%2f", "%2F", "%5c", "\\", "%EF%BC%8F", "%EF%BC%BC", "%C0%AF", "%00", "%0a", "%25"]
PLAIN = ["x", "echo", "a-b", "%41", "a%20b", "a+b", "v;p=1", ".x", "x..", "..x", "~u", "%C3%A9"]
SYNTAX = ["%", "%2", "%zz", "#", " ", "\t", "é", "?", "//"]

plain_segments = st.sampled_from(PLAIN + WORKSPACES)
# Plain segments come up most, so a tricky one usually sits in an otherwise valid path.
segments = st.one_of(
    plain_segments,
    plain_segments,
    plain_segments,
    st.sampled_from(DOT_LIKE),
    st.just(""),
    st.builds(
        lambda a, b, c: a + b + c,
        st.sampled_from(PLAIN + DOT_LIKE + WORKSPACES + [""]),
        st.sampled_from(SEPARATOR_LIKE + SYNTAX),
        st.sampled_from(PLAIN + DOT_LIKE + WORKSPACES + [""]),
    ),
)
family_segments = st.sampled_from(
    sorted({part for prefix in DEFAULT_FAMILIES for part in prefix.strip("/").split("/")})
)


def join(segment_list: list[str]) -> str:
    return "".join("/" + segment for segment in segment_list)


# A family, then a few segments, a workspace name and a tail: most of the
# interesting mistakes sit between the family and the segment after the workspace.
shaped_targets = st.builds(
    lambda family, before, workspace, after, query: family + join(before) + "/" + workspace
    + join(after) + query,
    st.sampled_from(DEFAULT_FAMILIES),
    st.lists(segments, max_size=2),
    st.sampled_from(WORKSPACES),
    st.lists(segments, max_size=4),
    st.sampled_from(["", "?q=1", "?next=/../beta-ws", "?a=%2F"]),
)
free_targets = st.lists(st.one_of(segments, family_segments), min_size=1, max_size=10).map(join)
TARGETS = st.one_of(shaped_targets, shaped_targets, free_targets)
# Workspace mounts send any path with the named workspace's token, so they are
# kept out of TARGETS, which the fuzz of the running proxy also uses.
mount_targets = st.builds(
    lambda mount, before, workspace, after, tail: f"{mount}{join(before)}/{workspace}"
    + join(after) + tail,
    st.sampled_from(["/as", "/files-of"]),
    st.lists(segments, max_size=1),
    st.sampled_from(WORKSPACES),
    st.lists(segments, max_size=4),
    st.sampled_from(["", "?q=1", "/api/workspaces/beta-ws/x"]),
)

DETERMINISTIC = settings(
    max_examples=1500,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def check_one_reading(target: str) -> None:
    """Assert that `target` is rejected, or read as a strict server and lenient ones read it."""
    try:
        route = resolve(target, PARSED_FAMILIES)
    except PathRejected:
        event("rejected")
        return
    if route.mount:
        event("mount")
    elif route.workspace:
        event("workspace")
    else:
        event("no workspace")
    assert (route.family, route.workspace) == strict_route(target), target
    if route.mount:
        rest = target[len(route.mount) :]
        assert route.upstream_target == (rest if rest.startswith("/") else "/" + rest), target
    else:
        assert route.upstream_target == target
    if route.workspace is not None:
        for name, reading in LENIENT_READINGS.items():
            assert reading(target) == (route.family, route.workspace), (name, target)


@DETERMINISTIC
@given(TARGETS)
def test_resolved_workspace_matches_strict_server(target: str) -> None:
    check_one_reading(target)


@settings(DETERMINISTIC, max_examples=500)
@given(mount_targets)
def test_mount_workspace_matches_strict_server(target: str) -> None:
    check_one_reading(target)


@pytest.mark.parametrize(
    "tail",
    [
        "/..;/beta-ws/echo",
        "/.;/echo",
        "/..%3B/beta-ws/echo",
        "/%C0%AE%C0%AE/beta-ws/echo",
        "/%E0%80%AE/echo",
        "/%EF%BC%8E%EF%BC%8E/beta-ws/echo",
        "/%E2%80%A5/beta-ws/echo",
        "/x%EF%BC%8F..%EF%BC%8Fbeta-ws/echo",
        "/%FF/echo",
    ],
    ids=[
        "dot-dot-semicolon", "dot-semicolon", "dot-dot-encoded-semicolon", "overlong-dots",
        "overlong-three-bytes", "fullwidth-dots", "two-dot-leader", "fullwidth-slash",
        "invalid-utf-8",
    ],
)
def test_lenient_server_tricks_rejected(tail: str) -> None:
    with pytest.raises(PathRejected):
        resolve(f"{USER_CATALOGS}/alpha-ws{tail}", PARSED_FAMILIES)


@pytest.mark.parametrize(
    "tail",
    ["/echo;v=1", "/files/%C3%A9t%C3%A9.tif", "/items/a%20b", "/..x/y", "/x.."],
)
def test_ordinary_paths_still_resolve(tail: str) -> None:
    route = resolve(f"{USER_CATALOGS}/alpha-ws{tail}", PARSED_FAMILIES)
    assert route.workspace == "alpha-ws"
