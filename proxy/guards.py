"""Checks that run on every request before a route or token is looked at.

A page in the user's browser can make requests to the proxy. The `Host` check
stops DNS rebinding (a foreign name that resolves to 127.0.0.1); the `Origin`
and `Sec-Fetch-Site` checks stop cross-site requests, such as a form post that
would start a workflow. The method and framing checks keep the request to one
plain HTTP/1.x exchange with one reading of where its body ends. On a team
gateway, `ClientGate` checks each request's client credential and grants. All
functions here are pure; `ClientGate` keeps only the count of failed
credentials per source address.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cachetools import TTLCache
from multidict import MultiMapping

from proxy import clients
from proxy.clients import Client
from proxy.errors import (
    ClientForbidden,
    ClientUnauthorized,
    CrossSiteRejected,
    FramingRejected,
    HostNotAllowed,
    MethodNotAllowed,
    TooManyFailures,
    UpgradeRejected,
    VersionNotSupported,
)
from proxy.log import log

DEFAULT_ALLOWED_HOSTS = ("localhost", "*.localhost", "127.0.0.1", "[::1]")

_HOST_HEADER = re.compile(
    r"(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(?P<port>[0-9]{1,5}))?\Z"
)
# TRACE, and TRACK (its IIS counterpart), would echo the request, Authorization header
# included, back to the client.
_REJECTED_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}\Z")


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Host names the proxy answers to, and browser origins allowed to call it."""

    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    allowed_origins: tuple[str, ...] = ()

    def host_allowed(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        address = _ip_literal(name)
        for pattern in self.allowed_hosts:
            if pattern.startswith("*."):
                if name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
                    return True
            elif name == pattern or (address is not None and address == _ip_literal(pattern)):
                return True
        return False

    def origin_allowed(self, origin: str) -> bool:
        return origin.lower() in (allowed.lower() for allowed in self.allowed_origins)


def _ip_literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the address a host name spells as an IP literal ("[::1]", "127.0.0.1"), or None."""
    try:
        if name.startswith("[") and name.endswith("]"):
            return ipaddress.IPv6Address(name[1:-1])
        return ipaddress.IPv4Address(name)
    except ValueError:
        return None


def listen_host_names(listen_host: str) -> tuple[str, ...]:
    """Return the Host name a client uses for a specific listen address, if it has one.

    A DNS rebinding attack always sends the attacker's host name, never an IP
    literal, so the address the proxy listens on is safe to accept. A wildcard
    address (0.0.0.0, ::) names no host and adds nothing.
    """
    address = _ip_literal(f"[{listen_host}]" if ":" in listen_host else listen_host)
    if address is None or address.is_unspecified:
        return ()
    return (f"[{address}]" if address.version == 6 else str(address),)


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
    """Return the validated `Host` value, or raise `HostNotAllowed`.

    The error also closes the connection, so nothing else that client sends is read.
    """
    if not host:
        raise HostNotAllowed("the request has no Host header", close_connection=True)
    parts = split_host(host)
    if parts is None:
        raise HostNotAllowed(
            "the Host header is not a valid host name and port", close_connection=True
        )
    if not policy.host_allowed(parts[0]):
        raise HostNotAllowed(
            f"host {parts[0]!r} is not an allowed name for this proxy; "
            "add it to allowed_hosts in the config if it is yours",
            close_connection=True,
        )
    return host


def check_method(method: str, headers: Mapping[str, str]) -> None:
    """Reject CONNECT, TRACE, TRACK and protocol upgrades: the proxy only relays plain HTTP requests.

    Methods are compared in upper case, so `trace` is rejected too, in case the upstream
    reads method names without regard to case.
    """
    if method.upper() in _REJECTED_METHODS:
        raise MethodNotAllowed(
            f"{method} is not supported: this is a reverse proxy for the EODH API",
            close_connection=True,
        )
    if "Upgrade" in headers:
        raise UpgradeRejected(
            "protocol upgrades (such as WebSocket or h2c) are not supported",
            close_connection=True,
        )


def check_framing(version: tuple[int, int], headers: MultiMapping[str]) -> None:
    """Reject a request whose body length could be read two ways (RFC 9112 section 6).

    aiohttp's parser rejects most of these already; checking again here keeps
    the rule when aiohttp runs its lenient pure-Python parser
    (AIOHTTP_NO_EXTENSIONS=1, or a platform without its C extension).
    """
    if version not in ((1, 0), (1, 1)):
        raise VersionNotSupported(
            f"HTTP/{version[0]}.{version[1]} is not supported (expected HTTP/1.1 or HTTP/1.0)",
            close_connection=True,
        )
    lengths = headers.getall("Content-Length", [])
    codings = headers.getall("Transfer-Encoding", [])
    if len(lengths) > 1:
        raise _framing_error("the request has more than one Content-Length header")
    if lengths and not _CONTENT_LENGTH.match(lengths[0]):
        raise _framing_error("the Content-Length header is not a decimal number")
    if not codings:
        return
    if lengths:
        raise _framing_error("the request has both Content-Length and Transfer-Encoding")
    if version == (1, 0):
        raise _framing_error("HTTP/1.0 requests cannot use Transfer-Encoding")
    if len(codings) > 1 or codings[0].strip().lower() != "chunked":
        raise _framing_error(
            "the only Transfer-Encoding accepted is a single 'chunked' "
            "(no other codings, no list, no second header)"
        )


def _framing_error(detail: str) -> FramingRejected:
    # The body's end is unknown, so nothing after it on this connection can be trusted.
    return FramingRejected(detail, close_connection=True)


def check_cross_site(
    origins: Sequence[str], fetch_sites: Sequence[str], host: str, policy: HostPolicy
) -> str | None:
    """Reject requests a browser marks as cross-site; return the origin when CORS allows it."""
    if len(origins) > 1 or len(fetch_sites) > 1:
        raise CrossSiteRejected("the request has more than one Origin or Sec-Fetch-Site header")
    origin = origins[0] if origins else None
    fetch_site = fetch_sites[0] if fetch_sites else None
    if origin is not None:
        if policy.origin_allowed(origin):
            return origin
        if origin.lower() != f"http://{host.lower()}":
            raise CrossSiteRejected(
                "requests from web pages on other origins are rejected; "
                "add the origin to allowed_origins in the config if you trust it"
            )
    if fetch_site is not None and fetch_site.lower() in ("cross-site", "same-site"):
        raise CrossSiteRejected(
            f"the browser marked this request as {fetch_site}; requests from other sites are "
            "rejected"
        )
    return None


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


# Headers that some servers and frameworks read as the request's real method, so a GET
# carrying one can act as a POST or DELETE upstream.
METHOD_OVERRIDE_HEADERS = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")


def check_method_override(client: Client, headers: MultiMapping[str]) -> None:
    """Raise `ClientForbidden` when a method-override header names a method `client` may not use.

    Each comma-separated value is compared in upper case, because servers that honour
    these headers often upper-case it. A client without a method limit may send them,
    because it could use the method itself.
    """
    if client.methods is None:
        return
    for name in METHOD_OVERRIDE_HEADERS:
        for value in headers.getall(name, ()):
            for item in value.split(","):
                method = item.strip().upper()
                if client.allows_method(method):
                    continue
                described = (
                    f"method {method}" if clients.METHOD_NAME.match(method) else "an invalid method"
                )
                raise ClientForbidden(
                    f"client {client.name!r} may not use {described}, named in the {name} header "
                    f"(allowed: {client.describe_methods()})"
                )


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
