"""`eodh-proxy vault add|list|remove`: manage the token vault without editing YAML.

A token is read from standard input, with a hidden prompt on a terminal, and
never from an argument, where other users could see it in the process list.
Output shows fingerprints, never tokens.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from proxy.errors import ConfigError
from proxy.names import WORKSPACE_NAME, WORKSPACE_NAME_RULE
from proxy.vault import (
    Token,
    check_token_text,
    check_vault_text,
    parse_entries,
    parse_expiry,
    read_token,
    token_file_path,
)
from proxy.vaultfile import remove_entry, set_entry

# Longer input than this is not a token; reading stops there.
_MAX_TOKEN_INPUT = 64 * 1024
EXPIRY_WARNING_DAYS = 7


def add(vault_path: Path, workspace: str, expires: str | None, stdin: TextIO) -> int:
    """Store the token read from `stdin` for `workspace`, replacing any it had."""
    check_workspace_name(workspace)
    reject_external_source(vault_path, workspace)
    fields = {"token": ""}
    if expires is not None:
        fields["expires"] = format_expiry(expires)
    token = Token(read_token_input(workspace, stdin))
    fields["token"] = json.dumps(token.reveal())

    previous = _current_fingerprint(vault_path, workspace)
    change = set_entry(vault_path, "workspaces", workspace, fields, check_vault_text)
    if change.existed:
        old = f" (was {previous})" if previous else ""
        print(f"{vault_path}: replaced the token of workspace {workspace}: "
              f"{token.fingerprint}{old}")
    else:
        print(f"{vault_path}: added workspace {workspace}: {token.fingerprint}")
    print("A running proxy that uses this vault loads the change within about a second.")
    if not change.layout_kept:
        print(f"{vault_path}: note: the file was written anew, without its comments, "
              "because its layout could not be edited in place")
    return 0


def reject_external_source(vault_path: Path, workspace: str) -> None:
    """Raise if `workspace` takes its token from a file or variable, which `add` would replace."""
    try:
        entries = parse_entries(vault_path).entries
    except ConfigError:
        return  # A missing vault is created, and `set_entry` reports an invalid one.
    for entry in entries:
        if entry.workspace != workspace or entry.source == "token":
            continue
        if entry.source == "token_file":
            where = f"write the new token to {token_file_path(vault_path, entry.reference)}"
        else:
            where = f"set the environment variable {entry.reference} to the new token"
        raise ConfigError(
            f"{vault_path}, line {entry.source_line}: workspace {workspace!r} takes its token "
            f"from {entry.describe_source()} (vault not changed); to rotate it, {where}, "
            f"or run 'eodh-proxy vault remove {workspace}' first to store it in the vault"
        )


def remove(vault_path: Path, workspace: str) -> int:
    check_workspace_name(workspace)
    names = [entry.workspace for entry in parse_entries(vault_path).entries]
    if workspace not in names:
        raise ConfigError(
            f"{vault_path}: no workspace {workspace!r} in the vault "
            f"(workspaces: {', '.join(names) or 'none'})"
        )
    change = remove_entry(vault_path, "workspaces", workspace, check_vault_text)
    print(f"{vault_path}: removed workspace {workspace}")
    if not change.layout_kept:
        print(f"{vault_path}: note: the file was written anew, without its comments, "
              "because its layout could not be edited in place")
    return 0


def list_entries(vault_path: Path, out: TextIO = sys.stdout) -> int:
    """Print a table of workspaces, fingerprints, expiry and token sources."""
    parsed = parse_entries(vault_path)
    for warning in parsed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not parsed.entries:
        print(f"{vault_path}: no workspaces; add one with: eodh-proxy vault add WORKSPACE", file=out)
        return 0

    now = dt.datetime.now(dt.UTC)
    rows = [("WORKSPACE", "FINGERPRINT", "EXPIRES", "SOURCE", "NOTE")]
    for entry in sorted(parsed.entries, key=lambda entry: entry.workspace):
        notes: list[str] = []
        shown: str
        try:
            token, mode_warning = read_token(vault_path, entry, os.environ)
            shown = token.fingerprint
            if mode_warning is not None:
                notes.append("token file readable by others")
        except ConfigError as error:
            shown = "-"
            notes.append(str(error).split(": ", 1)[-1])
        notes += expiry_notes(entry.expires, now)
        rows.append(
            (entry.workspace, shown, format_when(entry.expires), entry.describe_source(),
             "; ".join(notes))
        )
    print_table(rows, out)
    return 0


def read_token_input(workspace: str, stdin: TextIO) -> str:
    """Read one token line from `stdin`, with a hidden prompt when it is a terminal."""
    where = "standard input"
    if stdin.isatty():
        text = getpass.getpass(f"Token for workspace {workspace} (input hidden): ")
    else:
        text = stdin.read(_MAX_TOKEN_INPUT + 3)
        if len(text) > _MAX_TOKEN_INPUT + 2:
            raise ConfigError(f"{where}: input is longer than {_MAX_TOKEN_INPUT} characters "
                              "(expected one token)")
    text = text.removesuffix("\n").removesuffix("\r")
    if "\n" in text or "\r" in text:
        raise ConfigError(f"{where}: expected one line holding the token, found several lines")
    return check_token_text(text, where, "the token")


def check_workspace_name(workspace: str) -> None:
    if not WORKSPACE_NAME.match(workspace):
        raise ConfigError(
            f"invalid workspace name {workspace!r} (expected {WORKSPACE_NAME_RULE})"
        )


def format_expiry(text: str) -> str:
    """Validate an --expires value and return it as the vault stores it (a YAML date or timestamp)."""
    when = parse_expiry(text, "--expires")
    assert when is not None
    try:
        return dt.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_when(when: dt.datetime | None) -> str:
    """Show an expiry as the date alone when it is the end of a day, else as a UTC timestamp."""
    if when is None:
        return "-"
    if when.time() == dt.time.max:
        return when.date().isoformat()
    return when.strftime("%Y-%m-%d %H:%M UTC")


def expiry_notes(expires: dt.datetime | None, now: dt.datetime) -> list[str]:
    if expires is None:
        return []
    if expires <= now:
        return ["expired"]
    left = expires - now
    if left <= dt.timedelta(days=EXPIRY_WARNING_DAYS):
        return [f"expires in {_describe(left)}"]
    return []


def _describe(left: dt.timedelta) -> str:
    if left >= dt.timedelta(days=2):
        return f"{left.days} days"
    hours = int(left.total_seconds() // 3600)
    return f"{hours} hours" if hours != 1 else "1 hour"


def print_table(rows: Sequence[Sequence[str]], out: TextIO = sys.stdout) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip(), file=out)


def _current_fingerprint(vault_path: Path, workspace: str) -> str | None:
    """Return the fingerprint of the token the vault now holds for `workspace`, if readable."""
    try:
        for entry in parse_entries(vault_path).entries:
            if entry.workspace == workspace:
                return read_token(vault_path, entry, os.environ)[0].fingerprint
    except ConfigError:
        return None
    return None

