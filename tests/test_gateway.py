"""Team gateway: client credentials, grants, the failure limit and safe exposure."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from proxy.standin import COMMERCIAL_CATALOGS, USER_CATALOGS
from tests.conftest import ProxyProcess
from tests.gateway import basic, key_of, secrets_in, serve_args, write_gateway_vault
from tests.upstream import TOKENS, UpstreamServer

ALPHA = f"{USER_CATALOGS}/alpha-ws"
BETA = f"{USER_CATALOGS}/beta-ws"
PUBLIC_ECHO = "/api/catalogue/stac/echo"


@pytest.fixture(scope="module")
def gateway(
    upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory, isolated_env: dict[str, str]
) -> Iterator[ProxyProcess]:
    """A proxy whose vault lists clients, so every request needs a client credential."""
    folder = tmp_path_factory.mktemp("gateway")
    vault = write_gateway_vault(folder / "vault.yaml")
    process = ProxyProcess(
        serve_args(upstream, vault, "127.0.0.1:0"),
        env=isolated_env,
    ).wait_ready()
    yield process
    process.stop()
    assert secrets_in(process.output) == [], "a key or token appeared in the proxy's output"


def curl(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "-i", *options, url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def status_of(reply: str | bytes) -> int:
    text = reply.decode("latin-1") if isinstance(reply, bytes) else reply
    return int(text.split(" ", 2)[1])


def raw_from(source: str, port: int, data: bytes) -> bytes:
    """Send raw bytes to 127.0.0.1:port from the loopback address `source`; return the reply."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source, 0)
    ) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get_request(path: str, authorization: str | None = None) -> bytes:
    header = f"Authorization: {authorization}\r\n" if authorization else ""
    return (f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{header}Connection: close\r\n\r\n").encode()


def test_curl_without_credentials_gets_401(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    before = len(upstream.state.received)
    result = curl(f"{gateway.url}{ALPHA}/processes")
    assert status_of(result.stdout) == 401, result.stdout
    assert 'www-authenticate: Basic realm="eodh-proxy"' in result.stdout.lower().replace(
        "basic", "Basic"
    )
    assert "application/problem+json" in result.stdout
    assert len(upstream.state.received) == before


def test_curl_with_wrong_key_gets_401(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    before = len(upstream.state.received)
    result = curl(f"http://alice:not-the-key@{gateway.address}{ALPHA}/processes")
    assert status_of(result.stdout) == 401, result.stdout
    assert "invalid client name or key" in result.stdout
    assert len(upstream.state.received) == before


def test_curl_user_key_url_allowed(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    result = curl(f"http://alice:{key_of('alice')}@{gateway.address}{ALPHA}/processes")
    assert status_of(result.stdout) == 200, result.stdout
    received = upstream.state.received[-1]
    assert received.raw_path == f"{ALPHA}/processes"
    assert received.headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


def test_curl_ungranted_workspace_gets_403(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    before = len(upstream.state.received)
    result = curl(f"http://alice:{key_of('alice')}@{gateway.address}{BETA}/processes")
    assert status_of(result.stdout) == 403, result.stdout
    assert "client 'alice' is not granted workspace 'beta-ws'" in result.stdout
    assert key_of("alice") not in result.stdout
    assert len(upstream.state.received) == before


def test_mount_obeys_grants(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    """`/as/<workspace>/` uses that workspace's token, so it needs that workspace's grant."""
    quote = f"{COMMERCIAL_CATALOGS}/planet/collections/PSScene/items/2024-01-01-x/quote"
    alice = ("alice", key_of("alice"))
    granted = requests.post(f"{gateway.url}/as/alpha-ws{quote}", json={}, auth=alice, timeout=10)
    assert granted.status_code == 200, granted.text
    assert upstream.state.received[-1].headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]

    before = len(upstream.state.received)
    refused = requests.post(f"{gateway.url}/as/beta-ws{quote}", json={}, auth=alice, timeout=10)
    assert refused.status_code == 403
    assert refused.json()["detail"] == "client 'alice' is not granted workspace 'beta-ws'"
    assert len(upstream.state.received) == before


def test_files_mount_obeys_grants(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    alice = ("alice", key_of("alice"))
    before = len(upstream.state.received)
    refused = requests.get(f"{gateway.url}/files-of/beta-ws/data/a.tif", auth=alice, timeout=10)
    assert refused.status_code == 403
    assert refused.json()["detail"] == "client 'alice' is not granted workspace 'beta-ws'"
    assert len(upstream.state.received) == before


def test_star_client_reaches_every_workspace(
    gateway: ProxyProcess, upstream: UpstreamServer
) -> None:
    for path, workspace in ((ALPHA, "alpha-ws"), (BETA, "beta-ws")):
        response = requests.get(
            f"{gateway.url}{path}/processes", auth=("ops", key_of("ops")), timeout=10
        )
        assert response.status_code == 200, response.text
        assert upstream.state.received[-1].headers["Authorization"] == [
            f"Bearer {TOKENS[workspace]}"
        ]


def test_read_only_client_refused_post(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    before = len(upstream.state.received)
    response = requests.post(
        f"{gateway.url}{ALPHA}/processes/echo/execution",
        json={"inputs": {}},
        auth=("reader", key_of("reader")),
        timeout=10,
    )
    assert response.status_code == 403
    assert response.json()["detail"] == (
        "client 'reader' may not use method POST (allowed: GET, HEAD)"
    )
    assert len(upstream.state.received) == before


def test_read_only_client_refused_public_post(gateway: ProxyProcess) -> None:
    """Methods are limited on every path, including those that name no workspace."""
    response = requests.post(
        f"{gateway.url}{PUBLIC_ECHO}", json={}, auth=("reader", key_of("reader")), timeout=10
    )
    assert response.status_code == 403
    assert "may not use method POST" in response.json()["detail"]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "post"),
        ("X-Method-Override", "GET, PUT"),
    ],
)
def test_read_only_client_refused_override(
    gateway: ProxyProcess, upstream: UpstreamServer, header: str, value: str
) -> None:
    before = len(upstream.state.received)
    response = requests.get(
        f"{gateway.url}{ALPHA}/echo",
        headers={header: value},
        auth=("reader", key_of("reader")),
        timeout=10,
    )
    assert response.status_code == 403
    assert f"named in the {header} header" in response.json()["detail"]
    assert len(upstream.state.received) == before


def test_read_only_client_override_invalid_hidden(gateway: ProxyProcess) -> None:
    """An override value that is no method is refused without being echoed back."""
    response = requests.get(
        f"{gateway.url}{ALPHA}/echo",
        headers={"X-HTTP-Method-Override": "<script>"},
        auth=("reader", key_of("reader")),
        timeout=10,
    )
    assert response.status_code == 403
    assert "<SCRIPT>" not in response.text.upper()
    assert "may not use an invalid method" in response.json()["detail"]


def test_read_only_client_allowed_override(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    response = requests.get(
        f"{gateway.url}{ALPHA}/echo",
        headers={"X-HTTP-Method-Override": "head"},
        auth=("reader", key_of("reader")),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert upstream.state.received[-1].headers["X-HTTP-Method-Override"] == ["head"]


def test_unlimited_client_override_forwarded(
    gateway: ProxyProcess, upstream: UpstreamServer
) -> None:
    """A client that may use every method may also name one in an override header."""
    response = requests.get(
        f"{gateway.url}{ALPHA}/echo",
        headers={"X-HTTP-Method-Override": "DELETE"},
        auth=("alice", key_of("alice")),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert upstream.state.received[-1].headers["X-HTTP-Method-Override"] == ["DELETE"]


def test_ungranted_workspace_without_token_hidden(gateway: ProxyProcess) -> None:
    """A client learns nothing about the vault of a workspace it was not granted."""
    response = requests.get(
        f"{gateway.url}{USER_CATALOGS}/gamma-ws/processes",
        auth=("alice", key_of("alice")),
        timeout=10,
    )
    assert response.status_code == 403
    assert response.json()["detail"] == "client 'alice' is not granted workspace 'gamma-ws'"


def test_read_only_client_may_get(gateway: ProxyProcess) -> None:
    response = requests.get(
        f"{gateway.url}{ALPHA}/processes", auth=("reader", key_of("reader")), timeout=10
    )
    assert response.status_code == 200


def test_proxy_authorization_accepted(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    response = requests.get(
        f"{gateway.url}{ALPHA}/echo",
        headers={"Proxy-Authorization": basic("alice")},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert upstream.state.received[-1].headers["Authorization"] == [f"Bearer {TOKENS['alpha-ws']}"]


def test_client_bearer_with_proxy_authorization(gateway: ProxyProcess) -> None:
    """A tool that sends its own bearer token can still sign in with Proxy-Authorization."""
    response = requests.get(
        f"{gateway.url}{ALPHA}/echo",
        headers={"Authorization": "Bearer tool-token", "Proxy-Authorization": basic("alice")},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_two_different_credentials_rejected(gateway: ProxyProcess) -> None:
    response = requests.get(
        f"{gateway.url}{ALPHA}/echo",
        headers={"Authorization": basic("alice"), "Proxy-Authorization": basic("ops")},
        timeout=10,
    )
    assert response.status_code == 401
    assert "two different client credentials" in response.json()["detail"]


def test_credentials_never_reach_upstream(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    for path in (f"{ALPHA}/echo", PUBLIC_ECHO):
        response = requests.get(
            f"{gateway.url}{path}",
            auth=("ops", key_of("ops")),
            headers={"Proxy-Authorization": basic("ops")},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        received = upstream.state.received[-1]
        assert "Proxy-Authorization" not in received.headers
        assert secrets_in(str(received.headers)) == (
            [TOKENS["alpha-ws"]] if path != PUBLIC_ECHO else []
        )
        assert all(
            not value.startswith("Basic") for value in received.headers.get("Authorization", [])
        )


def test_public_path_needs_client_not_grant(
    gateway: ProxyProcess, upstream: UpstreamServer
) -> None:
    anonymous = requests.get(f"{gateway.url}{PUBLIC_ECHO}", timeout=10)
    assert anonymous.status_code == 401
    granted_elsewhere = requests.get(
        f"{gateway.url}{PUBLIC_ECHO}", auth=("reader", key_of("reader")), timeout=10
    )
    assert granted_elsewhere.status_code == 200
    assert "Authorization" not in upstream.state.received[-1].headers


def test_unauthenticated_sees_no_vault_details(gateway: ProxyProcess) -> None:
    """A missing-token error names the vault, so it is only for authenticated clients."""
    response = requests.get(f"{gateway.url}{USER_CATALOGS}/gamma-ws/processes", timeout=10)
    assert response.status_code == 401
    assert "vault" not in response.text


def test_failed_credentials_rate_limited(gateway: ProxyProcess, upstream: UpstreamServer) -> None:
    source = "127.0.0.77"
    wrong = basic("alice", "wrong-key")
    statuses = [
        status_of(raw_from(source, gateway.port, get_request(f"{ALPHA}/echo", wrong)))
        for _ in range(10)
    ]
    assert statuses == [401] * 10

    before = len(upstream.state.received)
    blocked = raw_from(source, gateway.port, get_request(f"{ALPHA}/echo", basic("alice")))
    assert status_of(blocked) == 429, blocked[:300]
    head = blocked.split(b"\r\n\r\n", 1)[0].decode().lower()
    retry_after = [line for line in head.split("\r\n") if line.startswith("retry-after: ")]
    assert len(retry_after) == 1
    assert 1 <= int(retry_after[0].split(": ")[1]) <= 60
    assert len(upstream.state.received) == before
    gateway.wait_for_line(f"blocked {source} for 60 s after 10 failed client credentials")


def test_rate_limit_is_per_source(gateway: ProxyProcess) -> None:
    wrong = basic("alice", "wrong-key")
    for _ in range(10):
        raw_from("127.0.0.78", gateway.port, get_request(f"{ALPHA}/echo", wrong))
    other = raw_from("127.0.0.79", gateway.port, get_request(f"{ALPHA}/echo", basic("alice")))
    assert status_of(other) == 200, other[:300]


def test_missing_credentials_not_counted(gateway: ProxyProcess) -> None:
    """Tools that wait for the 401 challenge before sending credentials are never blocked."""
    source = "127.0.0.80"
    for _ in range(15):
        assert status_of(raw_from(source, gateway.port, get_request(f"{ALPHA}/echo"))) == 401
    allowed = raw_from(source, gateway.port, get_request(f"{ALPHA}/echo", basic("alice")))
    assert status_of(allowed) == 200, allowed[:300]


def test_admin_endpoints_need_client(gateway: ProxyProcess) -> None:
    for endpoint, client in (("readyz", "reader"), ("status", "reader"), ("metrics", "ops")):
        url = f"{gateway.url}/_proxy/{endpoint}"
        anonymous = requests.get(url, timeout=10)
        assert anonymous.status_code == 401, endpoint
        assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="eodh-proxy"'
        signed_in = requests.get(url, auth=(client, key_of(client)), timeout=10)
        assert signed_in.status_code == 200, endpoint


def test_status_lists_granted_workspaces(gateway: ProxyProcess) -> None:
    url = f"{gateway.url}/_proxy/status"
    for client, expected in (("alice", ["alpha-ws"]), ("guest", []),
                             ("ops", ["alpha-ws", "beta-ws"])):
        response = requests.get(url, auth=(client, key_of(client)), timeout=10)
        names = [workspace["name"] for workspace in response.json()["workspaces"]]
        assert names == expected, client


def test_metrics_need_all_workspaces_grant(gateway: ProxyProcess) -> None:
    response = requests.get(
        f"{gateway.url}/_proxy/metrics", auth=("alice", key_of("alice")), timeout=10
    )
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "only a client granted '*' may read it" in response.json()["detail"]
    assert "beta-ws" not in response.text


def test_healthz_open_without_client(gateway: ProxyProcess) -> None:
    assert requests.get(f"{gateway.url}/_proxy/healthz", timeout=10).status_code == 200
    # requests would decode %5F to "_", so the encoded form goes over a raw socket.
    encoded = raw_from("127.0.0.1", gateway.port, get_request("/%5Fproxy/healthz"))
    assert status_of(encoded) == 401


def test_unknown_client_name_not_logged(gateway: ProxyProcess) -> None:
    """A user may type a key where the name goes; only known names reach the log."""
    name = "typed-key-" + uuid.uuid4().hex
    marker = uuid.uuid4().hex
    requests.get(f"{gateway.url}{ALPHA}/echo/{marker}", auth=(name, "x"), timeout=10)
    # The access line comes after the handler's warning, so the warning is in by then.
    gateway.wait_for_line(f"/echo/{marker}")
    assert name not in gateway.output
    assert "rejected a credential for an unknown client" in gateway.output


def test_default_workspace_token_needs_grant(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """A path whose workspace has no token uses default_workspace's, which must be granted too."""
    vault = write_gateway_vault(tmp_path / "vault.yaml")
    config = tmp_path / "config.yaml"
    config.write_text("default_workspace: alpha-ws\n")
    process = ProxyProcess(
        serve_args(upstream, vault, "127.0.0.1:0", "--config", str(config)), env=isolated_env
    ).wait_ready()
    try:
        before = len(upstream.state.received)
        response = requests.get(
            f"{process.url}{USER_CATALOGS}/gamma-ws/processes",
            auth=("guest", key_of("guest")),
            timeout=10,
        )
        assert response.status_code == 403
        assert response.json()["detail"] == "client 'guest' is not granted workspace 'alpha-ws'"
        assert len(upstream.state.received) == before
    finally:
        process.stop()


# --- Safe exposure -------------------------------------------------------------------------------


def test_wildcard_listen_without_clients_refused(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = write_gateway_vault(tmp_path / "vault.yaml", with_clients=False)
    result = subprocess.run(
        [sys.executable, "-m", "proxy", *serve_args(upstream, vault, "0.0.0.0:0")],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **isolated_env},
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "will not listen on 0.0.0.0:0, which is not a loopback address" in lines[0]
    assert f"eodh-proxy client add NAME --workspace WS --vault {vault}" in lines[0]


def test_insecure_override_starts_with_warning(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = write_gateway_vault(tmp_path / "vault.yaml", with_clients=False)
    process = ProxyProcess(
        serve_args(upstream, vault, "0.0.0.0:0", "--insecure-no-client-auth"), env=isolated_env
    ).wait_ready()
    try:
        response = requests.get(f"http://127.0.0.1:{process.port}{ALPHA}/processes", timeout=10)
        assert response.status_code == 200
        process.wait_for_line("this gateway is open to anyone who can reach it")
    finally:
        process.stop()


def test_insecure_override_from_config(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = write_gateway_vault(tmp_path / "vault.yaml", with_clients=False)
    config = tmp_path / "config.yaml"
    config.write_text("insecure_no_client_auth: true\nallowed_hosts: [gateway.example.org]\n")
    process = ProxyProcess(
        serve_args(upstream, vault, "0.0.0.0:0", "--config", str(config)), env=isolated_env
    ).wait_ready()
    try:
        process.wait_for_line("INSECURE: client authentication is off")
        process.wait_for_line(
            "allowed hosts localhost, *.localhost, 127.0.0.1, [::1], gateway.example.org"
        )
    finally:
        process.stop()


def test_wildcard_listen_with_clients_requires_them(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = write_gateway_vault(tmp_path / "vault.yaml")
    process = ProxyProcess(serve_args(upstream, vault, "0.0.0.0:0"), env=isolated_env).wait_ready()
    try:
        base = f"http://127.0.0.1:{process.port}{ALPHA}/processes"
        assert requests.get(base, timeout=10).status_code == 401
        assert requests.get(base, auth=("alice", key_of("alice")), timeout=10).status_code == 200
        process.wait_for_line("client credentials required: clients alice, guest, ops, reader")
        process.wait_for_line("allowed_hosts lists only loopback names")
    finally:
        process.stop()


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` by renaming a new file over it, as editors and tools do."""
    temporary = path.with_suffix(".new")
    temporary.write_text(text)
    temporary.chmod(0o600)
    os.replace(temporary, path)


def test_clients_reloaded_while_serving(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = write_gateway_vault(tmp_path / "vault.yaml")
    process = ProxyProcess(serve_args(upstream, vault, "127.0.0.1:0"), env=isolated_env)
    process.wait_ready()
    try:
        added = subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy",
                "client",
                "add",
                "newbie",
                "--workspace",
                "beta-ws",
                "--vault",
                str(vault),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        key = added.split("\n\n")[1].strip()
        process.wait_for_line("clients added newbie")
        subprocess.run(
            [sys.executable, "-m", "proxy", "client", "remove", "alice", "--vault", str(vault)],
            capture_output=True,
            timeout=30,
            check=True,
        )
        process.wait_for_line("clients removed alice")

        url = f"{process.url}{BETA}/processes"
        assert requests.get(url, auth=("newbie", key), timeout=10).status_code == 200
        removed = requests.get(
            f"{process.url}{ALPHA}/processes", auth=("alice", key_of("alice")), timeout=10
        )
        assert removed.status_code == 401
    finally:
        process.stop()
    assert key not in process.output


def test_emptied_clients_close_exposed_listener(
    upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = write_gateway_vault(tmp_path / "vault.yaml")
    process = ProxyProcess(serve_args(upstream, vault, "0.0.0.0:0"), env=isolated_env)
    process.wait_ready()
    try:
        url = f"http://127.0.0.1:{process.port}{ALPHA}/processes"
        assert requests.get(url, auth=("alice", key_of("alice")), timeout=10).status_code == 200

        with_clients = vault.read_text()
        replace_file(vault, with_clients[: with_clients.index("clients:")])
        process.wait_for_line("the vault lists no clients now")
        assert requests.get(url, timeout=10).status_code == 401
        assert requests.get(url, auth=("alice", key_of("alice")), timeout=10).status_code == 401
    finally:
        process.stop()


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace of our own with a non-loopback address, 10.77.0.1, on its lo."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("creating a network namespace needs root and iproute2")
    name = f"eodhgw-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(
        ["ip", "netns", "add", name], capture_output=True, text=True, check=False
    )
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
    try:
        for command in ("ip link set lo up", "ip addr add 10.77.0.1/32 dev lo"):
            subprocess.run(["ip", "netns", "exec", name, *command.split()], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def test_non_loopback_address_refused(
    namespace: str, upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    vault = write_gateway_vault(tmp_path / "vault.yaml", with_clients=False)
    command = [sys.executable, "-m", "proxy", *serve_args(upstream, vault, "10.77.0.1:0")]
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, *command],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **isolated_env},
        check=False,
    )
    assert result.returncode == 2
    assert "will not listen on 10.77.0.1:0, which is not a loopback address" in result.stderr


def test_non_loopback_address_serves_clients(
    namespace: str, upstream: UpstreamServer, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """In the namespace the stand-in is out of reach, so an allowed request gets 502."""
    vault = write_gateway_vault(tmp_path / "vault.yaml")
    config = tmp_path / "config.yaml"
    config.write_text("allowed_hosts: ['10.77.0.1']\n")
    process = ProxyProcess(
        serve_args(upstream, vault, "10.77.0.1:0", "--config", str(config)),
        env=isolated_env,
        prefix=("ip", "netns", "exec", namespace),
    ).wait_ready()
    try:
        url = f"http://10.77.0.1:{process.port}{ALPHA}/processes"
        for credentials, expected in (((), "401"), (("-u", f"alice:{key_of('alice')}"), "502")):
            curl_status = [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                *credentials,
                url,
            ]
            result = subprocess.run(
                ["ip", "netns", "exec", namespace, *curl_status],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert result.stdout == expected, result.stderr
    finally:
        process.stop()
