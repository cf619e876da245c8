"""Checks that run on every request before a route or token is looked at.

A page in the user's browser can make requests to the proxy. The `Host` check
stops DNS rebinding (a foreign name that resolves to 127.0.0.1); the `Origin`
and `Sec-Fetch-Site` checks stop cross-site requests, such as a form post that
would start a workflow. All functions here are pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.errors import CrossSiteRejected, HostNotAllowed, MethodNotAllowed, UpgradeRejected

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
