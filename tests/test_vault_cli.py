"""`eodh-proxy vault add|list|remove`, run through the real entry point."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.vault import fingerprint, load_vault

SECRET = "new-token-9f8e7d6c5b4a"


def cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def token_of(path: Path, workspace: str) -> str:
    credential = load_vault(path).get(workspace)
    assert credential is not None, workspace
    return credential.token.reveal()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def test_add_creates_private_vault(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "new" / "vault.yaml"
    result = cli("vault", "add", "alpha-ws", "--vault", str(path), stdin=SECRET + "\n", env=env)
    assert result.returncode == 0, result.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert token_of(path, "alpha-ws") == SECRET
    assert fingerprint(SECRET) in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_add_default_vault_location(tmp_path: Path, env: dict[str, str]) -> None:
    result = cli("vault", "add", "alpha-ws", stdin=SECRET, env=env)
    assert result.returncode == 0, result.stderr
    assert token_of(tmp_path / "xdg" / "eodh-proxy" / "vault.yaml", "alpha-ws") == SECRET


def test_add_uses_config_vault(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "xdg" / "eodh-proxy" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("vault: team-vault.yaml\n")
    result = cli("vault", "add", "alpha-ws", stdin=SECRET, env=env)
    assert result.returncode == 0, result.stderr
    assert token_of(config.parent / "team-vault.yaml", "alpha-ws") == SECRET


def test_add_keeps_entries_and_comments(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text(
        "# my tokens\n"
        "workspaces:\n"
        "  # the team's\n"
        "  alpha-ws:\n"
        "    token: 'old-alpha'   # rotated monthly\n"
        "    expires: 2020-01-01\n"
        "  beta-ws:\n"
        "    token_env: BETA\n"
    )
    path.chmod(0o600)

    result = cli(
        "vault", "add", "alpha-ws", "--vault", str(path), "--expires", "2027-01-31",
        stdin=SECRET, env=env,
    )

    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert "# my tokens\n" in text
    assert "  # the team's\n" in text
    assert "old-alpha" not in text
    assert "2020-01-01" not in text
    assert "    token_env: BETA\n" in text

    vault = load_vault(path, environ={"BETA": "beta-token"})
    assert vault.workspaces == ["alpha-ws", "beta-ws"]
    alpha = vault.get("alpha-ws")
    assert alpha is not None
    assert alpha.token.reveal() == SECRET
    assert alpha.expires is not None
    assert alpha.expires.date().isoformat() == "2027-01-31"


def test_add_appends_in_existing_layout(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text("workspaces:\n    alpha-ws:\n        token: 'a-token'\n# end\n")
    path.chmod(0o600)
    result = cli("vault", "add", "beta-ws", "--vault", str(path), stdin=SECRET, env=env)
    assert result.returncode == 0, result.stderr
    assert path.read_text() == (
        "workspaces:\n    alpha-ws:\n        token: 'a-token'\n"
        f'    beta-ws:\n        token: "{SECRET}"\n# end\n'
    )


def test_add_to_flow_mapping_keeps_entries(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text("workspaces: {alpha-ws: {token: a-token}, beta-ws: {token: b-token}}\n")
    path.chmod(0o600)
    result = cli("vault", "add", "gamma-ws", "--vault", str(path), stdin=SECRET, env=env)
    assert result.returncode == 0, result.stderr
    assert "written anew, without its comments" in result.stdout
    assert load_vault(path).workspaces == ["alpha-ws", "beta-ws", "gamma-ws"]
    assert token_of(path, "alpha-ws") == "a-token"


def test_add_follows_symlink(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "real" / "vault.yaml"
    target.parent.mkdir()
    target.write_text("workspaces:\n  alpha-ws:\n    token: a-token\n")
    target.chmod(0o600)
    link = tmp_path / "vault.yaml"
    link.symlink_to(target)
    result = cli("vault", "add", "beta-ws", "--vault", str(link), stdin=SECRET, env=env)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert token_of(target, "beta-ws") == SECRET


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "the token is empty"),
        ("\n", "the token is empty"),
        ("one\ntwo\n", "expected one line holding the token, found several lines"),
        ("has space", "contains spaces"),
    ],
)
def test_add_rejects_bad_input(
    tmp_path: Path, env: dict[str, str], stdin: str, message: str
) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text("workspaces:\n  alpha-ws:\n    token: a-token\n")
    path.chmod(0o600)
    before = path.read_text()
    result = cli("vault", "add", "beta-ws", "--vault", str(path), stdin=stdin, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert path.read_text() == before


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("token_file: alpha.token", "takes its token from token_file alpha.token (vault not "
         "changed); to rotate it, write the new token to {folder}/alpha.token, or run "
         "'eodh-proxy vault remove alpha-ws' first"),
        ("token_env: ALPHA_TOKEN", "takes its token from token_env ALPHA_TOKEN (vault not "
         "changed); to rotate it, set the environment variable ALPHA_TOKEN to the new token, "
         "or run 'eodh-proxy vault remove alpha-ws' first"),
    ],
    ids=["token-file", "token-env"],
)
def test_add_keeps_external_token_source(
    tmp_path: Path, env: dict[str, str], entry: str, message: str
) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text(f"workspaces:\n  alpha-ws:\n    {entry}\n")
    path.chmod(0o600)
    before = path.read_text()
    result = cli("vault", "add", "alpha-ws", "--vault", str(path), stdin=SECRET, env=env)

    assert result.returncode == 2
    assert message.format(folder=tmp_path) in result.stderr
    assert result.stderr.startswith(f"eodh-proxy: error: {path}, line 3: workspace 'alpha-ws'")
    assert result.stderr.count("\n") == 1
    assert path.read_text() == before


def test_add_rejects_invalid_expiry(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "vault.yaml"
    result = cli("vault", "add", "alpha-ws", "--vault", str(path), "--expires", "soon",
                 stdin=SECRET, env=env)
    assert result.returncode == 2
    assert "--expires: invalid 'expires' value" in result.stderr
    assert not path.exists()


def test_add_leaves_invalid_vault_unchanged(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text("workspaces:\n  alpha-ws:\n    token: a-token\n    colour: blue\n")
    path.chmod(0o600)
    before = path.read_text()
    result = cli("vault", "add", "beta-ws", "--vault", str(path), stdin=SECRET, env=env)
    assert result.returncode == 2
    assert "vault not changed" in result.stderr
    assert "unknown key 'colour'" in result.stderr
    assert path.read_text() == before


def test_add_waits_for_other_writer(tmp_path: Path, env: dict[str, str]) -> None:
    """While another writer holds the vault folder's lock, `vault add` waits, then keeps its entry."""
    path = tmp_path / "vault.yaml"
    path.write_text("workspaces:\n  alpha-ws:\n    token: a-token\n")
    path.chmod(0o600)
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(folder, fcntl.LOCK_EX)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "vault", "add", "gamma-ws", "--vault", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        assert process.stdin is not None
        process.stdin.write(SECRET)
        process.stdin.close()
        wait_until_blocked_on_lock(process.pid)
        path.write_text("workspaces:\n  alpha-ws:\n    token: a-token\n  beta-ws:\n    token: b\n")
    finally:
        os.close(folder)
    assert process.wait(30) == 0
    assert load_vault(path).workspaces == ["alpha-ws", "beta-ws", "gamma-ws"]


