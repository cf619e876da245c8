"""`eodh-proxy demo`: the curl commands it prints work against it, as printed."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import ProxyProcess


@pytest.fixture(scope="module")
def demo(isolated_env: dict[str, str]) -> Iterator[ProxyProcess]:
    process = ProxyProcess(["demo", "--listen", "127.0.0.1:0"], env=isolated_env).wait_ready()
    process.wait_for_line("Press Ctrl-C to stop.")
    yield process
    process.stop()


def printed_commands(output: str) -> list[str]:
    """Return the curl commands in the demo's output, continuation lines joined."""
    joined = output.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


def run_printed(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=30, check=False
    )


def test_demo_prints_three_commands(demo: ProxyProcess) -> None:
    commands = printed_commands(demo.output)

    assert len(commands) == 3, demo.output
    for command in commands:
        assert f"http://localhost:{demo.port}/" in command


def test_demo_lists_processes(demo: ProxyProcess) -> None:
    result = run_printed(printed_commands(demo.output)[0])
    processes = json.loads(result.stdout)["processes"]

    assert result.returncode == 0, result.stderr
    assert [process["id"] for process in processes] == ["echo", "ndvi"]
    assert processes[0]["links"][0]["href"].startswith(f"http://localhost:{demo.port}/")


def test_demo_starts_job(demo: ProxyProcess) -> None:
    result = run_printed(printed_commands(demo.output)[1])
    head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
    location = re.search(r"^Location: (\S+)$", head, re.MULTILINE | re.IGNORECASE)

    assert result.returncode == 0, result.stderr
    assert head.startswith("HTTP/1.1 201"), head
    assert location is not None, head
    assert location.group(1).startswith(f"http://localhost:{demo.port}/")
    assert json.loads(body)["status"] == "running"


def test_demo_explains_missing_token(demo: ProxyProcess) -> None:
    result = run_printed(printed_commands(demo.output)[2])
    problem = json.loads(result.stdout)

    assert result.returncode == 0, result.stderr
    assert problem["status"] == 403
    assert "unknown-ws" in problem["detail"]
