"""The audit log: one JSON line per request, refused requests included.

Each line has exactly these fields, in this order:

- `time`: RFC 3339, UTC.
- `client`: the gateway client's name, or null.
- `remote`: the source address.
- `workspace`: null when the request names none or was refused before its
  route was resolved.
- `method`, and `path` without the query, because a query may carry signed URLs.
- `status`, `bytes_in` (request body bytes received), `bytes_out` (response
  body bytes sent) and `duration_ms`.
- `token_fp`: the fingerprint of the workspace token sent upstream, or null.

No line contains a key or a token.

Lines of one event-loop iteration are written together at its end, so a busy
proxy makes one write call per iteration, not one per request. The file is
opened in append mode and reopened on SIGHUP, and also when the path no longer
names the open file (moved or removed by log rotation), which a timer checks
once a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from proxy.errors import ConfigError
from proxy.log import log

STANDARD_OUTPUT = "-"
FILE_MODE = 0o640
CHECK_INTERVAL_SECONDS = 1.0
# A failing disk would otherwise log one warning per event-loop iteration.
WRITE_ERROR_LOG_INTERVAL_SECONDS = 60.0


class AuditLog:
    """Writer of audit lines to a file, or to standard output for `-`."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""
        self._timer: asyncio.TimerHandle | None = None
        self._last_error_logged = -WRITE_ERROR_LOG_INTERVAL_SECONDS

    def open(self) -> None:
        """Open the target; a file that cannot be opened is a `ConfigError`."""
        if self.target == STANDARD_OUTPUT:
            return
        try:
            self._open_file()
        except OSError as exc:
            reason = (exc.strerror or type(exc).__name__).lower()
            raise ConfigError(f"{self.target}: cannot open audit log: {reason}") from None

    def start(self) -> None:
        """Start the once-a-second check for a moved file; call it on the running loop."""
        if self.target != STANDARD_OUTPUT:
            self._timer = asyncio.get_running_loop().call_later(
                CHECK_INTERVAL_SECONDS, self._check_moved
            )

    def record(
        self,
        *,
        client: str | None,
        remote: str | None,
        workspace: str | None,
        method: str,
        path: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration_ms: float,
        token_fp: str | None,
    ) -> None:
        """Queue one line; it is written at the end of this event-loop iteration."""
        line = {
            "time": self._now(),
            "client": client,
            "remote": remote,
            "workspace": workspace,
            "method": method,
            "path": path,
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": round(duration_ms, 1),
            "token_fp": token_fp,
        }
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(json.dumps(line, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8")
        self._pending.clear()
        try:
            if self.target == STANDARD_OUTPUT:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            elif self._fd is not None:
                os.write(self._fd, data)
        except (OSError, ValueError) as exc:
            self._log_write_error(exc)

    def reopen(self, reason: str) -> None:
        """Close and open the file again, as after log rotation; standard output stays."""
        if self.target == STANDARD_OUTPUT:
            return
        self.flush()
        try:
            self._open_file()
        except OSError as exc:
            log.warning("audit log %s not reopened (%s): %s", self.target, reason, exc.strerror)
            return
        log.info("audit log %s reopened (%s)", self.target, reason)

    def close(self) -> None:
        self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open_file(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.target, flags, FILE_MODE)
        status = os.fstat(fd)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._identity = (status.st_dev, status.st_ino)

    def _check_moved(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(
            CHECK_INTERVAL_SECONDS, self._check_moved
        )
        try:
            status = os.stat(self.target)
        except FileNotFoundError:
            self.reopen("the file was moved or removed")
            return
        except OSError:
            return
        if (status.st_dev, status.st_ino) != self._identity:
            self.reopen("the file was replaced")

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def _log_write_error(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_logged >= WRITE_ERROR_LOG_INTERVAL_SECONDS:
            self._last_error_logged = now
            log.warning("audit log %s: write failed, lines lost: %s", self.target, exc)
