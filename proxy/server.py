"""Build the proxy from settings, listen, and run until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from proxy import clients, exposure
from proxy.admin import Admin
from proxy.audit import AuditLog
from proxy.errors import ClientRequestError, ConfigError, ProxyError
from proxy.forward import ProxyHandler
from proxy.guards import ClientGate
from proxy.health import EXPIRY_CHECK_INTERVAL, TokenHealth, expiry_warnings
from proxy.log import access_line, access_log, log
from proxy.metrics import Metrics, ReloadCounts
from proxy.problem import problem_response
from proxy.reload import Reloader, diff_vaults
from proxy.settings import Settings
from proxy.upstream import Upstream, UpstreamOptions
from proxy.vault import Vault, VaultHolder, load_vault


class _ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering its own errors as problem+json."""

    def data_received(self, data: bytes) -> None:
        # NOTE: aiohttp's C parser (checked with 3.14.5) rejects a malformed chunk
        # by queueing a 400 for later, and leaves the body being streamed open.
        # The relay would then wait for the rest of that body until the upstream
        # read timeout. Fail the body here, as aiohttp's pure-Python parser does,
        # so the upstream request is aborted and the client gets its 400 now.
        # This reads two private attributes and does nothing if they are gone.
        request = getattr(self, "_current_request", None)
        queued = len(getattr(self, "_messages", ()))
        super().data_received(data)
        if request is None or request.content.is_eof() or request.content.exception():
            return
        if len(getattr(self, "_messages", ())) > queued:
            # While a body is incomplete the parser cannot start a new request,
            # so a new message can only be its parse error.
            request.content.set_exception(
                RequestPayloadError("the request body has invalid chunked encoding")
            )

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            # The handler aborted the connection on purpose; there is nobody to answer.
            raise exc
        if status >= 500:
            log.error("internal error handling a request", exc_info=exc)
        error: ProxyError
        if 400 <= status < 500:
            error = ClientRequestError("the request is malformed and cannot be parsed")
            error.status = status
        else:
            error = ProxyError("the proxy failed to handle the request; see its log")
            error.status = status
        response = problem_response(error)
        response.force_close()
        return response


