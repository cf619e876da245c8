"""The tests' upstream: the package's stand-in EODH API, extended with routes for
streaming, failures and header edge cases, run on loopback in a background thread."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
import ssl
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from proxy import standin
from proxy.standin import STANDIN_KEY, StandIn
from proxy.standin_files import build_files_app

TOKENS = {
    "alpha-ws": "alpha-token-0123456789abcdef",
    "beta-ws": "beta-token-fedcba9876543210",
    "gamma-ws": "gamma-token-5555aaaa5555aaaa",
}
PUBLIC = "/api/catalogue/stac"
BLOCK = bytes(range(256)) * 256  # 64 KiB of a known pattern
UPLOADS = web.AppKey("uploads", list)
"""Sizes of the uploads `_upload` read to their end."""
UPLOAD_STARTED = web.AppKey("upload_started", threading.Event)
"""Set when `_upload` starts reading a body."""


async def _echo(request: web.Request) -> web.Response:
    """Return what arrived: method, raw target and every header, duplicates kept."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[name, value] for name, value in request.headers.items()],
            "body_size": len(body),
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
        }
    )


async def _download(request: web.Request) -> web.StreamResponse:
    """Stream `size` bytes of a repeating pattern, with a Content-Length.

    With `framing=chunked` the body is sent chunked, with no Content-Length.
    """
    size = int(request.query["size"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("framing") == "chunked":
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(request)
    remaining = size if request.method != "HEAD" else 0
    while remaining:
        chunk = BLOCK[: min(remaining, len(BLOCK))]
        await response.write(chunk)
        remaining -= len(chunk)
    await response.write_eof()
    return response


async def _upload(request: web.Request) -> web.Response:
    """Read the body as a stream and return its size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    request.app[UPLOAD_STARTED].set()
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    request.app[UPLOADS].append(size)
    return web.json_response(
        {
            "size": size,
            "sha256": digest.hexdigest(),
            "content_length": request.headers.get("Content-Length"),
            "transfer_encoding": request.headers.get("Transfer-Encoding"),
        }
    )


async def _break_off(request: web.Request) -> web.StreamResponse:
    """Promise 1 MiB, send 100 KiB, then drop the connection.

    With `framing=chunked` the body is chunked instead. With `end=stall` the
    connection stays open and silent instead of being dropped.
    """
    response = web.StreamResponse()
    if request.query.get("framing") == "chunked":
        response.enable_chunked_encoding()
    else:
        response.content_length = 1024 * 1024
    await response.prepare(request)
    await response.write(b"x" * 100 * 1024)
    if request.query.get("end") == "stall":
        await asyncio.Event().wait()
    assert request.transport is not None
    request.transport.abort()
    return response


async def _silent(request: web.Request) -> web.Response:
    """Never answer (until the test ends)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


@dataclass
class Watch:
    """How one request to the `watched` route ended, seen from the upstream.

    The handler runs on the server's thread; a test waits on the events.
    """

    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    outcome: str = ""


WATCHES_KEY = web.AppKey("watches", dict[str, Watch])


async def _watched(request: web.Request) -> web.Response:
    """Read the body (or, for GET, wait forever) and record how the request ended.

    The outcome is "read N bytes", "read failed: ERROR" or "cancelled". Only a server
    that cancels handlers when the connection closes can record "cancelled".
    """
    watch = request.app[WATCHES_KEY][request.match_info["name"]]
    watch.started.set()
    try:
        if request.method == "GET":
            await asyncio.Event().wait()
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        watch.outcome = f"read {size} bytes"
        return web.Response(text=watch.outcome)
    except asyncio.CancelledError:
        watch.outcome = "cancelled"
        raise
    except (ConnectionError, aiohttp.ClientPayloadError) as error:
        watch.outcome = f"read failed: {type(error).__name__}"
        raise
    finally:
        watch.ended.set()


async def _headers(request: web.Request) -> web.Response:
    response = web.Response(text="ok")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/")
    response.headers.add("X-Upstream", "yes")
    response.headers.add("Access-Control-Allow-Origin", "*")
    response.headers.add("Access-Control-Allow-Credentials", "true")
    response.headers.add("Access-Control-Allow-Private-Network", "true")
    response.headers["Connection"] = "X-Hop"
    response.headers["X-Hop"] = "dropped"
    return response


async def _redirect(request: web.Request) -> web.Response:
    state = request.app[STANDIN_KEY]
    target = request.query.get("to", "same")
    location = {
        "same": f"{state.origin}{PUBLIC}/",
        "other": "https://objects.example.org/bucket/key?X-Sig=abc",
        "relative": f"{PUBLIC}/",
    }[target]
    headers = {
        "Location": location,
        "Content-Location": f"{state.origin}/doc",
        "Link": f'<{location}>; rel="next", <page-2>; rel="prev"',
    }
    return web.Response(status=302, headers=headers)


async def _gzip(request: web.Request) -> web.Response:
    """A gzip-encoded body of the media type in `?type=` (JSON by default).

    With `?corrupt=1` the compressed data of a longer document is cut short halfway.
    """
    body = gzip.compress(b'{"hello": "world"}')
    if request.query.get("corrupt") == "1":
        longer = gzip.compress(b'{"hello": "world"}' * 1000)
        body = longer[: len(longer) // 2]
    content_type = request.query.get("type", "application/json")
    return web.Response(
        body=body, headers={"Content-Encoding": "gzip", "Content-Type": content_type}
    )


def links_document(origin: str) -> bytes:
    """A JSON document linking to `origin` the ways the platform does, plus one foreign link."""
    return json.dumps(
        {
            "links": [
                {"rel": "self", "href": f"{origin}{PUBLIC}/links"},
                {"rel": "next", "href": f"{origin}{PUBLIC}/links?page=2&limit=10"},
                {"rel": "alternate", "href": "https://objects.example.org/bucket/key"},
                {"rel": "related", "href": f"{origin}:4430/elsewhere"},
            ],
            "root": origin,
        }
    ).encode()


_BYTE_RANGE = re.compile(r"bytes=([0-9]+)-([0-9]*)\Z")


def _range_response(request: web.Request, body: bytes, headers: dict[str, str]) -> web.Response:
    """Respond to a single `Range: bytes=A-B` as a server does: 206, or 416 past the end.

    A range is ignored (200, whole body) when `If-Range` does not match the strong `ETag`.
    """
    found = _BYTE_RANGE.match(request.headers.get("Range", ""))
    if_range = request.headers.get("If-Range")
    if found is None or (if_range is not None and if_range != headers.get("ETag")):
        return web.Response(body=body, headers=headers)
    first = int(found.group(1))
    last = min(int(found.group(2) or len(body) - 1), len(body) - 1)
    if first >= len(body):
        problem = json.dumps({"title": "Range not satisfiable", "status": 416}).encode()
        return web.Response(
            status=416,
            body=problem,
            headers={"Content-Type": "application/problem+json",
                     "Content-Range": f"bytes */{len(body)}"},
        )
    headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
    return web.Response(status=206, body=body[first : last + 1], headers=headers)


async def _links(request: web.Request) -> web.StreamResponse:
    """Serve `links_document` with `?type=`, `?encoding=` (gzip, deflate) and `?escaped=1`.

    A `Range` request gets part of the (encoded) body, whatever the method.
    """
    state = request.app[STANDIN_KEY]
    body = links_document(state.origin)
    if request.query.get("escaped") == "1":
        body = body.replace(b"/", b"\\/")
    encoding = request.query.get("encoding", "identity")
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "x-unknown":
        body = body[::-1]
    headers = {
        "Content-Type": request.query.get("type", "application/json"),
        "Link": f'<{state.origin}{PUBLIC}/links?page=2>; rel="next"',
        "ETag": '"v1"',
        "Content-MD5": "bm90LWNoZWNrZWQ=",
        "Accept-Ranges": "bytes",
    }
    if encoding != "identity":
        headers["Content-Encoding"] = encoding
    return _range_response(request, body, headers)


async def _mirror(request: web.Request) -> web.Response:
    """Return the request body as received, as octet-stream so the proxy leaves it alone.

    aiohttp decodes a request's `Content-Encoding` before the handler reads it.
    """
    body = b"".join([chunk async for chunk in request.content.iter_any()])
    headers = {
        "X-Received-Content-Length": request.headers.get("Content-Length", "-"),
        "X-Received-Transfer-Encoding": request.headers.get("Transfer-Encoding", "-"),
        "X-Received-Accept-Encoding": request.headers.get("Accept-Encoding", "-"),
    }
    return web.Response(body=body, content_type="application/octet-stream", headers=headers)


async def _big_json(request: web.Request) -> web.StreamResponse:
    """Stream a JSON array of about `size` bytes, full of links on the stand-in's origin."""
    state = request.app[STANDIN_KEY]
    size = int(request.query["size"])
    record = json.dumps({"rel": "item", "href": f"{state.origin}{PUBLIC}/items/0000"}).encode()
    block = b",".join([record] * 1000) + b","
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b"[")
    written = 0
    while written < size:
        await response.write(block)
        written += len(block)
    await response.write(record + b"]")
    await response.write_eof()
    return response


class Gate:
    """Holds requests to `/hold?gate=NAME` until the test opens it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.arrived = threading.Event()
        self._opened = asyncio.Event()
        self._loop = loop

    def open(self) -> None:
        self._loop.call_soon_threadsafe(self._opened.set)

    async def wait_open(self) -> None:
        await self._opened.wait()


GATES_KEY = web.AppKey("gates", dict[str, Gate])


async def _hold(request: web.Request) -> web.StreamResponse:
    """Wait for the named gate to open, then answer "released".

    With `?after=headers` the status line, headers and the first bytes go out
    before the wait, as for a download in progress. With `?after=status` only
    the status line and headers do, as for a long poll.
    """
    gate = request.app[GATES_KEY][request.query["gate"]]
    after = request.query.get("after")
    if after not in ("headers", "status"):
        gate.arrived.set()
        await gate.wait_open()
        return web.Response(text="released")
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.content_length = len(b"first, released") if after == "headers" else len(b"released")
    await response.prepare(request)
    if after == "headers":
        await response.write(b"first, ")
    gate.arrived.set()
    await gate.wait_open()
    await response.write(b"released")
    await response.write_eof()
    return response


def build_app() -> web.Application:
    app = standin.build_app(TOKENS)
    app[GATES_KEY] = {}
    app.router.add_get(standin.USER_CATALOGS + "/{ws}/hold", _hold)
    app[UPLOADS] = []
    app[UPLOAD_STARTED] = threading.Event()
    ws = standin.USER_CATALOGS + "/{ws}"
    for path in (ws + "/echo", ws + "/echo/{tail:.*}", "/echo/{tail:.*}", PUBLIC + "/echo"):
        app.router.add_route("*", path, _echo)
    app.router.add_get(ws + "/download", _download)
    app.router.add_route("*", ws + "/upload", _upload)
    app.router.add_get(ws + "/break-off", _break_off)
    app.router.add_get(ws + "/silent", _silent)
    app.router.add_route("*", ws + "/watched/{name}", _watched)
    app[WATCHES_KEY] = {}
    app.router.add_get(ws + "/headers", _headers)
    app.router.add_get(PUBLIC + "/redirect", _redirect)
    app.router.add_get(PUBLIC + "/gzip", _gzip)
    app.router.add_route("*", PUBLIC + "/links", _links)
    app.router.add_route("*", ws + "/mirror", _mirror)
    app.router.add_get(ws + "/big-json", _big_json)
    return app


async def _serve_on_loopback(
    app: web.Application,
    *,
    handler_cancellation: bool = False,
    host_name: str = "127.0.0.1",
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, str]:
    """Start `app` on a free loopback port and return its runner and its origin on `host_name`."""
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=0.5, handler_cancellation=handler_cancellation
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if ssl_context is not None else "http"
    return runner, f"{scheme}://{host_name}:{port}"


class UpstreamServer:
    """The extended stand-in, served from its own event loop in a background thread.

    It always listens on 127.0.0.1. `host_name` is the host in its origin (its own
    links), for tests that reach it by another name through an outgoing proxy.
    With `ssl_context` it serves HTTPS.
    """

    def __init__(
        self,
        make_app: Callable[[], web.Application] = build_app,
        *,
        handler_cancellation: bool = False,
        host_name: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._make_app = make_app
        self._handler_cancellation = handler_cancellation
        self._host_name = host_name
        self._ssl_context = ssl_context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._files_runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.origin = ""
        self.files_template = ""
        """The files host as a `--files-upstream` template: `http://127.0.0.1:PORT/{workspace}`."""

    @property
    def state(self) -> StandIn:
        assert self.app is not None
        return self.app[STANDIN_KEY]

    def start(self) -> UpstreamServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self.app = self._make_app()
        self._runner, self.origin = await _serve_on_loopback(
            self.app,
            handler_cancellation=self._handler_cancellation,
            host_name=self._host_name,
            ssl_context=self._ssl_context,
        )
        self.app[STANDIN_KEY].origin = self.origin

        files_app = build_files_app(self.app[STANDIN_KEY])
        self._files_runner, files_origin = await _serve_on_loopback(files_app)
        self.files_template = files_origin + "/{workspace}"
        self.app[STANDIN_KEY].files_template = self.files_template

    def gate(self, name: str) -> Gate:
        """Create a gate for requests to `.../<workspace>/hold?gate=<name>`."""
        assert self.app is not None
        gate = Gate(self._loop)
        self.app[GATES_KEY][name] = gate
        return gate

    @property
    def port(self) -> int:
        return int(self.origin.rsplit(":", 1)[1])

    def watch(self, name: str) -> Watch:
        """Register a `Watch` for requests to `<workspace>/watched/<name>`."""
        assert self.app is not None
        watch = Watch()
        self.app[WATCHES_KEY][name] = watch
        return watch

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run `function` on the server's loop and return its result."""
        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def stop(self) -> None:
        for runner in (self._runner, self._files_runner):
            if runner is not None:
                asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
