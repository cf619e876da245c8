"""Every error the proxy produces is problem+json with no token, header or reflected input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess, free_port, stop_proxy
from tests.rawhttp import Reply, build, exchange
from tests.upstream import TOKENS, UpstreamServer

ECHO = f"{USER_CATALOGS}/alpha-ws/echo"


def get(target: str, *headers: str, line: str = "") -> bytes:
    return build(line or f"GET {target} HTTP/1.1", "Host: localhost", *headers, "Connection: close")


PROXY_ERRORS = {
    "host": build(f"GET {ECHO} HTTP/1.1", "Host: <script>.example"),
    "cross-site": get(ECHO, "Origin: http://<script>.example"),
    "no-token": get(f"{USER_CATALOGS}/gamma-ws/processes"),
    "path-script-raw": get(f"{USER_CATALOGS}/<script>alert(1)</script>/x"),
    "path-script-encoded": get(f"{USER_CATALOGS}/%3Cscript%3Ealert(1)%3C%2Fscript%3E/x"),
    "path-script-after-workspace": get(f"{USER_CATALOGS}/alpha-ws/..;/%3Cscript%3E"),
    "path-quotes": get(f"{USER_CATALOGS}/a%22b'c/x"),
    "path-unicode": get(f"{USER_CATALOGS}/%C3%A9t%C3%A9/x"),
    "path-raw-utf8": "GET /ades/\u00e9t\u00e9/x HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),
    "workspace-too-long": get(f"{USER_CATALOGS}/{'a' * 64}/x"),
    "trace": get(ECHO, line=f"TRACE {ECHO} HTTP/1.1"),
    "connect": build("CONNECT localhost:443 HTTP/1.1", "Host: localhost"),
    "upgrade": get(ECHO, "Upgrade: websocket", "Connection: Upgrade"),
    "version": get(ECHO, line=f"GET {ECHO} HTTP/1.7"),
    "framing-guard": get(ECHO, "Transfer-Encoding: gzip, chunked", line=f"POST {ECHO} HTTP/1.1"),
    "framing-parser": get(ECHO, "Content-Length: 1", "Content-Length: 2", line=f"POST {ECHO} HTTP/1.1"),
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03<script>\r\n\r\n",
    "header-too-long": get(ECHO, "X-Long: " + "<script>" * 2000),
    "bad-header-name": get(ECHO, "X<script>: 1"),
}


def assert_problem(reply: Reply) -> None:
    assert reply.status is not None and reply.status >= 400, reply.raw[:300]
    assert reply.header("Content-Type") == ["application/problem+json"], reply.raw[:300]
    problem = json.loads(reply.body)
    assert sorted(problem) == ["detail", "status", "title", "type"]
    assert problem["status"] == reply.status
    assert problem["type"].startswith("urn:eodh-proxy:")


def assert_nothing_leaks(reply: Reply, upstream: UpstreamServer) -> None:
    text = reply.raw.decode("latin-1")
    for token in TOKENS.values():
        assert token not in text
    assert "Bearer" not in text
    assert "authorization" not in text.lower()
    assert upstream.origin.removeprefix("http://") not in text
    assert "<script" not in text.lower()
    assert "<html" not in text.lower()


@pytest.mark.parametrize("name", sorted(PROXY_ERRORS))
def test_proxy_errors_are_problem_json(
    proxy: ProxyProcess, upstream: UpstreamServer, name: str
) -> None:
    reply = exchange(proxy.port, PROXY_ERRORS[name])
    assert_problem(reply)
    assert_nothing_leaks(reply, upstream)


@pytest.mark.parametrize("name", sorted(PROXY_ERRORS))
def test_errors_carry_browser_safety_headers(proxy: ProxyProcess, name: str) -> None:
    reply = exchange(proxy.port, PROXY_ERRORS[name])
    assert reply.header("Content-Security-Policy") == ["sandbox"]
    assert reply.header("X-Content-Type-Options") == ["nosniff"]


def test_proxied_responses_sandboxed(proxy: ProxyProcess) -> None:
    """A document served through the proxy cannot run script on the proxy's origin."""
    reply = exchange(proxy.port, get(f"{USER_CATALOGS}/alpha-ws/headers"))
    assert reply.status == 200
    assert reply.header("Content-Security-Policy") == ["sandbox"]
    assert reply.header("X-Content-Type-Options") == ["nosniff"]


def test_admin_responses_sandboxed(proxy: ProxyProcess) -> None:
    reply = exchange(proxy.port, get("/_proxy/status"))
    assert reply.status == 200, reply.raw[:300]
    assert reply.header("Content-Security-Policy") == ["sandbox"]


def test_upstream_error_passes_unchanged(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    target = "/api/catalogue/stac/no-such-thing"
    direct = requests.get(upstream.origin + target, timeout=10)
    through = requests.get(proxy.url + target, timeout=10)
    assert through.status_code == direct.status_code == 404
    assert through.headers["Content-Type"] == direct.headers["Content-Type"]
    assert through.content == direct.content


@pytest.fixture(scope="module")
def proxy_upstream_down(
    vault_file: Path, isolated_env: dict[str, str]
) -> Iterator[ProxyProcess]:
    port = free_port()
    process = ProxyProcess(
        ["serve", "--listen", "127.0.0.1:0", "--upstream", f"http://127.0.0.1:{port}",
         "--vault", str(vault_file)],
        env=isolated_env,
    ).wait_ready()
    yield process
    stop_proxy(process)


def test_upstream_down_error_leaks_nothing(
    proxy_upstream_down: ProxyProcess, upstream: UpstreamServer
) -> None:
    reply = exchange(proxy_upstream_down.port, get(ECHO, "Authorization: Bearer client-secret"))
    assert reply.status == 502
    assert_problem(reply)
    assert_nothing_leaks(reply, upstream)
    assert "client-secret" not in reply.raw.decode("latin-1")
