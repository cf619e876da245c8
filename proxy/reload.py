"""Live reload of the vault and the config file, without a restart.

Rules this module keeps:

1. A request sees one vault and one set of settings throughout. A reload
   builds new immutable values and swaps each in with one assignment, so
   requests in flight finish with what they started with.
2. The last good vault and config stay in use. A file that no longer parses
   or validates is reported in one log line naming file and line, and is not
   read again until it changes again.
3. A change is noticed by polling, with no dependency on inotify: each poll
   compares the `lstat` of every watched path and the `stat` of the file it
   resolves to (mtime_ns, size, inode, device, and the resolved path). That
   sees edits in place, a rename over the file, and the Kubernetes secret
   update, where `..data` is a link swapped to a new timestamped folder and
   the watched name, a link into `..data`, never changes itself.
4. A file is read only once its stamps have stayed the same for one poll, so
   a slow writer is not caught half-way. A change is therefore loaded one to
   two poll intervals after it is made. SIGHUP reloads at once.
   NOTE: the first stamps are taken just after the files are read at start,
   so an edit in those few milliseconds goes unseen until the next change or
   SIGHUP. Two in-place writes of the same size within one tick of the kernel's
   file clock (a few milliseconds) also look the same.
5. Config keys that the running listener or upstream connection pool depend
   on need a restart. A reload that changes one logs that it was not applied
   and keeps the old value; every other key takes effect for new requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError
from proxy.log import log
from proxy.metrics import ReloadCounts
from proxy.settings import Settings, load_settings
from proxy.vault import Vault, VaultHolder, load_vault

# Settings fields that only take effect at start: the listening socket, the
# upstream origin and its TLS context, and the vault path (the watcher's own
# subject). `Settings` fields not named in LIVE_FIELDS also count as needing a
# restart, so a new key is safe until someone decides it can change live.
LIVE_FIELDS = frozenset(
    {
        "routes",
        "default_workspace",
        "connect_timeout",
        "read_timeout",
        "allowed_hosts",
        "allowed_origins",
        "access_log",
        "rewrite_links",
        "reload_interval",
        "shutdown_grace_period",
    }
)
# Config keys that set more than one field, or a field under another name.
_KEY_OF_FIELD = {"listen_host": "listen", "listen_port": "listen", "vault_path": "vault"}
_IGNORED_FIELDS = frozenset({"config_path"})

Stat = tuple[int, int, int, int]
"""mtime_ns, size, inode and device of a file."""


@dataclass(frozen=True, slots=True)
class FileStamp:
    """The state of one watched path that polling compares; None where a file is missing."""

    link: Stat | None
    """The `lstat` of the path itself (the link, when it is one)."""
    resolved: str
    target: Stat | None
    """The `stat` of the file the path resolves to."""


def stamp(path: Path) -> FileStamp:
    return FileStamp(_stat(path, follow=False), os.path.realpath(path), _stat(path, follow=True))


def _stat(path: Path, *, follow: bool) -> Stat | None:
    try:
        result = os.stat(path, follow_symlinks=follow)
    except OSError:
        return None
    return (result.st_mtime_ns, result.st_size, result.st_ino, result.st_dev)


class Watch:
    """Detect a settled change in a set of files between polls."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        self._loaded = self.stamps()
        self._pending: tuple[FileStamp, ...] | None = None

    def stamps(self) -> tuple[FileStamp, ...]:
        return tuple(stamp(path) for path in self.paths)

    def settled_change(self) -> tuple[FileStamp, ...] | None:
        """Return the new stamps if the files changed and then stayed the same for one poll."""
        current = self.stamps()
        if current == self._loaded:
            self._pending = None
            return None
        if current != self._pending:
            self._pending = current
            return None
        return current

    def loaded(self, stamps: tuple[FileStamp, ...]) -> None:
        """Record the stamps taken just before a load, so only a later change triggers another."""
        self._loaded = stamps
        self._pending = None

    def set_paths(self, paths: Sequence[Path]) -> None:
        """Watch `paths` from now on, as they are now; the vault's token files can change."""
        if tuple(paths) != self.paths:
            self.paths = tuple(paths)
            self.loaded(self.stamps())


@dataclass(frozen=True, slots=True)
class VaultDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    """Workspaces whose token (by fingerprint) or expiry changed."""

    def describe(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if names
        ]
        return "; ".join(parts) or "no workspace changed"


def diff_vaults(old: Vault, new: Vault) -> VaultDiff:
    before, after = old.credentials, new.credentials
    changed = [
        name
        for name in sorted(set(before) & set(after))
        if before[name].token.fingerprint != after[name].token.fingerprint
        or before[name].expires != after[name].expires
    ]
    return VaultDiff(
        added=tuple(sorted(set(after) - set(before))),
        removed=tuple(sorted(set(before) - set(after))),
        changed=tuple(changed),
    )


def settings_changes(old: Settings, new: Settings) -> tuple[list[str], list[str]]:
    """Return the config keys that differ between `old` and `new`: (live, needing a restart)."""
    live: list[str] = []
    restart: list[str] = []
    for field in dataclasses.fields(Settings):
        if field.name in _IGNORED_FIELDS:
            continue
        if getattr(old, field.name) == getattr(new, field.name):
            continue
        key = _KEY_OF_FIELD.get(field.name, field.name)
        bucket = live if field.name in LIVE_FIELDS else restart
        if key not in bucket:
            bucket.append(key)
    return live, restart


