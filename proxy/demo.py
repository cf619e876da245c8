"""`eodh-proxy demo`: the proxy in front of the built-in stand-in EODH API, offline."""

from __future__ import annotations

import asyncio
import secrets
import signal
import tempfile
from pathlib import Path

from aiohttp import web

from proxy import standin
from proxy.log import log
from proxy.server import Proxy, log_startup
from proxy.settings import load_settings
from proxy.standin_files import build_files_app
from proxy.vault import load_vault

DEMO_WORKSPACES = ("demo-ws", "other-ws")


def run_demo(listen: str) -> int:
    with tempfile.TemporaryDirectory(prefix="eodh-proxy-demo-") as folder:
        asyncio.run(_demo(listen, Path(folder)))
    return 0


async def _demo(listen: str, folder: Path) -> None:
    tokens = {name: secrets.token_urlsafe(24) for name in DEMO_WORKSPACES}
    app = standin.build_app(tokens)
    runner, upstream = await _start_on_loopback(app)
    app[standin.STANDIN_KEY].origin = upstream
    files_runner, files_origin = await _start_on_loopback(
        build_files_app(app[standin.STANDIN_KEY])
    )
    files_upstream = files_origin + "/{workspace}"
    app[standin.STANDIN_KEY].files_template = files_upstream

    vault_path = folder / "vault.yaml"
    vault_path.write_text(
        "workspaces:\n"
        + "".join(f"  {name}:\n    token: {tokens[name]!r}\n" for name in DEMO_WORKSPACES)
    )
    vault_path.chmod(0o600)
    # The demo ignores the user's config file: it must work the same on every machine.
    settings = load_settings(
        {
            "listen": listen,
            "upstream": upstream,
            "vault": str(vault_path),
            "files_upstream": files_upstream,
        },
        read_config=False,
    )
    proxy = Proxy(settings, load_vault(vault_path))
    try:
        await proxy.start()
        log_startup(proxy)
        # With port 0 in --listen, the commands must name the port actually bound.
        host = f"[{settings.listen_host}]" if ":" in settings.listen_host else settings.listen_host
        _print_instructions(f"{host}:{proxy.port}", upstream)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        log.info("stopping")
        await proxy.stop()
        await runner.cleanup()
        await files_runner.cleanup()


async def _start_on_loopback(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _print_instructions(listen: str, upstream: str) -> None:
    base = f"http://{listen.replace('127.0.0.1', 'localhost')}"
    user = f"{base}{standin.USER_CATALOGS}"
    print(
        f"""
Demo running: the proxy on {base} in front of a stand-in EODH API on {upstream}.
The demo vault holds tokens for workspaces {', '.join(DEMO_WORKSPACES)}. Try:

  curl -s {user}/demo-ws/processes
  curl -s -i -X POST -H 'Content-Type: application/json' \\
       -d '{{"inputs": {{"workspace": "demo-ws"}}}}' {user}/demo-ws/processes/echo/execution
  curl -s {user}/unknown-ws/processes

Press Ctrl-C to stop.""",
        flush=True,
    )
