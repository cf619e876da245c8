"""TLS to the upstream is always verified, and `--ca-bundle` adds a private CA.

The stand-in serves HTTPS with a certificate from a throwaway CA made by trustme,
issued for 127.0.0.1 and upstream.test but not for localhost.
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
from tests.upstream import TOKENS, UpstreamServer

StartProxy = Callable[..., ProxyProcess]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def tls_upstream(ca: trustme.CA) -> Iterator[UpstreamServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "upstream.test").configure_cert(context)
    server = UpstreamServer(ssl_context=context).start()
    yield server
    server.stop()
    assert server.state.violations == []


def get_processes(proxy: ProxyProcess) -> requests.Response:
    return requests.get(f"{proxy.url}{USER_CATALOGS}/alpha-ws/processes", timeout=10)


def test_private_ca_rejected_without_bundle(
    start_proxy: StartProxy, tls_upstream: UpstreamServer, vault_file: Path
) -> None:
    proxy = start_proxy("--listen", "127.0.0.1:0", "--upstream", tls_upstream.origin,
                        "--vault", str(vault_file))
    before = len(tls_upstream.state.received)
    response = get_processes(proxy)

    assert response.status_code == 502
    assert response.headers["Content-Type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert "TLS certificate of upstream host 127.0.0.1 could not be verified" in detail
    assert "--ca-bundle" in detail
    assert TOKENS["alpha-ws"] not in response.text
    assert len(tls_upstream.state.received) == before


def test_private_ca_trusted_with_bundle(
    start_proxy: StartProxy, tls_upstream: UpstreamServer, vault_file: Path, ca_bundle: Path
) -> None:
    proxy = start_proxy("--listen", "127.0.0.1:0", "--upstream", tls_upstream.origin,
                        "--vault", str(vault_file), "--ca-bundle", str(ca_bundle))
    response = get_processes(proxy)

    assert response.status_code == 200, response.text
    assert tls_upstream.state.received[-1].headers["Authorization"] == [
        f"Bearer {TOKENS['alpha-ws']}"
    ]


def test_ca_bundle_relative_to_config(
    start_proxy: StartProxy, tls_upstream: UpstreamServer, vault_file: Path, ca_bundle: Path
) -> None:
    config = ca_bundle.parent / "config.yaml"
    config.write_text(
        f"upstream: {tls_upstream.origin}\nvault: {vault_file}\nca_bundle: {ca_bundle.name}\n"
    )
    proxy = start_proxy("--listen", "127.0.0.1:0", "--config", str(config))
    response = get_processes(proxy)

    assert response.status_code == 200, response.text


def test_certificate_for_other_host_rejected(
    start_proxy: StartProxy, tls_upstream: UpstreamServer, vault_file: Path, ca_bundle: Path
) -> None:
    # The certificate names 127.0.0.1 and upstream.test, not localhost, the same server.
    upstream = f"https://localhost:{tls_upstream.port}"
    proxy = start_proxy("--listen", "127.0.0.1:0", "--upstream", upstream,
                        "--vault", str(vault_file), "--ca-bundle", str(ca_bundle))
    before = len(tls_upstream.state.received)
    response = get_processes(proxy)

    assert response.status_code == 502
    assert "could not be verified" in response.json()["detail"]
    assert len(tls_upstream.state.received) == before
