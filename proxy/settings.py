"""Settings: defaults, then the config file, then command-line flags, validated once.

`load_settings` returns a frozen `Settings`; every mistake becomes one
`ConfigError` line naming the file or flag, the key and what was expected.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.errors import ConfigError
from proxy.guards import DEFAULT_ALLOWED_HOSTS
from proxy.names import WORKSPACE_NAME, WORKSPACE_NAME_RULE
from proxy.routes import DEFAULT_FAMILIES, WORKSPACE_PLACEHOLDER, check_family_prefix
from proxy.upstream import is_loopback_host
from proxy.yamlfile import LinedDict, load_mapping, type_name

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_UPSTREAM = "https://staging.eodatahub.org.uk"
DEFAULT_FILES_UPSTREAM = "https://{workspace}.staging.eodatahub-workspaces.org.uk"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 300.0
# A bound that catches typos; each worker is a whole process with its own pool.
MAX_WORKERS = 256
DEFAULT_RELOAD_INTERVAL = 0.5
DEFAULT_SHUTDOWN_GRACE_PERIOD = 10.0


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "eodh-proxy"


def default_vault_path() -> Path:
    return config_dir() / "vault.yaml"


def default_config_path() -> Path:
    return config_dir() / "config.yaml"


@dataclass(frozen=True, slots=True)
class Origin:
    """Scheme, host and port of an HTTP server, as in RFC 6454."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


@dataclass(frozen=True, slots=True)
class Settings:
    listen_host: str
    listen_port: int
    upstream: Origin
    vault_path: Path
    config_path: Path | None = None
    ca_bundle: Path | None = None
    routes: tuple[str, ...] = DEFAULT_FAMILIES
    default_workspace: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    allow_http_upstream: bool = False
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    allowed_origins: tuple[str, ...] = ()
    access_log: bool = True
    rewrite_links: bool = True
    files_upstream: str = DEFAULT_FILES_UPSTREAM
    """URL template of a workspace's files host, with `{workspace}` once in the host or path."""
    reload_interval: float = DEFAULT_RELOAD_INTERVAL
    """Seconds between checks of the vault and config files for changes; 0 turns polling off."""
    insecure_no_client_auth: bool = False
    shutdown_grace_period: float = DEFAULT_SHUTDOWN_GRACE_PERIOD
    """Seconds that requests in flight get to finish after SIGTERM before they are cut off."""
    workers: int = 1
    """Number of worker processes sharing the listening port."""
    audit_log: str | None = None
    """Audit log file path, "-" for standard output, or None for no audit log."""

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


# Config keys, each with the parser that validates its value.
CONFIG_KEYS = (
    "listen",
    "upstream",
    "vault",
    "ca_bundle",
    "routes",
    "default_workspace",
    "connect_timeout",
    "read_timeout",
    "allow_http_upstream",
    "allowed_hosts",
    "allowed_origins",
    "access_log",
    "rewrite_links",
    "files_upstream",
    "reload_interval",
    "insecure_no_client_auth",
    "shutdown_grace_period",
    "workers",
    "audit_log",
)


