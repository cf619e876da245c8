"""The running server: its event loop and its worker processes."""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from proxy.errors import ConfigError
from proxy.settings import available_cpus, load_settings, parse_workers
from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess
from tests.inflight import InFlight
from tests.upstream import TOKENS, UpstreamServer


def test_event_loop_named_at_start(proxy: ProxyProcess) -> None:
    """uvloop runs the proxy when it is installed (the `speed` extra), asyncio's loop otherwise."""
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert proxy.wait_for_line("event loop ").endswith(f"event loop {expected}")


def children_of(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def socket_count(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


@pytest.fixture
def workers(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> Iterator[ProxyProcess]:
    process = ProxyProcess(
        ["serve", "--listen", "127.0.0.1:0", "--upstream", upstream.origin,
         "--vault", str(vault_file), "--workers", "2"],
        env=isolated_env,
        new_session=True,
    ).wait_ready()
    process.wait_for_line("worker 0 (pid")
    process.wait_for_line("worker 1 (pid")
    yield process
    process.kill_group()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_two_workers_serve_requests(workers: ProxyProcess, upstream: UpstreamServer) -> None:
    pids = children_of(workers.process.pid)
    assert len(pids) == 2, workers.output
    before = {pid: socket_count(pid) for pid in pids}

    sessions = [requests.Session() for _ in range(24)]
    try:
        for session in sessions:
            response = session.get(f"{workers.url}{USER_CATALOGS}/alpha-ws/echo", timeout=10)
            assert response.status_code == 200, response.text
            assert upstream.state.received[-1].headers["Authorization"] == [
                f"Bearer {TOKENS['alpha-ws']}"
            ]
        # Each connection is still open, so each worker that accepted one has more sockets.
        after = {pid: socket_count(pid) for pid in pids}
    finally:
        for session in sessions:
            session.close()
    for pid in pids:
        assert after[pid] > before[pid], (before, after)


def test_sigterm_stops_every_worker(workers: ProxyProcess) -> None:
    pids = children_of(workers.process.pid)
    assert workers.stop(signal.SIGTERM) == 0, workers.output
    assert "all workers stopped" in workers.output
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), pid


def test_workers_finish_requests_on_sigterm(
    workers: ProxyProcess, upstream: UpstreamServer
) -> None:
    request = InFlight(workers.url, upstream, "alpha-ws", "workers-sigterm").start()
    workers.process.send_signal(signal.SIGTERM)
    workers.wait_for_line("stopping 2 workers")
    response = request.finish()
    assert response.status_code == 200
    assert response.text == "released"
    assert workers.process.wait(15) == 0, workers.output


def test_worker_exit_stops_the_rest(workers: ProxyProcess) -> None:
    first, second = children_of(workers.process.pid)
    os.kill(first, signal.SIGKILL)
    assert workers.process.wait(15) == 1
    assert "exited with status -9; stopping the other workers" in workers.output
    assert not Path(f"/proc/{second}").exists()


def wait_for_exit(pids: list[int], timeout: float) -> list[int]:
    """Wait up to `timeout` seconds for every process in `pids` to exit; return those still running.

    A process that has exited counts even before it is reaped, since its adoptive
    parent (often pid 1 in a container) may never reap it.
    """
    descriptors = {os.pidfd_open(pid): pid for pid in pids}
    deadline = time.monotonic() + timeout
    try:
        waiting = set(descriptors)
        while waiting and time.monotonic() < deadline:
            ready, _, _ = select.select(list(waiting), [], [], deadline - time.monotonic())
            waiting -= set(ready)
        return sorted(descriptors[descriptor] for descriptor in waiting)
    finally:
        for descriptor in descriptors:
            os.close(descriptor)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux 5.3)")
def test_workers_exit_when_parent_killed(workers: ProxyProcess) -> None:
    pids = children_of(workers.process.pid)
    assert len(pids) == 2, workers.output
    workers.process.kill()
    assert workers.process.wait(15) == -signal.SIGKILL
    assert wait_for_exit(pids, timeout=15) == []


@pytest.mark.parametrize("value", ["0", "two", "-1", "257", "1.5", True])
def test_invalid_worker_count_rejected(value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_workers(value, "--workers")
    assert str(raised.value).startswith(f"--workers: invalid worker count {value!r}")


def test_invalid_workers_flag_one_line(vault_file: Path, isolated_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--listen", "127.0.0.1:0",
         "--vault", str(vault_file), "--workers", "0"],
        capture_output=True, text=True, timeout=30, env={**os.environ, **isolated_env},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("eodh-proxy: error: --workers: invalid worker count '0'")
    assert "Traceback" not in result.stderr


def test_auto_workers_is_cpu_count() -> None:
    settings = load_settings({"workers": "auto", "vault": "/nonexistent"}, read_config=False)
    assert settings.workers == available_cpus()


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("2", 2), (3, 3), ("256", 256)])
def test_worker_count_accepts_whole_numbers(value: object, expected: int) -> None:
    assert parse_workers(value, "--workers") == expected
