"""Workspace mounts, `/as/<workspace>/<path>`: any upstream path with a chosen workspace's token."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from proxy.standin import COMMERCIAL_CATALOGS, USER_CATALOGS
from proxy.standin_stac import COLLECTIONS
from tests.conftest import ProxyProcess, raw_request
from tests.upstream import PUBLIC, TOKENS, UpstreamServer

QUOTE = f"{COMMERCIAL_CATALOGS}/planet/collections/PSScene/items/2024-01-01-x/quote"


def last(upstream: UpstreamServer):
    return upstream.state.received[-1]


@pytest.fixture
def beta_public(upstream: UpstreamServer) -> Iterator[None]:
    """Publish beta-ws's workflows as public for one test, so other workspaces' tokens are valid."""
    upstream.call(upstream.state.public_workspaces.add, "beta-ws")
    yield
    upstream.call(upstream.state.public_workspaces.discard, "beta-ws")


@pytest.fixture(scope="module")
def defaulting_proxy(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str], tmp_path_factory
) -> Iterator[ProxyProcess]:
    config = tmp_path_factory.mktemp("config") / "config.yaml"
    config.write_text("default_workspace: alpha-ws\n")
    process = ProxyProcess(
        ["serve", "--config", str(config), "--listen", "127.0.0.1:0",
         "--upstream", upstream.origin, "--vault", str(vault_file)],
        env=isolated_env,
    ).wait_ready()
    yield process
    process.stop()


def test_quote_sent_with_mount_token(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    response = requests.post(f"{proxy.url}/as/alpha-ws{QUOTE}", json={}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["workspace"] == "alpha-ws"
    assert last(upstream).raw_path == QUOTE
    assert last(upstream).headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


def test_quote_without_mount_gets_no_token(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    response = requests.post(f"{proxy.url}{QUOTE}", json={}, timeout=10)
    assert response.status_code == 401
    assert "Authorization" not in last(upstream).headers


def test_mount_links_stay_in_mount(proxy: ProxyProcess) -> None:
    mount = f"{proxy.url}/as/alpha-ws"
    quote = requests.post(f"{mount}{QUOTE}", json={}, timeout=10).json()
    order = next(link["href"] for link in quote["links"] if link["rel"] == "order")
    assert order == f"{mount}{QUOTE.removesuffix('/quote')}/order"

    ordered = requests.post(order, json={}, timeout=10)
    assert ordered.status_code == 201
    assert ordered.headers["Location"].startswith(f"{mount}{USER_CATALOGS}/alpha-ws/")


def test_public_workflow_run_as_caller(
    proxy: ProxyProcess, upstream: UpstreamServer, beta_public: None
) -> None:
    mount = f"{proxy.url}/as/alpha-ws"
    created = requests.post(
        f"{mount}{USER_CATALOGS}/beta-ws/processes/echo/execution",
        json={"inputs": {"workspace": "alpha-ws"}},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    assert last(upstream).headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]

    location = created.headers["Location"]
    assert location.startswith(f"{mount}{USER_CATALOGS}/beta-ws/jobs/")
    assert requests.get(location, timeout=10).status_code == 200
    assert last(upstream).headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


def test_mount_without_token_rejected_locally(
    defaulting_proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    """A mount names whose token to send, so the default workspace is never used instead."""
    before = len(upstream.state.received)
    response = requests.get(f"{defaulting_proxy.url}/as/gamma-ws{PUBLIC}/echo", timeout=10)
    assert response.status_code == 403
    assert "gamma-ws" in response.json()["detail"]
    assert len(upstream.state.received) == before


@pytest.mark.parametrize(
    "target",
    [
        "/as",
        "/as/",
        "/as//alpha-ws/echo",
        "/%61s/alpha-ws/echo",
        "/as/alpha%2Dws/echo",
        "/as/alpha-ws/api/../x",
        "/as/alpha-ws/api/%2E%2E/x",
        f"/as/alpha-ws{USER_CATALOGS}/beta-ws%2F..%2Fgamma-ws/x",
    ],
)
def test_unsafe_mount_targets_rejected(
    proxy: ProxyProcess, upstream: UpstreamServer, target: str
) -> None:
    before = len(upstream.state.received)
    reply = raw_request(
        proxy.port, f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.split(b" ", 2)[1] == b"400", (target, reply[:300])
    assert len(upstream.state.received) == before


def test_relative_location_kept_in_mount(proxy: ProxyProcess) -> None:
    response = requests.get(
        f"{proxy.url}/as/alpha-ws{PUBLIC}/redirect?to=relative", allow_redirects=False, timeout=10
    )
    assert response.headers["Location"] == f"{proxy.url}/as/alpha-ws{PUBLIC}/"


def test_relative_link_kept_in_mount(proxy: ProxyProcess) -> None:
    """A root-relative `Link` target gets the mount prefix, like a relative `Location`."""
    response = requests.get(
        f"{proxy.url}/as/alpha-ws{PUBLIC}/redirect?to=relative", allow_redirects=False, timeout=10
    )
    expected = f'<{proxy.url}/as/alpha-ws{PUBLIC}/>; rel="next", <page-2>; rel="prev"'
    assert response.headers["Link"] == expected


def test_relative_link_outside_mount_untouched(proxy: ProxyProcess) -> None:
    response = requests.get(
        f"{proxy.url}{PUBLIC}/redirect?to=relative", allow_redirects=False, timeout=10
    )
    assert response.headers["Link"] == f'<{PUBLIC}/>; rel="next", <page-2>; rel="prev"'


def test_absolute_location_kept_in_mount(proxy: ProxyProcess) -> None:
    response = requests.get(
        f"{proxy.url}/as/alpha-ws{PUBLIC}/redirect", allow_redirects=False, timeout=10
    )
    assert response.headers["Location"] == f"{proxy.url}/as/alpha-ws{PUBLIC}/"


def test_request_links_under_mount_restored(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    mount = f"{proxy.url}/as/alpha-ws"
    sent = {"mounted": f"{mount}{PUBLIC}/items/1", "plain": f"{proxy.url}{PUBLIC}/items/2"}
    response = requests.post(f"{mount}{USER_CATALOGS}/alpha-ws/mirror", json=sent, timeout=10)
    received = json.loads(response.content)
    assert received["mounted"] == f"{upstream.origin}{PUBLIC}/items/1"
    assert received["plain"] == f"{upstream.origin}{PUBLIC}/items/2"


def test_other_mount_links_restored(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    sent = {"href": f"{proxy.url}/as/beta-ws{PUBLIC}/items/1"}
    response = requests.post(f"{proxy.url}{USER_CATALOGS}/alpha-ws/mirror", json=sent, timeout=10)
    assert json.loads(response.content)["href"] == f"{upstream.origin}{PUBLIC}/items/1"


def test_access_line_names_mount_workspace(proxy: ProxyProcess) -> None:
    requests.post(f"{proxy.url}/as/beta-ws{QUOTE}", json={}, timeout=10)
    line = proxy.wait_for_line(f'"POST /as/beta-ws{QUOTE}"')
    assert " beta-ws 200 " in line


def test_owslib_under_mount(proxy: ProxyProcess, upstream: UpstreamServer, beta_public: None) -> None:
    from owslib.ogcapi.processes import Processes

    base = f"{proxy.url}/as/alpha-ws{USER_CATALOGS}/beta-ws"
    service = Processes(base)
    assert [process["id"] for process in service.processes()] == ["echo", "ndvi"]
    echo = service.process("echo")
    assert all(link["href"].startswith(base) for link in echo["links"])
    assert last(upstream).token_workspace == "alpha-ws"


def test_pystac_client_stays_in_mount(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    from pystac_client import Client

    base = f"{proxy.url}/as/beta-ws{USER_CATALOGS}/beta-ws"
    start = len(upstream.state.received)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalogue = Client.open(base)
        items = [item for c in catalogue.get_collections() for item in c.get_items()]
    assert len(items) == sum(COLLECTIONS.values())
    assert all(item.get_self_href().startswith(base) for item in items)
    tokens = {r.token_workspace for r in upstream.state.received[start:]}
    assert tokens == {"beta-ws"}
