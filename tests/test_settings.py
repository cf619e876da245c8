"""Settings on their own: defaults, then the config file, then flags, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.routes import DEFAULT_FAMILIES
from proxy.settings import Origin, load_settings, parse_listen, parse_upstream


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XDG_CONFIG_HOME and working directory, so no user file is read."""
    home = tmp_path / "xdg"
    home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def config_file(folder: Path, text: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(text)
    return str(path)


def error_of(flags: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings(flags)
    return str(raised.value)


def test_defaults_without_config(config_home: Path) -> None:
    settings = load_settings({})

    assert settings.listen == "127.0.0.1:8080"
    assert settings.upstream == Origin("https", "staging.eodatahub.org.uk", 443)
    assert settings.vault_path == config_home / "eodh-proxy" / "vault.yaml"
    assert settings.config_path is None
    assert settings.ca_bundle is None
    assert settings.routes == DEFAULT_FAMILIES
    assert settings.default_workspace is None
    assert settings.connect_timeout == 10
    assert settings.read_timeout == 300
    assert settings.allow_http_upstream is False
    assert settings.access_log is True


def test_default_config_file_read(config_home: Path) -> None:
    config_file(config_home / "eodh-proxy", "listen: '127.0.0.1:9999'\n")
    settings = load_settings({})

    assert settings.config_path == config_home / "eodh-proxy" / "config.yaml"
    assert settings.listen == "127.0.0.1:9999"


def test_config_overrides_defaults_flags_override_config(tmp_path: Path) -> None:
    path = config_file(
        tmp_path / "etc",
        "listen: '127.0.0.1:9001'\nupstream: https://api.example\nread_timeout: 30\n",
    )
    settings = load_settings({"config": path, "listen": "127.0.0.1:9002", "upstream": None})

    assert settings.listen == "127.0.0.1:9002"
    assert settings.upstream == Origin("https", "api.example", 443)
    assert settings.read_timeout == 30
    assert settings.connect_timeout == 10


def test_config_paths_relative_to_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    path = config_file(folder, "vault: tokens.yaml\nca_bundle: certs/ca.pem\n")
    settings = load_settings({"config": path})

    assert settings.vault_path == folder / "tokens.yaml"
    assert settings.ca_bundle == folder / "certs" / "ca.pem"


def test_flag_paths_relative_to_working_directory(tmp_path: Path) -> None:
    path = config_file(tmp_path / "etc", "vault: tokens.yaml\nca_bundle: ca.pem\n")
    settings = load_settings({"config": path, "vault": "mine.yaml", "ca_bundle": "my-ca.pem"})

    assert settings.vault_path == Path("mine.yaml")
    assert settings.ca_bundle == Path("my-ca.pem")


def test_home_in_paths_expanded(tmp_path: Path) -> None:
    settings = load_settings({"vault": "~/vault.yaml"})

    assert settings.vault_path == Path.home() / "vault.yaml"


def test_unknown_config_key_names_line(tmp_path: Path) -> None:
    path = config_file(tmp_path / "etc", "listen: '127.0.0.1:0'\n\ncolour: red\n")
    message = error_of({"config": path})

    assert message.startswith(f"{path}, line 3: unknown key 'colour' (expected one of: listen,")


def test_given_config_must_exist(tmp_path: Path) -> None:
    message = error_of({"config": str(tmp_path / "absent.yaml")})

    assert message == f"{tmp_path / 'absent.yaml'}: config file not found"


def test_empty_config_means_defaults(tmp_path: Path) -> None:
    path = config_file(tmp_path / "etc", "# nothing set\n")

    assert load_settings({"config": path}).listen == "127.0.0.1:8080"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("read_timeout: 0\n", "line 1: 'read_timeout': expected a number of seconds from more than 0"),
        ("read_timeout: -5\n", "line 1: 'read_timeout': expected a number of seconds"),
        ("read_timeout: .nan\n", "line 1: 'read_timeout': expected a number of seconds"),
        ("connect_timeout: true\n", "line 1: 'connect_timeout': expected a number of seconds, found a boolean"),
        ("connect_timeout: [1]\n", "line 1: 'connect_timeout': expected a number of seconds, found a list"),
        ("access_log: 1\n", "line 1: 'access_log': expected true or false, found a number"),
        ("allow_http_upstream: yes please\n", "'allow_http_upstream': expected true or false, found a string"),
        ("routes: []\n", "'routes': expected a non-empty list of path prefixes"),
        ("routes: [ades]\n", "'routes': invalid route prefix 'ades': it must start with '/'"),
        ("routes: [/ades/]\n", "'routes': invalid route prefix '/ades/': it must not end with '/'"),
        ("routes: ['/a/../b']\n", "invalid route prefix '/a/../b': it must not hold empty, '.' or '..'"),
        ("routes: ['/a%2Fb']\n", "invalid route prefix '/a%2Fb': it may only hold unreserved path"),
        ("default_workspace: My_WS\n", "'default_workspace': invalid workspace name 'My_WS'"),
        ("default_workspace: 7\n", "'default_workspace': invalid workspace name '7'"),
        ("vault: 5\n", "line 1: 'vault': expected a file path, found a number"),
        ("vault: ''\n", "line 1: 'vault': expected a file path, found a string"),
        ("listen: 8080\n", "'listen': invalid listen address '8080'"),
        ("allowed_hosts: gateway.example\n", "'allowed_hosts': expected a list of host names"),
        ("allowed_hosts: ['*.com']\n", "'allowed_hosts': wildcard host '*.com' is too broad"),
        ("allowed_hosts: ['*.com.']\n", "wildcard host '*.com.' is too broad"),
        ("allowed_hosts: ['*..com']\n", "wildcard host '*..com' is too broad"),
        ("allowed_origins: [app.example]\n", "'allowed_origins': invalid origin 'app.example'"),
    ],
)
def test_invalid_value_names_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = config_file(tmp_path / "etc", text)
    message = error_of({"config": path})

    assert message.startswith(f"{path}, "), message
    assert expected in message


