"""The audit log: one JSON line per request, field by field, and rotation."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from proxy.standin import USER_CATALOGS
from proxy.vault import fingerprint
from tests.conftest import ProxyProcess
from tests.gateway import basic, key_of, secrets_in, serve_args, write_gateway_vault
from tests.upstream import TOKENS, UpstreamServer

FIELDS = [
    "time",
    "client",
    "remote",
    "workspace",
    "method",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "token_fp",
]
ALPHA = f"{USER_CATALOGS}/alpha-ws"


def audit_lines(path: Path, marker: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """Wait until `path` contains `count` lines whose path contains `marker`; return them parsed.

    The proxy writes audit lines at the end of an event-loop iteration, just
    after the response, so a line may land a moment after the client has its answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        found = [json.loads(line) for line in text.splitlines() if marker in line]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, text[-3000:]
            return found
        time.sleep(0.02)


@pytest.fixture(scope="module")
def audited(
    upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory, isolated_env: dict[str, str]
) -> Iterator[tuple[ProxyProcess, Path]]:
    folder = tmp_path_factory.mktemp("audit")
    vault = write_gateway_vault(folder / "vault.yaml")
    log = folder / "audit.log"
    process = ProxyProcess(
        serve_args(upstream, vault, "127.0.0.1:0", "--audit-log", str(log)), env=isolated_env
    ).wait_ready()
    yield process, log
    process.stop()
    assert secrets_in(log.read_text()) == []


def test_allowed_request_line_fields(audited: tuple[ProxyProcess, Path]) -> None:
    process, log = audited
    marker = uuid.uuid4().hex
    body = b"x" * 1234
    started = dt.datetime.now(dt.UTC)
    response = requests.post(
        f"{process.url}{ALPHA}/upload?signature=query-secret&m={marker}",
        data=body,
        auth=("alice", key_of("alice")),
        timeout=10,
    )
    assert response.status_code == 200
    # The path carries the marker; the query must not reach the log.
    requests.get(f"{process.url}{ALPHA}/echo/{marker}?q=1", auth=("alice", key_of("alice")))

    (line,) = audit_lines(log, f"/echo/{marker}", 1)
    assert list(line) == FIELDS
    assert line["path"] == f"{ALPHA}/echo/{marker}"
    upload = next(
        json.loads(text)
        for text in reversed(log.read_text().splitlines())
        if json.loads(text)["path"] == f"{ALPHA}/upload"
    )
    assert list(upload) == FIELDS
    logged_at = dt.datetime.fromisoformat(upload["time"])
    assert upload["time"].endswith("Z")
    assert abs((logged_at - started).total_seconds()) < 10
    assert upload["client"] == "alice"
    assert upload["remote"] == "127.0.0.1"
    assert upload["workspace"] == "alpha-ws"
    assert upload["method"] == "POST"
    assert upload["status"] == 200
    assert upload["bytes_in"] == len(body)
    assert upload["bytes_out"] == len(response.content)
    assert isinstance(upload["duration_ms"], float)
    assert upload["duration_ms"] >= 0
    assert upload["token_fp"] == fingerprint(TOKENS["alpha-ws"])
    assert "query-secret" not in log.read_text()


def test_refused_requests_logged(audited: tuple[ProxyProcess, Path]) -> None:
    process, log = audited
    marker = uuid.uuid4().hex
    statuses = [
        requests.get(f"{process.url}{ALPHA}/x/{marker}", timeout=10).status_code,
        requests.get(
            f"{process.url}{ALPHA}/x/{marker}", auth=("alice", "wrong-key"), timeout=10
        ).status_code,
        requests.get(
            f"{process.url}{USER_CATALOGS}/beta-ws/x/{marker}",
            auth=("alice", key_of("alice")),
            timeout=10,
        ).status_code,
        requests.delete(
            f"{process.url}{ALPHA}/x/{marker}", auth=("reader", key_of("reader")), timeout=10
        ).status_code,
    ]
    assert statuses == [401, 401, 403, 403]

    missing, wrong, ungranted, read_only = audit_lines(log, marker, 4)
    for line in (missing, wrong, ungranted, read_only):
        assert list(line) == FIELDS
        assert line["token_fp"] is None
        assert line["bytes_out"] > 0
    assert (missing["client"], missing["status"], missing["workspace"]) == (None, 401, None)
    assert (wrong["client"], wrong["status"]) == (None, 401)
    assert (ungranted["client"], ungranted["workspace"]) == ("alice", "beta-ws")
    assert (read_only["client"], read_only["method"]) == ("reader", "DELETE")


