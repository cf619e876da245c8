"""`eodh-proxy check`: ask the upstream whether it accepts each token in the vault.

For every workspace, one cheap authenticated request goes to the configured
upstream through the same seam the proxy uses (`proxy.upstream`): GET of the
workspace's process list in the workflow runner. A 2xx means the token was
accepted; 401 and 403 mean it was rejected. Anything else is reported as
unclear, and so is a failure to reach the upstream. The body is never read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from dataclasses import dataclass
from typing import TextIO

from proxy.errors import UpstreamError
from proxy.health import EXPIRY_WARNING_WINDOW
from proxy.routes import DEFAULT_FAMILIES
from proxy.settings import Settings
from proxy.upstream import Upstream, UpstreamOptions
from proxy.vault import Credential, Vault, load_vault
from proxy.vaultcmd import print_table

# The workflow runner's list of a workspace's processes: small, and behind the token check.
PROCESS_LIST = DEFAULT_FAMILIES[0] + "/{workspace}/processes"
# Requests sent to the upstream at once.
MAX_CONCURRENT = 8


@dataclass(frozen=True, slots=True)
class Outcome:
    workspace: str
    status: int | None
    """The upstream's HTTP status, or None when no response came."""
    verdict: str
    accepted: bool


def run_check(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Check every token in the vault and print a table; return 0 if all were accepted, else 1."""
    vault = load_vault(settings.vault_path)
    for warning in vault.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not vault.credentials:
        print(f"{vault.path}: no workspaces to check; add one with: "
              "eodh-proxy vault add WORKSPACE", file=out)
        return 1

    print(f"checking {len(vault.credentials)} token(s) from {vault.path} "
          f"against {settings.upstream}", file=out)
    outcomes = asyncio.run(check_tokens(settings, vault))
    rows = [("WORKSPACE", "STATUS", "VERDICT")]
    rows += [
        (outcome.workspace, "-" if outcome.status is None else str(outcome.status),
         outcome.verdict)
        for outcome in outcomes
    ]
    print_table(rows, out)
    return 0 if all(outcome.accepted for outcome in outcomes) else 1


async def check_tokens(settings: Settings, vault: Vault) -> list[Outcome]:
    """Return one `Outcome` per workspace, in name order."""
    upstream = Upstream(
        UpstreamOptions(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            ca_bundle=settings.ca_bundle,
        )
    )
    await upstream.start()
    limit = asyncio.Semaphore(MAX_CONCURRENT)
    now = dt.datetime.now(dt.UTC)

    async def check(name: str) -> Outcome:
        async with limit:
            return await check_token(upstream, str(settings.upstream), vault.credentials[name], now)

    try:
        return list(await asyncio.gather(*(check(name) for name in vault.workspaces)))
    finally:
        await upstream.close()


async def check_token(
    upstream: Upstream, origin: str, credential: Credential, now: dt.datetime
) -> Outcome:
    workspace = credential.workspace
    url = origin + PROCESS_LIST.format(workspace=workspace)
    headers = {
        "Authorization": "Bearer " + credential.token.reveal(),
        "Accept": "application/json",
    }
    try:
        async with upstream.request("GET", url, headers, None) as response:
            status = response.status
    except UpstreamError as error:
        return Outcome(workspace, None, f"unclear: {error.detail}", accepted=False)
    accepted = 200 <= status < 300
    return Outcome(workspace, status, verdict(credential, status, now), accepted)


def verdict(credential: Credential, status: int, now: dt.datetime) -> str:
    """Describe the upstream's status for a token in a few words, with any expiry note."""
    expires = credential.expires
    if 200 <= status < 300:
        text = "accepted"
        if expires is not None and expires <= now:
            text += f"; its recorded expiry {expires:%Y-%m-%d %H:%M} UTC has passed"
        elif expires is not None and expires - now <= EXPIRY_WARNING_WINDOW:
            text += f"; expires {expires:%Y-%m-%d %H:%M} UTC"
        return text
    if status == 401:
        text = "rejected: token not accepted, likely expired or revoked"
    elif status == 403:
        text = "rejected: expired or revoked token, or a token of another workspace"
    else:
        return f"unclear: the upstream returned {status}, neither acceptance nor rejection"
    if expires is not None and expires <= now:
        text += f" (expired {expires:%Y-%m-%d %H:%M} UTC)"
    return text + f"; replace it with: eodh-proxy vault add {credential.workspace}"
