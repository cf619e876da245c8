"""Checks that run on every request before a route or token is looked at.

A page in the user's browser can make requests to the proxy. The `Host` check
stops DNS rebinding (a foreign name that resolves to 127.0.0.1); the `Origin`
and `Sec-Fetch-Site` checks stop cross-site requests, such as a form post that
would start a workflow. On a team gateway, `ClientGate` checks each request's
client credential and grants. All functions here are pure; `ClientGate` keeps
only the count of failed credentials per source address.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cachetools import TTLCache

from proxy import clients
from proxy.clients import Client
from proxy.errors import (
    ClientForbidden,
    ClientUnauthorized,
    CrossSiteRejected,
    HostNotAllowed,
    MethodNotAllowed,
    TooManyFailures,
    UpgradeRejected,
)
from proxy.log import log

DEFAULT_ALLOWED_HOSTS = ("localhost", "*.localhost", "127.0.0.1", "[::1]")

_HOST_HEADER = re.compile(
    r"(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(?P<port>[0-9]{1,5}))?\Z"
)


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Host names the proxy answers to, and browser origins allowed to call it."""

    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    allowed_origins: tuple[str, ...] = ()

    def host_allowed(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        for pattern in self.allowed_hosts:
            if pattern.startswith("*."):
                if name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
                    return True
            elif name == pattern:
                return True
        return False


def split_host(host: str) -> tuple[str, str | None] | None:
    """Split a `Host` header value into name and port, or None when it is malformed."""
    found = _HOST_HEADER.match(host)
    if found is None:
        return None
    port = found.group("port")
    if port is not None and not 0 < int(port) < 65536:
        return None
    return found.group("name").lower(), port


def check_host(host: str | None, policy: HostPolicy) -> str:
    """Return the validated `Host` value, or raise `HostNotAllowed`."""
    if not host:
        raise HostNotAllowed("the request has no Host header")
    parts = split_host(host)
    if parts is None:
        raise HostNotAllowed("the Host header is not a valid host name and port")
    if not policy.host_allowed(parts[0]):
        raise HostNotAllowed(
            f"host {parts[0]!r} is not an allowed name for this proxy; "
            "add it to allowed_hosts in the config if it is yours"
        )
    return host


def check_method(method: str, headers: Mapping[str, str]) -> None:
    """Reject CONNECT and protocol upgrades: the proxy only relays plain HTTP requests."""
    if method == "CONNECT":
        raise MethodNotAllowed("CONNECT is not supported: this is a reverse proxy")
    if "Upgrade" in headers:
        raise UpgradeRejected(
            "protocol upgrades (such as WebSocket) are not supported", close_connection=True
        )


def check_cross_site(
    origin: str | None, fetch_site: str | None, host: str, policy: HostPolicy
) -> bool:
    """Reject requests a browser marks as cross-site; return True for an allowed CORS origin."""
    if origin is not None:
        if origin in policy.allowed_origins:
            return True
        if origin.lower() != f"http://{host.lower()}":
            raise CrossSiteRejected(
                "requests from web pages on other origins are rejected; "
                "add the origin to allowed_origins in the config if you trust it"
            )
    if fetch_site in ("cross-site", "same-site"):
        raise CrossSiteRejected(
            f"the browser marked this request as {fetch_site}; requests from other sites are "
            "rejected"
        )
    return False


# Paths that need no client credential even on a gateway: a liveness probe has none.
CLIENT_AUTH_EXEMPT_PATHS = frozenset({"/_proxy/healthz"})
MAX_FAILED_CREDENTIALS = 10
FAILURE_WINDOW_SECONDS = 60.0
# Source addresses tracked at once; beyond that the least recently failed are forgotten.
MAX_TRACKED_SOURCES = 65536


def source_key(remote: str | None) -> str:
    """Return the key failed credentials are counted under: the IPv4 address or IPv6 /64.

    One IPv6 host usually has a whole /64 to itself, so counting single IPv6
    addresses would let it use a new address for every guess.
    """
    if not remote:
        return "-"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """Count failed client credentials per source and block a source that fails too often.

    A source is blocked once it has `max_failures` failures with less than
    `window` seconds between consecutive ones, and stays blocked until `window`
    seconds after its last failure. Counts live in this process only.
    """

    def __init__(
        self,
        max_failures: int = MAX_FAILED_CREDENTIALS,
        window: float = FAILURE_WINDOW_SECONDS,
        *,
        max_sources: int = MAX_TRACKED_SOURCES,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._timer = timer
        # source -> (failures, time of the last failure); an entry expires `window` after it.
        self._failures: TTLCache[str, tuple[int, float]] = TTLCache(
            maxsize=max_sources, ttl=window, timer=timer
        )

    def retry_after(self, source: str) -> int | None:
        """Return the whole seconds until `source` may try again, or None when it may now."""
        failures, last = self._failures.get(source, (0, 0.0))
        if failures < self.max_failures:
            return None
        return max(1, math.ceil(last + self.window - self._timer()))

    def record_failure(self, source: str) -> bool:
        """Count one failure from `source`; return True when this failure blocks it."""
        failures, _ = self._failures.get(source, (0, 0.0))
        self._failures[source] = (failures + 1, self._timer())
        return failures + 1 == self.max_failures


def authenticate_client(
    authorization_values: Iterable[str], gateway_clients: Mapping[str, Client]
) -> Client:
    """Return the client named by the request's Basic credential, or raise `ClientUnauthorized`.

    `authorization_values` are the values of every `Authorization` and
    `Proxy-Authorization` header. The error's `presented` is False when no
    credential was sent at all, so that only wrong credentials count as failures.
    """
    presented = clients.presented_credentials(authorization_values)
    if not presented:
        raise ClientUnauthorized(
            "this gateway requires a client name and key as HTTP Basic credentials, "
            "for example http://NAME:KEY@HOST:PORT/...; ask the gateway's operator for a key"
        )
    if len(presented) > 1:
        raise ClientUnauthorized(
            "the request carries two different client credentials; send one", presented=True
        )

    ((name, key),) = presented
    client = clients.authenticate(gateway_clients, name, key)
    if client is None:
        known = name if name in gateway_clients else None
        raise ClientUnauthorized("invalid client name or key", presented=True, known_client=known)
    return client


def check_grant(client: Client, method: str, workspaces: Iterable[str]) -> None:
    """Raise `ClientForbidden` unless `client` may send `method` to every one of `workspaces`."""
    reason = clients.denial_reason(client, method, workspaces)
    if reason is not None:
        raise ClientForbidden(reason)


class ClientGate:
    """Decide who sends a request on a gateway, with the failed-credential limit.

    Credentials are required when the vault lists any client. They are also
    required when it lists none but `required_without_clients` is set, as for a
    listener beyond loopback without the insecure override. Then every request
    is rejected, so a reload that empties the clients section cannot open the gateway.
    """

    def __init__(
        self, *, required_without_clients: bool, limiter: FailureLimiter | None = None
    ) -> None:
        self.required_without_clients = required_without_clients
        self.limiter = limiter if limiter is not None else FailureLimiter()

    def required(self, gateway_clients: Mapping[str, Client], path: str) -> bool:
        if path in CLIENT_AUTH_EXEMPT_PATHS:
            return False
        return bool(gateway_clients) or self.required_without_clients

    def check(
        self,
        gateway_clients: Mapping[str, Client],
        *,
        path: str,
        remote: str | None,
        authorization_values: Iterable[str],
    ) -> Client | None:
        """Return the request's client, None when none is required, or raise 401 or 429.

        `path` is the request path without its query.
        """
        if not self.required(gateway_clients, path):
            return None

        source = source_key(remote)
        wait = self.limiter.retry_after(source)
        if wait is not None:
            raise TooManyFailures(
                f"too many failed client credentials from this address; retry in {wait} s",
                retry_after=wait,
            )

        try:
            return authenticate_client(authorization_values, gateway_clients)
        except ClientUnauthorized as error:
            if error.presented:
                self._count_failure(source, error)
            raise

    def _count_failure(self, source: str, error: ClientUnauthorized) -> None:
        subject = f"client {error.known_client!r}" if error.known_client else "an unknown client"
        log.warning("rejected a credential for %s from %s: %s", subject, source, error.detail)
        if self.limiter.record_failure(source):
            log.warning(
                "blocked %s for %g s after %d failed client credentials",
                source,
                self.limiter.window,
                self.limiter.max_failures,
            )
