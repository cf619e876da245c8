"""The main path: token per workspace, byte-for-byte targets, headers, errors."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess, raw_request, response_body
from tests.upstream import TOKENS, UpstreamServer


def last(upstream: UpstreamServer):
    return upstream.state.received[-1]


def test_workspace_path_gets_its_token(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    for workspace in ("alpha-ws", "beta-ws"):
        response = requests.get(f"{proxy.url}{USER_CATALOGS}/{workspace}/processes", timeout=10)
        assert response.status_code == 200, response.text
        assert last(upstream).headers["Authorization"] == [f"Bearer {TOKENS[workspace]}"]


def test_client_authorization_is_replaced(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    raw = (
        f"GET {USER_CATALOGS}/alpha-ws/echo HTTP/1.1\r\nHost: localhost\r\n"
        "Authorization: Bearer client-supplied\r\nauthorization: Basic eDp5\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    reply = raw_request(proxy.port, raw)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert last(upstream).headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


def test_public_path_gets_no_token(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    response = requests.get(
        f"{proxy.url}/api/catalogue/stac/echo", headers={"Authorization": "Bearer mine"}, timeout=10
    )
    assert response.status_code == 200
    assert "Authorization" not in last(upstream).headers


def test_missing_token_answered_locally(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    before = len(upstream.state.received)
    response = requests.get(f"{proxy.url}{USER_CATALOGS}/gamma-ws/processes", timeout=10)
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert "gamma-ws" in detail
    assert "vault.yaml" in detail
    assert "eodh-proxy vault add gamma-ws" in detail
    assert len(upstream.state.received) == before


def test_every_route_family_resolves(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    families = [
        USER_CATALOGS,
        "/api/workspaces",
        "/api/catalogue/manage/catalogs/user-datasets",
        "/ades",
        "/workspaces",
    ]
    for family in families:
        requests.get(f"{proxy.url}{family}/beta-ws/anything", timeout=10)
        received = last(upstream)
        assert received.raw_path == f"{family}/beta-ws/anything"
        assert received.headers["Authorization"] == [f"Bearer {TOKENS['beta-ws']}"], family


@pytest.mark.parametrize(
    "target",
    [
        f"{USER_CATALOGS}/alpha-ws/echo/a%20b+c%2Bd%3B;x=1?q=%2F+x%20y&z=%41&empty=",
        f"{USER_CATALOGS}/alpha-ws/echo/%7Euser/~x/%C3%A9?a=b?c",
        "/echo/keep/Case/And%2bLower%2B?x=%2f",
    ],
)
def test_target_forwarded_byte_for_byte(
    proxy: ProxyProcess, upstream: UpstreamServer, target: str
) -> None:
    reply = raw_request(
        proxy.port, f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert last(upstream).raw_path == target


@pytest.mark.parametrize(
    "target",
    [
        f"{USER_CATALOGS}/alpha-ws/../beta-ws/echo",
        f"{USER_CATALOGS}/alpha-ws/%2e%2e/beta-ws/echo",
        f"{USER_CATALOGS}/alpha-ws/.%2E/beta-ws/echo",
        f"{USER_CATALOGS}/alpha-ws/./echo",
        f"{USER_CATALOGS}/alpha-ws%2F..%2Fbeta-ws/echo",
        f"{USER_CATALOGS}/alpha-ws/echo%2F..%2F..%2Fbeta-ws",
        f"{USER_CATALOGS}//alpha-ws/echo",
        "/api/catalogue//stac/catalogs/user/catalogs/alpha-ws/echo",
        f"{USER_CATALOGS}/alpha-ws\\..\\beta-ws/echo",
        f"{USER_CATALOGS}/alpha-ws%5C..%5Cbeta-ws/echo",
        f"{USER_CATALOGS}/alpha-ws%00/echo",
        f"{USER_CATALOGS}/alpha-ws/%252e%252e/beta-ws/echo",
        f"{USER_CATALOGS}/alpha%2Dws/echo",
        "/api/%77orkspaces/alpha-ws/echo",
        f"{USER_CATALOGS}/alpha-ws;x/echo",
        f"{USER_CATALOGS}/beta-ws/..;/alpha-ws/echo",
        f"{USER_CATALOGS}/beta-ws/..%3b/alpha-ws/echo",
        f"{USER_CATALOGS}/beta-ws/..%3B/alpha-ws/echo",
        f"{USER_CATALOGS}/beta-ws/..;jsessionid=1/alpha-ws/echo",
        f"{USER_CATALOGS}/beta-ws/.;/echo",
        f"{USER_CATALOGS}/beta-ws/.;x/echo",
        f"{USER_CATALOGS}/beta-ws/%2e%2e;/alpha-ws/echo",
        f"/as/beta-ws{USER_CATALOGS}/beta-ws/..;/alpha-ws/echo",
        "/as/beta-ws/..;/x",
        "/files-of/beta-ws/..;/alpha-ws/files/x",
        "/files-of/beta-ws/files/.;/x",
        f"{USER_CATALOGS}/alpha_ws/echo",
        f"{USER_CATALOGS}/alpha-ws/echo/%zz",
        "http://elsewhere.example/echo/x",
        "*",
    ],
)
def test_ambiguous_targets_rejected(
    proxy: ProxyProcess, upstream: UpstreamServer, target: str
) -> None:
    before = len(upstream.state.received)
    reply = raw_request(
        proxy.port, f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    )
    status_line = reply.split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] == b"400", (target, reply[:300])
    assert b"application/problem+json" in reply
    assert len(upstream.state.received) == before


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_forwarded(proxy: ProxyProcess, upstream: UpstreamServer, method: str) -> None:
    response = requests.request(method, f"{proxy.url}{USER_CATALOGS}/alpha-ws/echo", timeout=10)
    assert response.status_code == 200
    assert response.json()["method"] == method
    assert last(upstream).headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


def test_head_keeps_content_length(proxy: ProxyProcess) -> None:
    response = requests.head(
        f"{proxy.url}{USER_CATALOGS}/alpha-ws/download?size=12345", timeout=10
    )
    assert response.status_code == 200
    assert response.headers["Content-Length"] == "12345"
    assert response.content == b""


def test_hop_by_hop_and_forwarding_headers_dropped(
    proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    raw = (
        f"GET {USER_CATALOGS}/alpha-ws/echo HTTP/1.1\r\nHost: localhost\r\n"
        "Connection: close, X-Private\r\nX-Private: secret-hop\r\nKeep-Alive: timeout=5\r\n"
        "TE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic eDp5\r\n"
        "Proxy-Connection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: evil\r\n"
        "Forwarded: for=1.2.3.4\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n"
        "X-Kept: yes\r\nX-Kept: twice\r\nUser-Agent: legacy-tool/1.0\r\nAccept: text/csv\r\n\r\n"
    ).encode()
    reply = raw_request(proxy.port, raw)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    received = last(upstream).headers
    for name in (
        "X-Private", "Keep-Alive", "TE", "Trailer", "Proxy-Authorization", "Proxy-Connection",
        "X-Forwarded-For", "X-Forwarded-Host", "Forwarded", "X-Original-URL", "X-Rewrite-URL",
    ):
        assert name not in received, name
    assert received["X-Kept"] == ["yes", "twice"]
    assert received["User-Agent"] == ["legacy-tool/1.0"]
    assert received["Accept"] == ["text/csv"]
    assert received["Host"] == [upstream.origin.removeprefix("http://")]


def test_response_headers_kept_with_duplicates(proxy: ProxyProcess) -> None:
    reply = raw_request(
        proxy.port,
        f"GET {USER_CATALOGS}/alpha-ws/headers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode(),
    )
    head = reply.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.count("set-cookie: ") == 2
    assert "x-upstream: yes" in head
    assert "x-hop" not in head
    assert "access-control-allow-origin" not in head


def test_redirect_not_followed_and_location_translated(proxy: ProxyProcess) -> None:
    response = requests.get(
        f"{proxy.url}/api/catalogue/stac/redirect", allow_redirects=False, timeout=10
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"{proxy.url}/api/catalogue/stac/"
    assert response.headers["Content-Location"] == f"{proxy.url}/doc"


def test_location_on_other_origin_untouched(proxy: ProxyProcess) -> None:
    response = requests.get(
        f"{proxy.url}/api/catalogue/stac/redirect?to=other", allow_redirects=False, timeout=10
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "https://objects.example.org/bucket/key?X-Sig=abc"


def test_location_uses_host_client_sent(proxy: ProxyProcess) -> None:
    response = requests.get(
        f"http://localhost:{proxy.port}/api/catalogue/stac/redirect",
        allow_redirects=False,
        timeout=10,
    )
    assert response.headers["Location"] == f"http://localhost:{proxy.port}/api/catalogue/stac/"


def test_created_job_location_followed_by_requests(proxy: ProxyProcess) -> None:
    base = f"{proxy.url}{USER_CATALOGS}/alpha-ws"
    created = requests.post(
        f"{base}/processes/echo/execution",
        json={"inputs": {"workspace": "alpha-ws"}},
        headers={"Prefer": "respond-async"},
        timeout=10,
    )
    assert created.status_code == 201
    location = created.headers["Location"]
    assert location.startswith(f"{base}/jobs/")
    status = requests.get(location, timeout=10)
    assert status.status_code == 200
    assert status.json()["jobID"] == created.json()["jobID"]


def test_compressed_body_passes_untouched(proxy: ProxyProcess) -> None:
    import gzip

    response = requests.get(
        f"{proxy.url}/api/catalogue/stac/gzip?type=text/csv", stream=True, timeout=10
    )
    assert response.headers["Content-Encoding"] == "gzip"
    raw = response.raw.read(decode_content=False)
    assert gzip.decompress(raw) == b'{"hello": "world"}'


def test_curl_through_proxy(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    result = subprocess.run(
        ["curl", "-sS", "-f", f"{proxy.url}{USER_CATALOGS}/beta-ws/processes"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["processes"][0]["id"] == "echo"
    assert last(upstream).headers["Authorization"] == [f"Bearer {TOKENS['beta-ws']}"]


def test_access_line_per_request(proxy: ProxyProcess) -> None:
    requests.get(f"{proxy.url}{USER_CATALOGS}/beta-ws/download?size=777", timeout=10)
    # The access line is written after the body is sent, so it may lag the response.
    line = proxy.wait_for_line("/beta-ws/download")
    assert '"GET ' in line
    assert "?size" not in line
    assert " beta-ws 200 777B " in line
    assert line.endswith("ms")


def test_access_line_counts_error_body(proxy: ProxyProcess) -> None:
    """The proxy's own error responses are logged with the size of the body they sent."""
    response = requests.get(f"{proxy.url}{USER_CATALOGS}/gamma-ws/logged-error", timeout=10)
    assert response.status_code == 403
    line = proxy.wait_for_line("/gamma-ws/logged-error")
    assert f" gamma-ws 403 {len(response.content)}B " in line


def test_error_bodies_hold_no_token(proxy: ProxyProcess) -> None:
    for path in ("/gamma-ws/processes", "/alpha-ws/../x", "/alpha-ws/processes/missing"):
        response = requests.get(f"{proxy.url}{USER_CATALOGS}{path}", timeout=10)
        for token in TOKENS.values():
            assert token not in response.text
            assert token not in str(response.headers)


def test_expect_continue_answered_before_body(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    """The proxy sends 100 Continue itself once it has accepted the request, then relays the body."""
    import socket

    head = (
        f"POST {USER_CATALOGS}/alpha-ws/upload HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(head)
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert json.loads(response_body(reply))["size"] == 5
