"""Logger names and the one place logging is configured.

`eodh_proxy` carries operational messages; `eodh_proxy.access` carries one line
per request. aiohttp's own server errors (malformed requests, mostly) are reduced
to one line without a traceback, since they are the client's fault.
"""

from __future__ import annotations

import asyncio
import logging
import select
import sys
import time
from collections.abc import Iterator
from typing import TextIO

log = logging.getLogger("eodh_proxy")
access_log = logging.getLogger("eodh_proxy.access")


class _OneLineClientErrors(logging.Filter):
    """Turn aiohttp's 'Error handling request' tracebacks for bad requests into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            status = getattr(error, "code", None) or getattr(error, "status", None)
            if isinstance(status, int) and 400 <= status < 500:
                record.msg = "rejected a malformed request: %s"
                record.args = (type(error).__name__,)
                record.exc_info = None
                record.exc_text = None
                return log.isEnabledFor(logging.DEBUG)
        return True


class AccessLine:
    """Writer of the `eodh_proxy.access` lines, in the format that `configure` sets.

    This is the hot path: it skips the `LogRecord` and formats each line with one
    f-string, and the lines of one event-loop iteration go out in one write at its
    end, not one write and flush per request. The logger still decides whether
    access lines are written at all.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""

    def write(
        self, remote: str | None, method: str, path: str, workspace: str, status: int,
        sent: int, duration_ms: float,
    ) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        milliseconds = int((now - second) * 1000)
        if not self._pending:
            self._flush_soon()
        self._pending.append(
            f'{self._stamp},{milliseconds:03d} INFO {remote} "{method} {path}" {workspace} '
            f"{status} {sent}B {duration_ms:.1f}ms\n"
        )

    def _flush_soon(self) -> None:
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:
            # No event loop: the caller's line is appended next and written by the
            # next flush, which `_serve` runs at shutdown at the latest.
            pass

    def flush(self) -> None:
        if not self._pending:
            return
        lines = self._pending
        self._pending = []
        try:
            for batch in _batches(lines, _ATOMIC_WRITE_MAX):
                self.stream.write(batch)
                self.stream.flush()
        except (OSError, ValueError):
            # Standard error is closed or broken: there is nowhere left to report it.
            pass


# A write of at most PIPE_BUF bytes (4096 on Linux, 512 at least by POSIX) to a
# pipe is never interleaved with another process's writes, so worker processes
# sharing standard error never split each other's lines.
_ATOMIC_WRITE_MAX = getattr(select, "PIPE_BUF", 512)


def _batches(lines: list[str], limit: int) -> Iterator[str]:
    """Join whole lines into batches of at most `limit` characters (a longer line goes alone)."""
    batch: list[str] = []
    size = 0
    for line in lines:
        if batch and size + len(line) > limit:
            yield "".join(batch)
            batch = []
            size = 0
        batch.append(line)
        size += len(line)
    if batch:
        yield "".join(batch)


access_line = AccessLine(sys.stderr)


def configure(level: int = logging.INFO, access: bool = True) -> None:
    """Send operational and access lines to standard error."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    access_line.stream = sys.stderr
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    access_log.disabled = not access
    logging.getLogger("aiohttp.server").addFilter(_OneLineClientErrors())
    logging.getLogger("aiohttp.access").disabled = True
