"""CORS: off by default, and correct for the origins `allowed_origins` lists."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from proxy.standin import USER_CATALOGS
from tests.conftest import BROWSER_ORIGIN, ProxyProcess
from tests.gateway import basic, secrets_in, serve_args, write_gateway_vault
from tests.rawhttp import build, exchange, received_since
from tests.upstream import UpstreamServer

ECHO = f"{USER_CATALOGS}/alpha-ws/echo"
# The tests' upstream sends `Access-Control-Allow-Origin: *` on this path, as the platform does.
UPSTREAM_CORS = f"{USER_CATALOGS}/alpha-ws/headers"


def request(target: str, *headers: str, method: str = "GET") -> bytes:
    return build(f"{method} {target} HTTP/1.1", "Host: localhost", *headers, "Connection: close")


def preflight(origin: str, *headers: str) -> bytes:
    return request(
        ECHO,
        f"Origin: {origin}",
        "Access-Control-Request-Method: DELETE",
        *headers,
        method="OPTIONS",
    )


def cors_headers(headers: list[tuple[str, str]]) -> list[str]:
    return [name.lower() for name, _ in headers if name.lower().startswith("access-control-")]


def test_upstream_cors_never_reaches_browser(proxy: ProxyProcess) -> None:
    reply = exchange(proxy.port, request(UPSTREAM_CORS, "Origin: http://localhost"))
    assert reply.status == 200, reply.raw[:300]
    assert cors_headers(reply.headers) == []


def test_no_cors_headers_without_config(proxy: ProxyProcess) -> None:
    for headers in ((), ("Origin: http://localhost",)):
        reply = exchange(proxy.port, request(ECHO, *headers))
        assert reply.status == 200
        assert cors_headers(reply.headers) == []


def test_preflight_rejected_without_config(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    before = len(upstream.state.received)
    reply = exchange(proxy.port, preflight(BROWSER_ORIGIN))
    assert reply.status == 403, reply.raw[:300]
    assert cors_headers(reply.headers) == []
    assert received_since(upstream, before) == []


def test_allowed_origin_gets_cors_headers(browser_proxy: ProxyProcess) -> None:
    reply = exchange(
        browser_proxy.port,
        request(UPSTREAM_CORS, f"Origin: {BROWSER_ORIGIN}", "Sec-Fetch-Site: cross-site"),
    )
    assert reply.status == 200, reply.raw[:300]
    assert reply.header("Access-Control-Allow-Origin") == [BROWSER_ORIGIN]
    assert reply.header("Access-Control-Expose-Headers") == ["*"]
    assert "Origin" in reply.header("Vary")
    assert reply.header("Access-Control-Allow-Credentials") == []


def test_allowed_origin_matched_case_insensitively(browser_proxy: ProxyProcess) -> None:
    origin = BROWSER_ORIGIN.upper()
    reply = exchange(browser_proxy.port, request(ECHO, f"Origin: {origin}"))
    assert reply.status == 200, reply.raw[:300]
    assert reply.header("Access-Control-Allow-Origin") == [origin]


def test_preflight_answered_locally(
    browser_proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    before = len(upstream.state.received)
    reply = exchange(
        browser_proxy.port,
        preflight(BROWSER_ORIGIN, "Access-Control-Request-Headers: content-type, prefer"),
    )
    assert reply.status == 204, reply.raw[:300]
    assert reply.header("Access-Control-Allow-Origin") == [BROWSER_ORIGIN]
    assert "DELETE" in reply.header("Access-Control-Allow-Methods")[0]
    assert reply.header("Access-Control-Allow-Headers") == ["content-type, prefer"]
    assert reply.header("Access-Control-Max-Age") == ["600"]
    assert reply.header("Access-Control-Allow-Credentials") == []
    assert received_since(upstream, before) == []


def test_preflight_from_other_origin_rejected(
    browser_proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    before = len(upstream.state.received)
    reply = exchange(browser_proxy.port, preflight("https://evil.example"))
    assert reply.status == 403, reply.raw[:300]
    assert cors_headers(reply.headers) == []
    assert received_since(upstream, before) == []


def test_preflight_with_bad_header_list_rejected(browser_proxy: ProxyProcess) -> None:
    reply = exchange(
        browser_proxy.port,
        preflight(BROWSER_ORIGIN, "Access-Control-Request-Headers: x-ok, bad header"),
    )
    assert reply.status == 400, reply.raw[:300]


def test_private_network_preflight_allowed(browser_proxy: ProxyProcess) -> None:
    """Chrome sends this preflight before a public page may reach a loopback address."""
    reply = exchange(
        browser_proxy.port,
        preflight(BROWSER_ORIGIN, "Access-Control-Request-Private-Network: true"),
    )
    assert reply.status == 204
    assert reply.header("Access-Control-Allow-Private-Network") == ["true"]


def test_allowed_origin_reads_proxy_errors(browser_proxy: ProxyProcess) -> None:
    reply = exchange(
        browser_proxy.port,
        request(f"{USER_CATALOGS}/gamma-ws/processes", f"Origin: {BROWSER_ORIGIN}"),
    )
    assert reply.status == 403
    assert reply.header("Access-Control-Allow-Origin") == [BROWSER_ORIGIN]
    assert json.loads(reply.body)["type"] == "urn:eodh-proxy:no-token"


@pytest.mark.parametrize("origin", ["https://app.example.org.evil.example", "http://app.example.org",
                                    "https://app.example.org:8443", "null"])
def test_similar_origins_rejected(
    browser_proxy: ProxyProcess, upstream: UpstreamServer, origin: str
) -> None:
    before = len(upstream.state.received)
    reply = exchange(browser_proxy.port, request(ECHO, f"Origin: {origin}", method="POST"))
    assert reply.status == 403, reply.raw[:300]
    assert received_since(upstream, before) == []


@pytest.fixture(scope="module")
def cors_gateway(
    upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory, isolated_env: dict[str, str]
) -> Iterator[ProxyProcess]:
    """A gateway whose vault lists clients, with CORS for one origin."""
    folder = tmp_path_factory.mktemp("cors-gateway")
    vault = write_gateway_vault(folder / "vault.yaml")
    config = folder / "config.yaml"
    config.write_text(f"allowed_origins: ['{BROWSER_ORIGIN}']\n")
    process = ProxyProcess(
        serve_args(upstream, vault, "127.0.0.1:0", "--config", str(config)), env=isolated_env
    ).wait_ready()
    yield process
    process.stop()
    assert secrets_in(process.output) == []


def test_gateway_preflight_needs_no_credentials(
    cors_gateway: ProxyProcess, upstream: UpstreamServer
) -> None:
    """Browsers send no credentials with a preflight, so it is handled before the client check."""
    before = len(upstream.state.received)
    reply = exchange(
        cors_gateway.port,
        preflight(BROWSER_ORIGIN, "Access-Control-Request-Headers: authorization"),
    )
    assert reply.status == 204, reply.raw[:300]
    assert reply.header("Access-Control-Allow-Headers") == ["authorization"]
    assert received_since(upstream, before) == []


def test_gateway_request_still_needs_credentials(cors_gateway: ProxyProcess) -> None:
    without = exchange(cors_gateway.port, request(ECHO, f"Origin: {BROWSER_ORIGIN}"))
    assert without.status == 401
    assert without.header("Access-Control-Allow-Origin") == [BROWSER_ORIGIN]
    with_key = exchange(
        cors_gateway.port,
        request(ECHO, f"Origin: {BROWSER_ORIGIN}", f"Authorization: {basic('alice')}"),
    )
    assert with_key.status == 200, with_key.raw[:300]
    assert with_key.header("Access-Control-Allow-Origin") == [BROWSER_ORIGIN]
