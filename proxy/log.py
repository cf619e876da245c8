"""Logger names and the one place logging is configured.

`eodh_proxy` carries operational messages; `eodh_proxy.access` carries one line
per request. aiohttp's own server errors (malformed requests, mostly) are reduced
to one line without a traceback, since they are the client's fault.
"""

from __future__ import annotations

import logging
import sys

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


def configure(level: int = logging.INFO, access: bool = True) -> None:
    """Send operational and access lines to standard error."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    access_log.disabled = not access
    logging.getLogger("aiohttp.server").addFilter(_OneLineClientErrors())
    logging.getLogger("aiohttp.access").disabled = True
