"""Gateway clients: who may use the proxy, with which workspaces and methods.

Rules this module keeps:

1. The vault stores only the SHA-256 digest of each client key, never the key.
   Keys are generated (`new_key`, 256 random bits), so one unsalted hash is
   enough: there is no dictionary to attack.
2. A presented key is checked in constant time: its digest is compared with
   `hmac.compare_digest`, and an unknown client name is compared against a
   dummy digest, so the time taken reveals neither the key nor which names exist.
3. Errors and refusals name the client, the workspace or the method, never the key.

Everything here is pure: no I/O, no settings object.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from proxy.errors import ConfigError
from proxy.names import WORKSPACE_NAME, WORKSPACE_NAME_RULE
from proxy.yamlfile import LinedDict, type_name

# A client name is the user name of HTTP Basic, so it cannot contain ':'.
CLIENT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?\Z")
CLIENT_NAME_RULE = "letters, digits and inner '.', '_' or '-', at most 64 characters"
ALL_WORKSPACES = "*"
READ_ONLY_METHODS = ("GET", "HEAD")

_ENTRY_KEYS = ("key_sha256", "workspaces", "methods")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}\Z")
METHOD_NAME = re.compile(r"[A-Z]{1,20}\Z")
# Compared against when the presented name is unknown, so that case costs the same time.
_DUMMY_DIGEST = hashlib.sha256(secrets.token_bytes(32)).digest()


@dataclass(frozen=True, slots=True)
class Client:
    """One gateway client: its key digest and what it was granted."""

    name: str
    key_sha256: bytes = field(repr=False)
    workspaces: frozenset[str] | None
    """Workspace names granted, or None for every workspace ("*")."""
    methods: frozenset[str] | None
    """HTTP methods allowed, or None for every method."""

    def grants_workspace(self, workspace: str) -> bool:
        return self.workspaces is None or workspace in self.workspaces

    def allows_method(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def describe_workspaces(self) -> str:
        if self.workspaces is None:
            return ALL_WORKSPACES
        return ", ".join(sorted(self.workspaces)) or "none"

    def describe_methods(self) -> str:
        if self.methods is None:
            return "all"
        return ", ".join(sorted(self.methods))


def key_digest(key: str) -> str:
    """Return the SHA-256 hex digest of a client key, as stored in `key_sha256`."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """Generate a client key: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def describe_changes(old: Mapping[str, Client], new: Mapping[str, Client]) -> str | None:
    """Return which clients were added, removed or changed (key or grants), or None."""
    changed = sorted(name for name in set(old) & set(new) if old[name] != new[name])
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (
            ("added", sorted(set(new) - set(old))),
            ("removed", sorted(set(old) - set(new))),
            ("changed", changed),
        )
        if names
    ]
    return "; ".join(parts) or None


def parse_clients(path: Path, data: LinedDict) -> Mapping[str, Client]:
    """Validate the vault's `clients:` section, raising a one-line `ConfigError` on a mistake."""
    section = data.get("clients")
    if section is None:
        return MappingProxyType({})
    if not isinstance(section, LinedDict):
        raise ConfigError(
            f"{path}, line {data.line_of('clients')}: 'clients' must be a mapping of client "
            f"names to entries, found {type_name(section)}"
        )
    clients = {}
    for name, entry in section.items():
        clients[str(name)] = _parse_entry(path, section.line_of(name), name, entry)
    return MappingProxyType(clients)


