"""The token vault: a YAML file of workspace names and their API tokens.

Tokens live in `Token`, whose `str` and `repr` are redacted. Only three places
call `reveal()`: the request handler and `check`, which build the upstream
`Authorization` header, and `vault add`, which writes the vault file. Everywhere
else a token is identified by its fingerprint.

A workspace entry names its token in exactly one way: inline (`token`), as the
first line of a file (`token_file`, relative to the vault's folder) or as an
environment variable (`token_env`). Loading happens in two steps, `parse_entries`
(the vault file alone) and `read_token` (the file or variable it names), so that
`vault list` can show an entry whose source is missing. A vault file, or a token
file, is rejected when another user owns it, can write it, or can write its
folder (unless the folder has the sticky bit); one that others can read loads
with a warning.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from proxy.clients import Client, parse_clients
from proxy.errors import ConfigError
from proxy.names import WORKSPACE_NAME, WORKSPACE_NAME_RULE, has_upper_case
from proxy.yamlfile import LinedDict, load_mapping, parse_mapping, type_name

TOKEN_SOURCES = ("token", "token_file", "token_env")
_VAULT_KEYS = ("workspaces", "clients")
_ENTRY_KEYS = (*TOKEN_SOURCES, "expires")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A token file is read up to its first line break; anything longer than this is not a token.
_MAX_TOKEN_LINE = 64 * 1024


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
    token_files: tuple[Path, ...] = ()
    """Files named by `token_file` entries, watched for changes like the vault itself."""
    warnings: tuple[str, ...] = ()
    """Problems that do not stop the vault loading, such as a file others can read."""
    clients: Mapping[str, Client] = field(default_factory=lambda: MappingProxyType({}))
    """Gateway clients by name; when there are any, every request needs a client credential."""

    def get(self, workspace: str) -> Credential | None:
        return self.credentials.get(workspace)

    @property
    def workspaces(self) -> list[str]:
        return sorted(self.credentials)


class VaultHolder:
    """The vault in use; a reload swaps it whole, so a request sees one vault throughout."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.loaded_at = dt.datetime.now(dt.UTC)
        self.last_error: str | None = None
        """Why the last reload failed, or None once a reload succeeds."""

    def replace(self, vault: Vault) -> None:
        self.vault = vault
        self.loaded_at = dt.datetime.now(dt.UTC)
        self.last_error = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One workspace entry as written in the vault file, before its token is read."""

    workspace: str
    line: int
    source: str
    """The key that names the token: one of `TOKEN_SOURCES`."""
    source_line: int
    reference: str
    """The `token_file` path or `token_env` variable name; empty for an inline token."""
    expires: dt.datetime | None
    inline: Token | None = field(default=None, repr=False)

    def describe_source(self) -> str:
        return "token" if self.source == "token" else f"{self.source} {self.reference}"


@dataclass(frozen=True, slots=True)
class ParsedVault:
    path: Path
    entries: tuple[Entry, ...]
    warnings: tuple[str, ...]
    clients: Mapping[str, Client] = field(default_factory=lambda: MappingProxyType({}))


def load_vault(path: Path, environ: Mapping[str, str] | None = None) -> Vault:
    """Read and validate the vault file and every token it names.

    Every mistake is one `ConfigError` line naming the file, the line and the
    workspace; no message quotes a token.
    """
    environ = os.environ if environ is None else environ
    parsed = parse_entries(path)
    credentials: dict[str, Credential] = {}
    token_files: list[Path] = []
    warnings = list(parsed.warnings)
    for entry in parsed.entries:
        token, warning = read_token(path, entry, environ)
        credentials[entry.workspace] = Credential(entry.workspace, token, entry.expires)
        if entry.source == "token_file":
            token_files.append(token_file_path(path, entry.reference))
        if warning is not None:
            warnings.append(warning)
    return Vault(
        path=path,
        credentials=MappingProxyType(credentials),
        token_files=tuple(token_files),
        warnings=tuple(warnings),
        clients=parsed.clients,
    )


def parse_entries(path: Path) -> ParsedVault:
    """Read and validate the vault file itself, without reading token files or variables."""
    data = load_mapping(path, "vault")
    warning = check_file_mode(path, "vault file")
    entries = _parse_data(path, data)
    clients = parse_clients(path, data)
    return ParsedVault(path, entries, () if warning is None else (warning,), clients)


def check_vault_text(path: Path, text: str) -> None:
    """Validate `text` as the new content of the vault file `path`, before it is written."""
    data = parse_mapping(text, path, "vault")
    _parse_data(path, data)
    parse_clients(path, data)


def _parse_data(path: Path, data: LinedDict) -> tuple[Entry, ...]:
    _reject_unknown_keys(path, data, _VAULT_KEYS, "top level")

    workspaces = data.get("workspaces", None)
    if workspaces is None:
        workspaces = LinedDict([], {}, data.line)
    if not isinstance(workspaces, LinedDict):
        raise ConfigError(
            f"{path}, line {data.line_of('workspaces')}: 'workspaces' must be a mapping "
            f"of workspace names to entries, found {type_name(workspaces)}"
        )

    return tuple(
        _parse_entry(path, workspaces.line_of(name), name, entry)
        for name, entry in workspaces.items()
    )


def _parse_entry(path: Path, line: int, name: object, entry: object) -> Entry:
    if isinstance(name, str) and has_upper_case(name):
        raise ConfigError(
            f"{path}, line {line}: workspace name {name!r} has upper-case letters "
            f"(expected lower case, as the platform names workspaces: {name.lower()!r})"
        )
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

    sources = [key for key in TOKEN_SOURCES if entry.get(key) is not None]
    if not sources:
        raise ConfigError(
            f"{path}, line {line}: workspace {name!r} has no token "
            "(expected one of token, token_file or token_env)"
        )
    if len(sources) > 1:
        raise ConfigError(
            f"{path}, line {entry.line_of(sources[1])}: workspace {name!r} has both "
            f"{sources[0]} and {sources[1]} (expected exactly one of token, token_file "
            "or token_env)"
        )
    source = sources[0]
    value = entry[source]
    source_line = entry.line_of(source)
    if not isinstance(value, str):
        hint = "; quote it" if source == "token" else ""
        raise ConfigError(
            f"{path}, line {source_line}: {source} of workspace {name!r} must be a string, "
            f"found {type_name(value)}{hint}"
        )

    inline = None
    reference = ""
    if source == "token":
        where = f"{path}, line {source_line}"
        inline = Token(check_token_text(value, where, f"token of workspace {name!r}"))
    elif source == "token_env":
        if not _ENV_NAME.match(value):
            raise ConfigError(
                f"{path}, line {source_line}: token_env of workspace {name!r} is not a valid "
                f"environment variable name: {value!r} (expected letters, digits and _)"
            )
        reference = value
    else:
        if not value.strip():
            raise ConfigError(
                f"{path}, line {source_line}: token_file of workspace {name!r} is empty "
                "(expected a file path)"
            )
        reference = value

    expires = parse_expiry(entry.get("expires"), f"{path}, line {entry.line_of('expires')}")
    return Entry(name, line, source, source_line, reference, expires, inline)


def read_token(
    path: Path, entry: Entry, environ: Mapping[str, str]
) -> tuple[Token, str | None]:
    """Return the token an entry names, and a warning about its file's mode, if any."""
    where = f"{path}, line {entry.source_line}"
    if entry.inline is not None:
        return entry.inline, None
    if entry.source == "token_env":
        value = environ.get(entry.reference)
        if value is None:
            raise ConfigError(
                f"{where}: environment variable {entry.reference} for workspace "
                f"{entry.workspace!r} is not set (token_env)"
            )
        what = f"token in environment variable {entry.reference} (workspace {entry.workspace!r})"
        return Token(check_token_text(value, where, what)), None

    file = token_file_path(path, entry.reference)
    first_line = _read_first_line(file, where, entry.workspace)
    warning = check_file_mode(file, f"token_file of workspace {entry.workspace!r}")
    what = f"token in {file} (workspace {entry.workspace!r})"
    return Token(check_token_text(first_line, where, what)), warning


