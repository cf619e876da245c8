"""Vault loading: token sources, file modes, expiry values."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import requests

from proxy.errors import ConfigError
from proxy.standin import USER_CATALOGS
from proxy.vault import load_vault, parse_entries, parse_expiry
from tests.conftest import ProxyProcess
from tests.upstream import TOKENS, UpstreamServer

SECRET = "s3cret-value-never-shown"


def vault_at(folder: Path, text: str, mode: int = 0o600) -> Path:
    path = folder / "vault.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_token_file_first_line_used(tmp_path: Path) -> None:
    private_file(tmp_path / "alpha.token", "alpha-from-file\r\nsecond line\n")
    vault = load_vault(
        vault_at(tmp_path, "workspaces:\n  alpha-ws:\n    token_file: alpha.token\n")
    )
    credential = vault.get("alpha-ws")
    assert credential is not None
    assert credential.token.reveal() == "alpha-from-file"


def test_token_file_listed_for_watching(tmp_path: Path) -> None:
    token_file = private_file(tmp_path / "alpha.token", "alpha-from-file\n")
    vault = load_vault(
        vault_at(tmp_path, f"workspaces:\n  alpha-ws:\n    token_file: {token_file}\n")
    )
    assert vault.token_files == (token_file,)


def test_token_env_read(tmp_path: Path) -> None:
    vault = load_vault(
        vault_at(tmp_path, "workspaces:\n  alpha-ws:\n    token_env: ALPHA_TOKEN\n"),
        environ={"ALPHA_TOKEN": "alpha-from-env\n"},
    )
    credential = vault.get("alpha-ws")
    assert credential is not None
    assert credential.token.reveal() == "alpha-from-env"


def test_token_env_missing_names_workspace(tmp_path: Path) -> None:
    path = vault_at(tmp_path, "workspaces:\n  alpha-ws:\n    token_env: ALPHA_TOKEN\n")
    with pytest.raises(ConfigError) as raised:
        load_vault(path, environ={})
    message = str(raised.value)
    assert message.startswith(f"{path}, line 3: ")
    assert "'alpha-ws'" in message
    assert "ALPHA_TOKEN" in message


def test_token_file_missing_names_workspace(tmp_path: Path) -> None:
    path = vault_at(tmp_path, "workspaces:\n  alpha-ws:\n    token_file: gone.token\n")
    with pytest.raises(ConfigError) as raised:
        load_vault(path)
    message = str(raised.value)
    assert message.startswith(f"{path}, line 3: ")
    assert "'alpha-ws'" in message
    assert str(tmp_path / "gone.token") in message


def test_malformed_token_never_quoted(tmp_path: Path) -> None:
    private_file(tmp_path / "bad.token", f"{SECRET} with spaces\n")
    cases = [
        ("token_file: bad.token", {}),
        ("token_env: BAD", {"BAD": f"{SECRET} with spaces"}),
        (f"token: '{SECRET} with spaces'", {}),
    ]
    for source, environ in cases:
        path = vault_at(tmp_path, f"workspaces:\n  alpha-ws:\n    {source}\n")
        with pytest.raises(ConfigError) as raised:
            load_vault(path, environ=environ)
        assert SECRET not in str(raised.value), source
        assert "alpha-ws" in str(raised.value), source


def test_two_token_sources_rejected(tmp_path: Path) -> None:
    path = vault_at(
        tmp_path, "workspaces:\n  alpha-ws:\n    token: abc\n    token_env: ALPHA\n"
    )
    with pytest.raises(ConfigError, match=r"line 4: workspace 'alpha-ws' has both token and "
                       r"token_env \(expected exactly one"):
        load_vault(path)


def test_no_token_source_rejected(tmp_path: Path) -> None:
    path = vault_at(tmp_path, "workspaces:\n  alpha-ws:\n    expires: 2027-01-31\n")
    with pytest.raises(ConfigError, match="line 2: workspace 'alpha-ws' has no token"):
        load_vault(path)


@pytest.mark.parametrize("mode", [0o666, 0o602, 0o620])
def test_vault_writable_by_others_rejected(tmp_path: Path, mode: int) -> None:
    path = vault_at(tmp_path, f"workspaces:\n  alpha-ws:\n    token: {SECRET}\n", mode)
    with pytest.raises(ConfigError) as raised:
        load_vault(path)
    assert "can be written by other users" in str(raised.value)
    assert f"chmod 600 {path}" in str(raised.value)


def test_vault_readable_by_others_warns(tmp_path: Path) -> None:
    path = vault_at(tmp_path, f"workspaces:\n  alpha-ws:\n    token: {SECRET}\n", 0o644)
    vault = load_vault(path)
    assert len(vault.warnings) == 1
    assert "can be read by other users (mode 0644)" in vault.warnings[0]


def test_private_vault_has_no_warning(tmp_path: Path) -> None:
    path = vault_at(tmp_path, f"workspaces:\n  alpha-ws:\n    token: {SECRET}\n")
    assert load_vault(path).warnings == ()


def test_token_file_writable_by_others_rejected(tmp_path: Path) -> None:
    private_file(tmp_path / "alpha.token", SECRET, 0o646)
    path = vault_at(tmp_path, "workspaces:\n  alpha-ws:\n    token_file: alpha.token\n")
    with pytest.raises(ConfigError, match="token_file of workspace 'alpha-ws' can be written"):
        load_vault(path)


def test_symlinked_vault_checks_target_mode(tmp_path: Path) -> None:
    """A mounted Kubernetes secret is a link (mode 0777) to a private file."""
    target = vault_at(tmp_path, f"workspaces:\n  alpha-ws:\n    token: {SECRET}\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert load_vault(link).warnings == ()


def test_example_vault_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "vault.example.yaml"
    path = vault_at(tmp_path, example.read_text())
    names = [entry.workspace for entry in parse_entries(path).entries]
    assert names == ["my-workspace", "another-workspace", "from-a-file", "from-the-environment"]


def test_quoted_date_expiry_is_end_of_day() -> None:
    quoted = parse_expiry("2027-01-31", "test")
    unquoted = parse_expiry(dt.date(2027, 1, 31), "test")
    assert quoted == unquoted
    assert quoted == dt.datetime(2027, 1, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)


def test_timestamp_expiry_converted_to_utc() -> None:
    when = parse_expiry("2027-01-31T12:00:00+01:00", "test")
    assert when == dt.datetime(2027, 1, 31, 11, 0, tzinfo=dt.UTC)


def test_proxy_sends_file_and_env_tokens(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    private_file(tmp_path / "alpha.token", TOKENS["alpha-ws"] + "\n")
    path = vault_at(
        tmp_path,
        "workspaces:\n  alpha-ws:\n    token_file: alpha.token\n"
        "  beta-ws:\n    token_env: BETA_TOKEN\n",
    )
    proxy = ProxyProcess(
        ["serve", "--listen", "127.0.0.1:0", "--upstream", upstream.origin, "--vault", str(path)],
        env={**isolated_env, "BETA_TOKEN": TOKENS["beta-ws"]},
    ).wait_ready()
    try:
        for workspace in ("alpha-ws", "beta-ws"):
            response = requests.get(f"{proxy.url}{USER_CATALOGS}/{workspace}/processes", timeout=10)
            assert response.status_code == 200, workspace
            headers = upstream.state.received[-1].headers
            assert headers["Authorization"] == [f"Bearer {TOKENS[workspace]}"]
    finally:
        proxy.stop()


def test_serve_rejects_vault_others_can_write(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    path = vault_at(tmp_path, f"workspaces:\n  alpha-ws:\n    token: {SECRET}\n", 0o666)
    proxy = ProxyProcess(
        ["serve", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9",
         "--vault", str(path)],
        env=isolated_env,
    )
    code = proxy.process.wait(15)
    proxy.stop()
    assert code == 2
    expected = (
        f"eodh-proxy: error: {path}: vault file can be written by other users (mode 0666); "
        f"anyone who can change it controls which token is sent; run: chmod 600 {path}"
    )
    assert proxy.lines == [expected]
