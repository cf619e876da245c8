"""Fixtures: a stand-in EODH upstream on loopback and the proxy as a real process."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.upstream import TOKENS, UpstreamServer

READY = re.compile(r"listening on http://(?P<address>\S+)")


class ProxyProcess:
    """`python -m proxy ARGS` as a child process, with its standard error collected."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        *,
        prefix: tuple[str, ...] = (),
        new_session: bool = False,
    ) -> None:
        """`prefix` goes before the Python command, such as `ip netns exec NAME`.

        With `new_session`, the process leads a new process group, which `kill_group`
        ends together with every child (such as worker processes).
        """
        self.args = args
        self.lines: list[str] = []
        self._line_added = threading.Condition()
        self._ready = threading.Event()
        self._done = threading.Event()
        self.address = ""
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "proxy", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=new_session,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._line_added:
                self.lines.append(line.rstrip("\n"))
                self._line_added.notify_all()
            found = READY.search(line)
            if found and not self._ready.is_set():
                self.address = found.group("address")
                self._ready.set()
        self._done.set()
        self._ready.set()
        with self._line_added:
            self._line_added.notify_all()

    def wait_ready(self, timeout: float = 15) -> ProxyProcess:
        self._ready.wait(timeout)
        if not self.address:
            self.stop()
            raise AssertionError("proxy did not start:\n" + self.output)
        return self

    def wait_for_line(self, needle: str, timeout: float = 10, *, after: int = 0) -> str:
        """Return the first output line containing `needle`, waiting up to `timeout` seconds.

        Lines before index `after` are skipped; pass `len(process.lines)` to wait for a new one.
        The wait ends early when the process exits.
        """
        def find() -> str | None:
            return next((line for line in self.lines[after:] if needle in line), None)

        with self._line_added:
            self._line_added.wait_for(lambda: find() is not None or self._done.is_set(), timeout)
        found = find()
        assert found is not None, f"no line with {needle!r} in:\n{self.output[-2000:]}"
        return found

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self._done.wait(timeout)
        return code

    def kill_group(self) -> None:
        """Send SIGKILL to every process left in this process's group (see `new_session`)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(15)
        self._done.wait(15)

    def rss_peak_kib(self) -> int:
        """Peak resident memory of the process so far (VmHWM), in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"VmHWM:\s+(\d+) kB", status)
        assert found is not None
        return int(found.group(1))


def write_vault(path: Path, tokens: dict[str, str]) -> Path:
    path.write_text(
        "workspaces:\n" + "".join(f"  {ws}:\n    token: '{token}'\n" for ws, token in tokens.items())
    )
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_token_reaches_another_workspace(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test: the upstream never saw one workspace's token on another's path."""
    yield
    if "upstream" in request.fixturenames:
        server: UpstreamServer = request.getfixturevalue("upstream")
        violations = list(server.state.violations)
        server.state.violations.clear()
        assert violations == [], violations


@pytest.fixture(scope="session")
def vault_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vault")
    return write_vault(folder / "vault.yaml", {k: v for k, v in TOKENS.items() if k != "gamma-ws"})


@pytest.fixture(scope="session")
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Point XDG_CONFIG_HOME at an empty folder so no user config is read."""
    home = tmp_path_factory.mktemp("xdg")
    return {"XDG_CONFIG_HOME": str(home)}


def serve_proxy(
    upstream: UpstreamServer,
    vault_file: Path,
    env: dict[str, str],
    *,
    config: Path | None = None,
) -> ProxyProcess:
    """Start a proxy on a free loopback port in front of `upstream`, with an optional config."""
    args = [
        "serve", "--listen", "127.0.0.1:0", "--upstream", upstream.origin, "--vault", str(vault_file),
        "--files-upstream", upstream.files_template,
    ]
    if config is not None:
        args += ["--config", str(config)]
    return ProxyProcess(args, env=env).wait_ready()


def stop_proxy(process: ProxyProcess) -> None:
    """Stop `process` and check that no token ever appeared in its output."""
    process.stop()
    secrets = [token for token in TOKENS.values() if token in process.output]
    assert secrets == [], "a token appeared in the proxy's output"


@pytest.fixture(scope="session")
def proxy(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> Iterator[ProxyProcess]:
    """One proxy for the session, in front of the shared stand-in, with default settings."""
    process = serve_proxy(upstream, vault_file, isolated_env)
    yield process
    stop_proxy(process)


BROWSER_ORIGIN = "https://app.example.org"


@pytest.fixture(scope="session")
def browser_proxy(
    upstream: UpstreamServer,
    vault_file: Path,
    isolated_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    """A proxy that also answers to gateway.example.org and *.corp.example, with CORS for one origin."""
    config = tmp_path_factory.mktemp("browser") / "config.yaml"
    config.write_text(
        "allowed_hosts: [gateway.example.org, '*.corp.example']\n"
        f"allowed_origins: ['{BROWSER_ORIGIN}']\n"
    )
    process = serve_proxy(upstream, vault_file, isolated_env, config=config)
    yield process
    stop_proxy(process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raw_request(port: int, data: bytes, *, read_timeout: float = 10) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return what comes back until the server closes.

    Requests should carry `Connection: close`; a server that keeps the connection
    open ends the read at `read_timeout`.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


class _ReplySocket:
    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def makefile(self, *args: object, **kwargs: object) -> io.BytesIO:
        return self._file


def response_body(reply: bytes) -> bytes:
    """Return the body of a raw HTTP/1.1 response, with chunked framing removed."""
    response = http.client.HTTPResponse(_ReplySocket(reply))  # type: ignore[arg-type]
    response.begin()
    return response.read()


@pytest.fixture
def start_proxy(isolated_env: dict[str, str]) -> Iterator[Callable[..., ProxyProcess]]:
    """Start `python -m proxy serve ARGS...` processes for one test.

    After the test each is stopped, and its output is checked for tokens.
    """
    started: list[ProxyProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ProxyProcess:
        process = ProxyProcess(["serve", *args], env={**isolated_env, **(env or {})})
        started.append(process)
        return process.wait_ready()

    yield start
    for process in started:
        process.stop()
    for process in started:
        leaked = [workspace for workspace, token in TOKENS.items() if token in process.output]
        assert leaked == [], f"tokens of {leaked} appeared in the proxy's output"
