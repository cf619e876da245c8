"""Real EODH clients through the proxy process, with no token configured in them.

The stand-in rejects any workspace request without the right token, so a link
that sent a client straight to the upstream would fail the flow. Each test also
checks that every request the stand-in received in the flow carried a token.
"""

from __future__ import annotations

import socket
import subprocess
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from proxy.standin import USER_CATALOGS
from proxy.standin_stac import COLLECTIONS
from tests.conftest import ProxyProcess
from tests.upstream import TOKENS, UpstreamServer


@pytest.fixture
def flow(upstream: UpstreamServer) -> Iterator[list]:
    """The requests the stand-in receives during the test; each must carry a workspace token."""
    start = len(upstream.state.received)
    received: list = []
    yield received
    received.extend(upstream.state.received[start:])
    untokened = [(r.method, r.raw_path) for r in received if r.workspace and not r.token_workspace]
    assert untokened == []


def test_pystac_client_pages_workspace_catalogue(
    proxy: ProxyProcess, upstream: UpstreamServer, flow: list
) -> None:
    from pystac_client import Client

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalogue = Client.open(f"{proxy.url}{USER_CATALOGS}/alpha-ws")
        collections = list(catalogue.get_collections())
        items = {c.id: [item.id for item in c.get_items()] for c in collections}

    assert [c.id for c in collections] == list(COLLECTIONS)
    for name, count in COLLECTIONS.items():
        assert items[name] == [f"{name}-{index}" for index in range(count)]
    assert catalogue.get_self_href().startswith(proxy.url)
    paged = [r.raw_path for r in upstream.state.received if "token=" in r.raw_path]
    assert len(paged) >= 2, "the items were not paged through next links"


def test_pystac_client_item_links_point_at_proxy(proxy: ProxyProcess, flow: list) -> None:
    from pystac_client import Client

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalogue = Client.open(f"{proxy.url}{USER_CATALOGS}/beta-ws")
        collection = catalogue.get_collection("ndvi-results")
        item = next(iter(collection.get_items()))
    assert item.get_self_href().startswith(f"{proxy.url}{USER_CATALOGS}/beta-ws/")


def test_owslib_lists_and_reads_processes(
    proxy: ProxyProcess, upstream: UpstreamServer, flow: list
) -> None:
    from owslib.ogcapi.processes import Processes

    service = Processes(f"{proxy.url}{USER_CATALOGS}/alpha-ws")
    listed = service.processes()
    echo = service.process("echo")

    assert [process["id"] for process in listed] == ["echo", "ndvi"]
    assert echo["id"] == "echo"
    execute = [link["href"] for link in echo["links"] if link["rel"].endswith("/execute")]
    assert execute == [f"{proxy.url}{USER_CATALOGS}/alpha-ws/processes/echo/execution"]
    assert upstream.state.received[-1].token_workspace == "alpha-ws"


def test_owslib_executes_process(proxy: ProxyProcess, flow: list) -> None:
    from owslib.ogcapi.processes import Processes

    service = Processes(f"{proxy.url}{USER_CATALOGS}/alpha-ws")
    job = service.execute("echo", inputs={"message": "hello"}, async_=True)
    monitor = [link["href"] for link in job["links"] if link["rel"] == "monitor"]
    assert monitor == [f"{proxy.url}{USER_CATALOGS}/alpha-ws/jobs/{job['jobID']}"]


def test_requests_follows_job_links(proxy: ProxyProcess, flow: list) -> None:
    base = f"{proxy.url}{USER_CATALOGS}/beta-ws"
    created = requests.post(
        f"{base}/processes/echo/execution",
        json={"inputs": {"workspace": "beta-ws"}},
        headers={"Prefer": "respond-async"},
        timeout=10,
    )
    assert created.status_code == 201
    assert created.headers["Location"].startswith(f"{base}/jobs/")

    status = requests.get(created.headers["Location"], timeout=10).json()
    while status["status"] == "running":
        monitor = next(link["href"] for link in status["links"] if link["rel"] == "monitor")
        status = requests.get(monitor, timeout=10).json()
    results = next(link["href"] for link in status["links"] if link["rel"].endswith("/results"))
    assert results.startswith(base)
    assert requests.get(results, timeout=10).status_code == 200


def test_requests_pages_jobs_by_next(proxy: ProxyProcess, flow: list) -> None:
    base = f"{proxy.url}{USER_CATALOGS}/alpha-ws"
    created = {
        requests.post(f"{base}/processes/echo/execution", json={"inputs": {}}, timeout=10).json()[
            "jobID"
        ]
        for _ in range(3)
    }
    seen: list[str] = []
    url: str | None = f"{base}/jobs"
    while url is not None:
        page = requests.get(url, timeout=10).json()
        seen += [job["jobID"] for job in page["jobs"]]
        url = next((link["href"] for link in page["links"] if link["rel"] == "next"), None)
        assert url is None or url.startswith(base)
    assert created <= set(seen)


def test_curl_follows_created_location(proxy: ProxyProcess, upstream: UpstreamServer, flow: list) -> None:
    base = f"{proxy.url}{USER_CATALOGS}/alpha-ws"
    created = subprocess.run(
        ["curl", "-sS", "-f", "-D", "-", "-o", "/dev/null", "-X", "POST",
         "-H", "Content-Type: application/json", "-d", '{"inputs": {}}',
         f"{base}/processes/echo/execution"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert created.returncode == 0, created.stderr
    location = next(
        line.split(":", 1)[1].strip()
        for line in created.stdout.splitlines()
        if line.lower().startswith("location:")
    )
    assert location.startswith(f"{base}/jobs/")
    status = subprocess.run(
        ["curl", "-sS", "-f", location], capture_output=True, text=True, timeout=30, check=False
    )
    assert status.returncode == 0, status.stderr
    assert f'"href": "{base}/jobs/' in status.stdout
    assert upstream.state.received[-1].headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


@pytest.fixture
def localhost_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve `*.localhost` to 127.0.0.1 in this process, as many systems' resolvers do.

    Only names under `.localhost` change, so nothing can be sent anywhere but loopback.
    """
    resolve = socket.getaddrinfo

    def loopback_for_localhost(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.lower().endswith(".localhost"):
            host = "127.0.0.1"
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_for_localhost)


def test_pyeodh_runs_job_and_reads_results(
    proxy: ProxyProcess, upstream: UpstreamServer, flow: list, localhost_names: None
) -> None:
    """pyeodh accepts only environment names as the first host label: staging.localhost passes."""
    from pyeodh import Client

    start = len(upstream.state.received)
    base = f"http://staging.localhost:{proxy.port}"
    client = Client(base_url=base, username="alpha-ws", token="placeholder-not-a-token")
    ades = client.get_ades()

    assert [process.id for process in ades.get_processes()] == ["echo", "ndvi"]
    job = ades.get_process("echo").execute({"message": "hello"})
    assert job.status == "running"
    for _ in range(5):
        if job.status == "successful":
            break
        job.refresh()
    assert job.status == "successful"

    items = job.get_result_items()
    assert [item.id for item in items] == [f"result-{job.id}"]
    assert items[0].assets["data"].href.startswith(f"{base}/files-of/alpha-ws/files/")
    assert job.id in [listed.id for listed in ades.get_jobs()]
    received = upstream.state.received[start:]
    assert any(r.host == "files" and r.token_workspace == "alpha-ws" for r in received)
    sent = [value for r in received for value in r.headers.get("Authorization", [])]
    assert "Bearer placeholder-not-a-token" not in sent
