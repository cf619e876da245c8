"""Live reload of the vault and config while the proxy serves."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from proxy.reload import Watch, diff_vaults, keep_restart_fields, settings_changes
from proxy.settings import load_settings
from proxy.standin import USER_CATALOGS
from proxy.vault import load_vault
from tests.conftest import ProxyProcess
from tests.inflight import InFlight
from tests.upstream import TOKENS, UpstreamServer

# Reload must happen "within about two seconds"; the wait allows some slack for a busy machine.
RELOAD_WAIT = 3.0


def vault_text(tokens: dict[str, str]) -> str:
    return "workspaces:\n" + "".join(
        f"  {workspace}:\n    token: '{token}'\n" for workspace, token in tokens.items()
    )


def write_in_place(path: Path, text: str) -> None:
    with path.open("r+") as stream:
        stream.truncate(0)
        stream.write(text)


def write_by_rename(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    temporary.chmod(0o600)
    os.replace(temporary, path)


class SecretMount:
    """A folder laid out as Kubernetes mounts a secret, and its atomic update.

    `vault.yaml` links to `..data/vault.yaml`; `..data` links to a timestamped
    folder. An update writes a new folder, swaps `..data` by rename and deletes
    the old folder, so the watched name itself never changes.
    """

    def __init__(self, folder: Path, text: str) -> None:
        self.folder = folder
        self.version = 0
        self.current = self._write_version(text)
        (folder / "..data").symlink_to(self.current.name)
        (folder / "vault.yaml").symlink_to("..data/vault.yaml")

    @property
    def path(self) -> Path:
        return self.folder / "vault.yaml"

    def _write_version(self, text: str) -> Path:
        self.version += 1
        version = self.folder / f"..2026_12_04_20_00_0{self.version}.000000001"
        version.mkdir()
        (version / "vault.yaml").write_text(text)
        (version / "vault.yaml").chmod(0o600)
        return version

    def update(self, text: str) -> None:
        old = self.current
        self.current = self._write_version(text)
        (self.folder / "..data_tmp").symlink_to(self.current.name)
        os.replace(self.folder / "..data_tmp", self.folder / "..data")
        shutil.rmtree(old)


def start_proxy(
    upstream: UpstreamServer, vault: Path, env: dict[str, str], config: Path | None = None
) -> ProxyProcess:
    args = ["serve", "--listen", "127.0.0.1:0", "--upstream", upstream.origin,
            "--vault", str(vault)]
    if config is not None:
        args += ["--config", str(config)]
    return ProxyProcess(args, env=env).wait_ready()


@pytest.fixture
def proxies() -> Iterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield started
    for proxy in started:
        proxy.stop()
        leaked = [token for token in TOKENS.values() if token in proxy.output]
        assert leaked == [], "a token appeared in the proxy's output"


def get(proxy: ProxyProcess, workspace: str, tail: str = "processes") -> requests.Response:
    return requests.get(f"{proxy.url}{USER_CATALOGS}/{workspace}/{tail}", timeout=10)


def stale_vault() -> dict[str, str]:
    return {"alpha-ws": TOKENS["alpha-ws"], "beta-ws": "stale-beta-token"}


def rotated_vault() -> dict[str, str]:
    return {"alpha-ws": TOKENS["alpha-ws"], "beta-ws": TOKENS["beta-ws"],
            "gamma-ws": TOKENS["gamma-ws"]}


@pytest.mark.parametrize("method", ["in place", "rename over", "symlink swap"])
def test_vault_reload_while_requests_in_flight(
    method: str,
    tmp_path: Path,
    upstream: UpstreamServer,
    isolated_env: dict[str, str],
    proxies: list[ProxyProcess],
) -> None:
    mount = None
    if method == "symlink swap":
        mount = SecretMount(tmp_path, vault_text(stale_vault()))
        path = mount.path
    else:
        path = tmp_path / "vault.yaml"
        path.write_text(vault_text(stale_vault()))
        path.chmod(0o600)
    proxy = start_proxy(upstream, path, isolated_env)
    proxies.append(proxy)
    assert get(proxy, "beta-ws").status_code == 403
    held = InFlight(proxy.url, upstream, "alpha-ws", f"reload-{method}").start()
    streaming = InFlight(proxy.url, upstream, "alpha-ws", f"reload-{method}-body",
                         after="headers").start()

    after = len(proxy.lines)
    if mount is not None:
        mount.update(vault_text(rotated_vault()))
    elif method == "in place":
        write_in_place(path, vault_text(rotated_vault()))
    else:
        write_by_rename(path, vault_text(rotated_vault()))
    line = proxy.wait_for_line("reloaded (file changed): ", RELOAD_WAIT, after=after)

    assert line.endswith(f"vault {path} reloaded (file changed): added gamma-ws; changed beta-ws")
    beta = get(proxy, "beta-ws")
    assert beta.status_code == 200
    assert upstream.state.received[-1].headers["Authorization"] == [f"Bearer {TOKENS['beta-ws']}"]
    assert get(proxy, "gamma-ws").status_code == 200
    assert held.finish().text == "released"
    assert streaming.finish().text == "first, released"


def test_broken_vault_keeps_last_good(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str],
    proxies: list[ProxyProcess],
) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text(vault_text(stale_vault()))
    path.chmod(0o600)
    proxy = start_proxy(upstream, path, isolated_env)
    proxies.append(proxy)

    after = len(proxy.lines)
    write_in_place(path, "workspaces:\n  beta-ws:\n    token: [unclosed\n")
    line = proxy.wait_for_line("vault not reloaded", RELOAD_WAIT, after=after)

    assert f"{path}, line 4: invalid YAML" in line
    assert "WARNING" in line
    assert get(proxy, "alpha-ws").status_code == 200
    assert get(proxy, "beta-ws").status_code == 403

    after = len(proxy.lines)
    write_in_place(path, vault_text(rotated_vault()))
    proxy.wait_for_line("reloaded (file changed): ", RELOAD_WAIT, after=after)
    assert get(proxy, "beta-ws").status_code == 200


def test_invalid_entry_keeps_last_good(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str],
    proxies: list[ProxyProcess],
) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text(vault_text(stale_vault()))
    path.chmod(0o600)
    proxy = start_proxy(upstream, path, isolated_env)
    proxies.append(proxy)

    after = len(proxy.lines)
    write_by_rename(path, "workspaces:\n  alpha-ws:\n    token_env: UNSET_IN_TEST\n")
    line = proxy.wait_for_line("vault not reloaded", RELOAD_WAIT, after=after)

    assert f"{path}, line 3: environment variable UNSET_IN_TEST for workspace 'alpha-ws'" in line
    assert get(proxy, "alpha-ws").status_code == 200
    assert get(proxy, "beta-ws").status_code == 403


def test_token_file_change_reloads(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str],
    proxies: list[ProxyProcess],
) -> None:
    token_file = tmp_path / "beta.token"
    token_file.write_text("stale-beta-token\n")
    token_file.chmod(0o600)
    path = tmp_path / "vault.yaml"
    path.write_text("workspaces:\n  beta-ws:\n    token_file: beta.token\n")
    path.chmod(0o600)
    proxy = start_proxy(upstream, path, isolated_env)
    proxies.append(proxy)
    assert get(proxy, "beta-ws").status_code == 403

    after = len(proxy.lines)
    write_by_rename(token_file, TOKENS["beta-ws"] + "\n")
    line = proxy.wait_for_line("reloaded (file changed): ", RELOAD_WAIT, after=after)

    assert line.endswith("changed beta-ws")
    assert get(proxy, "beta-ws").status_code == 200


def test_sighup_reloads_at_once(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str],
    proxies: list[ProxyProcess],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("reload_interval: 0\n")
    path = tmp_path / "vault.yaml"
    path.write_text(vault_text(stale_vault()))
    path.chmod(0o600)
    proxy = start_proxy(upstream, path, isolated_env, config)
    proxies.append(proxy)
    proxy.wait_for_line("reload_interval is 0: files are not watched")

    write_in_place(path, vault_text(rotated_vault()))
    after = len(proxy.lines)
    proxy.process.send_signal(signal.SIGHUP)
    line = proxy.wait_for_line(f"vault {path} reloaded", after=after)

    assert line.endswith("reloaded (SIGHUP): added gamma-ws; changed beta-ws")
    assert get(proxy, "beta-ws").status_code == 200


def test_config_reload_applies_live_keys(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str],
    proxies: list[ProxyProcess],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("read_timeout: 300\n")
    path = tmp_path / "vault.yaml"
    path.write_text(vault_text(stale_vault()))
    path.chmod(0o600)
    proxy = start_proxy(upstream, path, isolated_env, config)
    proxies.append(proxy)
    url = f"{proxy.url}{USER_CATALOGS}/alpha-ws/processes"
    headers = {"Host": "gateway.example.org"}
    assert requests.get(url, headers=headers, timeout=10).status_code == 421

    after = len(proxy.lines)
    write_by_rename(config, "read_timeout: 300\nallowed_hosts: [gateway.example.org]\n")
    line = proxy.wait_for_line("reloaded (file changed): ", RELOAD_WAIT, after=after)

    assert line.endswith(f"config {config} reloaded (file changed): changed allowed_hosts")
    assert requests.get(url, headers=headers, timeout=10).status_code == 200


def test_config_restart_keys_not_applied(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str],
    proxies: list[ProxyProcess],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("access_log: true\n")
    path = tmp_path / "vault.yaml"
    path.write_text(vault_text(stale_vault()))
    path.chmod(0o600)
    proxy = start_proxy(upstream, path, isolated_env, config)
    proxies.append(proxy)

    after = len(proxy.lines)
    write_in_place(
        config, "access_log: false\nallow_http_upstream: true\nca_bundle: /nonexistent.pem\n"
    )
    line = proxy.wait_for_line("reloaded (file changed): ", RELOAD_WAIT, after=after)

    assert line.endswith("changed access_log")
    warnings = " ".join(
        line for line in proxy.lines[after:] if "takes effect only after a restart" in line
    )
    assert "'allow_http_upstream' changed" in warnings
    assert "'ca_bundle' changed" in warnings
    after = len(proxy.lines)
    assert get(proxy, "alpha-ws").status_code == 200
    assert not any("/alpha-ws/processes" in line for line in proxy.lines[after:])


def test_broken_config_keeps_last_good(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str],
    proxies: list[ProxyProcess],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("allowed_hosts: [gateway.example.org]\n")
    path = tmp_path / "vault.yaml"
    path.write_text(vault_text(stale_vault()))
    path.chmod(0o600)
    proxy = start_proxy(upstream, path, isolated_env, config)
    proxies.append(proxy)

    after = len(proxy.lines)
    write_in_place(config, "allowed_hosts: [gateway.example.org]\nread_timout: 5\n")
    line = proxy.wait_for_line("config not reloaded", RELOAD_WAIT, after=after)

    assert f"{config}, line 2: unknown key 'read_timout'" in line
    url = f"{proxy.url}{USER_CATALOGS}/alpha-ws/processes"
    response = requests.get(url, headers={"Host": "gateway.example.org"}, timeout=10)
    assert response.status_code == 200


def test_watch_waits_for_settled_change(tmp_path: Path) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text("a")
    watch = Watch([path])
    assert watch.settled_change() is None

    path.write_text("ab")
    first = watch.settled_change()
    second = watch.settled_change()

    assert first is None
    assert second == watch.stamps()
    watch.loaded(second)
    assert watch.settled_change() is None


def test_watch_sees_rename_over(tmp_path: Path) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text("same")
    watch = Watch([path])
    write_by_rename(path, "same")
    watch.settled_change()
    assert watch.settled_change() is not None


def test_vault_diff_names_workspaces(tmp_path: Path) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text(vault_text({"a": "1", "b": "2", "c": "3"}))
    path.chmod(0o600)
    old = load_vault(path)
    path.write_text(vault_text({"b": "2", "c": "changed", "d": "4"}))
    diff = diff_vaults(old, load_vault(path))
    assert diff.describe() == "added d; removed a; changed c"


def test_settings_keys_live_or_restart() -> None:
    old = load_settings({"upstream": "http://127.0.0.1:1"}, read_config=False)
    new = load_settings(
        {"upstream": "http://127.0.0.1:2", "listen": "127.0.0.1:1", "read_timeout": 5},
        read_config=False,
    )
    live, restart = settings_changes(old, new)
    assert live == ["read_timeout"]
    assert restart == ["listen", "upstream"]
    kept = keep_restart_fields(old, new)
    assert kept.upstream == old.upstream
    assert kept.read_timeout == 5


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    settings = load_settings({"config": str(example)})
    assert settings.reload_interval == 0.5


def test_vault_add_rotates_token_live(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str],
    proxies: list[ProxyProcess],
) -> None:
    path = tmp_path / "vault.yaml"
    path.write_text(vault_text(stale_vault()))
    path.chmod(0o600)
    proxy = start_proxy(upstream, path, isolated_env)
    proxies.append(proxy)
    assert get(proxy, "beta-ws").status_code == 403

    after = len(proxy.lines)
    added = subprocess.run(
        [sys.executable, "-m", "proxy", "vault", "add", "beta-ws", "--vault", str(path)],
        input=TOKENS["beta-ws"] + "\n", capture_output=True, text=True, timeout=30,
        env={**os.environ, **isolated_env}, check=False,
    )
    proxy.wait_for_line(f"vault {path} reloaded (file changed): changed beta-ws", RELOAD_WAIT,
                        after=after)

    assert added.returncode == 0, added.stderr
    assert get(proxy, "beta-ws").status_code == 200
    assert upstream.state.received[-1].headers["Authorization"] == [f"Bearer {TOKENS['beta-ws']}"]
