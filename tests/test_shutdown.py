"""SIGTERM: stop accepting, let requests in flight finish within the grace period, exit 0."""

from __future__ import annotations

import http.client
import io
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import BinaryIO, NamedTuple

import pytest
import requests

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess
from tests.inflight import InFlight
from tests.rawhttp import build
from tests.upstream import UpstreamServer


def start(upstream: UpstreamServer, vault: Path, env: dict[str, str],
          config: Path | None = None) -> ProxyProcess:
    args = ["serve", "--listen", "127.0.0.1:0", "--upstream", upstream.origin,
            "--vault", str(vault)]
    if config is not None:
        args += ["--config", str(config)]
    return ProxyProcess(args, env=env).wait_ready()


def grace_config(tmp_path: Path, seconds: float) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(f"shutdown_grace_period: {seconds}\n")
    return config


def connection_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("after", ["", "headers"])
def test_sigterm_lets_request_finish(
    after: str, upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    proxy = start(upstream, vault_file, isolated_env)
    held = InFlight(proxy.url, upstream, "alpha-ws", f"shutdown-{after}", after=after).start()

    proxy.process.send_signal(signal.SIGTERM)
    proxy.wait_for_line("waiting up to 10 s for 1 request(s) in flight")
    refused = connection_refused(proxy.port)
    # The proxy must keep running while the request is held, not only for a moment.
    with pytest.raises(subprocess.TimeoutExpired):
        proxy.process.wait(timeout=1)
    response = held.finish()
    code = proxy.process.wait(15)

    assert refused
    assert response.status_code == 200
    assert response.text == ("first, released" if after else "released")
    assert code == 0
    assert "cutting off" not in proxy.output


def test_grace_period_cuts_off(
    tmp_path: Path, upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    proxy = start(upstream, vault_file, isolated_env, grace_config(tmp_path, 0.5))
    held = InFlight(proxy.url, upstream, "alpha-ws", "shutdown-cut", after="headers").start()

    started = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    code = proxy.process.wait(15)
    elapsed = time.monotonic() - started

    assert code == 0
    assert elapsed < 5, f"took {elapsed:.1f} s with a 0.5 s grace period"
    assert "cutting off 1 request(s) still in flight" in proxy.wait_for_line("cutting off")
    with pytest.raises(requests.exceptions.RequestException):
        held.finish()


def test_second_sigterm_stops_at_once(
    tmp_path: Path, upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    proxy = start(upstream, vault_file, isolated_env, grace_config(tmp_path, 60))
    held = InFlight(proxy.url, upstream, "alpha-ws", "shutdown-twice").start()

    proxy.process.send_signal(signal.SIGTERM)
    proxy.wait_for_line("waiting up to 60 s")
    proxy.process.send_signal(signal.SIGTERM)
    code = proxy.process.wait(15)

    assert code == 0
    assert "second stop signal" in proxy.wait_for_line("second stop signal")
    with pytest.raises(requests.exceptions.RequestException):
        held.finish()


def test_idle_proxy_stops_at_once(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    proxy = start(upstream, vault_file, isolated_env)
    with requests.Session() as session:
        # An idle keep-alive connection must not hold the shutdown up.
        session.get(f"{proxy.url}/_proxy/healthz", timeout=10)
        code = proxy.stop(timeout=5)
    assert code == 0
    assert "waiting up to" not in proxy.output


def test_sigterm_closes_idle_connections(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    """An idle keep-alive connection is closed at once, while a request in flight goes on."""
    proxy = start(upstream, vault_file, isolated_env)
    idle = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    idle.request("GET", "/_proxy/healthz", headers={"Host": "localhost"})
    first = idle.getresponse()
    first.read()
    held = InFlight(proxy.url, upstream, "alpha-ws", "shutdown-idle").start()

    proxy.process.send_signal(signal.SIGTERM)
    proxy.wait_for_line("waiting up to 10 s for 1 request(s) in flight")
    assert idle.sock is not None
    idle.sock.settimeout(5)
    end_of_file = idle.sock.recv(1)
    idle.close()
    response = held.finish()
    code = proxy.process.wait(15)

    assert first.status == 200
    assert first.getheader("Connection") != "close"
    assert end_of_file == b""
    assert response.text == "released"
    assert code == 0


def test_pipelined_request_answered_while_stopping(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    """A request queued behind one in flight gets a response, with `Connection: close`."""
    proxy = start(upstream, vault_file, isolated_env)
    gate = upstream.gate("shutdown-pipelined")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            build(f"GET {USER_CATALOGS}/alpha-ws/hold?gate=shutdown-pipelined HTTP/1.1",
                  "Host: localhost")
            + build("GET /_proxy/readyz HTTP/1.1", "Host: localhost")
        )
        assert gate.arrived.wait(10)
        proxy.process.send_signal(signal.SIGTERM)
        proxy.wait_for_line("waiting up to 10 s for 1 request(s) in flight")
        gate.open()
        stream = KeptOpen(socket.SocketIO(sock, "rb"))
        held = read_response(stream)
        readiness = read_response(stream)
        end_of_file = stream.read(1)
    code = proxy.process.wait(15)

    assert held.status == 200
    assert held.body == b"released"
    assert readiness.status == 503
    assert readiness.headers.get("Connection") == "close"
    assert readiness.body == b"not ready: shutting down: finishing requests in flight\n"
    assert end_of_file == b""
    assert code == 0


def test_in_flight_response_closes_connection(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    """A response whose headers go out after SIGTERM carries `Connection: close`."""
    proxy = start(upstream, vault_file, isolated_env)
    gate = upstream.gate("shutdown-in-flight-close")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            build(f"GET {USER_CATALOGS}/alpha-ws/hold?gate=shutdown-in-flight-close HTTP/1.1",
                  "Host: localhost")
        )
        assert gate.arrived.wait(10)
        proxy.process.send_signal(signal.SIGTERM)
        proxy.wait_for_line("waiting up to 10 s for 1 request(s) in flight")
        gate.open()
        held = read_response(KeptOpen(socket.SocketIO(sock, "rb")))
    code = proxy.process.wait(15)

    assert held.status == 200
    assert held.headers.get("Connection") == "close"
    assert code == 0


class KeptOpen(io.BufferedReader):
    """A buffered socket reader that http.client cannot close after one response."""

    def close(self) -> None:
        pass


class Response(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def read_response(stream: BinaryIO) -> Response:
    """Read one response from `stream`, leaving the bytes after it unread."""

    class Source:
        def makefile(self, *args: object, **kwargs: object) -> BinaryIO:
            return stream

    response = http.client.HTTPResponse(Source())  # type: ignore[arg-type]
    response.begin()
    return Response(response.status, response.headers, response.read())