def test_liveness_probe_logged(audited: tuple[ProxyProcess, Path]) -> None:
    process, log = audited
    marker = uuid.uuid4().hex
    response = requests.get(f"{process.url}/_proxy/healthz?m={marker}", timeout=10)
    assert response.status_code == 200
    # The query is not logged, so a request after the probe marks how far to read.
    requests.get(f"{process.url}/echo/{marker}", auth=("ops", key_of("ops")), timeout=10)
    audit_lines(log, f"/echo/{marker}", 1)

    probes = [json.loads(line) for line in log.read_text().splitlines() if "/healthz" in line]
    assert probes != []
    assert probes[-1]["path"] == "/_proxy/healthz"
    assert probes[-1]["status"] == 200
    assert probes[-1]["client"] is None
    assert probes[-1]["bytes_out"] == len(response.content)


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", {"Upgrade": "websocket", "Connection": "Upgrade"}, 501),
        ("GET", {}, 403),
        ("HEAD", {}, 403),
    ],
    ids=["upgrade", "no-token", "no-token-head"],
)
def test_error_bytes_match_access_line(
    audited: tuple[ProxyProcess, Path], method: str, headers: dict[str, str], status: int
) -> None:
    """The proxy's own error responses: the access and audit lines count the same body bytes."""
    process, log = audited
    marker = uuid.uuid4().hex
    path = f"{USER_CATALOGS}/gamma-ws/x/{marker}"
    response = requests.request(
        method, f"{process.url}{path}", headers=headers, auth=("guest", key_of("guest")),
        timeout=10,
    )
    assert response.status_code == status
    access = process.wait_for_line(f'"{method} {path}"')

    (line,) = audit_lines(log, marker, 1)
    assert line["status"] == status
    assert line["bytes_out"] == len(response.content)
    assert f" {status} {line['bytes_out']}B " in access, access


def test_public_path_line_has_no_workspace(audited: tuple[ProxyProcess, Path]) -> None:
    process, log = audited
    marker = uuid.uuid4().hex
    requests.get(f"{process.url}/api/catalogue/stac/echo?m={marker}", auth=("ops", key_of("ops")))
    requests.get(f"{process.url}/echo/{marker}", auth=("ops", key_of("ops")), timeout=10)
    (line,) = audit_lines(log, f"/echo/{marker}", 1)
    assert line["client"] == "ops"
    assert line["workspace"] is None
    assert line["token_fp"] is None
    assert line["status"] == 200


def test_no_key_or_token_in_audit_log(audited: tuple[ProxyProcess, Path]) -> None:
    process, log = audited
    marker = uuid.uuid4().hex
    for name in ("alice", "ops", "reader"):
        requests.get(
            f"{process.url}{ALPHA}/echo/{marker}",
            headers={"Proxy-Authorization": basic(name)},
            timeout=10,
        )
    audit_lines(log, marker, 3)
    text = log.read_text()
    assert secrets_in(text) == []
    assert basic("alice").split()[1] not in text


def start_audited(
    upstream: UpstreamServer, folder: Path, env: dict[str, str], target: str
) -> ProxyProcess:
    vault = write_gateway_vault(folder / "vault.yaml")
    return ProxyProcess(
        serve_args(upstream, vault, "127.0.0.1:0", "--audit-log", target), env=env
    ).wait_ready()


def get_marked(process: ProxyProcess, marker: str) -> None:
    response = requests.get(
        f"{process.url}{ALPHA}/echo/{marker}", auth=("alice", key_of("alice")), timeout=10
    )
    assert response.status_code == 200


