"""`eodh-proxy client add|list|remove` through the real entry point, and the vault edits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.clients import authenticate
from proxy.standin import USER_CATALOGS
from proxy.vault import load_vault, parse_entries
from tests.conftest import ProxyProcess
from tests.gateway import serve_args
from tests.upstream import TOKENS, UpstreamServer

EXAMPLE = Path(__file__).parent.parent / "vault.example.yaml"
KEY_LINE = re.compile(r"^  (?P<key>[A-Za-z0-9_-]{43})$", re.MULTILINE)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def add_client(vault: Path, name: str, *flags: str) -> str:
    """Run `client add` and return the key it printed."""
    result = run_cli("client", "add", name, *flags, "--vault", str(vault))
    assert result.returncode == 0, result.stderr
    found = KEY_LINE.search(result.stdout)
    assert found is not None, result.stdout
    return found.group("key")


def test_add_prints_key_stores_digest(tmp_path: Path) -> None:
    vault = tmp_path / "vault.yaml"
    key = add_client(vault, "alice", "--workspace", "team-ws", "--workspace", "lab-ws")
    assert key not in vault.read_text()
    client = load_vault(vault).clients["alice"]
    assert authenticate({"alice": client}, "alice", key) is client
    assert client.workspaces == frozenset({"team-ws", "lab-ws"})
    assert client.methods is None


def test_add_prints_url_hint(tmp_path: Path) -> None:
    result = run_cli("client", "add", "alice", "--workspace", "*", "--vault", str(tmp_path / "v"))
    key = KEY_LINE.search(result.stdout).group("key")  # type: ignore[union-attr]
    assert f"http://alice:{key}@HOST:PORT/" in result.stdout


def test_add_writes_mode_0600(tmp_path: Path) -> None:
    vault = tmp_path / "vault.yaml"
    vault.write_text(EXAMPLE.read_text())
    vault.chmod(0o640)
    add_client(vault, "alice", "--workspace", "my-workspace")
    assert vault.stat().st_mode & 0o777 == 0o600
    assert [path.name for path in tmp_path.iterdir()] == ["vault.yaml"]


def test_client_without_workspaces(tmp_path: Path) -> None:
    """A monitoring probe's client: no workspace, only public paths and admin endpoints."""
    vault = tmp_path / "vault.yaml"
    add_client(vault, "probe", "--read-only")
    client = load_vault(vault).clients["probe"]
    assert client.workspaces == frozenset()
    listed = run_cli("client", "list", "--vault", str(vault)).stdout.splitlines()
    assert listed[1].split()[:2] == ["probe", "none"]


def test_read_only_flag_limits_methods(tmp_path: Path) -> None:
    vault = tmp_path / "vault.yaml"
    add_client(vault, "reader", "--workspace", "*", "--read-only")
    client = load_vault(vault).clients["reader"]
    assert client.methods == frozenset({"GET", "HEAD"})
    assert client.workspaces is None


def test_add_keeps_comments_and_entries(tmp_path: Path) -> None:
    vault = tmp_path / "vault.yaml"
    original = EXAMPLE.read_text()
    vault.write_text(original)
    vault.chmod(0o600)
    add_client(vault, "alice", "--workspace", "my-workspace")
    add_client(vault, "bob", "--workspace", "another-workspace", "--read-only")
    assert vault.read_text().startswith(original)
    parsed = parse_entries(vault)
    assert sorted(parsed.clients) == ["alice", "bob"]
    assert [entry.workspace for entry in parsed.entries] == [
        "my-workspace",
        "another-workspace",
        "from-a-file",
        "from-the-environment",
    ]


def test_remove_keeps_other_lines(tmp_path: Path) -> None:
    vault = tmp_path / "vault.yaml"
    original = EXAMPLE.read_text()
    vault.write_text(original)
    vault.chmod(0o600)
    add_client(vault, "alice", "--workspace", "my-workspace")
    with_alice = vault.read_text()
    add_client(vault, "bob", "--workspace", "my-workspace")
    result = run_cli("client", "remove", "bob", "--vault", str(vault))
    assert result.returncode == 0, result.stderr
    assert vault.read_text() == with_alice
    run_cli("client", "remove", "alice", "--vault", str(vault))
    assert vault.read_text() == original + "clients:\n"


def test_add_existing_name_rejected(tmp_path: Path) -> None:
    vault = tmp_path / "vault.yaml"
    add_client(vault, "alice", "--workspace", "team-ws")
    before = vault.read_text()
    result = run_cli("client", "add", "alice", "--workspace", "team-ws", "--vault", str(vault))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"eodh-proxy: error: {vault}: client 'alice' already exists; remove it first with: "
        f"eodh-proxy client remove alice --vault {vault}"
    )
    assert vault.read_text() == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["add", "al:ice", "--workspace", "w"], "invalid client name 'al:ice'"),
        (["add", "alice", "--workspace", "a/b"], "--workspace: invalid workspace name 'a/b'"),
        (["add", "alice", "--workspace", "*", "--workspace", "w"], "give it alone"),
        (["remove", "nobody"], "client 'nobody' not found"),
    ],
)
def test_client_command_mistakes(tmp_path: Path, args: list[str], expected: str) -> None:
    vault = tmp_path / "vault.yaml"
    vault.write_text("workspaces: {}\n")
    result = run_cli("client", *args, "--vault", str(vault))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_broken_vault_left_untouched(tmp_path: Path) -> None:
    vault = tmp_path / "vault.yaml"
    vault.write_text("workspaces:\n  a: [unclosed\n")
    result = run_cli("client", "add", "alice", "--workspace", "a", "--vault", str(vault))
    assert result.returncode == 2
    assert result.stderr.startswith(f"eodh-proxy: error: {vault}, line ")
    assert vault.read_text() == "workspaces:\n  a: [unclosed\n"


def test_list_shows_grants_not_secrets(tmp_path: Path) -> None:
    vault = tmp_path / "vault.yaml"
    alice = add_client(vault, "alice", "--workspace", "team-ws", "--read-only")
    add_client(vault, "ops", "--workspace", "*")
    digest = load_vault(vault).clients["alice"].key_sha256.hex()
    result = run_cli("client", "list", "--vault", str(vault))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "WORKSPACES", "METHODS", "KEY", "DIGEST"]
    assert lines[1].split() == ["alice", "team-ws", "GET,", "HEAD", f"sha256:{digest[:12]}"]
    assert lines[2].split()[:3] == ["ops", "*", "all"]
    assert digest not in result.stdout
    assert alice not in result.stdout


def test_added_client_reaches_gateway(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = tmp_path / "vault.yaml"
    vault.write_text(f"workspaces:\n  alpha-ws:\n    token: '{TOKENS['alpha-ws']}'\n")
    key = add_client(vault, "alice", "--workspace", "alpha-ws")
    process = ProxyProcess(
        serve_args(upstream, vault, "127.0.0.1:0"),
        env=isolated_env,
    ).wait_ready()
    try:
        url = f"http://alice:{key}@127.0.0.1:{process.port}{USER_CATALOGS}/alpha-ws/processes"
        result = subprocess.run(
            ["curl", "-sS", "-o", os.devnull, "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.stdout == "200", result.stderr
    finally:
        process.stop()
    assert key not in process.output
