"""The proxy's own endpoints under `/_proxy/`, handled locally and never forwarded.

- `healthz`: 200 while the process serves.
- `readyz`: 200 while a vault with at least one workspace is loaded and the
  proxy is not shutting down, else 503 with the reason.
- `status`: JSON describing workspaces, vault and upstream. It shows token
  fingerprints only, never a token, and to a gateway client only the
  workspaces it was granted.
- `metrics`: the Prometheus text format (see `proxy.metrics`). Its samples
  cover every workspace, so a gateway client needs a grant of "*" to read it.

Every path whose first segment is `_proxy` (percent-encoded or not) is taken
here, so no such request reaches the upstream. Admin requests pass the same
Host and Origin guards as any other request before they get here.
"""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import unquote

from aiohttp import web

from proxy import __version__
from proxy.clients import Client
from proxy.errors import ClientForbidden, ClientRequestError, MethodNotAllowed
from proxy.health import TokenHealth
from proxy.metrics import CONTENT_TYPE, Metrics, ReloadCounts
from proxy.problem import problem_response
from proxy.routes import ADMIN_SEGMENT
from proxy.vault import VaultHolder

ENDPOINTS = ("healthz", "readyz", "status", "metrics")
OPEN_ENDPOINTS = frozenset({"healthz"})
"""Endpoints that stay open when client credentials are required, for liveness probes."""


class AdminNotFound(ClientRequestError):
    status = 404
    title = "No such admin endpoint"
    kind = "admin-not-found"


def admin_path(raw_target: str) -> str | None:
    """Return the part of the path after `/_proxy`, or None when the target is not an admin path."""
    path = raw_target.partition("?")[0]
    if not path.startswith("/"):
        return None
    first, _, _ = path[1:].partition("/")
    if unquote(first) != ADMIN_SEGMENT:
        return None
    return path[1 + len(first) :]


def endpoint_of(rest: str) -> str | None:
    """Return the endpoint name for the path after `/_proxy`, or None if there is none."""
    name = rest.removeprefix("/")
    return name if name in ENDPOINTS else None


def timestamp(when: dt.datetime | None) -> str | None:
    """Format an aware datetime as RFC 3339 in UTC, to the second."""
    if when is None:
        return None
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Admin:
    """Handles requests to `/_proxy/...` from the proxy's current state."""

    def __init__(
        self,
        vaults: VaultHolder,
        health: TokenHealth,
        metrics: Metrics,
        reloads: ReloadCounts,
        upstream: str,
    ) -> None:
        self._vaults = vaults
        self._health = health
        self._metrics = metrics
        self._reloads = reloads
        self._upstream = upstream
        self.draining = False
        """True once shutdown has begun; readiness then fails so load balancers move on."""

    async def handle(
        self, request: web.BaseRequest, rest: str, client: Client | None = None
    ) -> web.Response:
        """Build the response to the admin request whose path after `/_proxy` is `rest`.

        `client` is the gateway client that sent it, or None when none is required.
        """
        endpoint = endpoint_of(rest)
        if endpoint is None:
            listed = ", ".join(f"/{ADMIN_SEGMENT}/{name}" for name in ENDPOINTS)
            return problem_response(
                AdminNotFound(f"no admin endpoint at this path (expected one of: {listed})")
            )
        if request.method not in ("GET", "HEAD"):
            response = problem_response(
                MethodNotAllowed(f"/{ADMIN_SEGMENT}/{endpoint} accepts only GET and HEAD")
            )
            response.headers["Allow"] = "GET, HEAD"
            return response

        if endpoint == "healthz":
            response = web.Response(text="ok\n")
        elif endpoint == "readyz":
            response = self.readiness()
        elif endpoint == "status":
            response = web.Response(
                body=json.dumps(self.status(client), indent=2).encode() + b"\n",
                content_type="application/json",
            )
        else:
            try:
                check_metrics_reader(client)
            except ClientForbidden as error:
                return problem_response(error)
            text = self._metrics.render(
                self._vaults.vault, self._reloads, dt.datetime.now(dt.UTC)
            )
            response = web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
        response.headers["Cache-Control"] = "no-store"
        return response

    def readiness(self) -> web.Response:
        vault = self._vaults.vault
        if self.draining:
            reason = "shutting down: finishing requests in flight"
        elif not vault.credentials:
            reason = (
                f"the vault {vault.path} has no workspaces; add one with: "
                f"eodh-proxy vault add WORKSPACE --vault {vault.path}"
            )
        else:
            count = len(vault.credentials)
            return web.Response(text=f"ready: {count} workspace{'s' if count != 1 else ''}\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    def status(self, client: Client | None = None) -> dict[str, object]:
        """Return the status document; it contains fingerprints, never tokens.

        For a gateway `client`, it lists only the workspaces the client was granted.
        """
        vault = self._vaults.vault
        workspaces = [
            {
                "name": name,
                "fingerprint": vault.credentials[name].token.fingerprint,
                "expires": timestamp(vault.credentials[name].expires),
                "last_upstream_status": self._health.last_status.get(name),
                "last_rejected_at": timestamp(self._health.last_rejected_at.get(name)),
            }
            for name in vault.workspaces
            if client is None or client.grants_workspace(name)
        ]
        return {
            "workspaces": workspaces,
            "vault": {
                "path": str(vault.path),
                "loaded_at": timestamp(self._vaults.loaded_at),
                "last_error": self._vaults.last_error,
            },
            "upstream": self._upstream,
            "version": __version__,
        }


def check_metrics_reader(client: Client | None) -> None:
    """Raise `ClientForbidden` unless `client` may read the metrics (no client, or one granted '*')."""
    if client is not None and client.workspaces is not None:
        raise ClientForbidden(
            f"client {client.name!r} may not read /{ADMIN_SEGMENT}/metrics: its "
            "samples cover every workspace, so only a client granted '*' may read it"
        )
