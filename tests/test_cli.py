"""The command line through its real entry points: the `eodh-proxy` console script and
`python -m proxy`.

Every user mistake must end the process with exit status 2 and one line on standard
error naming the file and line, or the flag or key, and what was expected. The
mistakes run as concurrent processes, since each pays for Python's start-up.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess, free_port, write_vault
from tests.upstream import TOKENS, UpstreamServer

StartProxy = Callable[..., ProxyProcess]
CONSOLE_SCRIPT = shutil.which("eodh-proxy", path=str(Path(sys.executable).parent))
ENTRY_POINTS = {
    "console-script": [CONSOLE_SCRIPT or "eodh-proxy"],
    "python-m": [sys.executable, "-m", "proxy"],
}
GOOD_VAULT = "workspaces:\n  a-ws:\n    token: 'token-aaaa-1111'\n"


@pytest.fixture(params=sorted(ENTRY_POINTS))
def entry_point(request: pytest.FixtureRequest) -> list[str]:
    return ENTRY_POINTS[request.param]


def run(command: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


def test_help_lists_subcommands(entry_point: list[str], isolated_env: dict[str, str]) -> None:
    result = run(entry_point, isolated_env, "--help")

    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+serve\s+run the proxy", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^\s+demo\s+run the proxy in front of", result.stdout, re.MULTILINE)


def test_serve_help_shows_defaults(entry_point: list[str], isolated_env: dict[str, str]) -> None:
    # A wide terminal, so argparse does not wrap the paths at their hyphens.
    result = run(entry_point, {**isolated_env, "COLUMNS": "500"}, "serve", "--help")
    text = " ".join(result.stdout.split())
    config_dir = Path(isolated_env["XDG_CONFIG_HOME"]) / "eodh-proxy"

    assert result.returncode == 0, result.stderr
    assert "(default: 127.0.0.1:8080)" in text
    assert "(default: https://staging.eodatahub.org.uk)" in text
    assert f"(default: {config_dir / 'vault.yaml'})" in text
    assert f"(default: {config_dir / 'config.yaml'} when it exists)" in text
    assert "--ca-bundle FILE" in text


def test_demo_help_shows_default(entry_point: list[str], isolated_env: dict[str, str]) -> None:
    result = run(entry_point, {**isolated_env, "COLUMNS": "500"}, "demo", "--help")

    assert result.returncode == 0, result.stderr
    assert "(default: 127.0.0.1:8080)" in " ".join(result.stdout.split())


@dataclass(frozen=True)
class Mistake:
    """A `serve` command line with one mistake, and what its error line must name.

    `{folder}` in `args`, `files` and `expected` is the folder containing `files`, and
    `{busy}` a loopback port that another socket already listens on.
    """

    name: str
    args: tuple[str, ...]
    expected: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()


GOOD = ("--vault", "{folder}/good.yaml", "--upstream", "http://127.0.0.1:9")

MISTAKES = [
    Mistake(
        "missing-vault",
        ("--vault", "{folder}/absent.yaml"),
        ("{folder}/absent.yaml: vault file not found",),
    ),
    Mistake(
        "vault-bad-yaml",
        ("--vault", "{folder}/vault.yaml"),
        ("{folder}/vault.yaml, line 3: invalid YAML",),
        files={"vault.yaml": "workspaces:\n  a-ws: [\n"},
    ),
    Mistake(
        "vault-unknown-key",
        ("--vault", "{folder}/vault.yaml"),
        ("{folder}/vault.yaml, line 4: unknown key 'colour' in workspace 'a-ws'",
         "(expected one of: token,"),
        files={"vault.yaml": "workspaces:\n  a-ws:\n    token: 'x1'\n    colour: red\n"},
    ),
    Mistake(
        "vault-token-not-string",
        ("--vault", "{folder}/vault.yaml"),
        ("{folder}/vault.yaml, line 3: token of workspace 'a-ws' must be a string",),
        files={"vault.yaml": "workspaces:\n  a-ws:\n    token: 12345\n"},
        absent=("12345",),
    ),
    Mistake(
        "vault-token-with-space",
        ("--vault", "{folder}/vault.yaml"),
        ("{folder}/vault.yaml, line 3: token of workspace 'a-ws' contains spaces",),
        files={"vault.yaml": "workspaces:\n  a-ws:\n    token: 'secret part-two'\n"},
        absent=("secret", "part-two"),
    ),
    Mistake(
        "vault-bad-expiry",
        ("--vault", "{folder}/vault.yaml"),
        ("{folder}/vault.yaml, line 4: invalid 'expires' value",),
        files={"vault.yaml": "workspaces:\n  a-ws:\n    token: 'x1'\n    expires: soon\n"},
    ),
    Mistake(
        "missing-config",
        ("--config", "{folder}/absent.yaml", *GOOD),
        ("{folder}/absent.yaml: config file not found",),
    ),
    Mistake(
        "config-bad-yaml",
        ("--config", "{folder}/config.yaml", *GOOD),
        ("{folder}/config.yaml, line 3: invalid YAML: found unexpected end of stream",
         "(while scanning a quoted scalar that started on line 2)"),
        files={"config.yaml": "listen: '127.0.0.1:0'\nupstream: 'http://x\n"},
    ),
    Mistake(
        "config-unknown-key",
        ("--config", "{folder}/config.yaml", *GOOD),
        ("{folder}/config.yaml, line 2: unknown key 'colour'", "listen, upstream, vault"),
        files={"config.yaml": "listen: '127.0.0.1:0'\ncolour: red\n"},
    ),
    Mistake(
        "config-not-mapping",
        ("--config", "{folder}/config.yaml", *GOOD),
        ("{folder}/config.yaml, line 1: expected a mapping of keys to values, found a list",),
        files={"config.yaml": "- listen\n"},
    ),
    Mistake(
        "config-timeout-not-number",
        ("--config", "{folder}/config.yaml", *GOOD),
        ("{folder}/config.yaml, line 2: 'read_timeout': expected a number of seconds",),
        files={"config.yaml": "listen: '127.0.0.1:0'\nread_timeout: soon\n"},
    ),
    Mistake(
        "config-boolean-as-string",
        ("--config", "{folder}/config.yaml", *GOOD),
        ("{folder}/config.yaml, line 1: 'allow_http_upstream': expected true or false, "
         "found a string",),
        files={"config.yaml": "allow_http_upstream: 'yes'\n"},
    ),
    Mistake(
        "config-routes-not-list",
        ("--config", "{folder}/config.yaml", *GOOD),
        ("{folder}/config.yaml, line 1: 'routes': expected a non-empty list of path prefixes",),
        files={"config.yaml": "routes: /ades\n"},
    ),
    Mistake(
        "config-listen-number",
        ("--config", "{folder}/config.yaml", *GOOD),
        ("{folder}/config.yaml, line 1: 'listen': invalid listen address '8080'",
         "expected HOST:PORT"),
        files={"config.yaml": "listen: 8080\n"},
    ),
    Mistake(
        "config-http-upstream",
        ("--config", "{folder}/config.yaml", "--vault", "{folder}/good.yaml"),
        ("{folder}/config.yaml, line 1: 'upstream': plain http:// upstream eodh.example",
         "allow_http_upstream: true"),
        files={"config.yaml": "upstream: http://eodh.example\n"},
    ),
    Mistake(
        "listen-without-port",
        ("--listen", "127.0.0.1", *GOOD),
        ("--listen: invalid listen address '127.0.0.1' (expected HOST:PORT",),
    ),
    Mistake(
        "listen-port-too-large",
        ("--listen", "127.0.0.1:99999", *GOOD),
        ("--listen: invalid port 99999 in listen address (expected 0-65535)",),
    ),
    Mistake(
        "listen-address-not-local",
        # TEST-NET-1 (RFC 5737): binding to it fails without sending anything.
        ("--listen", "192.0.2.1:8080", *GOOD),
        ("cannot listen on 192.0.2.1:8080: no such address on this machine",),
    ),
    Mistake(
        "listen-port-in-use",
        ("--listen", "127.0.0.1:{busy}", *GOOD),
        ("cannot listen on 127.0.0.1:{busy}: the port is in use",),
    ),
    Mistake(
        "upstream-not-http",
        ("--upstream", "ftp://eodh.example", "--vault", "{folder}/good.yaml"),
        ("--upstream: invalid upstream URL 'ftp://eodh.example' (expected http(s)://HOST[:PORT]",),
    ),
    Mistake(
        "upstream-with-path",
        ("--upstream", "https://eodh.example/api", "--vault", "{folder}/good.yaml"),
        ("--upstream: the upstream URL must be an origin only", "https://eodh.example)"),
    ),
    Mistake(
        "upstream-with-password",
        ("--upstream", "https://user:hunter2@eodh.example", "--vault", "{folder}/good.yaml"),
        ("--upstream: the upstream URL must not hold a user name or password",),
        absent=("hunter2",),
    ),
    Mistake(
        "upstream-bad-port",
        ("--upstream", "https://eodh.example:99999", "--vault", "{folder}/good.yaml"),
        ("--upstream: invalid port in upstream URL",),
    ),
    Mistake(
        "missing-ca-bundle",
        ("--listen", "127.0.0.1:0", "--ca-bundle", "{folder}/absent.pem", *GOOD),
        ("{folder}/absent.pem: cannot load CA bundle",),
    ),
]


@pytest.fixture(scope="module")
def mistake_results(
    tmp_path_factory: pytest.TempPathFactory, isolated_env: dict[str, str]
) -> Iterator[dict[str, tuple[int, str, str, dict[str, str]]]]:
    """Run every mistake at once; map its name to exit status, stdout, stderr and placeholders."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    running = {}
    for mistake in MISTAKES:
        folder = tmp_path_factory.mktemp(mistake.name)
        values = {"folder": str(folder), "busy": str(busy.getsockname()[1])}
        (folder / "good.yaml").write_text(GOOD_VAULT)
        for name, text in mistake.files.items():
            (folder / name).write_text(text)
        args = [arg.format(**values) for arg in mistake.args]
        if "--listen" not in args and "--config" not in args:
            args += ["--listen", "127.0.0.1:0"]
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **isolated_env},
        )
        running[mistake.name] = (process, values)

    results = {}
    for name, (process, values) in running.items():
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=10)
        results[name] = (process.returncode, stdout, stderr, values)
    busy.close()
    yield results