def keep_restart_fields(old: Settings, new: Settings) -> Settings:
    """Return `new` with every field that needs a restart set back to its value in `old`."""
    kept = {
        field.name: getattr(old, field.name)
        for field in dataclasses.fields(Settings)
        if field.name not in LIVE_FIELDS
    }
    return dataclasses.replace(new, **kept)


class Reloader:
    """Reload the vault and config on change or on request, keeping the last good ones.

    `apply_settings` is called with new settings after a config reload.
    `on_vault` is called with the old and new vault after a vault reload, for
    follow-up work such as expiry warnings.
    """

    def __init__(
        self,
        vaults: VaultHolder,
        settings: Settings,
        flags: Mapping[str, Any] | None,
        apply_settings: Callable[[Settings], None],
        on_vault: Callable[[Vault, Vault], None] | None = None,
        counts: ReloadCounts | None = None,
    ) -> None:
        self._vaults = vaults
        self._settings = settings
        self._flags = dict(flags) if flags is not None else None
        self._apply_settings = apply_settings
        self._on_vault = on_vault
        self.counts = counts if counts is not None else ReloadCounts()
        self.config_error: str | None = None
        self._vault_watch = Watch(self._vault_paths(vaults.vault))
        self._config_watch = (
            Watch([settings.config_path])
            if settings.config_path is not None and self._flags is not None
            else None
        )

    @property
    def settings(self) -> Settings:
        return self._settings

    async def watch(self) -> None:
        """Poll the watched files every `reload_interval` seconds until cancelled."""
        if self._settings.reload_interval == 0:
            log.info("reload_interval is 0: files are not watched; send SIGHUP to reload")
        while True:
            # With polling off, wake once a second only to see whether a reload turned it on.
            await asyncio.sleep(self._settings.reload_interval or 1.0)
            if self._settings.reload_interval > 0:
                try:
                    self.poll()
                except Exception:  # noqa: BLE001 - logged with its traceback
                    # A fault here must not end reloading for the life of the process.
                    log.exception("checking the vault and config for changes failed")

    def poll(self) -> None:
        """Reload the config, then the vault, if its files changed and have settled."""
        if self._config_watch is not None:
            stamps = self._config_watch.settled_change()
            if stamps is not None:
                self.reload_config("file changed", stamps)
        stamps = self._vault_watch.settled_change()
        if stamps is not None:
            self.reload_vault("file changed", stamps)

    def reload_all(self, reason: str) -> None:
        """Reload the config (if any) and then the vault, whether or not they changed."""
        if self._config_watch is not None:
            self.reload_config(reason, self._config_watch.stamps())
        self.reload_vault(reason, self._vault_watch.stamps())

    def reload_vault(self, reason: str, stamps: tuple[FileStamp, ...]) -> bool:
        """Load the vault again; `stamps` are its files' stamps taken before reading them."""
        self._vault_watch.loaded(stamps)
        old = self._vaults.vault
        try:
            new = load_vault(old.path)
        except ConfigError as error:
            self.counts.failed["vault"] += 1
            self._vaults.last_error = str(error)
            log.warning(
                "vault not reloaded (%s); still using the one loaded at %s: %s",
                reason,
                f"{self._vaults.loaded_at:%Y-%m-%d %H:%M:%S} UTC",
                error,
            )
            return False

        self._vaults.replace(new)
        self.counts.succeeded["vault"] += 1
        self._vault_watch.set_paths(self._vault_paths(new))
        log.info("vault %s reloaded (%s): %s", new.path, reason, diff_vaults(old, new).describe())
        for warning in new.warnings:
            log.warning("%s", warning)
        if self._on_vault is not None:
            self._on_vault(old, new)
        return True

    def reload_config(self, reason: str, stamps: tuple[FileStamp, ...]) -> bool:
        """Load the config again; `stamps` are its file's stamps taken before reading it."""
        assert self._config_watch is not None and self._flags is not None
        self._config_watch.loaded(stamps)
        old = self._settings
        assert old.config_path is not None
        flags = {**self._flags, "config": str(old.config_path)}
        try:
            loaded = load_settings(flags)
        except ConfigError as error:
            self.counts.failed["config"] += 1
            self.config_error = str(error)
            log.warning("config not reloaded (%s); still using the last good one: %s",
                        reason, error)
            return False

        live, restart = settings_changes(old, loaded)
        for key in restart:
            log.warning(
                "config %s: '%s' changed, but takes effect only after a restart; "
                "still using the old value",
                old.config_path,
                key,
            )
        new = keep_restart_fields(old, loaded)
        self._settings = new
        self.config_error = None
        self.counts.succeeded["config"] += 1
        self._apply_settings(new)
        changed = f"changed {', '.join(live)}" if live else "no live setting changed"
        log.info("config %s reloaded (%s): %s", old.config_path, reason, changed)
        return True

    @staticmethod
    def _vault_paths(vault: Vault) -> list[Path]:
        return [vault.path, *vault.token_files]
