"""Workspace files, `/files-of/<workspace>/<path>`: the workspace's files host with its token."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from proxy.standin import USER_CATALOGS
from tests.conftest import ProxyProcess, raw_request
from tests.upstream import TOKENS, UpstreamServer


def last(upstream: UpstreamServer):
    return upstream.state.received[-1]


def files_origin(upstream: UpstreamServer) -> str:
    return upstream.files_template.removesuffix("/{workspace}")


def test_download_uses_workspace_token(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    stored = (b"\x00\x01", "application/octet-stream")
    upstream.call(upstream.state.files.__setitem__, ("alpha-ws", "files/b/x.bin"), stored)
    response = requests.get(f"{proxy.url}/files-of/alpha-ws/files/b/x.bin", timeout=10)
    assert response.status_code == 200
    assert response.content == b"\x00\x01"
    received = last(upstream)
    assert received.host == "files"
    assert received.raw_path == "/alpha-ws/files/b/x.bin"
    assert received.headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


def test_upload_download_delete_round_trip(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    url = f"{proxy.url}/files-of/beta-ws/files/bucket/data/big.bin"
    blocks = [bytes([index]) * 65536 for index in range(128)]
    digest = hashlib.sha256(b"".join(blocks)).hexdigest()

    created = requests.put(url, data=iter(blocks), timeout=30)
    assert created.status_code == 201
    assert created.headers["Location"] == url

    head = requests.head(url, timeout=10)
    assert head.status_code == 200
    fetched = requests.get(url, timeout=30)
    assert hashlib.sha256(fetched.content).hexdigest() == digest

    assert requests.delete(url, timeout=10).status_code == 204
    assert requests.get(url, timeout=10).status_code == 404
    assert {r.token_workspace for r in upstream.state.received[-5:]} == {"beta-ws"}


def test_query_forwarded_byte_for_byte(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    target = "/files-of/alpha-ws/files/b/missing?X-Sig=a%2Fb+c&x="
    raw_request(proxy.port, f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    assert last(upstream).raw_path == "/alpha-ws/files/b/missing?X-Sig=a%2Fb+c&x="


def test_files_without_token_rejected_locally(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    before = len(upstream.state.received)
    response = requests.get(f"{proxy.url}/files-of/gamma-ws/files/b/x", timeout=10)
    assert response.status_code == 403
    assert "gamma-ws" in response.json()["detail"]
    assert len(upstream.state.received) == before


@pytest.mark.parametrize(
    "target",
    [
        "/files-of",
        "/files-of/",
        "/files-of/alpha-ws/files/../../beta-ws/files/x",
        "/files-of/alpha-ws/%2e%2e/beta-ws/files/x",
        "/files-of/alpha-ws%2F..%2Fbeta-ws/files/x",
        "/files-of/alpha.ws/files/x",
        "/files-%6Ff/alpha-ws/files/x",
    ],
)
def test_unsafe_files_targets_rejected(
    proxy: ProxyProcess, upstream: UpstreamServer, target: str
) -> None:
    before = len(upstream.state.received)
    reply = raw_request(
        proxy.port, f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.split(b" ", 2)[1] == b"400", (target, reply[:300])
    assert len(upstream.state.received) == before


def test_catalogue_assets_point_at_files_of(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    base = f"{proxy.url}{USER_CATALOGS}/alpha-ws"
    item = requests.get(f"{base}/collections/ndvi-results/items/ndvi-results-0", timeout=10).json()
    asset = item["assets"]["data"]["href"]
    assert asset == f"{proxy.url}/files-of/alpha-ws/files/workspaces-eodhp-staging/ndvi-results/ndvi-results-0.tif"

    assert requests.get(asset, timeout=10).status_code == 404
    assert last(upstream).host == "files"
    assert last(upstream).token_workspace == "alpha-ws"


def test_job_results_read_through_files_of(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    base = f"{proxy.url}{USER_CATALOGS}/beta-ws"
    job = requests.post(f"{base}/processes/echo/execution", json={"inputs": {}}, timeout=10).json()
    status = job
    while status["status"] != "successful":
        status = requests.get(f"{base}/jobs/{job['jobID']}", timeout=10).json()
    results = requests.get(f"{base}/jobs/{job['jobID']}/results", timeout=10).json()
    item_url = next(link["href"] for link in results["links"] if link["rel"] == "item")
    assert item_url.startswith(f"{proxy.url}/files-of/beta-ws/files/")

    item = requests.get(item_url, timeout=10).json()
    links = {link["rel"]: link["href"] for link in item["links"]}
    assert links["self"] == item_url
    assert links["collection"] == f"{base}/jobs/{job['jobID']}/results"
    data = requests.get(item["assets"]["data"]["href"], timeout=10)
    assert data.text == "echo: done\n"


def test_request_links_to_files_restored(proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    sent = {"href": f"{proxy.url}/files-of/alpha-ws/files/b/k.tif"}
    response = requests.post(f"{proxy.url}{USER_CATALOGS}/alpha-ws/mirror", json=sent, timeout=10)
    assert json.loads(response.content)["href"] == f"{files_origin(upstream)}/alpha-ws/files/b/k.tif"


def test_other_workspace_files_links_translated(
    proxy: ProxyProcess, upstream: UpstreamServer
) -> None:
    """A link to another workspace's files, in JSON from a files host, becomes `/files-of/`."""
    sent = {"href": f"{files_origin(upstream)}/gamma-ws/files/b/k.tif"}
    upstream.call(
        upstream.state.files.__setitem__,
        ("alpha-ws", "files/links.json"),
        (json.dumps(sent).encode(), "application/json"),
    )
    response = requests.get(f"{proxy.url}/files-of/alpha-ws/files/links.json", timeout=10)
    assert response.json()["href"] == f"{proxy.url}/files-of/gamma-ws/files/b/k.tif"


