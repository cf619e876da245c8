"""The running server: its event loop and its worker processes."""

from __future__ import annotations

import importlib.util

from tests.conftest import ProxyProcess


def test_event_loop_named_at_start(proxy: ProxyProcess) -> None:
    """uvloop runs the proxy when it is installed (the `speed` extra), asyncio's loop otherwise."""
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert f"event loop {expected}" in proxy.output
