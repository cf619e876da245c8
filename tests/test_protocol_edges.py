"""Message framing, protocol upgrades and 100-continue, driven with raw bytes.

Every ambiguous request must get 400 with the connection closed and
nothing sent upstream, whichever of aiohttp's two parsers is in use: the C
parser (the default) or the pure-Python one (AIOHTTP_NO_EXTENSIONS=1).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess, raw_request, serve_proxy, stop_proxy
from tests.rawhttp import Reply, build, exchange, read_reply, received_since
from tests.upstream import UPLOAD_STARTED, UPLOADS, UpstreamServer

UPLOAD = f"{USER_CATALOGS}/alpha-ws/upload"
ECHO = f"{USER_CATALOGS}/alpha-ws/echo"
SMUGGLED = f"GET {USER_CATALOGS}/beta-ws/echo HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def post(*headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    return build(f"POST {UPLOAD} {version}", "Host: localhost", *headers, body=body)


# Each case carries a second request behind it: if the proxy read the first
# body with the wrong length, that request would reach the upstream.
AMBIGUOUS_HEADERS = {
    "length-and-chunked": post(
        "Content-Length: 5", "Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED
    ),
    "chunked-and-length": post(
        "Transfer-Encoding: chunked", "Content-Length: 30", body=b"0\r\n\r\n" + SMUGGLED
    ),
    "two-lengths": post("Content-Length: 5", "Content-Length: 6", body=b"hello!" + SMUGGLED),
    "two-equal-lengths": post("Content-Length: 5", "Content-Length: 5", body=b"hello" + SMUGGLED),
    "length-list": post("Content-Length: 5, 5", body=b"hello" + SMUGGLED),
    "signed-length": post("Content-Length: +5", body=b"hello" + SMUGGLED),
    "hex-length": post("Content-Length: 0x5", body=b"hello" + SMUGGLED),
    "space-before-colon": post("Content-Length : 5", body=b"hello" + SMUGGLED),
    "obs-fold-length": post("Content-Length:", " 5", body=b"hello" + SMUGGLED),
    "gzip-then-chunked": post("Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n" + SMUGGLED),
    "chunked-then-gzip": post("Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n" + SMUGGLED),
    "identity": post("Transfer-Encoding: identity", body=b"0\r\n\r\n" + SMUGGLED),
    "two-chunked-headers": post(
        "Transfer-Encoding: chunked", "Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED
    ),
    "xchunked": post("Transfer-Encoding: xchunked", body=b"0\r\n\r\n" + SMUGGLED),
    "chunked-with-tab": post("Transfer-Encoding:\tchunked\t,", body=b"0\r\n\r\n" + SMUGGLED),
    "chunked-on-http-1.0": post(
        "Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED, version="HTTP/1.0"
    ),
    "http-version-9.9": post("Content-Length: 5", body=b"hello", version="HTTP/9.9"),
}

# Bad chunk framing is read by the C parser alone: the pure-Python parser
# accepts some of these (a chunk size longer than 64 bits, say) and then waits
# for the body it announced.
AMBIGUOUS_CHUNKS = {
    "chunk-size-not-hex": post("Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-0x": post("Transfer-Encoding: chunked", body=b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-negative": post("Transfer-Encoding: chunked", body=b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-overflow": post(
        "Transfer-Encoding: chunked", body=b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk-size-mismatch": post("Transfer-Encoding: chunked", body=b"4\r\nhello\r\n0\r\n\r\n"),
    "chunk-bare-lf": post("Transfer-Encoding: chunked", body=b"5\nhello\n0\n\n" + SMUGGLED),
}


@pytest.fixture(scope="module")
def pure_parser_proxy(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> Iterator[ProxyProcess]:
    """A proxy running aiohttp's pure-Python HTTP parser."""
    process = serve_proxy(upstream, vault_file, {**isolated_env, "AIOHTTP_NO_EXTENSIONS": "1"})
    yield process
    stop_proxy(process)


