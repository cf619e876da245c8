"""The token vault: a YAML file of workspace names and their API tokens.

Tokens live in `Token`, whose `str` and `repr` are redacted; code that needs the
value calls `reveal()`, and the only such caller builds the upstream
`Authorization` header. A token is identified everywhere else by its fingerprint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from proxy.errors import ConfigError
from proxy.yamlfile import LinedDict, load_mapping, type_name

# A workspace name is one path segment and, for workspace files, one DNS label.
WORKSPACE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z", re.IGNORECASE)
WORKSPACE_NAME_RULE = "letters, digits and inner hyphens, at most 63 characters"

_VAULT_KEYS = ("workspaces",)
_ENTRY_KEYS = ("token", "expires")


class Token:
    """A secret bearer token. Printing it shows only its fingerprint."""

    __slots__ = ("_value", "fingerprint")

    def __init__(self, value: str) -> None:
        self._value = value
        self.fingerprint = fingerprint(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Token(fingerprint={self.fingerprint!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Token):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> str:
        raise TypeError("a Token cannot be pickled")


def fingerprint(secret: str) -> str:
    """Return a short, stable identifier of `secret` that does not reveal it."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Credential:
    workspace: str
    token: Token
    expires: dt.datetime | None = None

    def expired(self, now: dt.datetime) -> bool:
        return self.expires is not None and self.expires <= now


@dataclass(frozen=True, slots=True)
class Vault:
    path: Path
    credentials: Mapping[str, Credential]

    def get(self, workspace: str) -> Credential | None:
        return self.credentials.get(workspace)

    @property
    def workspaces(self) -> list[str]:
        return sorted(self.credentials)


def load_vault(path: Path) -> Vault:
    """Read and validate the vault file; every mistake is one `ConfigError` line."""
    data = load_mapping(path, "vault")
    _reject_unknown_keys(path, data, _VAULT_KEYS, "top level")

    workspaces = data.get("workspaces", None)
    if workspaces is None:
        workspaces = LinedDict([], {}, data.line)
    if not isinstance(workspaces, LinedDict):
        raise ConfigError(
            f"{path}, line {data.line_of('workspaces')}: 'workspaces' must be a mapping "
            f"of workspace names to entries, found {type_name(workspaces)}"
        )

    credentials: dict[str, Credential] = {}
    for name, entry in workspaces.items():
        line = workspaces.line_of(name)
        credentials[str(name)] = _parse_entry(path, line, name, entry)
    return Vault(path=path, credentials=MappingProxyType(credentials))


def _parse_entry(path: Path, line: int, name: object, entry: object) -> Credential:
    if not isinstance(name, str) or not WORKSPACE_NAME.match(name):
        raise ConfigError(
            f"{path}, line {line}: invalid workspace name {str(name)!r} "
            f"(expected {WORKSPACE_NAME_RULE})"
        )
    if not isinstance(entry, LinedDict):
        raise ConfigError(
            f"{path}, line {line}: workspace {name!r} must be a mapping with a 'token' key, "
            f"found {type_name(entry)}"
        )
    _reject_unknown_keys(path, entry, _ENTRY_KEYS, f"workspace {name!r}")

    value = entry.get("token")
    if value is None:
        raise ConfigError(f"{path}, line {line}: workspace {name!r} has no token (expected token)")
    token_line = entry.line_of("token")
    if not isinstance(value, str):
        raise ConfigError(
            f"{path}, line {token_line}: token of workspace {name!r} must be a string, "
            f"found {type_name(value)}; quote it"
        )
    _check_token_text(path, token_line, name, value)

    expires = parse_expiry(entry.get("expires"), f"{path}, line {entry.line_of('expires')}")
    return Credential(workspace=name, token=Token(value.strip()), expires=expires)


def _check_token_text(path: Path, line: int, workspace: str, value: str) -> None:
    # Messages here never quote the value: it is a secret even when it is malformed.
    token = value.strip()
    if not token:
        raise ConfigError(f"{path}, line {line}: token of workspace {workspace!r} is empty")
    if any(ord(char) < 0x21 or ord(char) > 0x7E for char in token):
        raise ConfigError(
            f"{path}, line {line}: token of workspace {workspace!r} contains spaces, line "
            "breaks or non-ASCII characters (expected one line of printable ASCII)"
        )


def parse_expiry(value: object, where: str) -> dt.datetime | None:
    """Turn a YAML date, timestamp or ISO 8601 string into an aware UTC datetime.

    A bare date means the end of that day in UTC, so a token is still counted
    valid on the date printed as its expiry.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            try:
                value = dt.date.fromisoformat(text)
            except ValueError:
                value = None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time.max, tzinfo=dt.timezone.utc)
    raise ConfigError(
        f"{where}: invalid 'expires' value (expected a date such as 2027-01-31 "
        "or a timestamp such as 2027-01-31T12:00:00Z)"
    )


def _reject_unknown_keys(
    path: Path, mapping: LinedDict, known: tuple[str, ...], where: str
) -> None:
    for key in mapping:
        if key not in known:
            expected = ", ".join(known)
            raise ConfigError(
                f"{path}, line {mapping.line_of(key)}: unknown key {str(key)!r} in {where} "
                f"(expected one of: {expected})"
            )
