"""Vault loading: inline tokens, token sources, file modes, expiry, the redacted Token."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import logging
import pickle
from pathlib import Path

import pytest
import requests

from proxy.errors import ConfigError
from proxy.standin import USER_CATALOGS
from proxy.vault import (
    Credential,
    Token,
    fingerprint,
    load_vault,
    parse_entries,
    parse_expiry,
)
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


# Parsing the inline form, and the redacted Token type.


def test_inline_tokens_loaded_with_expiry(tmp_path: Path) -> None:
    path = vault_at(
        tmp_path,
        "workspaces:\n"
        "  beta-ws:\n    token: '  beta-secret  '\n"
        "  alpha-ws:\n    token: \"alpha-secret\"\n    expires: 2027-01-31\n",
    )
    vault = load_vault(path)
    alpha = vault.get("alpha-ws")
    beta = vault.get("beta-ws")

    assert vault.workspaces == ["alpha-ws", "beta-ws"]
    assert alpha is not None and beta is not None
    assert alpha.token.reveal() == "alpha-secret"
    assert beta.token.reveal() == "beta-secret"
    assert alpha.expires == dt.datetime(2027, 1, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert beta.expires is None
    assert vault.get("gamma-ws") is None


@pytest.mark.parametrize("text", ["", "# no entries yet\n", "workspaces:\n", "workspaces: {}\n"])
def test_vault_without_workspaces_is_empty(tmp_path: Path, text: str) -> None:
    assert load_vault(vault_at(tmp_path, text)).workspaces == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- alpha-ws\n", "line 1: expected a mapping of keys to values, found a list"),
        ("tokens:\n  alpha-ws: x\n", "line 1: unknown key 'tokens' in top level"),
        ("workspaces: [alpha-ws]\n", "line 1: 'workspaces' must be a mapping of workspace names"),
        ("workspaces:\n  alpha_ws:\n    token: x1\n", "line 2: invalid workspace name 'alpha_ws'"),
        ("workspaces:\n  Alpha-WS:\n    token: x1\n",
         "line 2: workspace name 'Alpha-WS' has upper-case letters (expected lower case"),
        ("workspaces:\n  alpha-ws: x1\n", "line 2: workspace 'alpha-ws' must be a mapping with a"),
        ("workspaces:\n  alpha-ws:\n    token: x1\n    note: hi\n",
         "line 4: unknown key 'note' in workspace 'alpha-ws'"),
        ("workspaces:\n  alpha-ws:\n    token: x1\n  alpha-ws:\n    token: x2\n",
         "line 4: invalid YAML: duplicate key 'alpha-ws'"),
        ("workspaces:\n  alpha-ws:\n    token: ''\n", "line 3: token of workspace 'alpha-ws' is empty"),
        ("workspaces:\n  alpha-ws:\n    token: x1\n    expires: next week\n",
         "line 4: invalid 'expires' value"),
    ],
)
def test_vault_mistake_names_line(tmp_path: Path, text: str, expected: str) -> None:
    path = vault_at(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_vault(path)

    assert str(raised.value).startswith(f"{path}, "), str(raised.value)
    assert expected in str(raised.value)


@pytest.mark.parametrize("value", ["123456789", "true", "2027-01-31", "[a, b]"])
def test_unquoted_token_value_never_shown(tmp_path: Path, value: str) -> None:
    path = vault_at(tmp_path, f"workspaces:\n  alpha-ws:\n    token: {value}\n")
    with pytest.raises(ConfigError) as raised:
        load_vault(path)

    assert "line 3: token of workspace 'alpha-ws' must be a string" in str(raised.value)
    assert "quote it" in str(raised.value)
    assert value not in str(raised.value)


def test_missing_vault_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_vault(tmp_path / "absent.yaml")

    assert str(raised.value) == f"{tmp_path / 'absent.yaml'}: vault file not found"


def token_renderings(token: Token) -> dict[str, str]:
    """Every way a token commonly reaches text, by name."""
    credential = Credential("alpha-ws", token)
    return {
        "str": str(token),
        "repr": repr(token),
        "format": format(token),
        "f-string": f"{token} {token!r} {token!s}",
        "percent": "%s %r" % (token, token),
        "in a list": str([token]),
        "in a dict": str({"alpha-ws": token}),
        "credential": repr(credential),
        "exception": str(ValueError(token)),
    }


def test_token_never_rendered_as_text() -> None:
    token = Token(SECRET)

    for how, text in token_renderings(token).items():
        assert SECRET not in text, how
        assert token.fingerprint in text, how


def test_token_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    token = Token(SECRET)
    logger = logging.getLogger("eodh_proxy.test")
    with caplog.at_level(logging.INFO, logger="eodh_proxy.test"):
        logger.info("token %s", token)
        logger.info("credential %r", Credential("alpha-ws", token))

    assert SECRET not in caplog.text
    assert token.fingerprint in caplog.text


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_token_cannot_be_pickled(protocol: int) -> None:
    with pytest.raises(TypeError) as raised:
        pickle.dumps(Token(SECRET), protocol=protocol)

    assert SECRET not in str(raised.value)


def test_token_cannot_be_copied_or_serialised() -> None:
    token = Token(SECRET)
    for action in (lambda: copy.copy(token), lambda: copy.deepcopy(token),
                   lambda: json.dumps(token)):
        with pytest.raises(TypeError) as raised:
            action()
        assert SECRET not in str(raised.value)


def test_token_has_no_instance_dict() -> None:
    with pytest.raises(TypeError):
        vars(Token(SECRET))


def test_fingerprint_is_short_stable_hash() -> None:
    expected = "sha256:" + hashlib.sha256(SECRET.encode()).hexdigest()[:12]

    assert fingerprint(SECRET) == expected
    assert Token(SECRET).fingerprint == expected


def test_tokens_compare_by_value() -> None:
    assert Token(SECRET) == Token(SECRET)
    assert Token(SECRET) != Token(SECRET + "x")
    assert hash(Token(SECRET)) == hash(Token(SECRET))
    assert Token(SECRET) != SECRET


def test_credential_expiry_is_inclusive_of_its_moment() -> None:
    moment = dt.datetime(2027, 1, 31, 12, 0, tzinfo=dt.UTC)
    credential = Credential("alpha-ws", Token(SECRET), expires=moment)

    assert not credential.expired(moment - dt.timedelta(seconds=1))
    assert credential.expired(moment)
    assert not Credential("alpha-ws", Token(SECRET)).expired(moment)