def token_file_path(vault_path: Path, reference: str) -> Path:
    """Resolve a `token_file` value; a relative path starts at the vault file's folder."""
    return vault_path.parent / Path(reference).expanduser()


def _read_first_line(file: Path, where: str, workspace: str) -> str:
    try:
        with file.open("rb") as stream:
            raw = stream.readline(_MAX_TOKEN_LINE + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"{where}: token_file of workspace {workspace!r} not found: {file}"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{where}: token_file of workspace {workspace!r} is a directory: {file}"
        ) from None
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise ConfigError(
            f"{where}: cannot read token_file of workspace {workspace!r} ({file}): {reason}"
        ) from None
    if len(raw) > _MAX_TOKEN_LINE:
        raise ConfigError(
            f"{where}: the first line of token_file {file} (workspace {workspace!r}) is longer "
            f"than {_MAX_TOKEN_LINE} bytes (expected one token)"
        )
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{where}: token_file {file} of workspace {workspace!r} contains non-ASCII bytes "
            "(expected one line of printable ASCII with no spaces)"
        ) from None
    return text.removesuffix("\n").removesuffix("\r")


def check_token_text(value: str, where: str, what: str) -> str:
    """Return `value` without surrounding whitespace, or raise if it is not one printable line.

    Messages never quote the value: it is a secret even when it is malformed.
    """
    token = value.strip()
    if not token:
        raise ConfigError(f"{where}: {what} is empty")
    if any(ord(char) < 0x21 or ord(char) > 0x7E for char in token):
        raise ConfigError(
            f"{where}: {what} contains spaces, line breaks or non-ASCII characters "
            "(expected one line of printable ASCII with no spaces)"
        )
    return token


