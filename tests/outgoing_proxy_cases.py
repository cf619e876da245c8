"""Outgoing proxy cases that need a host name other than loopback: run in a namespace.

`tests/test_outgoing_proxy.py` runs this module with pytest inside a new network
and mount namespace, where only loopback exists and `/etc/hosts` maps
upstream.test to 127.0.0.1, so no name is ever looked up in DNS and no packet
can leave the machine. Run on its own, outside that namespace, it skips.

The proxy never uses an outgoing proxy for a loopback upstream, so these cases
reach the stand-in as upstream.test.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import trustme

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess
from tests.outgoing_proxy import OutgoingProxy
from tests.upstream import TOKENS, UpstreamServer

UPSTREAM_HOST = "upstream.test"

if UPSTREAM_HOST not in Path("/etc/hosts").read_text():
    pytest.skip(
        "runs only inside the namespace that tests/test_outgoing_proxy.py creates",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def outgoing_proxy() -> Iterator[OutgoingProxy]:
    proxy = OutgoingProxy({UPSTREAM_HOST: "127.0.0.1"}).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def http_upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer(host_name=UPSTREAM_HOST).start()
    yield server
    server.stop()
    assert server.state.violations == []


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_upstream(ca: trustme.CA) -> Iterator[UpstreamServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(UPSTREAM_HOST).configure_cert(context)
    server = UpstreamServer(host_name=UPSTREAM_HOST, ssl_context=context).start()
    yield server
    server.stop()
    assert server.state.violations == []


StartProxy = Callable[..., ProxyProcess]


def serve_through(
    start_proxy: StartProxy, folder: Path, settings: str, env: dict[str, str]
) -> ProxyProcess:
    """Start a proxy with `settings` as its config file and `env` added to its environment."""
    config = folder / "config.yaml"
    config.write_text(settings)
    return start_proxy("--listen", "127.0.0.1:0", "--config", str(config), env=env)


def get_processes(proxy: ProxyProcess) -> requests.Response:
    return requests.get(f"{proxy.url}{USER_CATALOGS}/alpha-ws/processes", timeout=10)


def test_http_proxy_carries_plain_http(
    start_proxy: StartProxy,
    tmp_path: Path,
    vault_file: Path,
    outgoing_proxy: OutgoingProxy,
    http_upstream: UpstreamServer,
) -> None:
    settings = (
        f"upstream: {http_upstream.origin}\nvault: {vault_file}\nallow_http_upstream: true\n"
    )
    proxy = serve_through(start_proxy, tmp_path, settings, {"HTTP_PROXY": outgoing_proxy.url})
    seen_before = len(outgoing_proxy.request_lines)
    response = get_processes(proxy)

    assert response.status_code == 200, response.text
    assert outgoing_proxy.request_lines[seen_before:] == [
        f"GET {http_upstream.origin}{USER_CATALOGS}/alpha-ws/processes HTTP/1.1"
    ]
    assert http_upstream.state.received[-1].headers["Authorization"] == [
        f"Bearer {TOKENS['alpha-ws']}"
    ]


def test_https_proxy_tunnels_tls(
    start_proxy: StartProxy,
    tmp_path: Path,
    vault_file: Path,
    ca: trustme.CA,
    outgoing_proxy: OutgoingProxy,
    https_upstream: UpstreamServer,
) -> None:
    ca_bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_bundle))
    settings = f"upstream: {https_upstream.origin}\nvault: {vault_file}\nca_bundle: ca.pem\n"
    proxy = serve_through(start_proxy, tmp_path, settings, {"HTTPS_PROXY": outgoing_proxy.url})
    seen_before = len(outgoing_proxy.request_lines)
    response = get_processes(proxy)

    assert response.status_code == 200, response.text
    assert outgoing_proxy.request_lines[seen_before:] == [
        f"CONNECT {UPSTREAM_HOST}:{https_upstream.port} HTTP/1.1"
    ]
    assert https_upstream.state.received[-1].headers["Authorization"] == [
        f"Bearer {TOKENS['alpha-ws']}"
    ]


@pytest.mark.parametrize("no_proxy", [UPSTREAM_HOST, ".test", "*"])
def test_no_proxy_match_goes_direct(
    start_proxy: StartProxy,
    tmp_path: Path,
    vault_file: Path,
    outgoing_proxy: OutgoingProxy,
    http_upstream: UpstreamServer,
    no_proxy: str,
) -> None:
    settings = (
        f"upstream: {http_upstream.origin}\nvault: {vault_file}\nallow_http_upstream: true\n"
    )
    env = {"HTTP_PROXY": outgoing_proxy.url, "NO_PROXY": no_proxy}
    proxy = serve_through(start_proxy, tmp_path, settings, env)
    seen_before = len(outgoing_proxy.request_lines)
    response = get_processes(proxy)

    assert response.status_code == 200, response.text
    assert outgoing_proxy.request_lines[seen_before:] == []
    assert http_upstream.state.received[-1].raw_path == f"{USER_CATALOGS}/alpha-ws/processes"
