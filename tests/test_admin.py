"""The `/_proxy/` endpoints: health, readiness, status and metrics; token health warnings."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin import ENDPOINTS
from proxy.standin import USER_CATALOGS
from proxy.vault import fingerprint
from tests.conftest import ProxyProcess, free_port
from tests.gateway import basic, serve_args, write_gateway_vault
from tests.upstream import TOKENS, UpstreamServer

STALE = "stale-beta-token-0000"
SOON = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")


def private_vault(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def start(args: list[str], env: dict[str, str]) -> ProxyProcess:
    return ProxyProcess(["serve", "--listen", "127.0.0.1:0", *args], env=env).wait_ready()


@pytest.fixture(scope="module")
def admin_proxy(
    upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory,
    isolated_env: dict[str, str],
) -> Iterator[ProxyProcess]:
    """A proxy whose vault contains a good alpha-ws token and a stale beta-ws one expiring soon."""
    folder = tmp_path_factory.mktemp("admin")
    vault = private_vault(
        folder / "vault.yaml",
        f"workspaces:\n  alpha-ws:\n    token: '{TOKENS['alpha-ws']}'\n    expires: 2099-01-31\n"
        f"  beta-ws:\n    token: '{STALE}'\n    expires: {SOON}\n",
    )
    proxy = start(["--upstream", upstream.origin, "--vault", str(vault)], isolated_env)
    yield proxy
    proxy.stop()
    leaked = [token for token in (*TOKENS.values(), STALE) if token in proxy.output]
    assert leaked == [], "a token appeared in the proxy's output"


def admin(
    proxy: ProxyProcess, endpoint: str, method: str = "GET", **kwargs: object
) -> requests.Response:
    url = f"{proxy.url}/_proxy/{endpoint}"
    return requests.request(method, url, timeout=10, **kwargs)  # type: ignore[arg-type]


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse metrics text with prometheus_client's parser: sample name to (labels, value) list."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value_of(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
             **labels: str) -> float | None:
    for sample_labels, value in samples.get(name, []):
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items()):
            return value
    return None


def test_healthz_answers_ok(admin_proxy: ProxyProcess) -> None:
    response = admin(admin_proxy, "healthz")
    assert response.status_code == 200
    assert response.text == "ok\n"
    assert response.headers["Cache-Control"] == "no-store"


def test_readyz_ready_with_workspaces(admin_proxy: ProxyProcess) -> None:
    response = admin(admin_proxy, "readyz")
    assert response.status_code == 200
    assert response.text == "ready: 2 workspaces\n"


def test_readyz_unready_without_workspaces(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    vault = private_vault(tmp_path / "vault.yaml", "workspaces: {}\n")
    proxy = start(["--upstream", upstream.origin, "--vault", str(vault)], isolated_env)
    try:
        response = admin(proxy, "readyz")
    finally:
        proxy.stop()
    assert response.status_code == 503
    assert response.text.startswith(f"not ready: the vault {vault} has no workspaces")


def test_admin_paths_never_forwarded(admin_proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    before = len(upstream.state.received)
    unknown = admin(admin_proxy, "nothing-here")
    encoded = requests.get(f"{admin_proxy.url}/%5Fproxy/healthz", timeout=10)
    bare = requests.get(f"{admin_proxy.url}/_proxy", timeout=10)
    posted = admin(admin_proxy, "status", "POST", data=b"x")

    assert unknown.status_code == 404
    assert unknown.headers["Content-Type"] == "application/problem+json"
    assert "/_proxy/healthz" in unknown.json()["detail"]
    assert encoded.text == "ok\n"
    assert bare.status_code == 404
    assert posted.status_code == 405
    assert posted.headers["Allow"] == "GET, HEAD"
    assert len(upstream.state.received) == before


def test_admin_requests_pass_host_guard(admin_proxy: ProxyProcess) -> None:
    response = admin(admin_proxy, "status", headers={"Host": "evil.example.org"})
    assert response.status_code == 421


def test_admin_requests_pass_origin_guard(admin_proxy: ProxyProcess) -> None:
    response = admin(admin_proxy, "metrics", headers={"Origin": "https://evil.example.org"})
    assert response.status_code == 403


def test_status_document_shape(admin_proxy: ProxyProcess, upstream: UpstreamServer) -> None:
    requests.get(f"{admin_proxy.url}{USER_CATALOGS}/alpha-ws/processes", timeout=10)
    response = admin(admin_proxy, "status")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    status = response.json()

    assert set(status) == {"workspaces", "vault", "upstream", "version"}
    assert status["upstream"] == upstream.origin
    assert set(status["vault"]) == {"path", "loaded_at", "last_error"}
    assert status["vault"]["last_error"] is None
    assert status["vault"]["path"].endswith("vault.yaml")
    names = [workspace["name"] for workspace in status["workspaces"]]
    assert names == ["alpha-ws", "beta-ws"]
    alpha = status["workspaces"][0]
    assert set(alpha) == {"name", "fingerprint", "expires", "last_upstream_status",
                          "last_rejected_at"}
    assert alpha["fingerprint"] == fingerprint(TOKENS["alpha-ws"])
    assert alpha["expires"] == "2099-01-31T23:59:59Z"
    assert alpha["last_upstream_status"] == 200
    assert alpha["last_rejected_at"] is None
    for token in (*TOKENS.values(), STALE):
        assert token not in response.text


def test_rejected_token_warned_once(admin_proxy: ProxyProcess) -> None:
    url = f"{admin_proxy.url}{USER_CATALOGS}/beta-ws/echo?marker=first"
    after = len(admin_proxy.lines)
    first = requests.get(url, timeout=10)
    warning = admin_proxy.wait_for_line("upstream returned 403", after=after)
    second = requests.get(url.replace("first", "second"), timeout=10)
    # The access line comes after any warning for the same request.
    admin_proxy.wait_for_line(
        '/beta-ws/echo" beta-ws 403', after=admin_proxy.lines.index(warning) + 1
    )
    last = len(admin_proxy.lines)

    assert first.status_code == 403
    assert first.json() == {"detail": "Access denied"}
    assert second.status_code == 403
    assert "WARNING" in warning
    assert f"with the token for workspace beta-ws ({fingerprint(STALE)})" in warning
    assert "expired or revoked token, or a token of another workspace" in warning
    assert "eodh-proxy vault add beta-ws" in warning
    warnings = [line for line in admin_proxy.lines[after:last] if "upstream returned" in line]
    assert len(warnings) == 1

    beta = admin(admin_proxy, "status").json()["workspaces"][1]
    assert beta["last_upstream_status"] == 403
    rejected = dt.datetime.fromisoformat(beta["last_rejected_at"])
    assert dt.datetime.now(dt.UTC) - rejected < dt.timedelta(minutes=1)


def test_expiring_token_warned_at_start(admin_proxy: ProxyProcess) -> None:
    line = admin_proxy.wait_for_line("token for workspace beta-ws")
    assert "expires in 2 days" in line or "expires in 3 days" in line
    assert "replace it with: eodh-proxy vault add beta-ws" in line
    assert not any("workspace alpha-ws" in line and "expire" in line for line in admin_proxy.lines)


def test_metrics_parse_and_count(admin_proxy: ProxyProcess) -> None:
    before = metric_samples(admin(admin_proxy, "metrics").text)
    requests.get(f"{admin_proxy.url}{USER_CATALOGS}/alpha-ws/download?size=1000", timeout=10)
    requests.post(f"{admin_proxy.url}{USER_CATALOGS}/alpha-ws/upload", data=b"u" * 300, timeout=10)
    response = admin(admin_proxy, "metrics")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    after = metric_samples(response.text)

    def grew(name: str, **labels: str) -> float:
        return (value_of(after, name, **labels) or 0) - (value_of(before, name, **labels) or 0)

    assert grew("eodh_proxy_requests_total", workspace="alpha-ws", method="GET",
                status_class="2xx") == 1
    assert grew("eodh_proxy_requests_total", workspace="alpha-ws", method="POST",
                status_class="2xx") == 1
    assert grew("eodh_proxy_response_bytes_total", workspace="alpha-ws") >= 1000
    assert grew("eodh_proxy_request_bytes_total", workspace="alpha-ws") == 300
    assert grew("eodh_proxy_request_duration_seconds_count") == 2
    assert value_of(after, "eodh_proxy_request_duration_seconds_bucket", le="+Inf") == \
        value_of(after, "eodh_proxy_request_duration_seconds_count")
    assert value_of(after, "eodh_proxy_vault_workspaces") == 2
    assert value_of(after, "eodh_proxy_upstream_errors_total", kind="connect") == 0
    assert value_of(after, "eodh_proxy_reloads_total", file="vault") == 0
    assert value_of(after, "eodh_proxy_reload_failures_total", file="vault") == 0
    alpha_expiry = value_of(after, "eodh_proxy_token_expiry_seconds", workspace="alpha-ws")
    beta_expiry = value_of(after, "eodh_proxy_token_expiry_seconds", workspace="beta-ws")
    assert alpha_expiry is not None and alpha_expiry > 365 * 86400
    assert beta_expiry is not None and 2 * 86400 < beta_expiry <= 3 * 86400
    assert value_of(after, "eodh_proxy_requests_in_flight") == 0


def test_metrics_count_rejections(admin_proxy: ProxyProcess) -> None:
    before = metric_samples(admin(admin_proxy, "metrics").text)
    requests.get(f"{admin_proxy.url}{USER_CATALOGS}/beta-ws/processes", timeout=10)
    after = metric_samples(admin(admin_proxy, "metrics").text)
    labels = {"workspace": "beta-ws", "status": "403"}
    grown = (value_of(after, "eodh_proxy_token_rejections_total", **labels) or 0) - (
        value_of(before, "eodh_proxy_token_rejections_total", **labels) or 0)
    assert grown == 1


def test_metrics_labels_stay_bounded(admin_proxy: ProxyProcess) -> None:
    requests.get(f"{admin_proxy.url}{USER_CATALOGS}/made-up-ws-1234/processes", timeout=10)
    requests.request("PROPFIND", f"{admin_proxy.url}/api/catalogue/stac/echo", timeout=10)
    text = admin(admin_proxy, "metrics").text
    samples = metric_samples(text)

    assert "made-up-ws-1234" not in text
    assert value_of(samples, "eodh_proxy_requests_total", workspace="-", method="GET",
                    status_class="4xx") is not None
    assert value_of(samples, "eodh_proxy_requests_total", method="OTHER") is not None
    assert value_of(samples, "eodh_proxy_requests_total", method="PROPFIND") is None
    workspaces = {labels["workspace"] for labels, _ in samples["eodh_proxy_requests_total"]}
    assert workspaces <= {"alpha-ws", "beta-ws", "-"}


def test_admin_requests_not_counted(admin_proxy: ProxyProcess) -> None:
    admin(admin_proxy, "healthz")
    samples = metric_samples(admin(admin_proxy, "metrics").text)
    paths_counted = sum(value for _, value in samples["eodh_proxy_requests_total"])
    admin(admin_proxy, "healthz")
    samples = metric_samples(admin(admin_proxy, "metrics").text)
    assert sum(value for _, value in samples["eodh_proxy_requests_total"]) == paths_counted


def test_metrics_count_upstream_errors(
    tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = private_vault(tmp_path / "vault.yaml",
                          f"workspaces:\n  alpha-ws:\n    token: '{TOKENS['alpha-ws']}'\n")
    closed = f"http://127.0.0.1:{free_port()}"
    proxy = start(["--upstream", closed, "--vault", str(vault)], isolated_env)
    try:
        failed = requests.get(f"{proxy.url}{USER_CATALOGS}/alpha-ws/processes", timeout=10)
        samples = metric_samples(admin(proxy, "metrics").text)
    finally:
        proxy.stop()
    assert failed.status_code == 502
    assert value_of(samples, "eodh_proxy_upstream_errors_total", kind="connect") == 1
    assert value_of(samples, "eodh_proxy_requests_total", workspace="alpha-ws",
                    status_class="5xx") == 1


def test_metrics_count_reloads(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    vault = private_vault(tmp_path / "vault.yaml",
                          f"workspaces:\n  alpha-ws:\n    token: '{TOKENS['alpha-ws']}'\n")
    proxy = start(["--upstream", upstream.origin, "--vault", str(vault)], isolated_env)
    try:
        after = len(proxy.lines)
        vault.write_text("workspaces: [broken\n")
        proxy.wait_for_line("vault not reloaded", 3, after=after)
        failed = admin(proxy, "status").json()["vault"]["last_error"]
        vault.write_text(f"workspaces:\n  beta-ws:\n    token: '{TOKENS['beta-ws']}'\n")
        proxy.wait_for_line(f"vault {vault} reloaded (file changed)", 3, after=after)
        samples = metric_samples(admin(proxy, "metrics").text)
        status = admin(proxy, "status").json()
    finally:
        proxy.stop()
    assert failed.startswith(f"{vault}, line 2: invalid YAML")
    assert value_of(samples, "eodh_proxy_reload_failures_total", file="vault") == 1
    assert value_of(samples, "eodh_proxy_reloads_total", file="vault") == 1
    assert status["vault"]["last_error"] is None
    assert [workspace["name"] for workspace in status["workspaces"]] == ["beta-ws"]


def test_gateway_admin_needs_client(
    tmp_path: Path, upstream: UpstreamServer, isolated_env: dict[str, str]
) -> None:
    vault = write_gateway_vault(tmp_path / "vault.yaml")
    proxy = ProxyProcess(serve_args(upstream, vault, "127.0.0.1:0"), env=isolated_env).wait_ready()
    try:
        anonymous = {endpoint: admin(proxy, endpoint) for endpoint in ENDPOINTS}
        signed_in = admin(proxy, "status", headers={"Authorization": basic("ops")})
    finally:
        proxy.stop()
    assert anonymous["healthz"].status_code == 200
    for endpoint in ("readyz", "status", "metrics"):
        assert anonymous[endpoint].status_code == 401, endpoint
    assert signed_in.status_code == 200
    assert [workspace["name"] for workspace in signed_in.json()["workspaces"]] == [
        "alpha-ws", "beta-ws"
    ]


def test_worker_metrics_carry_worker_label(
    upstream: UpstreamServer, vault_file: Path, isolated_env: dict[str, str]
) -> None:
    proxy = start(["--upstream", upstream.origin, "--vault", str(vault_file), "--workers", "2"],
                  isolated_env)
    try:
        proxy.wait_for_line("worker 1 (pid")
        text = admin(proxy, "metrics").text
    finally:
        proxy.stop()
    labels = [labels for samples in metric_samples(text).values() for labels, _ in samples]
    assert labels
    assert {sample_labels.get("worker") for sample_labels in labels} <= {"0", "1"}
    assert all("worker" in sample_labels for sample_labels in labels)
