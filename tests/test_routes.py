"""The resolver on its own: workspace mounts and reserved prefixes."""

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