def test_sighup_reopens_moved_file(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    log = tmp_path / "audit.log"
    rotated = tmp_path / "audit.log.1"
    process = start_audited(upstream, tmp_path, isolated_env, str(log))
    try:
        get_marked(process, "before")
        audit_lines(log, "before", 1)
        os.rename(log, rotated)
        process.process.send_signal(signal.SIGHUP)
        process.wait_for_line(f"audit log {log} reopened (SIGHUP)")

        get_marked(process, "after")
        assert audit_lines(log, "after", 1)[0]["client"] == "alice"
        assert "after" not in rotated.read_text()
        assert "before" not in log.read_text()
    finally:
        process.stop()


def test_moved_file_reopened_without_signal(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    log = tmp_path / "audit.log"
    process = start_audited(upstream, tmp_path, isolated_env, str(log))
    try:
        get_marked(process, "before")
        audit_lines(log, "before", 1)
        os.rename(log, tmp_path / "audit.log.1")
        process.wait_for_line(f"audit log {log} reopened (the file was moved or removed)")
        get_marked(process, "after")
        audit_lines(log, "after", 1)
    finally:
        process.stop()


def test_replaced_file_reopened_without_signal(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """Rotation that puts a new file in place at once, so the path never goes missing."""
    log = tmp_path / "audit.log"
    rotated = tmp_path / "audit.log.1"
    process = start_audited(upstream, tmp_path, isolated_env, str(log))
    try:
        get_marked(process, "before")
        audit_lines(log, "before", 1)
        os.link(log, rotated)
        fresh = tmp_path / "fresh"
        fresh.write_text("")
        os.replace(fresh, log)
        process.wait_for_line(f"audit log {log} reopened (the file was replaced)")
        get_marked(process, "after")
        audit_lines(log, "after", 1)
        assert "after" not in rotated.read_text()
    finally:
        process.stop()


def test_workers_share_audit_file(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """Every worker appends whole lines to the one file, and each reopens it on SIGHUP."""
    vault = write_gateway_vault(tmp_path / "vault.yaml")
    log = tmp_path / "audit.log"
    process = ProxyProcess(
        serve_args(upstream, vault, "127.0.0.1:0", "--audit-log", str(log), "--workers", "2"),
        env=isolated_env,
    ).wait_ready()
    try:
        process.wait_for_line("worker 1 (pid")
        for _ in range(20):
            get_marked(process, "shared")
        lines = audit_lines(log, "shared", 20)
        assert {line["status"] for line in lines} == {200}

        os.rename(log, tmp_path / "audit.log.1")
        process.process.send_signal(signal.SIGHUP)
        reopened = f"audit log {log} reopened (SIGHUP)"
        process.wait_for_line(reopened)
        deadline = time.monotonic() + 10
        while sum(reopened in line for line in process.lines) < 2:
            assert time.monotonic() < deadline, process.output[-2000:]
            time.sleep(0.02)
    finally:
        process.stop()


def test_audit_log_mode_is_private(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    log = tmp_path / "audit.log"
    process = start_audited(upstream, tmp_path, isolated_env, str(log))
    process.stop()
    assert log.stat().st_mode & 0o777 == 0o640


def test_audit_to_standard_output(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    process = start_audited(upstream, tmp_path, isolated_env, "-")
    try:
        marker = uuid.uuid4().hex
        get_marked(process, marker)
        # The access line contains the marker too; only the JSON line has it before a quote.
        line = json.loads(process.wait_for_line(f'{marker}", "status"'))
        assert list(line) == FIELDS
        assert line["client"] == "alice"
    finally:
        process.stop()


def test_unwritable_audit_log_rejected(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = write_gateway_vault(tmp_path / "vault.yaml")
    target = tmp_path / "missing-folder" / "audit.log"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            *serve_args(upstream, vault, "127.0.0.1:0", "--audit-log", str(target)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **isolated_env},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"eodh-proxy: error: {target}: cannot open audit log: no such file or directory"
    )


def test_config_audit_log_relative_to_config(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("audit_log: logs/audit.log\n")
    (tmp_path / "logs").mkdir()
    vault = write_gateway_vault(tmp_path / "vault.yaml")
    process = ProxyProcess(
        serve_args(upstream, vault, "127.0.0.1:0", "--config", str(config)), env=isolated_env
    ).wait_ready()
    try:
        get_marked(process, "configured")
        audit_lines(tmp_path / "logs" / "audit.log", "configured", 1)
    finally:
        process.stop()