def load_settings(flags: Mapping[str, Any], *, read_config: bool = True) -> Settings:
    """Merge defaults, the config file and `flags` (None means 'not given') into `Settings`."""
    config_path, config = (
        _read_config(flags.get("config")) if read_config else (None, LinedDict([], {}, 1))
    )
    raw: dict[str, tuple[Any, str]] = {}
    for key, value in config.items():
        raw[key] = (value, f"{config_path}, line {config.line_of(key)}: '{key}'")
    for key, value in flags.items():
        if key != "config" and value is not None:
            raw[key] = (value, f"--{key.replace('_', '-')}")

    def value_of(key: str, default: Any) -> tuple[Any, str]:
        return raw.get(key, (default, f"default '{key}'"))

    def base_of(key: str) -> Path | None:
        # A relative path from the config file is taken from the file's folder, and one
        # from a flag is taken from the working directory.
        from_config = key in config and flags.get(key) is None
        return config_path.parent if from_config and config_path is not None else None

    listen_host, listen_port = parse_listen(*value_of("listen", DEFAULT_LISTEN))
    allow_http = _parse_bool(*value_of("allow_http_upstream", False))
    upstream = parse_upstream(*value_of("upstream", DEFAULT_UPSTREAM), allow_http=allow_http)
    vault_value, vault_where = value_of("vault", str(default_vault_path()))
    ca_value, ca_where = value_of("ca_bundle", None)
    ca_bundle = None if ca_value is None else _parse_path(ca_value, ca_where, base_of("ca_bundle"))

    return Settings(
        listen_host=listen_host,
        listen_port=listen_port,
        upstream=upstream,
        vault_path=_parse_path(vault_value, vault_where, base_of("vault")),
        config_path=config_path,
        ca_bundle=ca_bundle,
        routes=_parse_routes(*value_of("routes", list(DEFAULT_FAMILIES))),
        default_workspace=_parse_workspace(*value_of("default_workspace", None)),
        connect_timeout=_parse_seconds(*value_of("connect_timeout", DEFAULT_CONNECT_TIMEOUT)),
        read_timeout=_parse_seconds(*value_of("read_timeout", DEFAULT_READ_TIMEOUT)),
        allow_http_upstream=allow_http,
        allowed_hosts=_parse_hosts(*value_of("allowed_hosts", [])),
        allowed_origins=_parse_origins(*value_of("allowed_origins", [])),
        access_log=_parse_bool(*value_of("access_log", True)),
        rewrite_links=_parse_bool(*value_of("rewrite_links", True)),
        files_upstream=parse_files_upstream(
            *value_of("files_upstream", DEFAULT_FILES_UPSTREAM),
            allow_http=allow_http,
            api_origin=upstream,
        ),
        reload_interval=_parse_seconds(
            *value_of("reload_interval", DEFAULT_RELOAD_INTERVAL), allow_zero=True, maximum=3600
        ),
        insecure_no_client_auth=_parse_bool(*value_of("insecure_no_client_auth", False)),
        shutdown_grace_period=_parse_seconds(
            *value_of("shutdown_grace_period", DEFAULT_SHUTDOWN_GRACE_PERIOD),
            allow_zero=True,
            maximum=3600,
        ),
        workers=parse_workers(*value_of("workers", 1)),
        audit_log=_parse_audit_log(*value_of("audit_log", None), base_of("audit_log")),
    )


def parse_workers(value: Any, where: str) -> int:
    """Parse a worker count: a whole number from 1 to `MAX_WORKERS`, or "auto" for the CPU count."""
    if value == "auto":
        return available_cpus()
    count = int(value) if isinstance(value, str) and value.isdigit() else value
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WORKERS:
        raise ConfigError(
            f"{where}: invalid worker count {value!r} "
            f"(expected a whole number from 1 to {MAX_WORKERS}, or auto)"
        )
    return count


def available_cpus() -> int:
    """Return how many CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _read_config(given: str | None) -> tuple[Path | None, LinedDict]:
    if given is not None:
        path = Path(given).expanduser()
    else:
        path = default_config_path()
        if not path.exists():
            return None, LinedDict([], {}, 1)
    config = load_mapping(path, "config")
    for key in config:
        if key not in CONFIG_KEYS:
            raise ConfigError(
                f"{path}, line {config.line_of(key)}: unknown key {str(key)!r} "
                f"(expected one of: {', '.join(CONFIG_KEYS)})"
            )
    return path, config


def parse_listen(value: Any, where: str) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 in brackets) into a host and a port number."""
    text = str(value)
    # The host is an IPv6 address in brackets, or an IPv4 address or host name.
    found = re.fullmatch(
        r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?))"
        r":(?P<port>[0-9]+)",
        text,
    )
    if found is None:
        raise ConfigError(
            f"{where}: invalid listen address {text!r} "
            "(expected HOST:PORT, such as 127.0.0.1:8080 or [::1]:8080)"
        )
    host = found.group("v6") or found.group("host")
    port = int(found.group("port"))
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: invalid port {port} in listen address (expected 0-65535)")
    if found.group("v6"):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{where}: invalid IPv6 address {host!r}") from None
    return host, port


def parse_upstream(value: Any, where: str, *, allow_http: bool) -> Origin:
    """Parse the upstream URL: http(s), a host, an optional port, no path, query or credentials."""
    text = str(value).strip()
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: invalid port in upstream URL {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where}: invalid upstream URL {text!r} "
            "(expected http(s)://HOST[:PORT], such as https://staging.eodatahub.org.uk)"
        )
    if parts.username or parts.password:
        raise ConfigError(f"{where}: the upstream URL must not hold a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"{where}: the upstream URL must be an origin only, without a path or query "
            f"(expected {parts.scheme}://{parts.netloc})"
        )
    if parts.scheme == "http" and not allow_http and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"{where}: plain http:// upstream {parts.hostname} would send tokens unencrypted; "
            "use https://, or set allow_http_upstream: true if you accept that"
        )
    default = 443 if parts.scheme == "https" else 80
    return Origin(parts.scheme, parts.hostname.lower(), port or default)


