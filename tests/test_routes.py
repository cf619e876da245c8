"""The resolver on its own: route families, path safety, workspace mounts, reserved prefixes."""

from __future__ import annotations

import pytest

from proxy.errors import PathRejected
from proxy.routes import DEFAULT_FAMILIES, check_family_prefix, parse_families, resolve

FAMILIES = parse_families(DEFAULT_FAMILIES)
USER = "/api/catalogue/stac/catalogs/user/catalogs"


@pytest.mark.parametrize(
    ("target", "upstream_target"),
    [
        (f"/as/alpha-ws{USER}/beta-ws/processes", f"{USER}/beta-ws/processes"),
        ("/as/alpha-ws/api/catalogue/stac/x?a=%2F+b", "/api/catalogue/stac/x?a=%2F+b"),
        ("/as/alpha-ws/as/x", "/as/x"),
        ("/as/alpha-ws/", "/"),
        ("/as/alpha-ws", "/"),
        ("/as/alpha-ws?q=1", "/?q=1"),
    ],
)
def test_mount_strips_prefix_byte_for_byte(target: str, upstream_target: str) -> None:
    route = resolve(target, FAMILIES)
    assert route.upstream_target == upstream_target
    assert route.workspace == "alpha-ws"
    assert route.mount == "/as/alpha-ws"
    assert route.chosen_explicitly


def test_family_route_not_explicit() -> None:
    route = resolve(f"{USER}/beta-ws/processes", FAMILIES)
    assert route.mount == ""
    assert route.upstream_target == f"{USER}/beta-ws/processes"
    assert not route.chosen_explicitly


@pytest.mark.parametrize(
    "target",
    [
        "/as",
        "/as/",
        "/as//alpha-ws/x",
        "/%61s/alpha-ws/x",
        "/as/alpha%2Dws/x",
        "/as/alpha_ws/x",
        "/as/alpha-ws/../beta-ws/x",
        "/as/alpha-ws/api/%2e%2e/x",
        "/as/alpha-ws/api//x",
        "/as/alpha-ws/api%2Fx",
        "/as/alpha-ws%2F..%2Fbeta-ws/x",
        "/as/alpha-ws/api\\x",
    ],
)
def test_unsafe_mount_paths_rejected(target: str) -> None:
    with pytest.raises(PathRejected):
        resolve(target, FAMILIES)


@pytest.mark.parametrize("prefix", ["/as", "/as/x"])
def test_reserved_family_prefix_rejected(prefix: str) -> None:
    assert check_family_prefix(prefix) is not None


def test_prefix_starting_like_mount_allowed() -> None:
    assert check_family_prefix("/assets") is None


# Route families: the workspace that follows a family prefix picks the token.


@pytest.mark.parametrize("family", DEFAULT_FAMILIES)
def test_every_default_family_names_workspace(family: str) -> None:
    target = f"{family}/beta-ws/some/path?q=%2F+x"
    route = resolve(target, FAMILIES)

    assert route.family == family
    assert route.workspace == "beta-ws"
    assert route.upstream_target == target
    assert route.mount == ""


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/api/catalogue/stac/collections/sentinel2/items?limit=1",
        "/ades",
        "/ades/",
        "/adesx/alpha-ws/x",
        "/api/workspace/alpha-ws",
        f"{USER}",
        f"{USER}/",
        "/api/catalogue/stac/catalogs/user/alpha-ws/x",
    ],
)
def test_other_paths_name_no_workspace(target: str) -> None:
    route = resolve(target, FAMILIES)

    assert route.workspace is None
    assert route.family is None
    assert route.upstream_target == target


def test_longest_family_wins() -> None:
    families = parse_families(("/a", "/a/b"))

    assert families == (("a", "b"), ("a",))
    assert resolve("/a/b/ws/x", families).workspace == "ws"
    assert resolve("/a/b/ws/x", families).family == "/a/b"
    assert resolve("/a/c/x", families).workspace == "c"
    assert resolve("/a/b", families).workspace == "b"


