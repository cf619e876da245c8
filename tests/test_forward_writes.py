"""How the handler writes responses: headers together with the body where it can,
but never held back waiting for a body that has not arrived."""

from __future__ import annotations

import socket

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess
from tests.upstream import UpstreamServer


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_headers_sent_before_slow_body(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    gate = upstream.gate("headers-first")
    request = (
        f"GET {USER_CATALOGS}/alpha-ws/hold?gate=headers-first&after=status HTTP/1.1\r\n"
        "Host: localhost\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        try:
            sock.sendall(request)
            head = read_head(sock)
        except TimeoutError:
            head = b""
        finally:
            gate.open()
        rest = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"content-length: 8" in head.lower()
    assert b"released" not in head
    assert b"released" in head.split(b"\r\n\r\n", 1)[1] + rest


def test_small_response_complete(proxy: ProxyProcess) -> None:
    """A body that arrived whole is sent with the end of the response, once and complete."""
    request = (
        f"GET {USER_CATALOGS}/alpha-ws/download?size=3000 HTTP/1.1\r\n"
        "Host: localhost\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-length: 3000" in head.lower()
    assert body == bytes(range(256)) * 11 + bytes(range(184))