class _ProxyServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class Proxy:
    """The running proxy: settings, the vault in use, the upstream seam and the listener.

    `flags` are the command-line flags the settings were built from; a config
    reload applies them again over the changed file. Without them the config
    file is not watched. `worker` is the worker number under `--workers`; the
    process's metrics then carry it as a `worker` label.
    """

    def __init__(
        self,
        settings: Settings,
        vault: Vault,
        flags: Mapping[str, Any] | None = None,
        *,
        worker: int | None = None,
    ) -> None:
        self.settings = settings
        self.vaults = VaultHolder(vault)
        self.upstream = Upstream(
            UpstreamOptions(
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                ca_bundle=settings.ca_bundle,
            )
        )
        self.metrics = Metrics(labels={"worker": str(worker)} if worker is not None else None)
        self.health = TokenHealth()
        reloads = ReloadCounts()
        self.admin = Admin(self.vaults, self.health, self.metrics, reloads, str(settings.upstream))
        self.handler = ProxyHandler(
            settings, self.vaults, self.upstream,
            metrics=self.metrics, health=self.health, admin=self.admin,
        )
        # The reloader takes its first stamps of the files now, before "listening" is logged.
        self.reloader = Reloader(
            self.vaults, settings, flags, self.apply_settings, self.vault_reloaded, reloads
        )
        self._runner: web.ServerRunner | None = None
        self._site: web.SockSite | None = None
        self.port: int | None = None
        access_log.disabled = not settings.access_log
        self.exposed = False
        """Whether the listener is beyond loopback (a wildcard address counts as beyond)."""
        self.audit = AuditLog(settings.audit_log) if settings.audit_log is not None else None

    def apply_settings(self, settings: Settings) -> None:
        """Use reloaded settings for new requests; see `proxy.reload` for which fields change."""
        self.settings = settings
        self.upstream.set_timeouts(settings.connect_timeout, settings.read_timeout)
        self.handler.apply_settings(settings)
        access_log.disabled = not settings.access_log

    def vault_reloaded(self, old: Vault, new: Vault) -> None:
        """Follow up a vault reload: token health, expiry and client changes."""
        diff = diff_vaults(old, new)
        self.health.forget((*diff.added, *diff.removed, *diff.changed))
        now = dt.datetime.now(dt.UTC)
        for warning in expiry_warnings(new, now, (*diff.added, *diff.changed)):
            log.warning("%s", warning)

        changes = clients.describe_changes(old.clients, new.clients)
        if changes is not None:
            log.info("clients %s", changes)
        if old.clients and not new.clients and self.handler.client_gate.required_without_clients:
            log.warning(
                "the vault lists no clients now, so every request to this listener beyond "
                "loopback is rejected until a client is added"
            )

    async def start(self, sock: socket.socket | None = None) -> None:
        """Start the upstream session and serve on `sock`, or on a socket bound from the settings."""
        if self.audit is not None:
            self.audit.open()
        if sock is None:
            sock = bind_socket(self.settings.listen_host, self.settings.listen_port)
        self.exposed = not exposure.is_loopback_address(sock.getsockname()[0])
        try:
            exposure.check_exposure(self.settings, self.vaults.vault, exposed=self.exposed)
        except ConfigError:
            sock.close()
            raise

        try:
            await self.upstream.start()
        except BaseException:
            sock.close()
            raise
        self.handler.client_gate = ClientGate(
            required_without_clients=self.exposed and not self.settings.insecure_no_client_auth
        )
        handler = self.handler
        # auto_decompress=False: a compressed upload is forwarded as sent, with its Content-Encoding.
        server = _ProxyServer(
            handler, handler_cancellation=True, access_log=None, auto_decompress=False
        )
        # `stop` waits for requests in flight itself; the runner's own wait after that
        # only gives cancelled handlers a moment to unwind.
        self._runner = web.ServerRunner(
            server, handle_signals=False, access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.SockSite(self._runner, sock)
        await site.start()
        self._site = site
        self.port = site._sock.getsockname()[1]
        if self.audit is not None:
            self.audit.start()
            self.handler.audit = self.audit

    def reopen_logs(self) -> None:
        """Reopen the audit log file, as log rotation expects on SIGHUP."""
        if self.audit is not None:
            self.audit.reopen("SIGHUP")

    async def stop(self, hurry: asyncio.Event | None = None) -> None:
        """Stop accepting, give requests in flight the grace period to finish, then close.

        Setting `hurry` (a second stop signal) ends the wait at once. Requests still
        in flight after the wait are cancelled, and their connections closed.
        """
        self.admin.draining = True
        if self._site is not None:
            await self._site.stop()
        if self._runner is not None and self._runner.server is not None:
            # Idle keep-alive connections close now. A busy one closes after its current
            # response, which the handler sends with `Connection: close` while draining.
            close_idle_connections(self._runner.server)
            grace = self.settings.shutdown_grace_period
            if self.handler.in_flight:
                log.info(
                    "no longer accepting connections; waiting up to %g s for %d request(s) "
                    "in flight", grace, self.handler.in_flight,
                )
                if not await self.handler.wait_idle(grace, hurry):
                    log.warning(
                        "cutting off %d request(s) still in flight", self.handler.in_flight
                    )
            await self._runner.cleanup()
        await self.upstream.close()
        if self.audit is not None:
            self.audit.close()


def close_idle_connections(server: web.Server) -> None:
    """Close every connection that is waiting for its next request.

    aiohttp's own `pre_shutdown` would only mark them to close, and then ignore any
    request that arrived on them, which the client saw as no reply and a reset.
    """
    for connection in server.connections:
        # NOTE: reads private attributes of aiohttp's connection handler (checked with
        # 3.14.5). Without them a connection counts as busy and stays open, so a request
        # on it is still answered, until the grace period ends.
        busy = getattr(connection, "_request_in_progress", True)
        queued = getattr(connection, "_messages", None)
        if not busy and not queued:
            connection.force_close()


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind the listening socket, turning the usual failures into one `ConfigError` line.

    With `reuse_port`, other sockets of this user may bind the same address
    (SO_REUSEPORT), and the kernel spreads new connections across them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror:
        raise ConfigError(f"listen address {host!r} cannot be resolved") from None
    sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(infos[0][4])
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}" if family == socket.AF_INET else f"[{host}]:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot listen on {where}: the port is in use; stop the other program "
                "or choose another port with --listen"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"cannot listen on {where}: no such address on this machine") from None
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


# Signals a worker handles: stop (SIGINT, SIGTERM) and reload (SIGHUP).
WORKER_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
# Seconds between a worker's checks that its parent is still running.
ORPHAN_CHECK_INTERVAL = 1.0


def log_startup(proxy: Proxy) -> None:
    assert proxy.port is not None
    log_listening(proxy.settings, proxy.vaults.vault, proxy.port, exposed=proxy.exposed)
    log.info("event loop %s", event_loop_name())


