"""Choose the vault credential for a resolved route. Pure: no I/O, no logging."""

from __future__ import annotations

from proxy import guards
from proxy.clients import Client
from proxy.errors import NoToken
from proxy.routes import Route
from proxy.vault import Credential, Vault


def choose_credential(route: Route, vault: Vault, default_workspace: str | None) -> Credential | None:
    """Return the credential whose token `route` gets, None for no token, or raise `NoToken`.

    A route family path with no token of its own gets the `default_workspace`
    token. A mount or files route names whose token to send, so it never does.
    """
    if route.workspace is None:
        return None
    credential = vault.get(route.workspace)
    if credential is None and default_workspace is not None and not route.chosen_explicitly:
        credential = vault.get(default_workspace)
    if credential is None:
        raise NoToken(
            f"no token for workspace {route.workspace!r} in vault {vault.path}; add one "
            f"with: eodh-proxy vault add {route.workspace} --vault {vault.path}"
        )
    return credential


def choose_granted_credential(
    route: Route, vault: Vault, default_workspace: str | None, client: Client | None, method: str
) -> Credential | None:
    """Choose the credential as `choose_credential` does, first checking a gateway client's grants.

    `client` is None when client credentials are off. Otherwise it must be granted
    `method` and the route's workspace, and also the credential's workspace, which
    differs when the route falls back to `default_workspace`. Raises `ClientForbidden`.
    """
    if client is not None:
        workspaces = [route.workspace] if route.workspace is not None else []
        guards.check_grant(client, method, workspaces)
    credential = choose_credential(route, vault, default_workspace)
    if client is not None and credential is not None:
        guards.check_grant(client, method, [credential.workspace])
    return credential
