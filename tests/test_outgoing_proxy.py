"""HTTP_PROXY, HTTPS_PROXY and NO_PROXY, through a small forward proxy on loopback.

A loopback upstream never goes through an outgoing proxy, so the cases that do
need an upstream host name that is not loopback. They are in
`outgoing_proxy_cases.py`, run here inside a new network namespace (see there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess
from tests.outgoing_proxy import OutgoingProxy
from tests.upstream import UpstreamServer

REPOSITORY = Path(__file__).resolve().parent.parent
NAMESPACE = ["unshare", "--user", "--map-root-user", "--net", "--mount"]


@pytest.fixture(scope="module")
def outgoing_proxy() -> Iterator[OutgoingProxy]:
    proxy = OutgoingProxy({}).start()
    yield proxy
    proxy.stop()


def test_loopback_upstream_bypasses_proxy(
    start_proxy: Callable[..., ProxyProcess],
    upstream: UpstreamServer,
    vault_file: Path,
    outgoing_proxy: OutgoingProxy,
) -> None:
    env = {"HTTP_PROXY": outgoing_proxy.url, "HTTPS_PROXY": outgoing_proxy.url}
    proxy = start_proxy("--listen", "127.0.0.1:0", "--upstream", upstream.origin,
                        "--vault", str(vault_file), env=env)
    response = requests.get(f"{proxy.url}{USER_CATALOGS}/alpha-ws/processes", timeout=10)

    assert response.status_code == 200, response.text
    assert outgoing_proxy.request_lines == []


def namespaces_available() -> bool:
    try:
        probe = subprocess.run([*NAMESPACE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def test_named_upstream_cases_in_namespace(tmp_path: Path) -> None:
    if not namespaces_available():
        pytest.skip("unshare cannot create user, network and mount namespaces here")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost upstream.test\n::1 localhost\n")
    # Inside: bring loopback up, map upstream.test, then run the cases with pytest.
    script = (
        'ip link set lo up && mount --bind "$1" /etc/hosts && '
        'exec "$2" -m pytest -q -p no:cacheprovider tests/outgoing_proxy_cases.py'
    )
    result = subprocess.run(
        [*NAMESPACE, "sh", "-c", script, "sh", str(hosts), sys.executable],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary, summary
    assert "skipped" not in summary, summary
