"""The request handler: checks, resolves and relays one request.

Each request goes through the same steps: guards (host, origin, method), the
route (which workspace), the credential (which token), then the upstream
exchange with both bodies streamed. Everything up to the upstream exchange is
decided before the proxy answers `100 Continue` or reads a byte of the body.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from aiohttp import web

from proxy import guards, routes
from proxy.errors import NoToken, ProxyError, UpstreamBrokeOff
from proxy.headers import client_response_headers, upstream_request_headers
from proxy.log import access_log, log
from proxy.problem import problem_response
from proxy.rewrite import translate_url
from proxy.settings import Settings
from proxy.upstream import Upstream
from proxy.vault import Credential, Vault

_LOCATION_HEADERS = frozenset({"location", "content-location"})


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything decided about a request before any of it is sent upstream."""

    route: routes.Route
    credential: Credential | None
    client_origin: str
    cors_origin: str | None


class VaultHolder:
    """The vault in use; a reload swaps it whole, so a request sees one vault throughout."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault


class ProxyHandler:
    def __init__(self, settings: Settings, vaults: VaultHolder, upstream: Upstream) -> None:
        self._settings = settings
        self._vaults = vaults
        self._upstream = upstream
        self._upstream_origin = str(settings.upstream)
        self._families = routes.parse_families(settings.routes)
        self._host_policy = guards.HostPolicy(settings.allowed_hosts, settings.allowed_origins)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        workspace = "-"
        response: web.StreamResponse | None = None
        sent = 0
        try:
            plan = self.plan(request)
            workspace = plan.route.workspace or "-"
            response, sent = await self.relay(request, plan)
        except ProxyError as error:
            workspace = request.get("workspace") or "-"
            response = problem_response(error)
            if request.body_exists and not request.content.is_eof():
                # The body was not read (nor 100 Continue sent): end the connection
                # rather than read an upload nobody wants.
                response.force_close()
            if error.status >= 500:
                log.warning("%s %s: %s", request.method, _path_of(request), error.detail)
        finally:
            if access_log.isEnabledFor(20):
                status = response.status if response is not None else 499
                access_log.info(
                    '%s "%s %s" %s %d %dB %.1fms',
                    request.remote,
                    request.method,
                    _path_of(request),
                    workspace,
                    status,
                    sent,
                    (time.perf_counter() - started) * 1000,
                )
        return response

    def plan(self, request: web.BaseRequest) -> Plan:
        """Decide host, origin, route and token, without touching the body or the upstream."""
        host = guards.check_host(request.headers.get("Host"), self._host_policy)
        guards.check_method(request.method, request.headers)
        cors = guards.check_cross_site(
            request.headers.get("Origin"),
            request.headers.get("Sec-Fetch-Site"),
            host,
            self._host_policy,
        )
        route = routes.resolve(request.raw_path, self._families)
        request["workspace"] = route.workspace
        credential = self._credential_for(route)
        return Plan(
            route=route,
            credential=credential,
            client_origin=f"http://{host}",
            cors_origin=request.headers["Origin"] if cors else None,
        )

    def _credential_for(self, route: routes.Route) -> Credential | None:
        if route.workspace is None:
            return None
        vault = self._vaults.vault
        credential = vault.get(route.workspace)
        if credential is None and self._settings.default_workspace is not None:
            credential = vault.get(self._settings.default_workspace)
        if credential is None:
            raise NoToken(
                f"no token for workspace {route.workspace!r} in vault {vault.path}; add one "
                f"with: eodh-proxy vault add {route.workspace} --vault {vault.path}"
            )
        if credential.expired(dt.datetime.now(dt.timezone.utc)):
            log.warning(
                "token for workspace %s expired at %s; trying it anyway",
                credential.workspace,
                credential.expires,
            )
        return credential

    async def relay(self, request: web.BaseRequest, plan: Plan) -> tuple[web.StreamResponse, int]:
        """Send the request upstream and stream the response back; return it and its body size."""
        authorization = None
        if plan.credential is not None:
            authorization = "Bearer " + plan.credential.token.reveal()
        headers = upstream_request_headers(request.headers, authorization)
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = request.content if request.body_exists else None
        url = self._upstream_origin + plan.route.upstream_target

        sent = 0
        async with self._upstream.request(request.method, url, headers, body) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in client_response_headers(upstream.headers):
                if name.lower() in _LOCATION_HEADERS:
                    value = translate_url(value, self._upstream_origin, plan.client_origin)
                response.headers.add(name, value)
            if plan.cors_origin is not None:
                response.headers["Access-Control-Allow-Origin"] = plan.cors_origin
                response.headers.add("Vary", "Origin")
            await response.prepare(request)

            try:
                async for chunk in self._upstream.body(upstream):
                    await response.write(chunk)
                    sent += len(chunk)
            except UpstreamBrokeOff as error:
                # The status line is gone: the only honest signal left is a broken connection.
                log.warning("%s %s: %s", request.method, _path_of(request), error.detail)
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError(error.detail) from error
            await response.write_eof()
        return response, sent


def _path_of(request: web.BaseRequest) -> str:
    return request.raw_path.partition("?")[0][:200]
