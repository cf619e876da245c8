"""Token health: expiry warnings, rejection warnings and their rate limit."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from types import MappingProxyType

import pytest

from proxy.health import TokenHealth, expiry_warnings, likely_cause
from proxy.vault import Credential, Token, Vault

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def credential(workspace: str, expires: dt.datetime | None = None) -> Credential:
    return Credential(workspace, Token(f"token-of-{workspace}"), expires)


def vault_of(*credentials: Credential) -> Vault:
    return Vault(Path("vault.yaml"), MappingProxyType({c.workspace: c for c in credentials}))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_expiry_warnings_expired_and_soon() -> None:
    vault = vault_of(
        credential("gone-ws", NOW - dt.timedelta(hours=1)),
        credential("soon-ws", NOW + dt.timedelta(days=3, hours=1)),
        credential("later-ws", NOW + dt.timedelta(days=8)),
        credential("never-ws"),
    )
    warnings = expiry_warnings(vault, NOW)
    assert len(warnings) == 2
    assert warnings[0].startswith("token for workspace gone-ws (sha256:")
    assert "expired at 2026-12-04 11:00 UTC; it is still tried" in warnings[0]
    assert "expires in 3 days, at 2026-12-07 13:00 UTC" in warnings[1]
    assert "token-of-" not in " ".join(warnings)


def test_expiry_warnings_for_named_workspaces() -> None:
    vault = vault_of(credential("a-ws", NOW), credential("b-ws", NOW))
    assert len(expiry_warnings(vault, NOW, ["b-ws"])) == 1


def test_rejection_warning_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    health = TokenHealth(clock)
    beta = credential("beta-ws")
    caplog.set_level(logging.WARNING, "eodh_proxy")

    for _ in range(3):
        assert health.record(beta, "beta-ws", 403, "GET /x")
    clock.now += 61
    assert health.record(beta, "beta-ws", 401, "GET /y")

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(
        "upstream returned 403 for GET /x with the token for workspace beta-ws"
    )
    assert messages[1].endswith("(2 more since the last warning)")
    assert health.last_status["beta-ws"] == 401


def test_rate_limit_is_per_workspace(caplog: pytest.LogCaptureFixture) -> None:
    health = TokenHealth(Clock())
    caplog.set_level(logging.WARNING, "eodh_proxy")
    health.record(credential("a-ws"), "a-ws", 403, "GET /a")
    health.record(credential("b-ws"), "b-ws", 403, "GET /b")
    assert len(caplog.records) == 2


def test_success_is_not_rejection() -> None:
    health = TokenHealth(Clock())
    assert not health.record(credential("a-ws"), "a-ws", 200, "GET /a")
    assert health.last_status == {"a-ws": 200}
    assert health.last_rejected_at == {}


def test_forget_clears_rejection() -> None:
    health = TokenHealth(Clock())
    health.record(credential("a-ws"), "a-ws", 403, "GET /a")
    health.forget(["a-ws"])
    assert health.last_status == {}
    assert health.last_rejected_at == {}


def test_expired_token_warned_hourly(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    health = TokenHealth(clock)
    gone = credential("gone-ws", NOW - dt.timedelta(days=1))
    caplog.set_level(logging.WARNING, "eodh_proxy")
    health.warn_if_expired(gone, NOW)
    health.warn_if_expired(gone, NOW)
    clock.now += 3601
    health.warn_if_expired(gone, NOW)
    health.warn_if_expired(credential("fine-ws", NOW + dt.timedelta(days=1)), NOW)
    assert len(caplog.records) == 2


@pytest.mark.parametrize(
    ("status", "path_workspace", "expires", "expected"),
    [
        (401, "a-ws", None, "the token was not accepted: likely expired or revoked"),
        (403, "a-ws", None, "expired or revoked token, or a token of another workspace"),
        (403, "a-ws", NOW - dt.timedelta(days=1), "the token expired at 2026-12-03 12:00 UTC"),
        (403, "other-ws", None, "the path is in workspace other-ws, which has no token"),
    ],
)
def test_likely_cause_by_case(
    status: int, path_workspace: str, expires: dt.datetime | None, expected: str
) -> None:
    cause = likely_cause(credential("a-ws", expires), path_workspace, status, NOW)
    assert expected in cause
