"""`eodh-proxy explain URL`: the proxy's decisions printed, nothing sent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from proxy.errors import ClientRequestError
from proxy.explain import split_url
from proxy.standin import USER_CATALOGS
from proxy.vault import fingerprint
from tests.conftest import ProxyProcess
from tests.gateway import key_of, secrets_in, serve_args, write_gateway_vault
from tests.upstream import TOKENS, UpstreamServer


def run_explain(
    url: str, upstream: UpstreamServer, vault: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "explain", url, "--upstream", upstream.origin,
         "--vault", str(vault), "--files-upstream", upstream.files_template, *extra],
        capture_output=True, text=True, timeout=30, check=False, env={**os.environ, **env},
    )


def fields(output: str) -> dict[str, str]:
    return {
        name.strip(): value.strip()
        for name, _, value in (line.partition(":") for line in output.splitlines())
    }


def test_family_route_explained(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    before = len(upstream.state.received)
    target = f"{USER_CATALOGS}/alpha-ws/processes?limit=2&x=%2F"
    result = run_explain(f"http://localhost:8080{target}", upstream, vault_file, isolated_env)

    assert result.returncode == 0, result.stderr
    shown = fields(result.stdout)
    assert shown["route"] == f"route family {USER_CATALOGS}"
    assert shown["workspace"] == "alpha-ws"
    assert shown["token"] == f"{fingerprint(TOKENS['alpha-ws'])} (workspace alpha-ws)"
    assert shown["upstream"] == upstream.origin + target
    assert len(upstream.state.received) == before


def test_mount_explained(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    result = run_explain(
        f"/as/beta-ws{USER_CATALOGS}/alpha-ws/processes", upstream, vault_file, isolated_env
    )
    shown = fields(result.stdout)
    assert shown["route"] == "workspace mount /as/beta-ws"
    assert shown["token"] == f"{fingerprint(TOKENS['beta-ws'])} (workspace beta-ws)"
    assert shown["upstream"] == f"{upstream.origin}{USER_CATALOGS}/alpha-ws/processes"


def test_files_route_explained(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    result = run_explain("/files-of/alpha-ws/files/b/k.tif", upstream, vault_file, isolated_env)
    shown = fields(result.stdout)
    assert shown["route"] == "workspace files /files-of/alpha-ws"
    files_origin = upstream.files_template.removesuffix("/{workspace}")
    assert shown["upstream"] == f"{files_origin}/alpha-ws/files/b/k.tif"


def test_public_path_explained(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    result = run_explain("http://127.0.0.1:8080/api/catalogue/stac/", upstream, vault_file, isolated_env)
    shown = fields(result.stdout)
    assert shown["workspace"] == "-"
    assert shown["token"] == "none"
    assert shown["upstream"] == f"{upstream.origin}/api/catalogue/stac/"


def test_default_workspace_named(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("default_workspace: alpha-ws\n")
    result = run_explain(
        f"{USER_CATALOGS}/gamma-ws/processes", upstream, vault_file, isolated_env,
        "--config", str(config),
    )
    shown = fields(result.stdout)
    assert shown["workspace"] == "gamma-ws"
    assert shown["token"] == (
        f"{fingerprint(TOKENS['alpha-ws'])} (workspace alpha-ws, the default workspace)"
    )


@pytest.mark.parametrize(
    ("url", "status", "reason"),
    [
        (f"{USER_CATALOGS}/gamma-ws/processes", "403", "no token for workspace 'gamma-ws'"),
        ("/as/gamma-ws/api/x", "403", "no token for workspace 'gamma-ws'"),
        (f"{USER_CATALOGS}/alpha-ws/../beta-ws/x", "400", "'..' segment"),
        ("http://evil.example:8080/x", "421", "host 'evil.example' is not an allowed name"),
        ("https://localhost:8080/x", "400", "the proxy serves http://"),
    ],
)
def test_rejected_request_explained(
    upstream: UpstreamServer,
    vault_file: Path,
    isolated_env: dict[str, str],
    url: str,
    status: str,
    reason: str,
) -> None:
    result = run_explain(url, upstream, vault_file, isolated_env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"would reject this request with HTTP {status}: " in result.stderr
    assert reason in result.stderr


def test_config_mistake_exits_two(
    upstream: UpstreamServer, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    result = run_explain("/x", upstream, tmp_path / "missing.yaml", isolated_env)
    assert result.returncode == 2
    assert "vault file not found" in result.stderr


def test_output_holds_no_token(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    result = run_explain(f"{USER_CATALOGS}/alpha-ws/x", upstream, vault_file, isolated_env)
    for token in TOKENS.values():
        assert token not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("url", "host", "target"),
    [
        ("/a/b?c=%2F#frag", None, "/a/b?c=%2F"),
        ("http://localhost:8080", "localhost:8080", "/"),
        ("http://localhost:8080?q=1", "localhost:8080", "/?q=1"),
        ("http://[::1]:8080/a%20b", "[::1]:8080", "/a%20b"),
        ("HTTP://localhost/x", "localhost", "/x"),
    ],
)
def test_url_split_keeps_raw_target(url: str, host: str | None, target: str) -> None:
    parsed = split_url(url)
    assert parsed.host == host
    assert parsed.target == target
    assert parsed.user is None


def test_url_credentials_split_off() -> None:
    parsed = split_url("http://alice:k%40y:z@localhost:8080/x?q=1")
    assert parsed.host == "localhost:8080"
    assert parsed.target == "/x?q=1"
    assert parsed.user == "alice"
    assert parsed.key == "k@y:z"
    assert "k@y" not in repr(parsed)


@pytest.mark.parametrize("url", ["localhost:8080/x", "ftp://localhost/x"])
def test_invalid_url_rejected(url: str) -> None:
    with pytest.raises(ClientRequestError):
        split_url(url)


def test_invalid_url_error_hides_key() -> None:
    with pytest.raises(ClientRequestError) as raised:
        split_url("alice:secret-key@localhost:8080/x")
    assert "secret-key" not in raised.value.detail


# A team gateway: explain checks the client credential and grants as the live proxy does.


@pytest.fixture(scope="module")
def gateway_vault(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gateway_vault(tmp_path_factory.mktemp("gateway") / "vault.yaml")


@pytest.fixture(scope="module")
def gateway(
    upstream: UpstreamServer, gateway_vault: Path, isolated_env: dict[str, str]
) -> Iterator[ProxyProcess]:
    process = ProxyProcess(serve_args(upstream, gateway_vault, "127.0.0.1:0"), env=isolated_env)
    process.wait_ready()
    yield process
    process.stop()


def explain_status(result: subprocess.CompletedProcess[str]) -> int:
    """Return the status `explain` predicts: 200 for a request it accepts, else the one it names."""
    if result.returncode == 0:
        return 200
    found = re.search(r"would reject this request with HTTP (\d{3}): ", result.stderr)
    assert found is not None, result.stderr
    return int(found.group(1))


@pytest.mark.parametrize(
    ("client", "method", "path"),
    [
        ("alice", "GET", f"{USER_CATALOGS}/alpha-ws/processes"),
        (None, "GET", f"{USER_CATALOGS}/alpha-ws/processes"),
        ("alice:wrong-key", "GET", f"{USER_CATALOGS}/alpha-ws/processes"),
        ("alice", "GET", f"{USER_CATALOGS}/beta-ws/processes"),
        ("reader", "GET", f"{USER_CATALOGS}/alpha-ws/processes"),
        ("reader", "POST", f"{USER_CATALOGS}/alpha-ws/processes/echo/execution"),
        ("ops", "GET", "/as/beta-ws/api/catalogue/stac/"),
        ("guest", "GET", f"{USER_CATALOGS}/gamma-ws/processes"),
        ("alice", "TRACE", f"{USER_CATALOGS}/alpha-ws/processes"),
        (None, "GET", "/_proxy/healthz"),
        (None, "POST", "/_proxy/healthz"),
        (None, "GET", "/_proxy/status"),
        ("alice", "GET", "/_proxy/status"),
        ("alice", "GET", "/_proxy/missing"),
        ("alice", "GET", "/_proxy/metrics"),
        ("ops", "GET", "/_proxy/metrics"),
    ],
)
def test_gateway_verdict_matches_live_proxy(
    gateway: ProxyProcess,
    gateway_vault: Path,
    upstream: UpstreamServer,
    isolated_env: dict[str, str],
    client: str | None,
    method: str,
    path: str,
) -> None:
    auth = None
    userinfo = ""
    if client is not None:
        name, _, key = client.partition(":")
        auth = (name, key or key_of(name))
        userinfo = f"{auth[0]}:{auth[1]}@"
    result = run_explain(
        f"http://{userinfo}{gateway.address}{path}", upstream, gateway_vault, isolated_env,
        "-X", method,
    )
    live = requests.request(
        method, f"{gateway.url}{path}", auth=auth, json={"inputs": {}}, timeout=10
    )
    assert explain_status(result) == live.status_code, result.stdout + result.stderr
    assert secrets_in(result.stdout + result.stderr) == []


def test_gateway_client_shown(
    gateway_vault: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    url = f"http://reader:{key_of('reader')}@localhost:8080{USER_CATALOGS}/alpha-ws/processes"
    result = run_explain(url, upstream, gateway_vault, isolated_env)
    assert result.returncode == 0, result.stderr
    shown = fields(result.stdout)
    assert shown["client"] == "reader (workspaces alpha-ws; methods GET, HEAD)"
    assert shown["token"] == f"{fingerprint(TOKENS['alpha-ws'])} (workspace alpha-ws)"


def test_gateway_without_credentials_explained(
    gateway_vault: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    result = run_explain(
        f"http://localhost:8080{USER_CATALOGS}/alpha-ws/processes", upstream, gateway_vault,
        isolated_env,
    )
    assert result.returncode == 1
    assert "would reject this request with HTTP 401: " in result.stderr
    assert "requires a client name and key" in result.stderr