def test_flag_error_names_flag() -> None:
    message = error_of({"listen": "localhost"})

    assert message.startswith("--listen: invalid listen address 'localhost'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:80", ("localhost", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_listen_address_parsed(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text, "--listen") == expected


@pytest.mark.parametrize(
    "text", ["127.0.0.1", ":8080", "127.0.0.1:", "127.0.0.1:65536", "::1:8080", "[::zz]:80",
             "[127.0.0.1]:80", "host:port", "a b:80"],
)
def test_invalid_listen_address_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="^--listen: invalid"):
        parse_listen(text, "--listen")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://staging.eodatahub.org.uk", Origin("https", "staging.eodatahub.org.uk", 443)),
        ("https://API.Example:8443/", Origin("https", "api.example", 8443)),
        ("http://127.0.0.1:9000", Origin("http", "127.0.0.1", 9000)),
        ("http://localhost", Origin("http", "localhost", 80)),
        ("http://[::1]:9000", Origin("http", "::1", 9000)),
        ("http://api.localhost:9000", Origin("http", "api.localhost", 9000)),
    ],
)
def test_upstream_origin_parsed(text: str, expected: Origin) -> None:
    assert parse_upstream(text, "--upstream", allow_http=False) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ftp://api.example", "invalid upstream URL 'ftp://api.example'"),
        ("api.example", "invalid upstream URL 'api.example'"),
        ("https://", "invalid upstream URL 'https://'"),
        ("https://api.example/api", "must be an origin only, without a path or query"),
        ("https://api.example?x=1", "must be an origin only, without a path or query"),
        ("https://api.example#top", "must be an origin only, without a path or query"),
        ("https://user:secret@api.example", "must not hold a user name or password"),
        ("https://api.example:99999", "invalid port in upstream URL"),
        ("http://api.example", "plain http:// upstream api.example would send tokens unencrypted"),
        ("http://10.0.0.1:80", "plain http:// upstream 10.0.0.1 would send tokens unencrypted"),
    ],
)
def test_invalid_upstream_rejected(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_upstream(text, "--upstream", allow_http=False)

    assert str(raised.value).startswith("--upstream: ")
    assert expected in str(raised.value)
    assert "secret" not in str(raised.value)


def test_http_upstream_allowed_when_opted_in(tmp_path: Path) -> None:
    path = config_file(tmp_path / "etc", "upstream: http://api.example\nallow_http_upstream: true\n")
    settings = load_settings({"config": path})

    assert settings.upstream == Origin("http", "api.example", 80)
    assert settings.allow_http_upstream is True


def test_http_upstream_opt_in_needs_true(tmp_path: Path) -> None:
    path = config_file(tmp_path / "etc", "allow_http_upstream: false\n")
    message = error_of({"config": path, "upstream": "http://api.example"})

    assert message.startswith("--upstream: plain http:// upstream api.example")
    assert "allow_http_upstream: true" in message


@pytest.mark.parametrize(
    ("origin", "text"),
    [
        (Origin("https", "api.example", 443), "https://api.example"),
        (Origin("https", "api.example", 8443), "https://api.example:8443"),
        (Origin("http", "127.0.0.1", 80), "http://127.0.0.1"),
        (Origin("http", "::1", 9000), "http://[::1]:9000"),
    ],
)
def test_origin_shown_without_default_port(origin: Origin, text: str) -> None:
    assert str(origin) == text


def test_narrow_wildcard_hosts_accepted(tmp_path: Path) -> None:
    path = config_file(tmp_path, "allowed_hosts: ['*.example.org', '*.localhost']\n")
    settings = load_settings({"config": path})
    assert "*.example.org" in settings.allowed_hosts
