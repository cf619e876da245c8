"""The request handler: checks, resolves and relays one request.

Each request goes through the same steps: guards (host, method, framing,
origin), the route (which workspace), the credential (which token), then the
upstream exchange with both bodies streamed. Everything up to the upstream
exchange is decided before the proxy sends `100 Continue` or reads a byte of
the body. A CORS preflight from an allowed origin gets its response after the
guards and goes no further: browsers send no credentials with a preflight.
Requests for `/_proxy/...` pass the same guards (and client credentials, except
for `healthz`), then go to `proxy.admin` instead of upstream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import StreamReader, web
from multidict import CIMultiDict

from proxy import cors, guards, routes
from proxy.admin import Admin, admin_path
from proxy.audit import AuditLog
from proxy.clients import Client
from proxy.credentials import choose_granted_credential
from proxy.errors import ProxyError, UpstreamBrokeOff, UpstreamError, UpstreamInvalid
from proxy.headers import (
    add_browser_safety_headers,
    client_response_headers,
    upstream_request_headers,
)
from proxy.health import TokenHealth
from proxy.links import (
    BUFFERED_REQUEST_MAX,
    Exchange,
    LinkTranslator,
    rewrite_stream,
    rewrite_whole,
)
from proxy.log import access_line, access_log, log
from proxy.metrics import NO_WORKSPACE, Metrics, ReloadCounts
from proxy.problem import problem_response
from proxy.settings import Settings
from proxy.upstream import Upstream, UpstreamResponse
from proxy.vault import Credential, VaultHolder

_CORS_ORIGIN = "cors_origin"


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything decided about a request before any of it is sent upstream."""

    route: routes.Route
    credential: Credential | None
    client_origin: str
    cors_origin: str | None
    links: Exchange
    client: Client | None = None
    """The gateway client that sent the request, or None when client credentials are off."""


@dataclass(slots=True)
class Relayed:
    """The status and body bytes sent to the client, kept for the access line.

    The relay fills it in as it goes, so it is still right when the relay ends
    with an exception after the status line was sent.
    """

    status: int | None = None
    sent: int = 0