@pytest.mark.parametrize("mistake", MISTAKES, ids=[mistake.name for mistake in MISTAKES])
def test_mistake_exits_with_one_line(
    mistake: Mistake, mistake_results: dict[str, tuple[int, str, str, dict[str, str]]]
) -> None:
    status, stdout, stderr, values = mistake_results[mistake.name]
    lines = stderr.splitlines()

    assert status == 2, stderr
    assert stdout == ""
    assert len(lines) == 1, stderr
    assert lines[0].startswith("eodh-proxy: error: "), lines[0]
    for fragment in mistake.expected:
        assert fragment.format(**values) in lines[0]
    for secret in mistake.absent:
        assert secret not in lines[0]


def test_console_script_reports_mistake(isolated_env: dict[str, str], tmp_path: Path) -> None:
    result = run(ENTRY_POINTS["console-script"], isolated_env, "serve", "--vault",
                 str(tmp_path / "absent.yaml"))

    assert result.returncode == 2
    assert result.stderr == f"eodh-proxy: error: {tmp_path / 'absent.yaml'}: vault file not found\n"


def test_startup_lines_name_everything_but_tokens(
    start_proxy: StartProxy, upstream: UpstreamServer, tmp_path: Path
) -> None:
    vault = tmp_path / "vault.yaml"
    vault.write_text(
        "workspaces:\n"
        f"  beta-ws:\n    token: '{TOKENS['beta-ws']}'\n"
        f"  alpha-ws:\n    token: '{TOKENS['alpha-ws']}'\n    expires: 2020-01-31\n"
    )
    proxy = start_proxy("--listen", "127.0.0.1:0", "--upstream", upstream.origin,
                        "--vault", str(vault))
    warning = proxy.wait_for_line("WARNING token for workspace alpha-ws")
    listening = proxy.wait_for_line(" INFO listening on ")
    upstream_line = proxy.wait_for_line(" INFO upstream ")
    vault_line = proxy.wait_for_line(" INFO vault ")

    assert re.search(r" INFO listening on http://127\.0\.0\.1:[1-9][0-9]*$", listening)
    assert upstream_line.endswith(f" INFO upstream {upstream.origin}")
    assert vault_line.endswith(f" INFO vault {vault}: workspaces alpha-ws, beta-ws")
    assert "expired at 2020-01-31 23:59 UTC; it is still tried" in warning
    assert re.search(r"\(sha256:[0-9a-f]{12}\)", warning), warning
    assert "beta-ws" not in warning


