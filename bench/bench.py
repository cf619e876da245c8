"""Run the same loopback load against nginx, mitmdump and eodh-proxy, and report.

Started by `bench/run`, which installs what this needs. Each server listens on
127.0.0.1 on a free port, every load is bounded in time and count, and every
process started here is stopped on exit (normal end, error or Ctrl-C).

Topology: one nginx serves the files (the upstream); each proxy under test sits
in front of it and adds `Authorization: Bearer ...`; wrk and curl are the clients.
The upstream is also measured directly, as a reference without a proxy.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = "bench-ws"
WORKSPACE_PATH = f"/api/catalogue/stac/catalogs/user/catalogs/{WORKSPACE}"
JSON_PATH = f"{WORKSPACE_PATH}/processes"
DOWNLOAD_PATH = f"{WORKSPACE_PATH}/files/big.bin"
TOKEN = "bench-token-0123456789abcdef"
MIB = 1024 * 1024
# The row for `--workers auto`, one worker per CPU; the plain "eodh-proxy" row is the default.
WORKERS_ROW = "eodh-proxy --workers auto"
RESULTS_START = "<!-- bench/run results: start -->"
RESULTS_END = "<!-- bench/run results: end -->"


@dataclass(frozen=True)
class Plan:
    """How long and how hard each test runs."""

    quick: bool
    json_seconds: int
    json_connections: int
    many_clients: int
    many_seconds: int
    download_bytes: int
    idle_connections: int
    warm_up: bool

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 2, 32, 1000, 2, 128 * MIB, 500, warm_up=False)
        return cls(False, 10, 32, 1000, 10, 1024 * MIB, 10_000, warm_up=True)


@dataclass
class Result:
    """The figures of one target, with None where a test did not run or failed."""

    name: str
    requests_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    json_errors: int | None = None
    download_mib_s: float | None = None
    download_rss_mib: float | None = None
    many_requests_per_s: float | None = None
    many_p99_ms: float | None = None
    many_errors: int | None = None
    idle_open: int | None = None
    idle_kib_per_connection: float | None = None
    peak_rss_mib: float | None = None
    notes: list[str] = field(default_factory=list)


# --- processes --------------------------------------------------------------------------


class Processes:
    """Every process this run starts, each in its own session so its whole group can be stopped."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self._started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
        """Send SIGTERM to the process group, then SIGKILL if it outlives `timeout` seconds."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            # Workers whose parent already exited may linger in the group; the group
            # id cannot be reused while any of them lives.
            os.killpg(process.pid, signal.SIGKILL)
        if process in self._started:
            self._started.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self._started)):
            self.stop(process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode}:\n{_tail(log)}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 10) -> str:
    """Return the last lines of a server's log, because its folder is removed after the run."""
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def run(argv: list[str], timeout: float) -> str:
    """Run a client command to completion and return its standard output."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed with {done.returncode}: {done.stderr.strip()[:300]}")
    return done.stdout


# --- memory -----------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """Return `pid` and all its descendants, read from /proc."""
    pids = [pid]
    for current in pids:
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids.extend(int(child) for child in task.read_text().split())
    return pids


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        found = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        if found:
            return int(found.group(1))
    return 0


def rss_kib(pid: int) -> int:
    """Current resident memory of the process tree, summed over its processes."""
    return sum(_status_kib(each, "VmRSS") for each in process_tree(pid))


def peak_rss_kib(pid: int) -> int:
    """Peak resident memory (VmHWM) of the process tree, summed over its processes.

    The sum is an upper bound: pages shared between processes count once per process.
    """
    return sum(_status_kib(each, "VmHWM") for each in process_tree(pid))


def largest_peak_rss_kib(pid: int) -> int:
    """The largest peak resident memory (VmHWM) of any one process in the tree."""
    return max(_status_kib(each, "VmHWM") for each in process_tree(pid))


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM of the process tree to its current RSS (Linux 4.0+); False if not allowed."""
    try:
        for each in process_tree(pid):
            Path(f"/proc/{each}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --- the servers ------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None
    reference: bool = False


def make_files(folder: Path, download_bytes: int) -> Path:
    """Write the upstream's document root: a 1 KB JSON document and a sparse download file."""
    www = folder / "www"
    files = www / JSON_PATH.lstrip("/")
    files.parent.mkdir(parents=True)
    document = {"processes": [], "links": []}
    while len(json.dumps(document)) < 1000:
        index = len(document["processes"])
        document["processes"].append({"id": f"process-{index}", "version": "1.0.0"})
    files.write_text(json.dumps(document))
    big = www / DOWNLOAD_PATH.lstrip("/")
    big.parent.mkdir(parents=True)
    with big.open("wb") as output:
        output.truncate(download_bytes)
    # Read it once, so the first target measured does not pay for filling the page cache.
    with big.open("rb") as source:
        while source.read(4 * MIB):
            pass
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return www


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


NGINX_COMMON = """
worker_rlimit_nofile 20000;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 16384; }}
"""

NGINX_TEMP_PATHS = """
  client_body_temp_path {dir}/{name}-body;
  proxy_temp_path {dir}/{name}-proxy;
  fastcgi_temp_path {dir}/{name}-fastcgi;
  uwsgi_temp_path {dir}/{name}-uwsgi;
  scgi_temp_path {dir}/{name}-scgi;
"""


def nginx_upstream_conf(folder: Path, www: Path, port: int) -> Path:
    name = "nginx-upstream"
    conf = folder / f"{name}.conf"
    conf.write_text(
        "worker_processes 1;\n"
        + NGINX_COMMON.format(dir=folder, name=name)
        + "http {\n"
        + NGINX_TEMP_PATHS.format(dir=folder, name=name)
        + f"""
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/json;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {www};
    location /api/catalogue/stac/catalogs/user/catalogs/{WORKSPACE}/files/ {{
      default_type application/octet-stream;
    }}
  }}
}}
"""
    )
    return conf


def nginx_proxy_conf(folder: Path, port: int, upstream_port: int) -> Path:
    """nginx as a user would set it up to add a header: distribution defaults, plus keep-alive."""
    name = "nginx-proxy"
    conf = folder / f"{name}.conf"
    conf.write_text(
        "worker_processes auto;\n"
        + NGINX_COMMON.format(dir=folder, name=name)
        + "http {\n"
        + NGINX_TEMP_PATHS.format(dir=folder, name=name)
        + f"""
  access_log {folder}/{name}-access.log;
  upstream eodh {{
    server 127.0.0.1:{upstream_port};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://eodh;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {TOKEN}";
    }}
  }}
}}
"""
    )
    return conf


def start_nginx(processes: Processes, conf: Path, port: int) -> subprocess.Popen[bytes]:
    log = conf.with_suffix(".log")
    process = processes.start(
        [nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"], log
    )
    wait_for_port(port, process, log)
    return process


def start_mitmdump(processes: Processes, folder: Path, port: int, upstream_port: int) -> subprocess.Popen[bytes]:
    log = folder / "mitmdump.log"
    process = processes.start(
        [
            "mitmdump",
            "--mode", f"reverse:http://127.0.0.1:{upstream_port}/",
            "--listen-host", "127.0.0.1",
            "--listen-port", str(port),
            "--set", f"confdir={folder / 'mitmproxy'}",
            "--set", "stream_large_bodies=1m",
            "--set", "flow_detail=0",
            "--modify-headers", f"/~q/Authorization/Bearer {TOKEN}",
        ],
        log,
    )
    wait_for_port(port, process, log)
    return process


def start_eodh_proxy(
    processes: Processes, folder: Path, port: int, upstream_port: int, extra: list[str]
) -> subprocess.Popen[bytes]:
    vault = folder / "vault.yaml"
    if not vault.exists():
        vault.write_text(f"workspaces:\n  {WORKSPACE}:\n    token: '{TOKEN}'\n")
        vault.chmod(0o600)
    log = folder / f"eodh-proxy-{port}.log"
    eodh_proxy = Path(sys.executable).parent / "eodh-proxy"
    process = processes.start(
        [
            str(eodh_proxy), "serve",
            "--listen", f"127.0.0.1:{port}",
            "--upstream", f"http://127.0.0.1:{upstream_port}",
            "--vault", str(vault),
            *extra,
        ],
        log,
        # An empty config folder, so no user config.yaml changes what is measured.
        env={"XDG_CONFIG_HOME": str(folder / "xdg")},
    )
    wait_for_port(port, process, log)
    return process


# --- the loads --------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(found.group(1)) * _UNITS_MS[found.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Read requests/s, the 50th and 99th latency percentiles and all errors from wrk's output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if rate is None or p50 is None or p99 is None:
        raise ValueError("unexpected wrk output:\n" + output)
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(count) for count in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return WrkResult(float(rate.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), errors)


def wrk(port: int, path: str, connections: int, seconds: int) -> WrkResult:
    threads = min(2, connections)
    output = run(
        [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "5s", f"http://127.0.0.1:{port}{path}",
        ],
        timeout=seconds + 30,
    )
    return parse_wrk(output)


def download(port: int, size: int) -> float:
    """Download the big file once with curl; return MiB/s."""
    output = run(
        [
            "curl", "-sS", "--fail", "-o", "/dev/null", "--max-time", "300",
            "-w", "%{speed_download} %{size_download}",
            f"http://127.0.0.1:{port}{DOWNLOAD_PATH}",
        ],
        timeout=330,
    )
    speed, received = output.split()
    if int(received) != size:
        raise RuntimeError(f"download received {received} bytes, expected {size}")
    return float(speed) / MIB


def _read_response(sock: socket.socket) -> bool:
    """Read one HTTP response with a Content-Length body; True when it was a 200."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    remaining = (int(length.group(1)) if length else 0) - len(body)
    while remaining > 0:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            return False
        remaining -= len(chunk)
    return head.startswith(b"HTTP/1.1 200")


def wait_for_response(port: int, timeout: float = 30) -> None:
    """Send one request, retrying until a started proxy answers it with a 200."""
    deadline = time.monotonic() + timeout
    request = f"GET {JSON_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            if _read_response(sock):
                return
        time.sleep(0.05)
    raise RuntimeError(f"no 200 response from 127.0.0.1:{port} within {timeout:g} s")


def idle_connections(port: int, count: int, root_pid: int | None) -> tuple[int, float | None]:
    """Open `count` keep-alive connections, one request each, then hold them idle.

    Return how many were still open once all were made, and the growth of the
    server's RSS per connection in KiB.
    """
    request = (
        f"GET {JSON_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    ).encode()
    before = rss_kib(root_pid) if root_pid else 0
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(sock)
            sock.sendall(request)
            if not _read_response(sock):
                break
        after = rss_kib(root_pid) if root_pid else 0
        still_open = 0
        for sock in sockets:
            sock.setblocking(False)
            try:
                still_open += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
    finally:
        for sock in sockets:
            sock.close()
    per_connection = (after - before) / len(sockets) if root_pid and sockets else None
    return still_open, per_connection


# --- one target -------------------------------------------------------------------------


def measure(name: str, start: Callable[[], Target], stop: Callable[[Target], None], plan: Plan) -> Result:
    """Run each test against a freshly started `name`, so no test inherits another's memory."""
    result = Result(name)
    peaks: list[int] = []

    def small_json(target: Target, pid: int | None) -> None:
        small = wrk(target.port, JSON_PATH, plan.json_connections, plan.json_seconds)
        result.requests_per_s, result.p50_ms, result.p99_ms = (
            small.requests_per_s, small.p50_ms, small.p99_ms
        )
        result.json_errors = small.errors

    def download_file(target: Target, pid: int | None) -> None:
        if pid is not None and not reset_peak_rss(pid):
            result.notes.append("peak RSS could not be reset; it includes the warm-up")
        result.download_mib_s = download(target.port, plan.download_bytes)
        if pid is not None:
            # One process streams the download, so the figure is that process's
            # peak: a sum would count the pages that forked workers share again.
            result.download_rss_mib = largest_peak_rss_kib(pid) / 1024

    def many_clients(target: Target, pid: int | None) -> None:
        many = wrk(target.port, JSON_PATH, plan.many_clients, plan.many_seconds)
        result.many_requests_per_s, result.many_p99_ms, result.many_errors = (
            many.requests_per_s, many.p99_ms, many.errors
        )

    def idle(target: Target, pid: int | None) -> None:
        result.idle_open, result.idle_kib_per_connection = idle_connections(
            target.port, plan.idle_connections, pid
        )

    tests = [
        (f"small JSON, {plan.json_connections} connections, {plan.json_seconds} s", small_json),
        (f"download {plan.download_bytes // MIB} MiB", download_file),
        (f"{plan.many_clients} keep-alive clients, {plan.many_seconds} s", many_clients),
        (f"{plan.idle_connections} idle connections", idle),
    ]
    for label, test in tests:
        print(f"  {name}: {label}", file=sys.stderr, flush=True)
        try:
            target = start()
        except (RuntimeError, OSError) as error:
            result.notes.append(f"did not start: {error}")
            print(f"  {name}: did not start: {error}", file=sys.stderr)
            break
        pid = None if target.reference or target.process is None else target.process.pid
        try:
            if plan.warm_up:
                wrk(target.port, JSON_PATH, plan.json_connections, 1)
            else:
                # The quick run only proves that every step works: one request is enough.
                wait_for_response(target.port)
            test(target, pid)
            if pid is not None:
                peaks.append(peak_rss_kib(pid))
        except (RuntimeError, ValueError, subprocess.TimeoutExpired, OSError) as error:
            result.notes.append(f"{label}: failed: {error}")
            print(f"  {name}: {label} failed: {error}", file=sys.stderr)
        finally:
            stop(target)
    if peaks:
        result.peak_rss_mib = max(peaks) / 1024
    return result


# --- the report -------------------------------------------------------------------------


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def table(results: list[Result], baseline: Result | None) -> list[str]:
    base = baseline or Result("none")
    rows = [
        "| target | requests/s | vs nginx | p50 ms | p99 ms | p99 vs nginx | download MiB/s "
        "| vs nginx | download: peak RSS of one process MiB | 1,000 clients req/s | 1,000 clients errors "
        "| idle open | KiB per idle conn | peak RSS, all processes MiB |",
        "|" + "---|" * 14,
    ]
    for r in results:
        rows.append(
            f"| {r.name} | {_fmt(r.requests_per_s, ',.0f')} "
            f"| {_ratio(r.requests_per_s, base.requests_per_s)} "
            f"| {_fmt(r.p50_ms, '.2f')} | {_fmt(r.p99_ms, '.2f')} "
            f"| {_ratio(r.p99_ms, base.p99_ms)} "
            f"| {_fmt(r.download_mib_s, ',.0f')} | {_ratio(r.download_mib_s, base.download_mib_s)} "
            f"| {_fmt(r.download_rss_mib, '.1f')} | {_fmt(r.many_requests_per_s, ',.0f')} "
            f"| {_fmt(r.many_errors, 'd')} | {_fmt(r.idle_open, 'd')} "
            f"| {_fmt(r.idle_kib_per_connection, '.1f')} | {_fmt(r.peak_rss_mib, '.1f')} |"
        )
    return rows


def goals(result: Result, baseline: Result | None, plan: Plan) -> list[str]:
    """Check one eodh-proxy result against the performance goals; one line per goal."""
    if baseline is None:
        return ["- nginx was not measured, so no goal could be checked"]

    def verdict(ok: bool | None) -> str:
        if ok is None:
            return "not measured"
        return "met" if ok else "NOT met"

    def ratio(value: float | None, base: float | None) -> float | None:
        return None if value is None or not base else value / base

    rate = ratio(result.requests_per_s, baseline.requests_per_s)
    p99 = ratio(result.p99_ms, baseline.p99_ms)
    speed = ratio(result.download_mib_s, baseline.download_mib_s)
    rss = result.download_rss_mib
    lines = [
        f"- requests/s >= 0.35x nginx: {_fmt(rate, '.2f')}x, "
        f"{verdict(None if rate is None else rate >= 0.35)}",
        f"- p99 latency <= 4x nginx: {_fmt(p99, '.2f')}x, "
        f"{verdict(None if p99 is None else p99 <= 4)}",
        f"- download MiB/s >= 1.0x nginx: {_fmt(speed, '.2f')}x, "
        f"{verdict(None if speed is None else speed >= 1.0)}",
        f"- peak RSS while streaming < 100 MiB: {_fmt(rss, '.1f')} MiB, "
        f"{verdict(None if rss is None else rss < 100)}",
        f"- {plan.many_clients} concurrent keep-alive clients without errors: "
        f"{_fmt(result.many_errors, 'd')} errors, "
        f"{verdict(None if result.many_errors is None else result.many_errors == 0)}",
    ]
    if plan.quick:
        lines.append("- (quick run: shorter loads and a smaller download; not a record)")
    return lines


def command_version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        text = (done.stdout + done.stderr).strip().splitlines()
        return text[0] if text else "?"
    return "not installed"


def machine_lines() -> list[str]:
    model = "?"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"^Model name:\s+(.+)$", lscpu, re.M)
        model = found.group(1).strip() if found else "?"
    memory = "?"
    with contextlib.suppress(OSError):
        found = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        memory = f"{int(found.group(1)) / MIB:.1f} GiB" if found else "?"
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())

    def python_package(name: str) -> str:
        from importlib import metadata

        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    def first_match(pattern: str, text: str) -> str:
        found = re.search(pattern, text)
        return found.group(0) if found else text

    nginx = first_match(r"nginx/\S+", command_version([nginx_binary(), "-v"]))
    wrk_version = first_match(r"\d+\.\d+\.\d+", command_version(["wrk", "--version"]))
    curl = first_match(r"curl \S+", command_version(["curl", "--version"]))
    mitmdump = (
        first_match(r"Mitmproxy: \S+", command_version(["mitmdump", "--version"]))
        if shutil.which("mitmdump") else "mitmdump not installed"
    )
    return [
        f"- machine: {os.cpu_count()} CPUs (nproc: {command_version(['nproc'])}), {model}, "
        f"{memory} memory, {platform.system()} {platform.release()}",
        f"- load average at start (1, 5, 15 min): {load}",
        f"- versions: Python {platform.python_version()}, aiohttp {python_package('aiohttp')}, "
        f"uvloop {python_package('uvloop')}, eodh-proxy {python_package('eodh-proxy')}, "
        f"{nginx}, wrk {wrk_version}, {curl}, {mitmdump}",
    ]


