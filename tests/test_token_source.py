"""The workspace, and so the token, comes from the request path and nothing else."""

from __future__ import annotations

import pytest

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess
from tests.rawhttp import build, exchange, received_since
from tests.upstream import TOKENS, UpstreamServer

BETA = "/api/workspaces/beta-ws/echo"
# Each names beta-ws somewhere a server or framework might take a path or identity from.
STEERING = [
    f"X-Original-URL: {BETA}",
    f"X-Rewrite-URL: {BETA}",
    "X-Forwarded-Prefix: /api/workspaces/beta-ws",
    f"X-Forwarded-Path: {BETA}",
    f"X-Forwarded-Uri: {BETA}",
    "X-Forwarded-Host: beta-ws.localhost",
    "X-Forwarded-For: 127.0.0.1",
    "Forwarded: for=127.0.0.1;host=beta-ws.localhost",
    "Cookie: workspace=beta-ws; token=beta-ws",
    f"Referer: http://localhost{BETA}",
    f"Authorization: Bearer {TOKENS['beta-ws']}",
    "X-Workspace: beta-ws",
]


def send(proxy: ProxyProcess, target: str, header: str) -> int | None:
    reply = exchange(
        proxy.port, build(f"GET {target} HTTP/1.1", "Host: localhost", header, "Connection: close")
    )
    return reply.status


@pytest.mark.parametrize("header", STEERING)
def test_public_path_never_gets_token(
    proxy: ProxyProcess, upstream: UpstreamServer, header: str
) -> None:
    status = send(proxy, "/api/catalogue/stac/echo?workspace=beta-ws&token=beta-ws", header)
    assert status == 200
    received = upstream.state.received[-1]
    assert "Authorization" not in received.headers


@pytest.mark.parametrize("header", STEERING)
def test_path_without_token_stays_local(
    proxy: ProxyProcess, upstream: UpstreamServer, header: str
) -> None:
    before = len(upstream.state.received)
    status = send(proxy, f"{USER_CATALOGS}/gamma-ws/echo?workspace=beta-ws", header)
    assert status == 403
    assert received_since(upstream, before) == []


@pytest.mark.parametrize("header", STEERING)
def test_workspace_path_gets_own_token(
    proxy: ProxyProcess, upstream: UpstreamServer, header: str
) -> None:
    status = send(proxy, f"{USER_CATALOGS}/alpha-ws/echo?workspace=beta-ws", header)
    assert status == 200
    received = upstream.state.received[-1]
    assert received.headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


@pytest.mark.parametrize(
    "header",
    [h for h in STEERING if h.split(":")[0].lower().startswith(("x-forwarded", "forwarded",
                                                                "x-original", "x-rewrite"))],
)
def test_routing_headers_not_forwarded(
    proxy: ProxyProcess, upstream: UpstreamServer, header: str
) -> None:
    send(proxy, f"{USER_CATALOGS}/alpha-ws/echo", header)
    received = upstream.state.received[-1]
    assert header.split(":")[0] not in received.headers