def test_flags_override_config_over_defaults(
    start_proxy: StartProxy, upstream: UpstreamServer, vault_file: Path, tmp_path: Path
) -> None:
    config_port, flag_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"listen: '127.0.0.1:{config_port}'\nupstream: '{upstream.origin}'\nvault: {vault_file}\n"
    )
    proxy = start_proxy("--config", str(config), "--listen", f"127.0.0.1:{flag_port}")
    response = requests.get(f"{proxy.url}{USER_CATALOGS}/alpha-ws/processes", timeout=10)

    assert proxy.port == flag_port
    assert proxy.wait_for_line(" INFO upstream ").endswith(f" INFO upstream {upstream.origin}")
    assert response.status_code == 200


def test_default_paths_under_xdg_config_home(
    start_proxy: StartProxy, upstream: UpstreamServer, tmp_path: Path
) -> None:
    folder = tmp_path / "eodh-proxy"
    folder.mkdir()
    write_vault(folder / "vault.yaml", {"alpha-ws": TOKENS["alpha-ws"]})
    (folder / "config.yaml").write_text(f"listen: '127.0.0.1:0'\nupstream: '{upstream.origin}'\n")
    proxy = start_proxy(env={"XDG_CONFIG_HOME": str(tmp_path)})
    vault_line = proxy.wait_for_line(" INFO vault ")
    upstream_line = proxy.wait_for_line(" INFO upstream ")

    assert upstream_line.endswith(f" INFO upstream {upstream.origin}")
    assert vault_line.endswith(f" INFO vault {folder / 'vault.yaml'}: workspaces alpha-ws")


def test_access_log_false_silences_requests(
    start_proxy: StartProxy, upstream: UpstreamServer, vault_file: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"upstream: '{upstream.origin}'\nvault: {vault_file}\naccess_log: false\n")
    proxy = start_proxy("--listen", "127.0.0.1:0", "--config", str(config))
    response = requests.get(f"{proxy.url}{USER_CATALOGS}/alpha-ws/processes", timeout=10)
    proxy.stop()

    assert response.status_code == 200
    assert "INFO stopping" in proxy.output
    assert "/alpha-ws/processes" not in proxy.output