def check_file_mode(path: Path, what: str) -> str | None:
    """Reject a file that a user other than the proxy's could change or replace.

    Rejected: a file owned by a user other than the effective user or root, a
    file that group or others can write, and a file in a folder they could
    rename another file into. Returns a warning when group or others can read it.
    The file's owner and mode are those of the file a symbolic link points to,
    as for a mounted Kubernetes secret, whose files are links into a hidden folder.
    """
    try:
        info = path.stat()
    except OSError:
        return None  # Reading the file reports a missing or unreadable file.
    mode = info.st_mode
    _check_owner(path, what, info.st_uid)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path}: {what} can be written by other users (mode {stat.S_IMODE(mode):04o}); "
            f"anyone who can change it controls which token is sent; run: chmod 600 {path}"
        )
    for folder in _folders_of(path):
        _check_folder(folder, path, what)
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return (
            f"{path}: {what} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    return None


def _folders_of(path: Path) -> list[Path]:
    """Return the folder of `path` and, when links lead elsewhere, that of the file reached."""
    given = Path(os.path.abspath(path)).parent
    resolved = Path(os.path.realpath(path)).parent
    return [given] if given == resolved else [given, resolved]


def _check_folder(folder: Path, path: Path, what: str) -> None:
    # Whoever can write a folder can rename their own file over one in it,
    # unless the sticky bit limits renames to the owner of the replaced file.
    try:
        info = folder.stat()
    except OSError:
        return  # The file itself was found, so this is a race with its removal.
    _check_owner(folder, f"folder of {what} {path}", info.st_uid)
    mode = info.st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        raise ConfigError(
            f"{folder}: folder of {what} {path} can be written by other users "
            f"(mode {stat.S_IMODE(mode):04o}, no sticky bit), so they could replace the file; "
            f"run: chmod go-w {folder}"
        )


def _check_owner(path: Path, what: str, owner: int) -> None:
    user = os.geteuid()
    if owner not in (user, 0):
        raise ConfigError(
            f"{path}: {what} is owned by user {owner}, not by the proxy's user ({user}) "
            f"or root; whoever owns it controls which token is sent; run: chown {user} {path}"
        )


def parse_expiry(value: object, where: str) -> dt.datetime | None:
    """Turn a YAML date, timestamp or ISO 8601 string into an aware UTC datetime.

    A bare date means the end of that day in UTC, so a token is still counted
    valid on the date printed as its expiry. A timestamp without a time zone is
    taken as UTC.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = _parse_iso(value.strip())
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time.max, tzinfo=dt.UTC)
    raise ConfigError(
        f"{where}: invalid 'expires' value (expected a date such as 2027-01-31 "
        "or a timestamp such as 2027-01-31T12:00:00Z)"
    )


def _parse_iso(text: str) -> dt.date | None:
    # A date alone must stay a date: datetime.fromisoformat would read it as midnight.
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


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
