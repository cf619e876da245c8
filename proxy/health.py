"""Token health: expiry warnings, and the upstream's responses to each workspace's token.

EODH tokens live at most 30 days and are rotated by hand, so the proxy warns
ahead of a recorded expiry (at start, daily and on reload) and says plainly
which workspace's token the upstream rejected, and why that may be. Warnings
about a rejection are limited to one a minute per workspace, with a count of
the ones left out; the last status and rejection time stay for the status page.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable

from proxy.log import log
from proxy.vault import Credential, Vault

EXPIRY_WARNING_WINDOW = dt.timedelta(days=7)
EXPIRY_CHECK_INTERVAL = 24 * 3600.0
REJECTION_WARNING_INTERVAL = 60.0
EXPIRED_WARNING_INTERVAL = 3600.0
REJECTED_STATUSES = frozenset({401, 403})


def expiry_warnings(
    vault: Vault, now: dt.datetime, workspaces: Iterable[str] | None = None
) -> list[str]:
    """Return one warning per token in `workspaces` (default all) expired or expiring soon."""
    warnings = []
    for name in sorted(vault.workspaces if workspaces is None else workspaces):
        credential = vault.credentials.get(name)
        if credential is None or credential.expires is None:
            continue
        expires = f"{credential.expires:%Y-%m-%d %H:%M} UTC"
        fix = f"replace it with: eodh-proxy vault add {name}"
        if credential.expired(now):
            warnings.append(
                f"token for workspace {name} ({credential.token.fingerprint}) expired at "
                f"{expires}; it is still tried, but the platform will likely reject it; {fix}"
            )
        elif credential.expires - now <= EXPIRY_WARNING_WINDOW:
            left = credential.expires - now
            warnings.append(
                f"token for workspace {name} ({credential.token.fingerprint}) expires in "
                f"{_describe(left)}, at {expires}; {fix}"
            )
    return warnings


def _describe(left: dt.timedelta) -> str:
    hours = int(left.total_seconds() // 3600)
    if hours >= 48:
        return f"{hours // 24} days"
    return f"{hours} hours" if hours != 1 else "1 hour"


class TokenHealth:
    """The upstream's last response status for each workspace's token, and rate-limited warnings."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.last_status: dict[str, int] = {}
        self.last_rejected_at: dict[str, dt.datetime] = {}
        self._warned_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._expired_warned_at: dict[tuple[str, str], float] = {}

    def record(
        self, credential: Credential, path_workspace: str | None, status: int, target: str
    ) -> bool:
        """Note the upstream's status for a request that carried `credential`'s token.

        Returns True when the status is a rejection (401 or 403). Logs one warning
        naming the workspace and the likely cause, at most once a minute per workspace.
        """
        workspace = credential.workspace
        self.last_status[workspace] = status
        if status not in REJECTED_STATUSES:
            return False
        now = dt.datetime.now(dt.UTC)
        self.last_rejected_at[workspace] = now

        moment = self._clock()
        last = self._warned_at.get(workspace)
        if last is not None and moment - last < REJECTION_WARNING_INTERVAL:
            self._suppressed[workspace] = self._suppressed.get(workspace, 0) + 1
            return True
        self._warned_at[workspace] = moment
        left_out = self._suppressed.pop(workspace, 0)
        more = f" ({left_out} more since the last warning)" if left_out else ""
        log.warning(
            "upstream returned %d for %s with the token for workspace %s (%s): %s%s",
            status,
            target,
            workspace,
            credential.token.fingerprint,
            likely_cause(credential, path_workspace, status, now),
            more,
        )
        return True

    def warn_if_expired(self, credential: Credential, now: dt.datetime) -> None:
        """Warn that an expired token is being tried, at most once an hour per token."""
        if not credential.expired(now):
            return
        key = (credential.workspace, credential.token.fingerprint)
        moment = self._clock()
        last = self._expired_warned_at.get(key)
        if last is not None and moment - last < EXPIRED_WARNING_INTERVAL:
            return
        self._expired_warned_at[key] = moment
        log.warning(
            "token for workspace %s (%s) expired at %s UTC; trying it anyway",
            credential.workspace,
            credential.token.fingerprint,
            f"{credential.expires:%Y-%m-%d %H:%M}",
        )

    def forget(self, workspaces: Iterable[str]) -> None:
        """Drop what is known about these workspaces' tokens, after they changed."""
        for workspace in workspaces:
            self.last_status.pop(workspace, None)
            self.last_rejected_at.pop(workspace, None)
            self._warned_at.pop(workspace, None)
            self._suppressed.pop(workspace, None)


def likely_cause(
    credential: Credential, path_workspace: str | None, status: int, now: dt.datetime
) -> str:
    """Explain a 401 or 403 in words a user can act on."""
    workspace = credential.workspace
    fix = f"create a new token in the EODH web UI and run: eodh-proxy vault add {workspace}"
    if path_workspace is not None and path_workspace != workspace:
        return (
            f"the path is in workspace {path_workspace}, which has no token in the vault, so "
            f"the default workspace's token was sent; {path_workspace} may not share this "
            f"resource with other workspaces, or the token of {workspace} is expired or revoked"
        )
    if credential.expired(now):
        return f"the token expired at {credential.expires:%Y-%m-%d %H:%M} UTC; {fix}"
    if status == 401:
        return f"the token was not accepted: likely expired or revoked; {fix}"
    return (
        "likely an expired or revoked token, or a token of another workspace; the platform "
        f"is also known to reject some valid-looking tokens until a new one is made; {fix}"
    )
