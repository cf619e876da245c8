"""Host, origin and method guards, driven with raw bytes against a running proxy."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from proxy.guards import HostPolicy, listen_host_names
from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess, stop_proxy
from tests.rawhttp import build, exchange, received_since
from tests.upstream import TOKENS, UpstreamServer

ECHO = f"{USER_CATALOGS}/alpha-ws/echo"


def get(target: str, *headers: str, method: str = "GET") -> bytes:
    return build(f"{method} {target} HTTP/1.1", *headers, "Connection: close")


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "localhost@evil.example",
        "evil.example/localhost",
        "127.0.0.2",
        "[::2]",
        "localhost:99999",
        "",
    ],
)
def test_foreign_host_rejected(proxy: ProxyProcess, upstream: UpstreamServer, host: str) -> None:
    before = len(upstream.state.received)
    reply = exchange(proxy.port, get(ECHO, f"Host: {host}"))
    assert reply.status == 421, reply.raw[:300]
    assert reply.header("Content-Type") == ["application/problem+json"]
    assert received_since(upstream, before) == []


def test_missing_host_rejected(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    before = len(upstream.state.received)
    reply = exchange(proxy.port, build(f"GET {ECHO} HTTP/1.0"))
    assert reply.status == 421, reply.raw[:300]
    assert received_since(upstream, before) == []


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST:1234", "ws1.localhost", "127.0.0.1", "127.0.0.1:8080", "[::1]:80",
     "[0:0:0:0:0:0:0:1]"],
)
def test_default_hosts_accepted(proxy: ProxyProcess, upstream: UpstreamServer, host: str) -> None:
    reply = exchange(proxy.port, get(ECHO, f"Host: {host}"))
    assert reply.status == 200, reply.raw[:300]
    assert upstream.state.received[-1].headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        get(ECHO, "Host: evil.example", "Origin: http://evil.example"),
        get(ECHO, "Host: evil.example", "Upgrade: websocket", "Connection: Upgrade"),
        get(ECHO, "Host: evil.example", "Transfer-Encoding: gzip, chunked"),
        get(f"{USER_CATALOGS}/alpha-ws/../beta-ws/echo", "Host: evil.example"),
        get(f"{USER_CATALOGS}/gamma-ws/echo", "Host: evil.example"),
        build("CONNECT localhost:443 HTTP/1.1", "Host: evil.example"),
    ],
    ids=["origin", "upgrade", "framing", "path", "no-token", "connect"],
)
def test_host_checked_before_anything_else(
    proxy: ProxyProcess, upstream: UpstreamServer, request_bytes: bytes
) -> None:
    before = len(upstream.state.received)
    reply = exchange(proxy.port, request_bytes)
    assert reply.status == 421, reply.raw[:300]
    assert received_since(upstream, before) == []


def test_foreign_host_connection_closed(proxy: ProxyProcess) -> None:
    reply = exchange(proxy.port, build(f"GET {ECHO} HTTP/1.1", "Host: evil.example"))
    assert reply.status == 421
    assert reply.closed


@pytest.mark.parametrize("host", ["gateway.example.org", "GATEWAY.example.org:443", "a.corp.example"])
def test_allowed_hosts_extend_defaults(
    browser_proxy: ProxyProcess, upstream: UpstreamServer, host: str
) -> None:
    reply = exchange(browser_proxy.port, get(ECHO, f"Host: {host}"))
    assert reply.status == 200, reply.raw[:300]


@pytest.mark.parametrize("host", ["corp.example", "example.org", "gateway.example.org.evil"])
def test_allowed_hosts_match_exactly(
    browser_proxy: ProxyProcess, upstream: UpstreamServer, host: str
) -> None:
    reply = exchange(browser_proxy.port, get(ECHO, f"Host: {host}"))
    assert reply.status == 421, reply.raw[:300]


def test_listen_address_is_allowed_host(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    process = ProxyProcess(
        ["serve", "--listen", "127.0.0.5:0", "--upstream", upstream.origin,
         "--vault", str(vault_file)],
        env=isolated_env,
    ).wait_ready()
    try:
        reply = exchange(process.port, get(ECHO, f"Host: 127.0.0.5:{process.port}"), host="127.0.0.5")
        other = exchange(process.port, get(ECHO, "Host: 127.0.0.6"), host="127.0.0.5")
    finally:
        stop_proxy(process)
    assert reply.status == 200, reply.raw[:300]
    assert other.status == 421


def test_wildcard_listen_address_adds_no_host() -> None:
    assert listen_host_names("::1") == ("[::1]",)
    assert listen_host_names("0.0.0.0") == ()
    assert listen_host_names("::") == ()
    assert HostPolicy(allowed_hosts=listen_host_names("::1")).host_allowed("[0:0::1]")


@pytest.mark.parametrize(
    "headers",
    [
        ("Origin: http://evil.example",),
        ("Origin: null",),
        ("Origin: https://localhost",),
        ("Origin: http://localhost:3000",),
        ("Origin: http://localhost", "Origin: http://evil.example"),
        ("Sec-Fetch-Site: cross-site",),
        ("Sec-Fetch-Site: same-site",),
        ("Sec-Fetch-Site: same-origin", "Sec-Fetch-Site: cross-site"),
    ],
)
def test_cross_site_request_rejected(
    proxy: ProxyProcess, upstream: UpstreamServer, headers: tuple[str, ...]
) -> None:
    """A form post from another site must not start a workflow in the user's workspace."""
    before = len(upstream.state.received)
    body = b"inputs=x"
    reply = exchange(
        proxy.port,
        build(
            f"POST {USER_CATALOGS}/alpha-ws/processes/echo/execution HTTP/1.1",
            "Host: localhost",
            *headers,
            "Content-Type: application/x-www-form-urlencoded",
            f"Content-Length: {len(body)}",
            "Connection: close",
            body=body,
        ),
    )
    assert reply.status == 403, reply.raw[:300]
    assert reply.header("Content-Type") == ["application/problem+json"]
    assert received_since(upstream, before) == []


