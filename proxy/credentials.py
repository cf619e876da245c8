"""Choose the vault credential for a resolved route. Pure: no I/O, no logging."""

from __future__ import annotations

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