def chart(results: list[Result], path: Path) -> None:
    """Draw requests/s, p99, download speed and peak RSS per target as bars in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("small JSON, requests/s", "requests_per_s"),
        ("small JSON, p99 latency (ms)", "p99_ms"),
        ("download (MiB/s)", "download_mib_s"),
        ("download, peak RSS of one process (MiB)", "download_rss_mib"),
    ]
    names = [r.name for r in results]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    for axis, (title, attribute) in zip(axes, panels):
        values = [getattr(r, attribute) or 0 for r in results]
        bars = axis.bar(range(len(names)), values, color="#4c72b0")
        axis.set_title(title, fontsize=10)
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        axis.bar_label(bars, fmt="%.0f", fontsize=7)
    figure.suptitle(f"eodh-proxy benchmark, {dt.date.today().isoformat()} (see benchmarks.md)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(results: list[Result], plan: Plan, out: Path, header: list[str]) -> Path:
    """Write the results section of benchmarks.md (kept between markers) and the chart."""
    out.mkdir(parents=True, exist_ok=True)
    chart_path = out / "benchmarks.png"
    chart(results, chart_path)
    baseline = next((r for r in results if r.name == "nginx"), None)
    section = [
        RESULTS_START,
        f"## Latest run: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
        + (" (quick)" if plan.quick else ""),
        "",
        *header,
        f"- loads: small JSON {plan.json_connections} connections for {plan.json_seconds} s; "
        f"{plan.many_clients} connections for {plan.many_seconds} s; download "
        f"{plan.download_bytes // MIB} MiB with curl; {plan.idle_connections} idle keep-alive "
        "connections, one request each",
        "",
        *table(results, baseline),
        "",
    ]
    for result in results:
        if result.name.startswith("eodh-proxy"):
            section += [f"Goals for {result.name}:", "", *goals(result, baseline, plan), ""]
    notes = [f"- {r.name}: {note}" for r in results for note in r.notes]
    if notes:
        section += ["Notes:", "", *notes, ""]
    section += [f"![benchmark chart]({chart_path.name})", RESULTS_END]

    report = out / "benchmarks.md"
    text = report.read_text() if report.exists() else "# Benchmarks\n\n" + RESULTS_START + RESULTS_END
    before, _, rest = text.partition(RESULTS_START)
    _, _, after = rest.partition(RESULTS_END)
    report.write_text(before + "\n".join(section) + after)
    return report


# --- profile ---------------------------------------------------------------------------


def _function_of(frame: str) -> str:
    """Reduce a py-spy frame `name (path/to/file.py:123)` to `name (file.py)`."""
    found = re.fullmatch(r"(.*) \((?:.*/)?([^/:]+)(?::\d+)?\)", frame)
    return f"{found.group(1)} ({found.group(2)})" if found else frame


def summarise_profile(raw: str, top: int = 25) -> list[str]:
    """Rank functions by own samples and by samples including callees, from py-spy's raw output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_function_of(frame) for frame in stack.split(";")[1:]]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
    lines = [f"{total} samples, idle included", "", "own time (the function itself):"]
    for name, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    lines += ["", "time including callees:"]
    for name, count in sorted(inclusive.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    return lines


def profile(processes: Processes, folder: Path, upstream_port: int, seconds: int, out: Path) -> None:
    """Sample eodh-proxy with py-spy under the small-JSON load; write and print a summary."""
    py_spy = Path(sys.executable).parent / "py-spy"
    port = free_port()
    proxy = start_eodh_proxy(processes, folder, port, upstream_port, [])
    wrk(port, JSON_PATH, 32, 1)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "profile-raw.txt"
    sampler = processes.start(
        [str(py_spy), "record", "--pid", str(proxy.pid), "--duration", str(seconds),
         "--rate", "250", "--idle", "--format", "raw", "--output", str(raw)],
        folder / "py-spy.log",
    )
    result = wrk(port, JSON_PATH, 32, seconds)
    sampler.wait(seconds + 30)
    summary = [
        f"eodh-proxy under py-spy: {result.requests_per_s:,.0f} requests/s, "
        f"p99 {result.p99_ms:.2f} ms (sampling slows it down)",
        *summarise_profile(raw.read_text()),
    ]
    (out / "profile-summary.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    print(f"\nwrote {raw} (collapsed stacks) and {out / 'profile-summary.txt'}", file=sys.stderr)


# --- main -------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def stop_on_signals(processes: Processes) -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt so the cleanup below always runs.

    SIGINT is set too, because a shell starts background jobs with it ignored.
    During the cleanup the signals are ignored, so a second Ctrl-C cannot cut it short.
    """
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in signals:
        signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum in signals:
            signal.signal(signum, signal.SIG_IGN)
        processes.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true",
        help="2-second loads without warm-up, a 128 MiB download and 500 idle connections, "
        "to prove the benchmark works (default: 10-second loads, 1 GiB, 10,000 idle "
        "connections)",
    )
    parser.add_argument(
        "--out", type=Path,
        help="folder for benchmarks.md and benchmarks.png "
        "(default: docs/ for a full run, bench/out/ for --quick)",
    )
    parser.add_argument(
        "--profile", action="store_true",
        help="instead of the comparison, sample eodh-proxy with py-spy under the small-JSON "
        "load and print where its time goes (written to bench/out/)",
    )
    args = parser.parse_args()
    plan = Plan.make(args.quick)
    out = args.out or (ROOT / ("bench/out" if plan.quick else "docs"))
    raise_fd_limit()
    header = machine_lines()
    processes = Processes()
    started = time.monotonic()

    with stop_on_signals(processes), tempfile.TemporaryDirectory(prefix="eodh-bench-") as temp:
        folder = Path(temp)
        www = make_files(folder, plan.download_bytes)
        upstream_port = free_port()
        upstream = start_nginx(processes, nginx_upstream_conf(folder, www, upstream_port), upstream_port)
        if args.profile:
            profile(processes, folder, upstream_port, 5 if plan.quick else 20, args.out or ROOT / "bench/out")
            return 0

        def start_proxy(kind: str, port: int) -> subprocess.Popen[bytes]:
            if kind == "nginx":
                return start_nginx(processes, nginx_proxy_conf(folder, port, upstream_port), port)
            if kind == "mitmdump":
                return start_mitmdump(processes, folder, port, upstream_port)
            extra = ["--workers", "auto"] if kind == WORKERS_ROW else []
            return start_eodh_proxy(processes, folder, port, upstream_port, extra)

        kinds = ["nginx", *(["mitmdump"] if shutil.which("mitmdump") else []), "eodh-proxy"]
        if (os.cpu_count() or 1) > 1:
            kinds.append(WORKERS_ROW)
        reference = Target("upstream, no proxy", upstream_port, upstream, reference=True)
        print("upstream, no proxy:", file=sys.stderr, flush=True)
        results = [measure(reference.name, lambda: reference, lambda target: None, plan)]
        for kind in kinds:
            print(f"{kind}:", file=sys.stderr, flush=True)

            def start(kind: str = kind) -> Target:
                port = free_port()
                return Target(kind, port, start_proxy(kind, port))

            def stop(target: Target) -> None:
                assert target.process is not None
                processes.stop(target.process)

            results.append(measure(kind, start, stop, plan))

        print("\n".join(table(results, next((r for r in results if r.name == "nginx"), None))))
        report = write_report(results, plan, out, header)
    print(f"\nwrote {report} and {report.with_name('benchmarks.png')} "
          f"in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted; stopped every process it started", file=sys.stderr)
        sys.exit(130)