class ProxyHandler:
    def __init__(
        self,
        settings: Settings,
        vaults: VaultHolder,
        upstream: Upstream,
        *,
        client_gate: guards.ClientGate | None = None,
        metrics: Metrics | None = None,
        health: TokenHealth | None = None,
        admin: Admin | None = None,
    ) -> None:
        self._vaults = vaults
        self._upstream = upstream
        self._upstream_origin = str(settings.upstream)
        # Without a gate from the server, credentials are still required whenever
        # the vault lists clients.
        self.client_gate = client_gate or guards.ClientGate(required_without_clients=False)
        self._metrics = metrics if metrics is not None else Metrics()
        self._health = health if health is not None else TokenHealth()
        self._admin = admin if admin is not None else Admin(
            vaults, self._health, self._metrics, ReloadCounts(), self._upstream_origin
        )
        self._idle = asyncio.Event()
        self._idle.set()
        self.audit: AuditLog | None = None
        self.apply_settings(settings)

    def apply_settings(self, settings: Settings) -> None:
        """Use `settings` for requests from now on (a config reload); the upstream stays."""
        self._settings = settings
        self._families = routes.parse_families(settings.routes)
        self._host_policy = guards.HostPolicy(
            settings.allowed_hosts + guards.listen_host_names(settings.listen_host),
            settings.allowed_origins,
        )
        self._links = LinkTranslator(
            self._upstream_origin, settings.files_upstream, enabled=settings.rewrite_links
        )

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        workspace = "-"
        label = NO_WORKSPACE  # The metrics label: a vault name, never taken from the path.
        is_admin = False
        in_flight = False
        response: web.StreamResponse | None = None
        relayed = Relayed()
        plan: Plan | None = None
        try:
            host, cors_origin = self.check_request(request)
            if cors_origin is not None and cors.is_preflight(request.method, request.headers):
                response = preflight_response(cors_origin, request)
                return response
            client = self.authenticate(request)
            rest = admin_path(request.raw_path)
            if rest is not None:
                is_admin = True
                response = await self._admin.handle(request, rest, client)
                add_browser_safety_headers(response.headers)
                relayed.sent = _sent_body_size(request, response)
                return response
            self._metrics.in_flight += 1
            self._idle.clear()
            in_flight = True
            plan = self.plan(request, host, cors_origin, client)
            workspace = plan.route.workspace or "-"
            if plan.credential is not None:
                label = plan.credential.workspace
            response = await self.relay(request, plan, relayed)
        except ProxyError as error:
            workspace = request.get("workspace") or "-"
            response = await self.error_response(request, error)
            relayed.sent = _sent_body_size(request, response)
            if isinstance(error, UpstreamError):
                self._metrics.upstream_error(error.metric_kind)
            if error.status >= 500:
                log.warning("%s %s: %s", request.method, _path_of(request), error.detail)
        finally:
            # 499: the client left (or the relay broke off) before a status line was sent.
            status = response.status if response is not None else relayed.status or 499
            elapsed = time.perf_counter() - started
            if in_flight:
                self._metrics.in_flight -= 1
                if self._metrics.in_flight == 0:
                    self._idle.set()
            if is_admin:
                # Probes and scrapes of the admin endpoints would swamp the access log at INFO.
                access_log.debug(
                    '%s "%s %s" - %d %dB %.1fms', request.remote, request.method,
                    _path_of(request), status, relayed.sent, elapsed * 1000,
                )
            else:
                received = getattr(request.content, "total_bytes", 0)
                self._metrics.observe_request(
                    label, request.method, status, elapsed, received, relayed.sent
                )
                access_line.write(
                    request.remote, request.method, _path_of(request), workspace, status,
                    relayed.sent, elapsed * 1000,
                )
            if self.audit is not None:
                self._audit(self.audit, request, plan, status, relayed.sent, elapsed)
            if response is not None and self._admin.draining:
                _close_when_done(request, response)
        return response

    @property
    def in_flight(self) -> int:
        """Requests being proxied now; admin requests are not counted."""
        return self._metrics.in_flight

    async def wait_idle(self, timeout: float, hurry: asyncio.Event | None = None) -> bool:
        """Wait until no request is in flight; return False if `timeout` or `hurry` came first."""
        waits = [asyncio.ensure_future(self._idle.wait())]
        if hurry is not None:
            waits.append(asyncio.ensure_future(hurry.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return self._idle.is_set()

    @staticmethod
    def _audit(
        audit: AuditLog,
        request: web.BaseRequest,
        plan: Plan | None,
        status: int,
        sent: int,
        elapsed: float,
    ) -> None:
        # `sent` is the count the access line shows: body bytes sent, so 0 for HEAD.
        credential = plan.credential if plan is not None else None
        audit.record(
            client=request.get("client"),
            remote=request.remote,
            workspace=request.get("workspace"),
            method=request.method,
            path=request.raw_path.partition("?")[0],
            status=status,
            bytes_in=getattr(request.content, "total_bytes", 0),
            bytes_out=sent,
            duration_ms=elapsed * 1000,
            token_fp=credential.token.fingerprint if credential is not None else None,
        )

    def check_request(self, request: web.BaseRequest) -> tuple[str, str | None]:
        """Apply the guards every request passes, admin ones included, Host first.

        Returns the validated `Host` and the request's origin when CORS allows
        it. Client credentials are checked next, by `authenticate`.
        """
        host = guards.check_host(request.headers.get("Host"), self._host_policy)
        guards.check_method(request.method, request.headers)
        guards.check_framing(request.version, request.headers)
        cors_origin = guards.check_cross_site(
            request.headers.getall("Origin", []),
            request.headers.getall("Sec-Fetch-Site", []),
            host,
            self._host_policy,
        )
        request[_CORS_ORIGIN] = cors_origin
        return host, cors_origin

    def plan(
        self, request: web.BaseRequest, host: str, cors_origin: str | None, client: Client | None
    ) -> Plan:
        """Decide route and token, without touching the body or the upstream."""
        route = routes.resolve(request.raw_path, self._families)
        request["workspace"] = route.workspace
        if client is not None:
            guards.check_method_override(client, request.headers)
        credential = self._credential_for(route, client, request.method)
        client_origin = f"http://{host}"
        return Plan(
            route=route,
            credential=credential,
            client_origin=client_origin,
            cors_origin=cors_origin,
            links=self._links.exchange(client_origin, route),
            client=client,
        )

    async def error_response(
        self, request: web.BaseRequest, error: ProxyError
    ) -> web.StreamResponse:
        """Build the problem+json response for `error`; end the connection if nothing may follow."""
        response = problem_response(error)
        cors_origin = request.get(_CORS_ORIGIN)
        if cors_origin is not None:
            for name, value in cors.response_headers(cors_origin):
                response.headers.add(name, value)

        if error.close_connection or _awaits_continue(request):
            # The framing or protocol cannot be trusted, or the client waits for a
            # 100 Continue that will never come. Send the response and close now,
            # rather than let aiohttp wait up to 10 s for a body.
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        elif request.body_exists and not request.content.is_eof():
            # The body is on its way. aiohttp reads and discards it for up to 10 s
            # before closing, so the client gets this response rather than a reset.
            response.force_close()
        return response

    def authenticate(self, request: web.BaseRequest) -> Client | None:
        """Return the gateway client that sent `request`, None when none is required, or raise."""
        headers = request.headers
        client = self.client_gate.check(
            self._vaults.vault.clients,
            path=request.raw_path.partition("?")[0],
            remote=request.remote,
            authorization_values=[
                *headers.getall("Authorization", ()),
                *headers.getall("Proxy-Authorization", ()),
            ],
        )
        if client is not None:
            request["client"] = client.name
        return client

    def _credential_for(
        self, route: routes.Route, client: Client | None, method: str
    ) -> Credential | None:
        credential = choose_granted_credential(
            route, self._vaults.vault, self._settings.default_workspace, client, method
        )
        if credential is not None:
            self._health.warn_if_expired(credential, dt.datetime.now(dt.UTC))
        return credential

    async def relay(
        self, request: web.BaseRequest, plan: Plan, relayed: Relayed
    ) -> web.StreamResponse:
        """Send the request upstream, stream the response back and record progress in `relayed`."""
        authorization = None
        if plan.credential is not None:
            authorization = "Bearer " + plan.credential.token.reveal()
        headers = upstream_request_headers(request.headers, authorization)
        plan.links.adjust_request_headers(headers)
        if _awaits_continue(request):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await _request_body(request, headers, plan.links)
        url = routes.upstream_url(plan.route, self._upstream_origin, self._settings.files_upstream)

        exchange = _exchange_whole(self._upstream, request.method, url, headers, body, plan.links)
        async with exchange as upstream:
            if plan.credential is not None:
                self._note_token_answer(request, plan, upstream.status)
            response = _CoalescingResponse(status=upstream.status, reason=upstream.reason)
            body_rewrite = plan.links.response_body_rewrite(
                upstream.status,
                upstream.headers.get("Content-Type"),
                upstream.headers.get("Content-Encoding"),
            )
            if body_rewrite is None and plan.links.cannot_rewrite(
                upstream.headers.get("Content-Type"), upstream.headers.get("Content-Encoding")
            ):
                log.warning(
                    "%s %s: JSON response in content coding %r passed untranslated; its links "
                    "point at the upstream",
                    request.method,
                    _path_of(request),
                    upstream.headers.get("Content-Encoding"),
                )
            response_headers = client_response_headers(upstream.headers)
            for name, value in plan.links.response_headers(response_headers, body_rewrite):
                response.headers.add(name, value)
            if plan.cors_origin is not None:
                for name, value in cors.response_headers(plan.cors_origin):
                    response.headers.add(name, value)
            add_browser_safety_headers(response.headers)
            if self._admin.draining:
                # SIGTERM arrived while the upstream was busy, so the headers must say
                # Connection: close.
                _close_when_done(request, response)
            writer = await response.prepare(request)
            relayed.status = response.status
            if writer is not None and not self._upstream.body_started(upstream):
                # The body may be slow to come (a long poll, say): the client gets
                # the status and headers now, not with the first chunk.
                writer.send_headers()

            chunks = self._upstream.body(upstream)
            if body_rewrite is not None:
                chunks = body_rewrite.apply(chunks)
            held = b""
            try:
                async for chunk in chunks:
                    # Once the whole upstream body has arrived, every later chunk is
                    # ready at once, so holding chunks back delays nothing. They are
                    # joined, up to _HELD_MAX bytes, and the last of them goes out with
                    # the end of the body: a small response takes one write.
                    if self._upstream.body_complete(upstream):
                        if held and len(held) + len(chunk) > _HELD_MAX:
                            await response.write(held)
                            held = b""
                        held += chunk
                    else:
                        await response.write(chunk)
                    relayed.sent += len(chunk)
            except UpstreamBrokeOff as error:
                # The status line is gone: the only honest signal left is a broken connection.
                self._metrics.upstream_error(error.metric_kind)
                log.warning("%s %s: %s", request.method, _path_of(request), error.detail)
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError(error.detail) from error
            await response.write_eof(held)
        return response

    def _note_token_answer(self, request: web.BaseRequest, plan: Plan, status: int) -> None:
        """Record the upstream's response status for a request that carried a vault token."""
        assert plan.credential is not None
        target = f"{request.method} {_path_of(request)}"
        if self._health.record(plan.credential, plan.route.workspace, status, target):
            self._metrics.token_rejected(plan.credential.workspace, status)


@asynccontextmanager
async def _exchange_whole(
    upstream: Upstream,
    method: str,
    url: str,
    headers: CIMultiDict[str],
    body: bytes | AsyncIterable[bytes] | StreamReader | None,
    links: Exchange,
) -> AsyncIterator[UpstreamResponse]:
    """Send the request upstream and yield the response, never a range of a translated document.

    When the upstream responds to `Range` with part of a JSON document that would be
    translated, the request is sent again without `Range` and `If-Range`, and the
    whole document is yielded (RFC 9110 lets a server ignore `Range`). Only a GET
    or HEAD without a body can be sent again; any other request gets 502.
    """
    async with upstream.request(method, url, headers, body) as response:
        if not links.is_translated_part(response.status, response.headers):
            yield response
            return
        if method not in ("GET", "HEAD") or body is not None:
            raise UpstreamInvalid(
                f"the upstream sent a partial response ({response.status}) to a {method} with a "
                "JSON document whose links the proxy translates; send the request without Range",
                metric_kind="protocol",
            )

    whole_headers = headers.copy()
    whole_headers.popall("Range", None)
    whole_headers.popall("If-Range", None)
    async with upstream.request(method, url, whole_headers, None) as response:
        if links.is_translated_part(response.status, response.headers):
            raise UpstreamInvalid(
                f"the upstream sent a partial response ({response.status}) to a {method} "
                "without Range",
                metric_kind="protocol",
            )
        yield response


# The maximum number of body bytes held back to be joined into one write (aiohttp's writer
# also drains its buffer at 64 KiB).
_HELD_MAX = 64 * 1024


class _CoalescingResponse(web.StreamResponse):
    """A streamed response whose status line and headers go out with the first body bytes.

    aiohttp's `StreamResponse` sends the headers as soon as it is prepared, one
    `send()` call more per response than needed. With this flag aiohttp keeps them
    until the first write (the `Response` class does the same), and the handler
    calls `send_headers()` itself when the body is not there yet.
    """

    _send_headers_immediately = False


async def _request_body(
    request: web.BaseRequest, headers: CIMultiDict[str], links: Exchange
) -> bytes | AsyncIterable[bytes] | StreamReader | None:
    """Return the body to send upstream: the client's stream, or its JSON links translated.

    A rewritten body changes length: a small one is read whole and gets a new
    `Content-Length`; a large or chunked one is sent chunked.
    """
    if not request.body_exists:
        return None
    rules = links.request_body_rewrite(headers)
    if rules is None:
        return request.content
    length = request.content_length
    if length is not None and length <= BUFFERED_REQUEST_MAX:
        # Content-Length bounds this read; request.read() would apply aiohttp's own size limit.
        body = rewrite_whole(await request.content.read(), rules)
        headers["Content-Length"] = str(len(body))
        return body
    headers.popall("Content-Length", None)
    return rewrite_stream(request.content.iter_any(), rules)


def preflight_response(origin: str, request: web.BaseRequest) -> web.Response:
    """Build the local response to an allowed origin's CORS preflight, never sent upstream."""
    response = web.Response(status=204)
    for name, value in cors.preflight_headers(origin, request.headers):
        response.headers.add(name, value)
    add_browser_safety_headers(response.headers)
    return response


def _close_when_done(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Close the connection after `response` while the proxy shuts down.

    A response not yet sent carries `Connection: close`; one already sent ends
    with the connection closed. Requests the client already pipelined behind it
    are answered first, and the last of them closes the connection.
    """
    # NOTE: reads the private queue of aiohttp's connection handler (checked with 3.14.5).
    # Without it, the connection closes after this response and pipelined requests are dropped.
    if not getattr(request.protocol, "_messages", None):
        response.force_close()


def _awaits_continue(request: web.BaseRequest) -> bool:
    return (
        request.version >= (1, 1)
        and request.body_exists
        and request.headers.get("Expect", "").lower() == "100-continue"
    )


def _sent_body_size(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """Return the body bytes a response the proxy built itself sends (none for HEAD)."""
    if request.method == "HEAD":
        return 0
    return response.content_length or 0


def _path_of(request: web.BaseRequest) -> str:
    return request.raw_path.partition("?")[0][:200]
