"""Upstream failures and clients that go away, seen from both ends of the proxy.

An unreachable upstream gets 502 and a silent one 504, as problem+json naming the
upstream host. An upstream that breaks off or stalls mid-body makes the proxy abort
the client connection, so no client takes a truncated body for a complete one. A
client that goes away cancels the upstream request, which the upstream observes.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess, free_port
from tests.upstream import TOKENS, UpstreamServer, Watch

PROBLEM_JSON = "application/problem+json"
READ_TIMEOUT = 0.5
UPLOAD_SIZE = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def cancelling_upstream() -> Iterator[UpstreamServer]:
    """A stand-in that cancels a handler when its connection closes, so tests can see it."""
    server = UpstreamServer(handler_cancellation=True).start()
    yield server
    server.stop()
    assert server.state.violations == []


def serve(*args: str, env: dict[str, str]) -> ProxyProcess:
    return ProxyProcess(["serve", "--listen", "127.0.0.1:0", *args], env=env).wait_ready()


def stop_and_check(process: ProxyProcess) -> None:
    process.stop()
    leaked = [workspace for workspace, token in TOKENS.items() if token in process.output]
    assert leaked == [], f"tokens of {leaked} appeared in the proxy's output"


@pytest.fixture(scope="module")
def patient_proxy(
    cancelling_upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> Iterator[ProxyProcess]:
    """A proxy with the default read timeout, so only a client leaving ends a request early."""
    process = serve(
        "--upstream", cancelling_upstream.origin, "--vault", str(vault_file), env=isolated_env
    )
    yield process
    stop_and_check(process)


@pytest.fixture(scope="module")
def impatient_proxy(
    cancelling_upstream: UpstreamServer,
    vault_file: Path,
    isolated_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    """A proxy whose config file sets a short read timeout."""
    config = tmp_path_factory.mktemp("impatient") / "config.yaml"
    config.write_text(
        f"upstream: {cancelling_upstream.origin}\n"
        f"vault: {vault_file}\n"
        f"read_timeout: {READ_TIMEOUT}\n"
    )
    process = serve("--config", str(config), env=isolated_env)
    yield process
    stop_and_check(process)


def assert_problem_without_tokens(response: requests.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM_JSON
    for workspace, token in TOKENS.items():
        assert token not in response.text, f"token of {workspace} in the error body"
    problem: dict[str, object] = response.json()
    assert problem["status"] == status
    return problem


def test_unreachable_upstream_returns_502(
    vault_file: Path, isolated_env: dict[str, str]
) -> None:
    port = free_port()  # nothing listens there
    process = serve("--upstream", f"http://127.0.0.1:{port}", "--vault", str(vault_file),
                    env=isolated_env)
    try:
        response = requests.get(f"{process.url}{USER_CATALOGS}/alpha-ws/processes", timeout=10)
    finally:
        stop_and_check(process)

    problem = assert_problem_without_tokens(response, 502)
    assert "cannot connect to upstream host 127.0.0.1" in str(problem["detail"])
    assert problem["type"] == "urn:eodh-proxy:upstream-unreachable"


def test_silent_upstream_returns_504(impatient_proxy: ProxyProcess) -> None:
    response = requests.get(f"{impatient_proxy.url}{USER_CATALOGS}/alpha-ws/silent", timeout=10)

    problem = assert_problem_without_tokens(response, 504)
    assert problem["detail"] == f"upstream host 127.0.0.1 sent no response for {READ_TIMEOUT:g} s"
    assert problem["type"] == "urn:eodh-proxy:upstream-timeout"


@pytest.mark.parametrize(
    "query",
    ["end=abort", "end=abort&framing=chunked", "end=stall", "end=stall&framing=chunked"],
)
def test_broken_body_aborts_for_requests(impatient_proxy: ProxyProcess, query: str) -> None:
    url = f"{impatient_proxy.url}{USER_CATALOGS}/alpha-ws/break-off?{query}"
    with requests.get(url, stream=True, timeout=10) as response:
        assert response.status_code == 200
        with pytest.raises(requests.exceptions.RequestException):
            response.content


@pytest.mark.parametrize(
    "query",
    ["end=abort", "end=abort&framing=chunked", "end=stall", "end=stall&framing=chunked"],
)
def test_broken_body_fails_curl(impatient_proxy: ProxyProcess, query: str) -> None:
    result = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
         f"{impatient_proxy.url}{USER_CATALOGS}/alpha-ws/break-off?{query}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    status, size = result.stdout.split()

    assert result.returncode != 0, result.stderr
    assert status == "200"
    assert int(size) < 1024 * 1024


def test_broken_body_logged_with_bytes_sent(impatient_proxy: ProxyProcess) -> None:
    url = f"{impatient_proxy.url}{USER_CATALOGS}/beta-ws/break-off?end=abort"
    with requests.get(url, stream=True, timeout=10) as response:
        with pytest.raises(requests.exceptions.RequestException):
            response.content

    line = impatient_proxy.wait_for_line('/beta-ws/break-off" ')
    # The stand-in sends 100 KiB before it breaks off; some of it may be lost in the reset.
    assert re.search(r" beta-ws 200 [1-9][0-9]*B ", line), line


def leave_mid_request(proxy: ProxyProcess, head: str, body: bytes, watch: Watch) -> None:
    """Send the request head and the start of its body, wait for the upstream, then leave."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        client.sendall(head.encode() + body)
        assert watch.started.wait(10), "the request never reached the upstream"
        # An RST rather than a FIN: the client is gone, not just done sending.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def body_completed(outcome: str) -> bool:
    return outcome.startswith("read ") and outcome.endswith(" bytes")


def test_client_leaving_cancels_waiting_request(
    patient_proxy: ProxyProcess, cancelling_upstream: UpstreamServer
) -> None:
    watch = cancelling_upstream.watch("waiting")
    head = (
        f"GET {USER_CATALOGS}/alpha-ws/watched/waiting HTTP/1.1\r\n"
        "Host: localhost\r\n\r\n"
    )
    leave_mid_request(patient_proxy, head, b"", watch)

    assert watch.ended.wait(10), "the upstream request is still open after the client left"
    assert watch.outcome == "cancelled"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_leaving_cancels_upload(
    patient_proxy: ProxyProcess, cancelling_upstream: UpstreamServer, framing: str
) -> None:
    name = f"upload-{framing}"
    watch = cancelling_upstream.watch(name)
    start = b"u" * 65536
    if framing == "content-length":
        framing_header = f"Content-Length: {UPLOAD_SIZE}"
        body = start
    else:
        framing_header = "Transfer-Encoding: chunked"
        body = f"{len(start):x}\r\n".encode() + start + b"\r\n"
    head = (
        f"PUT {USER_CATALOGS}/alpha-ws/watched/{name} HTTP/1.1\r\n"
        f"Host: localhost\r\n{framing_header}\r\n\r\n"
    )
    leave_mid_request(patient_proxy, head, body, watch)

    assert watch.ended.wait(10), "the upstream request is still open after the client left"
    assert not body_completed(watch.outcome), watch.outcome

