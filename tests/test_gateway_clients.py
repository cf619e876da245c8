"""Gateway clients: the vault's `clients:` section, Basic credentials, grants."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from proxy import clients
from proxy.errors import ConfigError
from proxy.vault import load_vault

ALICE_KEY = "alice-key-0123456789"
ALICE_DIGEST = hashlib.sha256(ALICE_KEY.encode()).hexdigest()


def vault_text(clients_section: str) -> str:
    return "workspaces:\n  team-ws:\n    token: 'team-token'\n" + clients_section


def load(tmp_path: Path, text: str):
    path = tmp_path / "vault.yaml"
    path.write_text(text)
    path.chmod(0o600)
    return load_vault(path)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_vault_loads_clients(tmp_path: Path) -> None:
    vault = load(
        tmp_path,
        vault_text(
            "clients:\n"
            f"  alice:\n    key_sha256: '{ALICE_DIGEST}'\n    workspaces: [team-ws]\n"
            "    methods: [GET, HEAD]\n"
            f"  bob:\n    key_sha256: '{ALICE_DIGEST.upper()}'\n    workspaces: '*'\n"
        ),
    )
    alice = vault.clients["alice"]
    assert alice.key_sha256 == bytes.fromhex(ALICE_DIGEST)
    assert alice.workspaces == frozenset({"team-ws"})
    assert alice.methods == frozenset({"GET", "HEAD"})
    bob = vault.clients["bob"]
    assert bob.workspaces is None
    assert bob.methods is None
    assert bob.key_sha256 == bytes.fromhex(ALICE_DIGEST)


def test_vault_without_clients_has_none(tmp_path: Path) -> None:
    vault = load(tmp_path, vault_text(""))
    assert dict(vault.clients) == {}


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("clients: [alice]\n", "line 4: 'clients' must be a mapping"),
        ("clients:\n  'al ice':\n    key_sha256: x\n", "line 5: invalid client name 'al ice'"),
        ("clients:\n  alice:\n    key_sha256: x\n", "line 6: key_sha256 of client 'alice' must be"),
        (
            "clients:\n  alice:\n    workspaces: [team-ws]\n",
            "line 5: client 'alice' has no key_sha256",
        ),
        (
            f"clients:\n  alice:\n    key_sha256: '{ALICE_DIGEST}'\n",
            "line 5: client 'alice' has no workspaces",
        ),
        (
            f"clients:\n  alice:\n    key_sha256: '{ALICE_DIGEST}'\n    workspaces: team-ws\n",
            "line 7: workspaces of client 'alice' must be a list",
        ),
        (
            f"clients:\n  alice:\n    key_sha256: '{ALICE_DIGEST}'\n    workspaces: [Team_ws]\n",
            "line 7: invalid workspace name 'Team_ws' in client 'alice'",
        ),
        (
            (
                f"clients:\n  alice:\n    key_sha256: '{ALICE_DIGEST}'\n    workspaces: '*'\n"
                "    methods: [get]\n"
            ),
            "line 8: invalid method 'get' in client 'alice'",
        ),
        (
            (
                f"clients:\n  alice:\n    key_sha256: '{ALICE_DIGEST}'\n    workspaces: '*'\n"
                "    methods: []\n"
            ),
            "line 8: methods of client 'alice' must be a non-empty list",
        ),
        (
            (
                f"clients:\n  alice:\n    key_sha256: '{ALICE_DIGEST}'\n    workspaces: '*'\n"
                "    key: secret\n"
            ),
            "line 8: unknown key 'key' in client 'alice'",
        ),
        ("clients:\n  alice: yes\n", "line 5: client 'alice' must be a mapping"),
        (
            f"clients:\n  alice:\n    key_sha256: '{ALICE_DIGEST}'\n    workspaces: ['*']\n",
            'line 7: workspaces of client \'alice\' lists "*"; write workspaces: "*"',
        ),
    ],
)
def test_client_mistakes_name_line(tmp_path: Path, section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, vault_text(section))
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "vault.yaml") + ", ")
    assert expected in message
    assert "\n" not in message


def test_basic_header_parsed() -> None:
    assert clients.parse_basic(basic("alice", "k:e:y")) == ("alice", "k:e:y")
    assert clients.parse_basic("basic " + base64.b64encode(b"a:b").decode()) == ("a", "b")


@pytest.mark.parametrize(
    "value",
    [
        "Bearer abc",
        "Basic",
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff:x").decode(),
    ],
)
def test_non_basic_values_ignored(value: str) -> None:
    assert clients.parse_basic(value) is None


def test_presented_credentials_deduplicated() -> None:
    found = clients.presented_credentials(
        [basic("alice", "k"), "Bearer token", basic("alice", "k")]
    )
    assert found == {("alice", "k")}


def make_client(**grants) -> clients.Client:
    return clients.Client(
        name="alice",
        key_sha256=bytes.fromhex(ALICE_DIGEST),
        workspaces=grants.get("workspaces"),
        methods=grants.get("methods"),
    )


def test_authenticate_accepts_right_key() -> None:
    alice = make_client()
    assert clients.authenticate({"alice": alice}, "alice", ALICE_KEY) is alice


def test_authenticate_rejects_wrong_key() -> None:
    alice = make_client()
    assert clients.authenticate({"alice": alice}, "alice", ALICE_KEY + "x") is None


def test_authenticate_rejects_unknown_name() -> None:
    alice = make_client()
    assert clients.authenticate({"alice": alice}, "mallory", ALICE_KEY) is None


def test_authenticate_compares_digest_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both a known and an unknown name go through `hmac.compare_digest` once."""
    calls: list[tuple[bytes, bytes]] = []

    def recording_compare(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(clients.hmac, "compare_digest", recording_compare)
    alice = make_client()
    clients.authenticate({"alice": alice}, "alice", "wrong")
    clients.authenticate({"alice": alice}, "mallory", "wrong")
    assert len(calls) == 2
    assert calls[0][1] == alice.key_sha256
    assert calls[1][1] != alice.key_sha256


def test_denial_names_method() -> None:
    reader = make_client(methods=frozenset({"GET", "HEAD"}))
    reason = clients.denial_reason(reader, "POST", ["team-ws"])
    assert reason == "client 'alice' may not use method POST (allowed: GET, HEAD)"


def test_denial_names_workspace() -> None:
    member = make_client(workspaces=frozenset({"team-ws"}))
    assert clients.denial_reason(member, "GET", ["team-ws"]) is None
    reason = clients.denial_reason(member, "GET", ["team-ws", "other-ws"])
    assert reason == "client 'alice' is not granted workspace 'other-ws'"


def test_every_workspace_granted_by_star() -> None:
    assert clients.denial_reason(make_client(), "DELETE", ["any-ws"]) is None


def test_new_key_digest_round_trip() -> None:
    key = clients.new_key()
    assert len(key) == 43
    assert clients.key_digest(key) == hashlib.sha256(key.encode()).hexdigest()
    assert clients.new_key() != key
