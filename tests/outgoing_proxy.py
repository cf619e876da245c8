"""A small HTTP forward proxy on loopback, standing in for a corporate proxy.

It forwards absolute-form requests (`GET http://host:port/path`) and tunnels
`CONNECT host:port`, and records each request line it receives. It never resolves
a host name: it connects only to the addresses in its `hosts` table, and returns
502 for any other host. It runs on its own event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlsplit


class OutgoingProxy:
    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts
        self.request_lines: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OutgoingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, _, header_block = head.decode("latin-1").partition("\r\n")
            self.request_lines.append(request_line)
            method, target, version = request_line.split(" ")
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                path = None
            else:
                parts = urlsplit(target)
                host, port = parts.hostname or "", str(parts.port or 80)
                # The origin-form target is the rest of the absolute URL, byte for byte.
                path = target[len(f"{parts.scheme}://{parts.netloc}"):] or "/"
            address = self.hosts.get(host)
            if address is None:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                writer.close()
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(address, int(port))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            writer.close()
            return

        if path is None:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            # One request per connection, so every request line is seen and recorded.
            headers = [
                line
                for line in header_block.split("\r\n")
                if line and line.split(":", 1)[0].strip().lower()
                not in ("connection", "proxy-connection", "keep-alive")
            ]
            forwarded = f"{method} {path} {version}\r\n" + "".join(
                f"{line}\r\n" for line in headers
            )
            upstream_writer.write((forwarded + "Connection: close\r\n\r\n").encode("latin-1"))
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