@pytest.mark.parametrize(
    "headers",
    [
        ("Origin: http://localhost",),
        ("Origin: HTTP://LOCALHOST",),
        ("Sec-Fetch-Site: same-origin",),
        ("Sec-Fetch-Site: none",),
        (),
    ],
)
def test_same_origin_request_accepted(
    proxy: ProxyProcess, upstream: UpstreamServer, headers: tuple[str, ...]
) -> None:
    reply = exchange(proxy.port, get(ECHO, "Host: localhost", *headers))
    assert reply.status == 200, reply.raw[:300]


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
def test_trace_and_connect_rejected(
    proxy: ProxyProcess, upstream: UpstreamServer, method: str
) -> None:
    """TRACE would echo the Authorization header back; CONNECT would open a tunnel."""
    before = len(upstream.state.received)
    target = "localhost:443" if method == "CONNECT" else ECHO
    reply = exchange(proxy.port, build(f"{method} {target} HTTP/1.1", "Host: localhost"))
    assert reply.status == 405, reply.raw[:300]
    assert reply.closed
    assert received_since(upstream, before) == []
    for token in TOKENS.values():
        assert token.encode() not in reply.raw


def test_absolute_form_never_connects_elsewhere(
    proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    with socket.socket() as elsewhere:
        elsewhere.bind(("127.0.0.1", 0))
        elsewhere.listen(8)
        elsewhere.setblocking(False)
        port = elsewhere.getsockname()[1]
        before = len(upstream.state.received)
        for target in (
            f"http://127.0.0.1:{port}{ECHO}",
            f"http://localhost{ECHO}",
            f"https://127.0.0.1:{port}{ECHO}",
            f"//127.0.0.1:{port}{ECHO}",
        ):
            reply = exchange(proxy.port, get(target, f"Host: 127.0.0.1:{port}"))
            assert reply.status == 400, (target, reply.raw[:300])
        with pytest.raises(BlockingIOError):
            elsewhere.accept()
    assert received_since(upstream, before) == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        get(f"{ECHO}\rX-Injected: 1", "Host: localhost"),
        get(f"{ECHO}\nX-Injected: 1", "Host: localhost"),
        get(f"{ECHO}\x00", "Host: localhost"),
        get(f"{ECHO}%0d%0aX-Injected:%201", "Host: localhost"),
        get(f"{ECHO}?q=%0d%0aX-Injected:%201\r\nX-Injected: 2", "Host: localhost"),
        get(ECHO, "Host: localhost", "X-A: a\rX-Injected: 1"),
        get(ECHO, "Host: localhost", "X-A: a\nX-Injected: 1"),
        get(ECHO, "Host: localhost", "X-A: a\x00b"),
        get(ECHO, "Host: localhost", "X-A: a", " X-Injected: 1"),
        get(ECHO, "Host: localhost", "X-A\r\n: 1"),
        get(ECHO, "Host: localhost\x00evil.example"),
    ],
    ids=[
        "cr-in-target", "lf-in-target", "nul-in-target", "encoded-crlf-in-path",
        "crlf-after-query", "cr-in-value", "lf-in-value", "nul-in-value", "obs-fold",
        "crlf-in-name", "nul-in-host",
    ],
)
def test_control_characters_never_split_headers(
    proxy: ProxyProcess, upstream: UpstreamServer, request_bytes: bytes
) -> None:
    before = len(upstream.state.received)
    reply = exchange(proxy.port, request_bytes)
    # A bare LF can end the request line early, which aiohttp reads as HTTP/0.9: 505.
    assert reply.status in (400, 421, 505), reply.raw[:300]
    assert reply.closed
    assert received_since(upstream, before) == []