def _parse_entry(path: Path, line: int, name: object, entry: object) -> Client:
    if not isinstance(name, str) or not CLIENT_NAME.match(name):
        raise ConfigError(
            f"{path}, line {line}: invalid client name {str(name)!r} (expected {CLIENT_NAME_RULE})"
        )
    if not isinstance(entry, LinedDict):
        raise ConfigError(
            f"{path}, line {line}: client {name!r} must be a mapping with 'key_sha256' and "
            f"'workspaces' keys, found {type_name(entry)}"
        )
    for key in entry:
        if key not in _ENTRY_KEYS:
            raise ConfigError(
                f"{path}, line {entry.line_of(key)}: unknown key {str(key)!r} in client "
                f"{name!r} (expected one of: {', '.join(_ENTRY_KEYS)})"
            )

    where = f"{path}, line {entry.line_of('key_sha256')}"
    digest = entry.get("key_sha256")
    if digest is None:
        raise ConfigError(
            f"{path}, line {line}: client {name!r} has no key_sha256 (expected the SHA-256 hex "
            "digest of its key; 'eodh-proxy client add' writes it)"
        )
    if not isinstance(digest, str) or not _HEX_DIGEST.match(digest):
        raise ConfigError(
            f"{where}: key_sha256 of client {name!r} must be a SHA-256 hex digest "
            "(64 hex digits, quoted)"
        )

    return Client(
        name=name,
        key_sha256=bytes.fromhex(digest),
        workspaces=_parse_workspaces(path, line, name, entry),
        methods=_parse_methods(path, name, entry),
    )


def _parse_workspaces(path: Path, line: int, name: str, entry: LinedDict) -> frozenset[str] | None:
    where = f"{path}, line {entry.line_of('workspaces')}"
    value = entry.get("workspaces")
    if value is None:
        raise ConfigError(
            f"{path}, line {line}: client {name!r} has no workspaces (expected a list of "
            f'workspace names, or "{ALL_WORKSPACES}" for every workspace)'
        )
    if value == ALL_WORKSPACES:
        return None
    if not isinstance(value, list):
        raise ConfigError(
            f"{where}: workspaces of client {name!r} must be a list of workspace names or "
            f'"{ALL_WORKSPACES}", found {type_name(value)}'
        )
    for workspace in value:
        if workspace == ALL_WORKSPACES:
            raise ConfigError(
                f'{where}: workspaces of client {name!r} lists "{ALL_WORKSPACES}"; write '
                f'workspaces: "{ALL_WORKSPACES}" without brackets to grant every workspace'
            )
        if not isinstance(workspace, str) or not WORKSPACE_NAME.match(workspace):
            raise ConfigError(
                f"{where}: invalid workspace name {str(workspace)!r} in client {name!r} "
                f"(expected {WORKSPACE_NAME_RULE})"
            )
    return frozenset(value)


def _parse_methods(path: Path, name: str, entry: LinedDict) -> frozenset[str] | None:
    where = f"{path}, line {entry.line_of('methods')}"
    value = entry.get("methods")
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"{where}: methods of client {name!r} must be a non-empty list such as [GET, HEAD], "
            f"found {type_name(value)}"
        )
    for method in value:
        if not isinstance(method, str) or not METHOD_NAME.match(method):
            raise ConfigError(
                f"{where}: invalid method {str(method)!r} in client {name!r} "
                "(expected an upper-case HTTP method such as GET)"
            )
    return frozenset(value)


def parse_basic(value: str) -> tuple[str, str] | None:
    """Return (user, password) from a `Basic` header value, or None when it is not one."""
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, separator, password = decoded.partition(":")
    if not separator:
        return None
    return user, password


def presented_credentials(values: Iterable[str]) -> set[tuple[str, str]]:
    """Collect the distinct Basic credentials among `Authorization`-style header values."""
    found = set()
    for value in values:
        credential = parse_basic(value)
        if credential is not None:
            found.add(credential)
    return found


def authenticate(clients: Mapping[str, Client], name: str, key: str) -> Client | None:
    """Return the client with this name and key, or None.

    The time taken depends on neither the key nor whether the name exists.
    """
    client = clients.get(name)
    expected = client.key_sha256 if client is not None else _DUMMY_DIGEST
    presented = hashlib.sha256(key.encode()).digest()
    if hmac.compare_digest(presented, expected) and client is not None:
        return client
    return None


def denial_reason(client: Client, method: str, workspaces: Iterable[str]) -> str | None:
    """Return why `client` may not send `method` to `workspaces`, or None when it may."""
    if not client.allows_method(method):
        return (
            f"client {client.name!r} may not use method {method} "
            f"(allowed: {client.describe_methods()})"
        )
    for workspace in workspaces:
        if not client.grants_workspace(workspace):
            return f"client {client.name!r} is not granted workspace {workspace!r}"
    return None