@pytest.mark.parametrize("method", ["TRACE", "TRACK", "trace", "track"])
def test_trace_methods_rejected_by_pure_parser(
    pure_parser_proxy: ProxyProcess, upstream: UpstreamServer, method: str
) -> None:
    """The pure-Python parser accepts any method token, so the proxy's own check returns 405.

    The C parser already rejects TRACK and lower-case methods with 400.
    """
    before = len(upstream.state.received)
    reply = exchange(pure_parser_proxy.port, build(f"{method} {ECHO} HTTP/1.1", "Host: localhost"))
    assert reply.status == 405, reply.raw[:300]
    assert reply.closed
    assert received_since(upstream, before) == []


@pytest.mark.parametrize("method", ["TRACK", "trace"])
def test_trace_variants_rejected(
    proxy: ProxyProcess, upstream: UpstreamServer, method: str
) -> None:
    before = len(upstream.state.received)
    reply = exchange(proxy.port, build(f"{method} {ECHO} HTTP/1.1", "Host: localhost"))
    assert reply.status in (400, 405), reply.raw[:300]
    assert received_since(upstream, before) == []


# The status each request-line version gets: aiohttp 3.14's C parser (llhttp)
# reads only HTTP/0.9, 1.0, 1.1 and 2.0, and answers 400 for every other
# version; its pure-Python parser reads any "HTTP/<digit>.<digit>". The proxy's
# own version check answers 505 for a version a parser read but the proxy does not serve.
VERSION_STATUSES = {
    "HTTP/1.1": (200, 200),
    "HTTP/1.0": (200, 200),
    "HTTP/0.9": (505, 505),
    "HTTP/2.0": (505, 505),
    "HTTP/1.2": (400, 505),
    "HTTP/3.0": (400, 505),
    "HTTP/2": (400, 400),
    "HTTP/1.10": (400, 400),
    "http/1.1": (400, 400),
}


@pytest.mark.parametrize("version", list(VERSION_STATUSES))
def test_http_version_status_by_parser(
    proxy: ProxyProcess, pure_parser_proxy: ProxyProcess, upstream: UpstreamServer, version: str
) -> None:
    before = len(upstream.state.received)
    request = build(f"GET {ECHO} {version}", "Host: localhost", "Connection: close")
    c_status, pure_status = VERSION_STATUSES[version]

    c_reply = exchange(proxy.port, request)
    pure_reply = exchange(pure_parser_proxy.port, request)

    assert c_reply.status == c_status, c_reply.raw[:300]
    assert pure_reply.status == pure_status, pure_reply.raw[:300]
    assert c_reply.closed
    assert pure_reply.closed
    if c_status != 200:
        assert received_since(upstream, before) == []


def assert_rejected_untouched(reply_status: int | None, closed: bool, sent: list[str]) -> None:
    assert reply_status in (400, 505)
    assert closed
    assert sent == []


@pytest.mark.parametrize("name", sorted(AMBIGUOUS_HEADERS))
def test_ambiguous_framing_rejected(
    proxy: ProxyProcess, upstream: UpstreamServer, name: str
) -> None:
    before = len(upstream.state.received)
    reply = exchange(proxy.port, AMBIGUOUS_HEADERS[name])
    assert_rejected_untouched(reply.status, reply.closed, received_since(upstream, before))


@pytest.mark.parametrize("name", sorted(AMBIGUOUS_HEADERS))
def test_ambiguous_framing_rejected_by_pure_parser(
    pure_parser_proxy: ProxyProcess, upstream: UpstreamServer, name: str
) -> None:
    before = len(upstream.state.received)
    reply = exchange(pure_parser_proxy.port, AMBIGUOUS_HEADERS[name])
    assert_rejected_untouched(reply.status, reply.closed, received_since(upstream, before))