def wait_until_blocked_on_lock(pid: int, timeout: float = 15) -> None:
    """Poll /proc/locks until process `pid` waits for a lock (a line marked "->")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "->" and fields[5] == str(pid):
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never waited for the vault folder's lock")


def test_add_prompts_hidden_on_terminal(tmp_path: Path, env: dict[str, str]) -> None:
    """On a terminal the token is asked for without echo, and never appears on the screen."""
    path = tmp_path / "vault.yaml"
    controller, terminal = pty.openpty()
    # In a new session, make the pty the controlling terminal (which getpass opens as
    # /dev/tty), then run the command.
    take_terminal = (
        "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", take_terminal,
         "-m", "proxy", "vault", "add", "alpha-ws", "--vault", str(path)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        env={**os.environ, **env},
    )
    os.close(terminal)
    screen = read_until(controller, b"(input hidden): ")
    os.write(controller, SECRET.encode() + b"\n")
    assert process.wait(30) == 0
    screen += read_until(controller, b"")
    os.close(controller)
    assert b"Token for workspace alpha-ws" in screen
    assert SECRET.encode() not in screen
    assert token_of(path, "alpha-ws") == SECRET


def read_until(descriptor: int, marker: bytes, timeout: float = 20) -> bytes:
    """Read from a pty until `marker` shows (or, with an empty marker, until it closes)."""
    seen = b""
    while not marker or marker not in seen:
        ready, _, _ = select.select([descriptor], [], [], timeout)
        assert ready, f"nothing more from the terminal; so far: {seen!r}"
        try:
            chunk = os.read(descriptor, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_list_shows_fingerprints_not_tokens(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text(
        f"workspaces:\n  beta-ws:\n    token_env: BETA_TOKEN\n"
        f"  alpha-ws:\n    token: {SECRET}\n    expires: 2027-01-31\n"
    )
    path.chmod(0o600)
    result = cli("vault", "list", "--vault", str(path), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["WORKSPACE", "FINGERPRINT", "EXPIRES", "SOURCE", "NOTE"]
    assert lines[1].split() == ["alpha-ws", fingerprint(SECRET), "2027-01-31", "token"]
    assert lines[2].split()[:5] == ["beta-ws", "-", "-", "token_env", "BETA_TOKEN"]
    assert "environment variable BETA_TOKEN for workspace 'beta-ws' is not set" in lines[2]
    assert SECRET not in result.stdout + result.stderr


def test_list_marks_expired_token(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text(f"workspaces:\n  alpha-ws:\n    token: {SECRET}\n    expires: 2020-01-31\n")
    path.chmod(0o600)
    result = cli("vault", "list", "--vault", str(path), env=env)
    assert result.stdout.splitlines()[1].endswith("expired")


def test_remove_deletes_only_that_entry(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text(
        "workspaces:\n  alpha-ws:\n    token: a-token\n    # note\n  beta-ws:\n    token: b-token\n"
    )
    path.chmod(0o600)
    result = cli("vault", "remove", "alpha-ws", "--vault", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert path.read_text() == "workspaces:\n    # note\n  beta-ws:\n    token: b-token\n"
    assert path.stat().st_mode & 0o777 == 0o600


def test_remove_unknown_workspace_fails(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text("workspaces:\n  alpha-ws:\n    token: a-token\n")
    path.chmod(0o600)
    result = cli("vault", "remove", "beta-ws", "--vault", str(path), env=env)
    assert result.returncode == 2
    assert result.stderr == (
        f"eodh-proxy: error: {path}: no workspace 'beta-ws' in the vault (workspaces: alpha-ws)\n"
    )


def test_remove_last_entry_keeps_valid_vault(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text("# tokens\nworkspaces:\n  alpha-ws:\n    token: a-token\n")
    path.chmod(0o600)
    result = cli("vault", "remove", "alpha-ws", "--vault", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert path.read_text() == "# tokens\nworkspaces:\n"
    assert load_vault(path).workspaces == []
