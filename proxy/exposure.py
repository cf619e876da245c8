"""Safe exposure: a listener beyond loopback needs gateway clients, or an explicit override.

On loopback only programs on this machine can reach the proxy. On any other
address, anyone who can reach the port could spend the vault's tokens, so the
proxy will not start there unless the vault lists clients (and then every
request needs a client credential) or the user passed `--insecure-no-client-auth`.
"""

from __future__ import annotations

import ipaddress

from proxy.errors import ConfigError
from proxy.guards import DEFAULT_ALLOWED_HOSTS
from proxy.settings import Settings
from proxy.vault import Vault


def is_loopback_address(address: str) -> bool:
    """Return whether a bound socket address is loopback; wildcards such as 0.0.0.0 are not."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_exposure(settings: Settings, vault: Vault, *, exposed: bool) -> None:
    """Raise `ConfigError` when the listener is beyond loopback with no client to check."""
    if not exposed or vault.clients or settings.insecure_no_client_auth:
        return
    raise ConfigError(
        f"will not listen on {settings.listen}, which is not a loopback address, because "
        f"vault {vault.path} lists no clients and anyone who can reach the port could use its "
        f"tokens; add a client with: eodh-proxy client add NAME --workspace WS --vault "
        f"{vault.path} (or pass --insecure-no-client-auth if something else authenticates "
        "requests)"
    )


def exposure_warnings(settings: Settings, vault: Vault, *, exposed: bool) -> list[str]:
    """Return the start-up warnings about who can reach the listener."""
    warnings = []
    if exposed and not vault.clients and settings.insecure_no_client_auth:
        warnings.append(
            f"INSECURE: client authentication is off (--insecure-no-client-auth) and the proxy "
            f"listens on {settings.listen}, beyond loopback: this gateway is open to anyone who "
            "can reach it, and they can use every token in the vault"
        )
    if exposed and settings.allowed_hosts == DEFAULT_ALLOWED_HOSTS:
        warnings.append(
            "allowed_hosts lists only loopback names, so requests that reach this listener "
            "under another name or address are rejected; add the gateway's names to "
            "allowed_hosts in the config"
        )
    return warnings