def test_rejected_framing_closes_before_body_ends(
    proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    """The proxy does not read on through a body whose end it cannot know."""
    before = len(upstream.state.received)
    unfinished = post("Transfer-Encoding: gzip, chunked", body=b"5\r\nhello\r\n")
    # aiohttp would otherwise read and discard a pending body for 10 s before closing.
    reply = exchange(proxy.port, unfinished, timeout=5)
    assert reply.status == 400
    assert reply.closed
    assert received_since(upstream, before) == []


@pytest.mark.parametrize("name", sorted(AMBIGUOUS_CHUNKS))
def test_bad_chunk_rejected(proxy: ProxyProcess, upstream: UpstreamServer, name: str) -> None:
    before = len(upstream.state.received)
    completed = len(upstream.app[UPLOADS])
    reply = exchange(proxy.port, AMBIGUOUS_CHUNKS[name])
    assert reply.status == 400, reply.raw[:300]
    assert reply.closed
    # The body is streamed, so the upstream may have seen the request start.
    # It must never see a complete one, nor the request hidden behind it.
    sent = received_since(upstream, before)
    assert not any("beta-ws" in line for line in sent)
    assert len(upstream.app[UPLOADS]) == completed


@pytest.mark.parametrize("parser", ["proxy", "pure_parser_proxy"])
def test_bad_chunk_mid_upload_aborts_upstream(
    request: pytest.FixtureRequest, upstream: UpstreamServer, parser: str
) -> None:
    """A malformed chunk after a good one: 400 to the client, an incomplete body upstream."""
    proxy: ProxyProcess = request.getfixturevalue(parser)
    started = upstream.app[UPLOAD_STARTED]
    started.clear()
    completed = len(upstream.app[UPLOADS])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(post("Transfer-Encoding: chunked", body=b"5\r\nhello\r\n"))
        assert started.wait(10), "the upload never reached the upstream"
        sock.sendall(b"zz\r\nworld\r\n0\r\n\r\n")
        reply = read_reply(sock)
    assert reply.status == 400, reply.raw[:300]
    assert reply.closed
    assert len(upstream.app[UPLOADS]) == completed


def test_chunked_trailer_not_forwarded(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    """A trailer field cannot add a header, such as Authorization, to the upstream request."""
    reply = exchange(
        proxy.port,
        build(
            f"POST {ECHO} HTTP/1.1",
            "Host: localhost",
            "Transfer-Encoding: chunked",
            "Trailer: Authorization",
            "Connection: close",
            body=b"5\r\nhello\r\n0\r\nAuthorization: Bearer injected\r\nX-Injected: 1\r\n\r\n",
        ),
    )
    assert reply.status == 200, reply.raw[:300]
    headers = dict(json.loads(reply.body)["headers"])
    assert headers["Authorization"] != "Bearer injected"
    assert "X-Injected" not in headers


@pytest.mark.parametrize(
    "upgrade",
    [
        ("Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="),
        ("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__"),
        ("Upgrade: websocket",),
    ],
    ids=["websocket", "h2c", "upgrade-without-connection"],
)
def test_upgrade_refused_and_closed(
    proxy: ProxyProcess, upstream: UpstreamServer, upgrade: tuple[str, ...]
) -> None:
    before = len(upstream.state.received)
    reply = exchange(
        proxy.port, build(f"GET {ECHO} HTTP/1.1", "Host: localhost", *upgrade) + SMUGGLED
    )
    assert reply.status == 501, reply.raw[:300]
    assert reply.header("Content-Type") == ["application/problem+json"]
    assert reply.closed
    assert received_since(upstream, before) == []


def test_refused_upgrade_never_becomes_tunnel(
    proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    """Bytes sent after a refused upgrade go nowhere: not upstream, not back as a reply."""
    before = len(upstream.state.received)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            build(f"GET {ECHO} HTTP/1.1", "Host: localhost", "Connection: Upgrade",
                  "Upgrade: websocket")
        )
        reply = read_reply(sock)
        assert reply.status == 501
        assert reply.closed
        try:
            sock.sendall(b"\x81\x05hello" + SMUGGLED)
            after = sock.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            after = b""
    assert after == b""
    assert received_since(upstream, before) == []


def continue_exchange(port: int, head: bytes, body: bytes) -> tuple[bytes, Reply | None]:
    """Send `head`, read what comes first, send `body` only after a 100, and read the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        first = sock.recv(65536)
        reply = None
        if first.startswith(b"HTTP/1.1 100 "):
            sock.sendall(body)
            reply = read_reply(sock)
    return first, reply


@pytest.mark.parametrize(
    "head",
    [
        post("Host: evil.example", "Content-Length: 5", "Expect: 100-continue"),
        post("Origin: http://evil.example", "Content-Length: 5", "Expect: 100-continue"),
        build(f"POST {USER_CATALOGS}/gamma-ws/upload HTTP/1.1", "Host: localhost",
              "Content-Length: 5", "Expect: 100-continue"),
        build(f"POST {USER_CATALOGS}/alpha-ws/../beta-ws/upload HTTP/1.1", "Host: localhost",
              "Content-Length: 5", "Expect: 100-continue"),
    ],
    ids=["host", "origin", "no-token", "path"],
)
def test_refused_upload_never_gets_continue(
    proxy: ProxyProcess, upstream: UpstreamServer, head: bytes
) -> None:
    before = len(upstream.state.received)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(head)
        reply = read_reply(sock)
    assert reply.status in (400, 403, 421), reply.raw[:300]
    assert not reply.raw.startswith(b"HTTP/1.1 100")
    assert reply.closed
    assert received_since(upstream, before) == []


def test_accepted_upload_gets_continue(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    first, reply = continue_exchange(
        proxy.port,
        post("Content-Length: 5", "Expect: 100-continue", "Connection: close"),
        b"hello",
    )
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert reply is not None
    assert reply.status == 200, reply.raw[:300]
    assert json.loads(reply.body)["size"] == 5
    assert "Expect" not in upstream.state.received[-1].headers


async def aiohttp_upload(url: str) -> tuple[int, int]:
    """Upload 4 KiB with aiohttp's client, which sends no body before a 100 Continue.

    Return the status and, for a 200, the size the upstream received, or else
    the number of 1 KiB chunks the client sent.
    """
    sent = 0

    async def body() -> object:
        nonlocal sent
        for _ in range(4):
            sent += 1
            yield b"x" * 1024

    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body(), expect100=True) as response,
    ):
        if response.status == 200:
            return response.status, (await response.json())["size"]
        return response.status, sent


def test_aiohttp_client_expect_continue(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    import asyncio

    status, size = asyncio.run(aiohttp_upload(f"{proxy.url}{UPLOAD}"))
    assert status == 200
    assert size == 4096
    before = len(upstream.state.received)
    status, chunks_sent = asyncio.run(aiohttp_upload(f"{proxy.url}{USER_CATALOGS}/gamma-ws/upload"))
    assert status == 403
    assert chunks_sent == 0
    assert received_since(upstream, before) == []


class SwitchingUpstream:
    """A raw upstream that answers every request with `101 Switching Protocols`.

    It records each request head, and whatever arrives on that connection after
    the 101 until the proxy closes it; `closed` is released once per connection
    the proxy closes.
    """

    RESPONSE = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.origin = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.heads: list[bytes] = []
        self.after_switch: list[bytes] = []
        self.closed = threading.Semaphore(0)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._listener.accept()
                with connection:
                    self._switch(connection)

    def _switch(self, connection: socket.socket) -> None:
        connection.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        self.heads.append(head)
        connection.sendall(self.RESPONSE)
        received = rest
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except OSError:
            return  # Timed out: the proxy left the connection open.
        self.after_switch.append(received)
        self.closed.release()

    def stop(self) -> None:
        self._listener.close()


@pytest.fixture
def switching_upstream() -> Iterator[SwitchingUpstream]:
    server = SwitchingUpstream()
    yield server
    server.stop()


def test_upstream_101_becomes_502(
    switching_upstream: SwitchingUpstream, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    """Two requests on one connection: each gets 502, and neither turns into a tunnel."""
    proxy = ProxyProcess(
        ["serve", "--listen", "127.0.0.1:0", "--upstream", switching_upstream.origin,
         "--vault", str(vault_file)],
        env=isolated_env,
    ).wait_ready()
    try:
        replies = raw_request(
            proxy.port,
            build(f"GET {ECHO} HTTP/1.1", "Host: localhost")
            + build(f"GET {ECHO}?second HTTP/1.1", "Host: localhost", "Connection: close"),
        )
        upstream_closed = [switching_upstream.closed.acquire(timeout=10) for _ in range(2)]
    finally:
        stop_proxy(proxy)

    assert replies.count(b"HTTP/1.1 502 Bad Gateway\r\n") == 2
    assert b"HTTP/1.1 101" not in replies
    assert b"sent status 101 to a request that asked for no protocol switch" in replies
    assert upstream_closed == [True, True]
    assert switching_upstream.after_switch == [b"", b""]
    assert len(switching_upstream.heads) == 2