def log_listening(settings: Settings, vault: Vault, port: int, *, exposed: bool) -> None:
    """Log where the proxy listens, its upstream, who may use it, and the vault's warnings."""
    host = f"[{settings.listen_host}]" if ":" in settings.listen_host else settings.listen_host
    log.info("listening on http://%s:%d", host, port)
    log.info("upstream %s", settings.upstream)
    log.info("vault %s: workspaces %s", vault.path, ", ".join(vault.workspaces) or "(none)")
    log.info("allowed hosts %s", ", ".join(settings.allowed_hosts))
    if settings.audit_log is not None:
        target = "standard output" if settings.audit_log == "-" else settings.audit_log
        log.info("audit log %s", target)
    if vault.clients:
        log.info("client credentials required: clients %s", ", ".join(sorted(vault.clients)))
    exposure_warnings = exposure.exposure_warnings(settings, vault, exposed=exposed)
    expiring = expiry_warnings(vault, dt.datetime.now(dt.UTC))
    for warning in (*vault.warnings, *expiring, *exposure_warnings):
        log.warning("%s", warning)
    default = settings.default_workspace
    if default is not None and vault.get(default) is None:
        log.warning(
            "default_workspace %s has no token in vault %s, so a workspace path without a "
            "token of its own gets 403",
            default,
            vault.path,
        )


async def warn_expiry_daily(vaults: VaultHolder) -> None:
    """Log expiry warnings for the vault in use once a day, until cancelled."""
    while True:
        await asyncio.sleep(EXPIRY_CHECK_INTERVAL)
        for warning in expiry_warnings(vaults.vault, dt.datetime.now(dt.UTC)):
            log.warning("%s", warning)


async def stop_when_orphaned(parent: int, stop: Callable[[], None]) -> None:
    """Call `stop` once this process's parent is no longer `parent`, checking every second.

    A worker whose parent was killed is adopted by another process and would
    otherwise serve, and hold the port, forever.
    """
    while os.getppid() == parent:
        await asyncio.sleep(ORPHAN_CHECK_INTERVAL)
    log.warning("parent process %d exited; stopping worker (pid %d)", parent, os.getpid())
    stop()


def event_loop_name() -> str:
    """Return "uvloop" or "asyncio": the package of the running event loop."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def serve(
    settings: Settings,
    *,
    flags: Mapping[str, Any] | None = None,
    ready: Callable[[Proxy], None] | None = None,
) -> int:
    """Load the vault, start the proxy and serve until SIGINT or SIGTERM; return the exit status.

    `flags` are the command-line flags the settings were built from; a config
    reload applies them again over the changed file. Without them the config
    file is not watched. With `settings.workers` above 1, `proxy.workers` runs
    the proxy in that many processes.
    """
    vault = load_vault(settings.vault_path)
    if settings.audit_log is not None:
        # An audit log that cannot be opened stops the start with one line, before any worker.
        probe = AuditLog(settings.audit_log)
        probe.open()
        probe.close()
    if settings.workers > 1:
        from proxy.workers import serve_workers

        return serve_workers(settings, vault, flags)
    run_event_loop(_serve(settings, vault, flags, ready))
    return 0


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when it is installed (the `speed` extra), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def _on_sighup(proxy: Proxy, reloader: Reloader) -> None:
    reloader.reload_all("SIGHUP")
    proxy.reopen_logs()


async def _serve(
    settings: Settings,
    vault: Vault,
    flags: Mapping[str, Any] | None,
    ready: Callable[[Proxy], None] | None,
    *,
    sock: socket.socket | None = None,
    worker: int | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM: on `sock` when given, as worker number `worker` if set."""
    proxy = Proxy(settings, vault, flags, worker=worker)
    reloader = proxy.reloader
    await proxy.start(sock)
    if worker is None:
        log_startup(proxy)
    else:
        log.info("worker %d (pid %d) started, event loop %s", worker, os.getpid(), event_loop_name())
    tasks = [asyncio.create_task(reloader.watch())]
    if worker is None or worker == 0:
        # One process is enough to repeat the expiry warnings.
        tasks.append(asyncio.create_task(warn_expiry_daily(proxy.vaults)))
    if ready is not None:
        ready(proxy)
    stop = asyncio.Event()
    hurry = asyncio.Event()

    def stop_requested() -> None:
        if stop.is_set() and not hurry.is_set():
            log.info("second stop signal: not waiting for requests in flight")
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested)
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, proxy, reloader)
    if worker is not None:
        tasks.append(asyncio.create_task(stop_when_orphaned(os.getppid(), stop_requested)))
        # A worker starts with these signals blocked (see `proxy.workers`), so that
        # none arrives before the handlers above; any that came are delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await proxy.stop(hurry)
        # The proxy has stopped: a late stop signal must not turn exit status 0 into a kill
        # while the interpreter shuts down (closing the loop would restore the default action).
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
        access_line.flush()
    logging.shutdown()