def parse_files_upstream(value: Any, where: str, *, allow_http: bool, api_origin: Origin) -> str:
    """Parse the files host URL template: http(s), `{workspace}` once as a host label or path segment.

    Returns the template without a trailing slash.
    """
    text = str(value).strip().rstrip("/")
    expected = (
        "expected a URL with {workspace} once as a host label or a path segment, such as "
        f"{DEFAULT_FILES_UPSTREAM} or http://127.0.0.1:9000/{{workspace}}"
    )
    if text.count(WORKSPACE_PLACEHOLDER) != 1 or text.count("{") != 1 or text.count("}") != 1:
        raise ConfigError(f"{where}: invalid files upstream {text!r} ({expected})")
    sample = text.replace(WORKSPACE_PLACEHOLDER, "workspace")
    parts = urlsplit(sample)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: invalid port in files upstream {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: invalid files upstream {text!r} ({expected})")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(
            f"{where}: the files upstream must not contain a user name, password, query or fragment"
        )
    if not _placeholder_is_whole(text):
        raise ConfigError(f"{where}: invalid files upstream {text!r} ({expected})")
    if parts.scheme == "http" and not allow_http and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"{where}: plain http:// files upstream {parts.hostname} would send tokens "
            "unencrypted; use https://, or set allow_http_upstream: true if you accept that"
        )
    default = 443 if parts.scheme == "https" else 80
    if Origin(parts.scheme, parts.hostname.lower(), port or default) == api_origin:
        raise ConfigError(
            f"{where}: the files upstream must be on another origin than the upstream "
            f"{api_origin}, so links to the two can be told apart"
        )
    return text


def _placeholder_is_whole(text: str) -> bool:
    """Tell whether `{workspace}` is a whole host label or a whole path segment in `text`."""
    index = text.index(WORKSPACE_PLACEHOLDER)
    before, after = text[:index], text[index + len(WORKSPACE_PLACEHOLDER) :]
    path_start = text.find("/", text.index("://") + 3)
    if path_start == -1 or index < path_start:
        # In the host: after "://" or ".", before ".", ":", "/" or the end.
        return before.endswith(("://", ".")) and (
            after == "" or after[0] in ".:/"
        )
    return before.endswith("/") and (after == "" or after.startswith("/"))


def _parse_audit_log(value: Any, where: str, base: Path | None) -> str | None:
    if value is None:
        return None
    if value == "-":
        return "-"
    return str(_parse_path(value, where, base))


def _parse_path(value: Any, where: str, base: Path | None) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"{where}: expected a file path, found {type_name(value)}")
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return path


def _parse_routes(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of path prefixes")
    for prefix in value:
        problem = check_family_prefix(prefix) if isinstance(prefix, str) else "it is not a string"
        if problem is not None:
            raise ConfigError(f"{where}: invalid route prefix {str(prefix)!r}: {problem}")
    return tuple(value)


def _parse_workspace(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not WORKSPACE_NAME.match(value):
        raise ConfigError(
            f"{where}: invalid workspace name {str(value)!r} (expected {WORKSPACE_NAME_RULE})"
        )
    return value


def _parse_seconds(
    value: Any, where: str, *, allow_zero: bool = False, maximum: float = 86400
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number of seconds, found {type_name(value)}")
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a number of seconds, found {value!r}") from None
    in_range = 0 <= seconds <= maximum if allow_zero else 0 < seconds <= maximum
    if not in_range:
        lowest = "0" if allow_zero else "more than 0"
        raise ConfigError(f"{where}: expected a number of seconds from {lowest} to {maximum:g}")
    return seconds


def _parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected true or false, found {type_name(value)}")


def _parse_hosts(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of host names")
    hosts = list(DEFAULT_ALLOWED_HOSTS)
    for host in value:
        if not isinstance(host, str) or not re.fullmatch(
            r"(\*\.)?[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host
        ):
            raise ConfigError(
                f"{where}: invalid host name {str(host)!r} "
                "(expected a name such as gateway.example.org, *.example.org or an IP address)"
            )
        _check_wildcard(host, where)
        hosts.append(host.lower())
    return tuple(hosts)


def _check_wildcard(host: str, where: str) -> None:
    """Reject a wildcard that covers a whole top-level domain, such as `*.com`."""
    if not host.startswith("*."):
        return
    if host.lower() == "*.localhost":
        return  # One of the defaults: every name under localhost is this machine.
    labels = host[2:].split(".")
    if len(labels) < 2 or not all(labels):
        raise ConfigError(
            f"{where}: wildcard host {host!r} is too broad (expected at least two labels "
            "after '*.', such as *.example.org)"
        )


def _parse_origins(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of origins such as https://app.example.org")
    for origin in value:
        if not isinstance(origin, str) or not re.fullmatch(
            r"https?://[A-Za-z0-9.\-\[\]:]+", origin
        ):
            raise ConfigError(
                f"{where}: invalid origin {str(origin)!r} "
                "(expected scheme://host[:port] with no path, such as https://app.example.org)"
            )
    return tuple(value)
