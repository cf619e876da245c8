"""`eodh-proxy check`, run through the real entry point against the stand-in upstream."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.check import verdict
from proxy.standin import USER_CATALOGS
from proxy.vault import Credential, Token
from tests.conftest import free_port
from tests.upstream import TOKENS, UpstreamServer

STALE = "stale-token-for-check-0000"


def check(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def private_vault(path: Path, tokens: dict[str, str]) -> Path:
    path.write_text(
        "workspaces:\n"
        + "".join(f"  {ws}:\n    token: '{token}'\n" for ws, token in tokens.items())
    )
    path.chmod(0o600)
    return path


def table(output: str) -> dict[str, list[str]]:
    """Map each workspace row of the table to its status and verdict."""
    lines = output.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("WORKSPACE"))
    rows = {}
    for line in lines[start + 1 :]:
        workspace, status, verdict_text = line.split(maxsplit=2)
        rows[workspace] = [status, verdict_text]
    return rows


def test_check_all_accepted(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    vault = private_vault(tmp_path / "vault.yaml",
                          {"alpha-ws": TOKENS["alpha-ws"], "beta-ws": TOKENS["beta-ws"]})
    before = len(upstream.state.received)
    result = check("--vault", str(vault), "--upstream", upstream.origin, env=isolated_env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert table(result.stdout) == {
        "alpha-ws": ["200", "accepted"],
        "beta-ws": ["200", "accepted"],
    }
    sent = upstream.state.received[before:]
    assert sorted(request.raw_path for request in sent) == [
        f"{USER_CATALOGS}/alpha-ws/processes", f"{USER_CATALOGS}/beta-ws/processes"
    ]
    for request in sent:
        assert request.method == "GET"
        assert request.headers["Authorization"] == [f"Bearer {TOKENS[request.workspace or '']}"]


def test_check_rejected_token_fails(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    vault = private_vault(tmp_path / "vault.yaml",
                          {"alpha-ws": TOKENS["alpha-ws"], "beta-ws": STALE})
    result = check("--vault", str(vault), "--upstream", upstream.origin, env=isolated_env)

    assert result.returncode == 1
    rows = table(result.stdout)
    assert rows["alpha-ws"] == ["200", "accepted"]
    assert rows["beta-ws"][0] == "403"
    assert rows["beta-ws"][1].startswith("rejected: expired or revoked token")
    assert "eodh-proxy vault add beta-ws" in rows["beta-ws"][1]
    for secret in (*TOKENS.values(), STALE):
        assert secret not in result.stdout + result.stderr


def test_check_unreachable_upstream_fails(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = private_vault(tmp_path / "vault.yaml", {"alpha-ws": TOKENS["alpha-ws"]})
    closed = f"http://127.0.0.1:{free_port()}"
    result = check("--vault", str(vault), "--upstream", closed, env=isolated_env)

    assert result.returncode == 1
    status, verdict_text = table(result.stdout)["alpha-ws"]
    assert status == "-"
    assert verdict_text.startswith("unclear: cannot connect to upstream host 127.0.0.1")


def test_check_uses_config_upstream(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    private_vault(tmp_path / "vault.yaml", {"alpha-ws": TOKENS["alpha-ws"]})
    config = tmp_path / "config.yaml"
    config.write_text(f"upstream: '{upstream.origin}'\nvault: vault.yaml\n")
    result = check("--config", str(config), env=isolated_env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"against {upstream.origin}" in result.stdout


def test_check_invalid_vault_is_usage_error(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = tmp_path / "vault.yaml"
    vault.write_text("workspaces:\n  alpha-ws:\n    tokn: x\n")
    vault.chmod(0o600)
    result = check("--vault", str(vault), "--upstream", "http://127.0.0.1:9", env=isolated_env)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"eodh-proxy: error: {vault}, line 3: unknown key 'tokn' in workspace 'alpha-ws' "
        "(expected one of: token, token_file, token_env, expires)\n"
    )


def test_check_empty_vault_fails(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    vault = private_vault(tmp_path / "vault.yaml", {})
    result = check("--vault", str(vault), "--upstream", "http://127.0.0.1:9", env=isolated_env)
    assert result.returncode == 1
    assert "no workspaces to check" in result.stdout


NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("status", "expires", "expected"),
    [
        (200, None, "accepted"),
        (200, NOW + dt.timedelta(days=2), "accepted; expires 2026-12-06 12:00 UTC"),
        (200, NOW - dt.timedelta(days=2),
         "accepted; its recorded expiry 2026-12-02 12:00 UTC has passed"),
        (401, None, "rejected: token not accepted, likely expired or revoked; replace it with: "
                    "eodh-proxy vault add a-ws"),
        (404, None, "unclear: the upstream returned 404, neither acceptance nor rejection"),
    ],
)
def test_verdict_by_status(status: int, expires: dt.datetime | None, expected: str) -> None:
    assert verdict(Credential("a-ws", Token("t"), expires), status, NOW) == expected
