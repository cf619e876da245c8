"""`default_workspace`: a workspace path with no token of its own gets the default's token.

That is how a user runs a workflow another workspace published as public: the
stand-in accepts any valid token on the paths of its `public_workspaces`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess
from tests.upstream import PUBLIC, TOKENS, UpstreamServer


@pytest.fixture(scope="module")
def defaulting_proxy(
    upstream: UpstreamServer,
    vault_file: Path,
    isolated_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    """A proxy whose config names alpha-ws as the default; its vault has no gamma-ws token."""
    config = tmp_path_factory.mktemp("default-workspace") / "config.yaml"
    config.write_text(
        f"upstream: {upstream.origin}\nvault: {vault_file}\ndefault_workspace: alpha-ws\n"
    )
    process = ProxyProcess(
        ["serve", "--listen", "127.0.0.1:0", "--config", str(config)], env=isolated_env
    ).wait_ready()
    yield process
    process.stop()
    leaked = [workspace for workspace, token in TOKENS.items() if token in process.output]
    assert leaked == [], f"tokens of {leaked} appeared in the proxy's output"


@pytest.fixture
def gamma_public(upstream: UpstreamServer) -> Iterator[None]:
    """Publish gamma-ws's workflows as public for one test."""
    upstream.call(upstream.state.public_workspaces.add, "gamma-ws")
    yield
    upstream.call(upstream.state.public_workspaces.discard, "gamma-ws")


def test_tokenless_workspace_uses_default(
    defaulting_proxy: ProxyProcess, upstream: UpstreamServer, gamma_public: None
) -> None:
    response = requests.get(
        f"{defaulting_proxy.url}{USER_CATALOGS}/gamma-ws/processes/echo", timeout=10
    )
    received = upstream.state.received[-1]

    assert response.status_code == 200, response.text
    assert received.raw_path == f"{USER_CATALOGS}/gamma-ws/processes/echo"
    assert received.headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


def test_own_token_wins_over_default(
    defaulting_proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    response = requests.get(f"{defaulting_proxy.url}{USER_CATALOGS}/beta-ws/processes", timeout=10)

    assert response.status_code == 200, response.text
    assert upstream.state.received[-1].headers["Authorization"] == [f"Bearer {TOKENS['beta-ws']}"]


def test_upper_case_workspace_never_defaulted(
    defaulting_proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    """`BETA-WS` would otherwise miss beta-ws's entry and get alpha-ws's token."""
    before = len(upstream.state.received)
    response = requests.get(
        f"{defaulting_proxy.url}/api/workspaces/BETA-WS/processes", timeout=10
    )

    assert response.status_code == 400, response.text
    assert "workspace names are lower case: use 'beta-ws'" in response.json()["detail"]
    assert len(upstream.state.received) == before


def test_public_path_still_gets_no_token(
    defaulting_proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    response = requests.get(f"{defaulting_proxy.url}{PUBLIC}/echo", timeout=10)

    assert response.status_code == 200, response.text
    assert "Authorization" not in upstream.state.received[-1].headers


def test_default_without_token_warned_at_start(
    start_proxy: Callable[..., ProxyProcess],
    upstream: UpstreamServer,
    vault_file: Path,
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"upstream: {upstream.origin}\ndefault_workspace: gamma-ws\n")
    proxy = start_proxy("--listen", "127.0.0.1:0", "--config", str(config),
                        "--vault", str(vault_file))
    warning = proxy.wait_for_line("WARNING default_workspace")

    assert warning.endswith(
        f"default_workspace gamma-ws has no token in vault {vault_file}, so a workspace "
        "path without a token of its own gets 403"
    )
