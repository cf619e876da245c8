"""Run the proxy in several worker processes that share one listening port.

How it works:

1. The parent binds one listening socket per worker, all on the same address
   with SO_REUSEPORT, so the Linux kernel spreads new connections across them.
   Elsewhere (SO_REUSEPORT does not balance connections on every platform) it
   binds one socket, and every worker accepts from it.
2. The parent then forks the workers, before it has started any event loop or
   thread, and only supervises them: SIGTERM and SIGINT go to every worker, and
   each stops as a single proxy does. SIGHUP goes to every worker too, and each
   reloads its vault and config.
3. Each worker loads and watches the vault and config files itself, so a change
   reaches every worker within the reload interval, though not at the same
   instant.
4. A worker that exits on its own stops the whole set: the parent stops the
   other workers and exits with status 1, so a supervisor (systemd, Kubernetes)
   restarts them together.
5. A worker stops when its parent dies, even by SIGKILL, so no orphan keeps
   the port: on Linux the kernel sends it SIGTERM (PR_SET_PDEATHSIG), and
   everywhere the worker checks once a second whether its parent has changed.

TODO: with several workers, each process keeps its own metrics, labelled with
its worker number, and a scrape of /_proxy/metrics is served by whichever worker
accepts its connection, so one scrape shows one worker. Totals need the
workers' samples collected in one place, or a store they share.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping
from types import FrameType
from typing import Any, NoReturn

from proxy import exposure
from proxy.errors import ConfigError
from proxy.log import access_line, log
from proxy.server import (
    WORKER_SIGNALS,
    _serve,
    bind_socket,
    log_listening,
    run_event_loop,
)
from proxy.settings import Settings
from proxy.vault import Vault, load_vault

# SO_REUSEPORT spreads connections across sockets on Linux (3.9 and later); on
# macOS and the BSDs the option exists but does not balance new connections.
REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
# The prctl option, from <linux/prctl.h>, that sets the signal a process gets when its parent exits.
PR_SET_PDEATHSIG = 1


def serve_workers(settings: Settings, vault: Vault, flags: Mapping[str, Any] | None) -> int:
    """Serve with `settings.workers` processes until SIGTERM or SIGINT; return the exit status."""
    sockets = bind_sockets(settings.listen_host, settings.listen_port, settings.workers)
    address, port = sockets[0].getsockname()[:2]
    exposed = not exposure.is_loopback_address(address)
    try:
        exposure.check_exposure(settings, vault, exposed=exposed)
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    log_listening(settings, vault, port, exposed=exposed)
    log.info(
        "starting %d workers (%s)",
        settings.workers,
        "one socket each, SO_REUSEPORT" if len(sockets) > 1 else "one shared socket",
    )

    supervisor = Supervisor()
    supervisor.install()
    parent = os.getpid()
    for index in range(settings.workers):
        if supervisor.stopping:
            break
        sock = sockets[index % len(sockets)]
        # The child starts with the signals blocked until its event loop handles
        # them; the parent's own handlers must never run in the child.
        signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _run_worker(index, parent, sock, sockets, settings, flags)
            supervisor.workers[pid] = index
        except OSError as error:
            log.error("cannot start worker %d: %s; stopping the other workers", index, error)
            supervisor.failed = True
            supervisor.stopping = True
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)

    # The workers hold their own copies; the parent accepts nothing.
    for sock in sockets:
        sock.close()
    if supervisor.stopping:
        supervisor.signal_all(signal.SIGTERM)
    status = supervisor.wait()
    # Python restores the default action of signals with Python handlers while it
    # exits, so a late SIGTERM would replace this exit status with death by signal.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    return status


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """Bind `count` sockets to one address with SO_REUSEPORT, or one socket where it does not balance."""
    if not REUSE_PORT:
        return [bind_socket(host, port)]
    first = bind_socket(host, port, reuse_port=True)
    sockets = [first]
    try:
        # Port 0 means "any free port": the others bind the port the first one got.
        bound_port = first.getsockname()[1]
        for _ in range(count - 1):
            sockets.append(bind_socket(host, bound_port, reuse_port=True))
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Supervisor:
    """The parent's view of its workers: which are running, and whether a stop was requested."""

    def __init__(self) -> None:
        self.workers: dict[int, int] = {}
        """Worker number by process id, for the workers not yet exited."""
        self.stopping = False
        self.failed = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._pass_on)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("stopping %d workers", len(self.workers))
            self.stopping = True
        self.signal_all(signal.SIGTERM)

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        self.signal_all(signum)

    def signal_all(self, signum: int) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def wait(self) -> int:
        """Wait until every worker has exited; return 0, or 1 if any failed or exited on its own."""
        while self.workers:
            # os.wait() is retried after a signal handler runs (PEP 475).
            pid, status = os.wait()
            index = self.workers.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if not self.stopping:
                log.error(
                    "worker %d (pid %d) exited with status %d; stopping the other workers",
                    index, pid, code,
                )
                self.failed = True
                self._stop(signal.SIGTERM, None)
            elif code != 0:
                log.error("worker %d (pid %d) exited with status %d while stopping", index, pid, code)
                self.failed = True
        log.info("all workers stopped")
        return 1 if self.failed else 0


def _run_worker(
    index: int,
    parent: int,
    sock: socket.socket,
    sockets: list[socket.socket],
    settings: Settings,
    flags: Mapping[str, Any] | None,
) -> NoReturn:
    """Serve as worker `index` in the forked child, then end the child without returning."""
    code = 1
    try:
        _exit_with_parent(parent)
        # The parent's handlers belong to the supervisor. The signals stay blocked
        # until `_serve` has set the worker's own handlers.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for other in sockets:
            if other is not sock:
                other.close()
        # Read again just before the reloader takes its first stamps of the file, so they agree.
        vault = load_vault(settings.vault_path)
        run_event_loop(_serve(settings, vault, flags, None, sock=sock, worker=index))
        code = 0
    except ConfigError as error:
        log.error("worker %d cannot start: %s", index, error)
        code = 2
    except KeyboardInterrupt:
        code = 0
    except BaseException:
        log.exception("worker %d failed", index)
    finally:
        access_line.flush()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
            sys.stdout.flush()
        # Never return into the parent's code: the child ends here.
        os._exit(code)


def _exit_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when `parent` exits (Linux only).

    The parent may have died before the request was made, so check that too.
    `proxy.server` also polls the parent's pid, for other platforms and in case
    the request fails.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            reason = os.strerror(ctypes.get_errno())
            log.warning("worker cannot ask to be stopped when its parent exits: %s", reason)
    if os.getppid() != parent:
        log.warning("parent process %d exited before worker (pid %d) started; exiting",
                    parent, os.getpid())
        os._exit(0)