def test_upper_case_files_host_lower_cased(
    upstream: UpstreamServer, vault_file: Path, start_proxy
) -> None:
    """A files host link is case-insensitive in its workspace label, so the label becomes lower case."""
    port = files_origin(upstream).rsplit(":", 1)[1]
    process = start_proxy(
        "--listen", "127.0.0.1:0", "--upstream", upstream.origin, "--vault", str(vault_file),
        "--files-upstream", f"http://{{workspace}}.localhost:{port}",
    )
    link = f"http://ALPHA-WS.localhost:{port}/files/b/K.tif"
    response = requests.get(
        f"{process.url}{USER_CATALOGS}/alpha-ws/echo", headers={"X-Link": link}, timeout=10
    )
    echoed = dict(response.json()["headers"])
    assert echoed["X-Link"] == f"{process.url}/files-of/alpha-ws/files/b/K.tif"


@pytest.mark.parametrize(
    "template",
    [
        "https://x{workspace}.example.org",
        "https://example.org/files",
        "https://{workspace}.example.org/{workspace}",
        "ftp://{workspace}.example.org",
        "http://{workspace}.example.org",
    ],
)
def test_invalid_files_upstream_rejected(
    vault_file: Path, isolated_env: dict[str, str], template: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--listen", "127.0.0.1:0",
         "--vault", str(vault_file), "--files-upstream", template],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, **isolated_env},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("eodh-proxy: error: --files-upstream: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_files_upstream_from_config(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"files_upstream: '{upstream.files_template}'\n")
    process = ProxyProcess(
        ["serve", "--config", str(config), "--listen", "127.0.0.1:0",
         "--upstream", upstream.origin, "--vault", str(vault_file)],
        env=isolated_env,
    ).wait_ready()
    try:
        response = requests.get(f"{process.url}/files-of/alpha-ws/files/none", timeout=10)
    finally:
        process.stop()
    assert response.status_code == 404
    assert last(upstream).host == "files"

