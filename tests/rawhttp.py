"""Raw HTTP/1.x over a loopback socket, so no client library tidies the request.

`exchange` sends bytes exactly as given, reads one response and then reports
whether the server closed the connection after it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from tests.upstream import UpstreamServer


@dataclass
class Reply:
    """One response as it came off the socket."""

    status: int | None
    """None when the server closed the connection without a status line."""
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    closed: bool
    """The server closed the connection after this response."""

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


def build(line: str, *headers: str, body: bytes = b"") -> bytes:
    """Join a request line and header lines with CRLF; the text is sent as Latin-1 bytes."""
    head = line + "\r\n" + "".join(header + "\r\n" for header in headers) + "\r\n"
    return head.encode("latin-1") + body


def exchange(port: int, data: bytes, *, timeout: float = 10, host: str = "127.0.0.1") -> Reply:
    """Send `data` to host:port, read one response, and tell whether the server closes.

    The close check waits up to `timeout` seconds for end of file, so a test that
    expects the connection to stay open should send `Connection: close` instead.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_reply(sock)


def read_reply(sock: socket.socket) -> Reply:
    """Read one final response (skipping 1xx) from `sock`, then wait for the server to close."""
    buffer = b""
    eof = False
    while True:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            chunk = _recv(sock)
            if not chunk:
                return Reply(None, [], b"", buffer, closed=True)
            buffer += chunk
            continue
        status, headers = _parse_head(buffer[:head_end])
        if status is not None and 100 <= status < 200:
            buffer = buffer[head_end + 4 :]
            continue
        break

    raw_head = buffer[: head_end + 4]
    body = buffer[head_end + 4 :]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
    chunked = any(
        k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers
    )
    while not _body_complete(body, length, chunked):
        chunk = _recv(sock)
        if not chunk:
            eof = True
            break
        body += chunk
    raw = raw_head + body
    if chunked:
        body = _dechunk(body)
    if not eof:
        try:
            eof = _recv(sock) == b""
        except TimeoutError:
            eof = False
    return Reply(status, headers, body, raw, closed=eof)


def _body_complete(body: bytes, length: int | None, chunked: bool) -> bool:
    if chunked:
        return body.startswith(b"0\r\n\r\n") or b"\r\n0\r\n\r\n" in body
    return length is not None and len(body) >= length


def _dechunk(body: bytes) -> bytes:
    """Return the data of a chunked body (trailers are not expected and are dropped)."""
    data = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        data += body[:size]
        body = body[size + 2 :]
    return data


def _recv(sock: socket.socket) -> bytes:
    """Return the next bytes, or b"" at end of file or on a reset; a timeout raises."""
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def _parse_head(head: bytes) -> tuple[int | None, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return status, headers


def received_since(upstream: UpstreamServer, count: int) -> list[str]:
    """Return method and raw target of each request the upstream received after the first `count`."""
    return [f"{r.method} {r.raw_path}" for r in upstream.state.received[count:]]
