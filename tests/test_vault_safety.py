"""Who may change the vault and token files: owner, mode and folder checks.

Another local user who could replace the vault, or rename a file over it,
could add `token_file: /some/root-only/file` and have the proxy send that
file's content upstream as a token. Files must be owned by the proxy's user
or root and sit in folders that nobody else can write (a sticky folder counts
as safe, since there only a file's owner can rename over it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.vault import load_vault
from tests.conftest import ProxyProcess
from tests.test_reload import RELOAD_WAIT, get, start_proxy, vault_text
from tests.upstream import TOKENS, UpstreamServer

SECRET = "s3cret-value-never-shown"
# The uid of `nobody` on Debian, standing in for another local user.
OTHER_USER = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="giving a file to another user needs root"
)


def vault_in(folder: Path, text: str = f"workspaces:\n  alpha-ws:\n    token: {SECRET}\n",
             mode: int = 0o600) -> Path:
    path = folder / "vault.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


def shared_folder(path: Path, mode: int = 0o777) -> Path:
    path.mkdir()
    path.chmod(mode)
    return path


@needs_root
def test_vault_owned_by_other_user_rejected(tmp_path: Path) -> None:
    path = vault_in(tmp_path)
    os.chown(path, OTHER_USER, OTHER_USER)
    with pytest.raises(ConfigError) as raised:
        load_vault(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: vault file is owned by user {OTHER_USER}, ")
    assert f"run: chown {os.geteuid()} {path}" in message


@needs_root
def test_token_file_owned_by_other_user_rejected(tmp_path: Path) -> None:
    token_file = tmp_path / "alpha.token"
    token_file.write_text(SECRET)
    token_file.chmod(0o600)
    os.chown(token_file, OTHER_USER, OTHER_USER)
    path = vault_in(tmp_path, "workspaces:\n  alpha-ws:\n    token_file: alpha.token\n")
    with pytest.raises(ConfigError, match=f"token_file of workspace 'alpha-ws' is owned by user "
                       f"{OTHER_USER}"):
        load_vault(path)


@needs_root
def test_folder_owned_by_other_user_rejected(tmp_path: Path) -> None:
    folder = shared_folder(tmp_path / "theirs", 0o755)
    os.chown(folder, OTHER_USER, OTHER_USER)
    path = vault_in(folder)
    with pytest.raises(ConfigError, match=f"folder of vault file {path} is owned by user"):
        load_vault(path)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o757], ids=oct)
def test_vault_in_writable_folder_rejected(tmp_path: Path, mode: int) -> None:
    folder = shared_folder(tmp_path / "shared", mode)
    path = vault_in(folder)
    with pytest.raises(ConfigError) as raised:
        load_vault(path)
    assert str(raised.value) == (
        f"{folder}: folder of vault file {path} can be written by other users "
        f"(mode {mode:04o}, no sticky bit), so they could replace the file; "
        f"run: chmod go-w {folder}"
    )


def test_vault_in_sticky_folder_loads(tmp_path: Path) -> None:
    path = vault_in(shared_folder(tmp_path / "sticky", 0o1777))
    assert load_vault(path).workspaces == ["alpha-ws"]


def test_token_file_in_writable_folder_rejected(tmp_path: Path) -> None:
    folder = shared_folder(tmp_path / "shared")
    token_file = folder / "alpha.token"
    token_file.write_text(SECRET)
    token_file.chmod(0o600)
    path = vault_in(tmp_path, f"workspaces:\n  alpha-ws:\n    token_file: {token_file}\n")
    with pytest.raises(ConfigError, match=f"folder of token_file of workspace 'alpha-ws' "
                       f"{token_file} can be written by other users"):
        load_vault(path)


def test_link_target_folder_checked(tmp_path: Path) -> None:
    """A link in a private folder to a vault in a shared one is judged by both folders."""
    target = vault_in(shared_folder(tmp_path / "shared"))
    link = tmp_path / "vault-link.yaml"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=f"folder of vault file {link} can be written"):
        load_vault(link)


def test_link_in_writable_folder_rejected(tmp_path: Path) -> None:
    """The folder holding the link matters too: anyone who can write it can swap the link."""
    target = vault_in(tmp_path)
    link = shared_folder(tmp_path / "shared") / "vault.yaml"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=f"folder of vault file {link} can be written"):
        load_vault(link)


def kubernetes_secret(mount: Path, files: dict[str, tuple[str, int]]) -> Path:
    """Lay out `files` as the kubelet mounts a Secret, and return the mount folder.

    Each name is a link into `..data`, itself a link to a timestamped folder that
    holds the files; `fsGroup` makes the folders setgid and group-readable.
    """
    version = mount / "..2026_01_31_12_00_00.000000001"
    version.mkdir(parents=True)
    version.chmod(0o2755)
    for name, (text, mode) in files.items():
        (version / name).write_text(text)
        (version / name).chmod(mode)
        if os.geteuid() == 0:
            os.chown(version / name, 0, 0)
    (mount / "..data").symlink_to(version.name)
    for name in files:
        (mount / name).symlink_to(f"..data/{name}")
    return mount


@pytest.mark.parametrize("mount_mode", [0o1777, 0o2755, 0o755], ids=oct)
def test_kubernetes_secret_layout_loads(tmp_path: Path, mount_mode: int) -> None:
    mount = kubernetes_secret(
        tmp_path / "secret",
        {
            "vault.yaml": ("workspaces:\n  alpha-ws:\n    token: abc\n"
                           "  beta-ws:\n    token_file: beta.token\n", 0o644),
            "beta.token": ("beta-secret\n", 0o400),
        },
    )
    mount.chmod(mount_mode)
    vault = load_vault(mount / "vault.yaml")
    beta = vault.get("beta-ws")
    assert vault.workspaces == ["alpha-ws", "beta-ws"]
    assert beta is not None
    assert beta.token.reveal() == "beta-secret"
    assert len(vault.warnings) == 1
    assert "can be read by other users (mode 0644)" in vault.warnings[0]


def test_serve_rejects_vault_in_writable_folder(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    folder = shared_folder(tmp_path / "shared")
    path = vault_in(folder)
    proxy = ProxyProcess(
        ["serve", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9",
         "--vault", str(path)],
        env=isolated_env,
    )
    code = proxy.process.wait(15)
    proxy.stop()
    assert code == 2
    assert proxy.lines == [
        f"eodh-proxy: error: {folder}: folder of vault file {path} can be written by other "
        f"users (mode 0777, no sticky bit), so they could replace the file; "
        f"run: chmod go-w {folder}"
    ]


@needs_root
def test_planted_vault_rejected_on_reload(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    """Another user's vault, renamed over ours, must not make the proxy read root's files."""
    private = shared_folder(tmp_path / "private", 0o700)
    root_only = private / "secret"
    root_only.write_text("root-only-content\n")
    root_only.chmod(0o600)
    folder = shared_folder(tmp_path / "vault", 0o1777)
    path = vault_in(folder, vault_text({"alpha-ws": TOKENS["alpha-ws"]}))
    proxy = start_proxy(upstream, path, isolated_env)
    try:
        planted = folder / "planted.yaml"
        planted.write_text(
            vault_text({"alpha-ws": TOKENS["alpha-ws"]})
            + f"  beta-ws:\n    token_file: {root_only}\n"
        )
        planted.chmod(0o600)
        os.chown(planted, OTHER_USER, OTHER_USER)
        after = len(proxy.lines)
        os.replace(planted, path)
        line = proxy.wait_for_line("vault not reloaded", RELOAD_WAIT, after=after)
        before = len(upstream.state.received)
        beta = get(proxy, "beta-ws")
        alpha = get(proxy, "alpha-ws")
    finally:
        proxy.stop()

    assert f"{path}: vault file is owned by user {OTHER_USER}" in line
    assert beta.status_code == 403
    assert alpha.status_code == 200
    sent = [request.headers.get("Authorization") for request in upstream.state.received[before:]]
    assert sent == [[f"Bearer {TOKENS['alpha-ws']}"]]
    assert "root-only-content" not in proxy.output


def test_kubernetes_secret_served(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    mount = kubernetes_secret(
        tmp_path / "secret",
        {
            "vault.yaml": ("workspaces:\n  alpha-ws:\n    token_file: alpha.token\n", 0o644),
            "alpha.token": (TOKENS["alpha-ws"] + "\n", 0o400),
        },
    )
    mount.chmod(0o1777)
    proxy = start_proxy(upstream, mount / "vault.yaml", isolated_env)
    try:
        response = get(proxy, "alpha-ws")
    finally:
        proxy.stop()
    assert response.status_code == 200
    assert upstream.state.received[-1].headers["Authorization"] == [
        f"Bearer {TOKENS['alpha-ws']}"
    ]
    assert upstream.state.received[-1].workspace == "alpha-ws"