def test_query_never_names_workspace() -> None:
    route = resolve("/ades/alpha-ws/jobs?next=/ades/beta-ws/jobs&x=..%2F", FAMILIES)

    assert route.workspace == "alpha-ws"


@pytest.mark.parametrize(
    "target",
    [
        "/ades/alpha-ws/a%20b+c",
        "/ades/alpha-ws/%41%7e~",
        "/ades/alpha-ws/caf%C3%A9",
        "/ades/alpha-ws/x;v=1,y=2:z@w",
        "/ades/alpha-ws/",
        "/ades/alpha-ws",
        "/ades/alpha-ws?",
    ],
)
def test_target_kept_byte_for_byte(target: str) -> None:
    route = resolve(target, FAMILIES)

    assert route.upstream_target == target
    assert route.workspace is not None


@pytest.mark.parametrize(
    "target",
    [
        "",
        "ades/alpha-ws",
        "*",
        "http://elsewhere.example/ades/alpha-ws",
        "/ades/alpha-ws/../beta-ws",
        "/ades/alpha-ws/./x",
        "/ades/alpha-ws/%2e%2e/beta-ws",
        "/ades/alpha-ws/%2E/x",
        "/ades/alpha-ws/x/..",
        "/ades//alpha-ws",
        "/ades/alpha-ws//x",
        "//ades/alpha-ws",
        "/ades/alpha-ws%2Fx",
        "/ades/alpha-ws%2fx",
        "/ades/alpha-ws%5Cx",
        "/ades/alpha-ws/%252e%252e/x",
        "/ades/alpha-ws/%00",
        "/ades/alpha-ws/%0A",
        "/ades/alpha-ws/%7F",
        "/ades/alpha-ws/%",
        "/ades/alpha-ws/%4",
        "/ades/alpha-ws/%G1",
        "/ades/alpha-ws\\x",
        "/ades/alpha-ws/a b",
        "/ades/alpha-ws/a\tb",
        "/ades/alpha-ws/\x00",
        "/ades/alpha-ws/café",
        "/ades/alpha-ws/#frag",
        "/ades/alpha-ws/x?q=a b",
        "/ades/alpha-ws/x?q=é",
        "/ades/alpha-ws/x?q=#f",
        "/%61des/alpha-ws",
        "/ades/%61lpha-ws",
        "/ades/alpha_ws",
        "/ades/alpha.ws",
        "/ades/-alpha",
        "/ades/" + "a" * 64,
    ],
)
def test_ambiguous_or_invalid_target_rejected(target: str) -> None:
    with pytest.raises(PathRejected):
        resolve(target, FAMILIES)


@pytest.mark.parametrize(
    "target",
    [f"{USER}/ALPHA-WS/x", "/api/workspaces/Alpha-ws", "/as/ALPHA-WS/ades/x", "/files-of/aLpha/k"],
)
def test_upper_case_workspace_rejected(target: str) -> None:
    with pytest.raises(PathRejected) as raised:
        resolve(target, FAMILIES)

    assert str(raised.value).startswith("workspace names are lower case: use '")


def test_workspace_of_63_characters_accepted() -> None:
    workspace = "a" * 63

    assert resolve(f"/ades/{workspace}/x", FAMILIES).workspace == workspace


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("ades", "it must start with '/'"),
        ("/", "it must start with '/' and name at least one segment"),
        ("/ades/", "it must not end with '/'"),
        ("/a//b", "it must not hold empty, '.' or '..' segments"),
        ("/a/../b", "it must not hold empty, '.' or '..' segments"),
        ("/a%20b", "it may only hold unreserved path characters"),
        ("/a b", "it may only hold unreserved path characters"),
    ],
)
def test_invalid_family_prefix_explained(prefix: str, problem: str) -> None:
    reason = check_family_prefix(prefix)

    assert reason is not None
    assert reason.startswith(problem)


@pytest.mark.parametrize("prefix", [*DEFAULT_FAMILIES, "/api/v2/my-things", "/x"])
def test_valid_family_prefix_accepted(prefix: str) -> None:
    assert check_family_prefix(prefix) is None
