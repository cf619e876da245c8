"""ClientGate and FailureLimiter without a server: when credentials are required, and the limit."""

from __future__ import annotations

import hashlib

import pytest

from proxy.clients import Client
from proxy.errors import ClientUnauthorized, TooManyFailures
from proxy.guards import ClientGate, FailureLimiter, source_key
from tests.gateway import basic

KEY = "gate-test-key-0123456789"
ALICE = Client("alice", hashlib.sha256(KEY.encode()).digest(), frozenset({"alpha-ws"}), None)
CLIENTS = {"alice": ALICE}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_blocks_after_max_failures() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, 60, timer=clock)
    assert limiter.record_failure("a") is False
    assert limiter.record_failure("a") is False
    assert limiter.retry_after("a") is None
    assert limiter.record_failure("a") is True
    assert limiter.retry_after("a") == 60
    clock.now += 45.5
    assert limiter.retry_after("a") == 15


def test_limiter_forgets_after_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, 60, timer=clock)
    for _ in range(3):
        limiter.record_failure("a")
    clock.now += 60
    assert limiter.retry_after("a") is None
    assert limiter.record_failure("a") is False


def test_limiter_counts_sources_apart() -> None:
    limiter = FailureLimiter(2, 60, timer=Clock())
    limiter.record_failure("a")
    limiter.record_failure("a")
    assert limiter.retry_after("a") is not None
    assert limiter.retry_after("b") is None


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        (None, "-"),
    ],
)
def test_source_key_groups_ipv6_by_64(remote: str | None, key: str) -> None:
    assert source_key(remote) == key


def check(gate: ClientGate, clients: dict[str, Client], path: str, *values: str) -> Client | None:
    return gate.check(clients, path=path, remote="127.0.0.1", authorization_values=values)


def test_gate_off_without_clients_on_loopback() -> None:
    gate = ClientGate(required_without_clients=False)
    assert check(gate, {}, "/anything") is None


def test_gate_closed_without_clients_when_exposed() -> None:
    """An exposed listener whose vault lost its clients rejects every request."""
    gate = ClientGate(required_without_clients=True)
    with pytest.raises(ClientUnauthorized):
        check(gate, {}, "/anything")
    with pytest.raises(ClientUnauthorized):
        check(gate, {}, "/anything", basic("alice", KEY))


def test_gate_returns_authenticated_client() -> None:
    gate = ClientGate(required_without_clients=False)
    assert check(gate, CLIENTS, "/x", basic("alice", KEY)) is ALICE


def test_gate_exempts_healthz_only() -> None:
    gate = ClientGate(required_without_clients=True)
    assert check(gate, CLIENTS, "/_proxy/healthz") is None
    for path in ("/_proxy/readyz", "/_proxy/status", "/_proxy/metrics", "/_proxy/healthz/x"):
        with pytest.raises(ClientUnauthorized):
            check(gate, CLIENTS, path)


def test_gate_blocks_without_checking_key() -> None:
    gate = ClientGate(required_without_clients=False, limiter=FailureLimiter(2, 60, timer=Clock()))
    for _ in range(2):
        with pytest.raises(ClientUnauthorized):
            check(gate, CLIENTS, "/x", basic("alice", "wrong"))
    with pytest.raises(TooManyFailures) as caught:
        check(gate, CLIENTS, "/x", basic("alice", KEY))
    assert caught.value.retry_after == 60
    assert caught.value.response_headers() == {"Retry-After": "60"}
