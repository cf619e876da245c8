"""`eodh-proxy client add|list|remove`: manage the gateway clients in the vault.

`client add` generates the key, prints it once and stores only its SHA-256
digest. No command prints a key again, and `client list` shows only a prefix
of each digest.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from proxy import vaultfile
from proxy.clients import (
    ALL_WORKSPACES,
    CLIENT_NAME,
    CLIENT_NAME_RULE,
    READ_ONLY_METHODS,
    key_digest,
    new_key,
)
from proxy.errors import ConfigError
from proxy.names import WORKSPACE_NAME, WORKSPACE_NAME_RULE
from proxy.settings import load_settings
from proxy.vault import check_vault_text, parse_entries

DIGEST_PREFIX_LENGTH = 12


def add_client_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_vault_flags: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `client` and its subcommands; `add_vault_flags` adds `--vault` and `--config`."""
    client = commands.add_parser(
        "client",
        help="add, list or remove gateway clients in the vault",
        description="Manage the clients of a team gateway. When the vault lists any client, "
        "every request needs a client's name and key as HTTP Basic credentials.",
    )
    actions = client.add_subparsers(dest="client_command", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="add a client with a new key, printed once",
        description="Generate a key for a new client, print it once and store only its "
        "SHA-256 digest in the vault.",
    )
    add.add_argument("name", metavar="NAME", help="client name, used as the HTTP Basic user")
    add.add_argument(
        "--workspace",
        dest="workspaces",
        action="append",
        default=[],
        metavar="WS",
        help=f"workspace the client may use; repeat for more, or '{ALL_WORKSPACES}' for all "
        "(default: none, so only paths that name no workspace and the admin endpoints, "
        "as for a monitoring probe)",
    )
    add.add_argument(
        "--read-only",
        action="store_true",
        help=f"allow only {' and '.join(READ_ONLY_METHODS)} requests (default: every method)",
    )
    listing = actions.add_parser("list", help="list clients, their grants and digest prefixes")
    remove = actions.add_parser("remove", help="remove a client; its key stops working")
    remove.add_argument("name", metavar="NAME", help="client name")
    for action in (add, listing, remove):
        add_vault_flags(action)


def run_client_command(args: argparse.Namespace) -> int:
    path = load_settings({"config": args.config, "vault": args.vault}).vault_path
    if args.client_command == "add":
        return _add(path, args.name, args.workspaces, read_only=args.read_only)
    if args.client_command == "list":
        return _list(path)
    return _remove(path, args.name)


def _add(path: Path, name: str, workspaces: list[str], *, read_only: bool) -> int:
    _check_name(name)
    granted = _parse_workspace_flags(workspaces)
    if path.exists() and name in parse_entries(path).clients:
        raise ConfigError(
            f"{path}: client {name!r} already exists; remove it first with: "
            f"eodh-proxy client remove {name} --vault {path}"
        )

    key = new_key()
    # Values are YAML text; JSON strings keep names such as "null" or "123" strings.
    fields = {
        "key_sha256": json.dumps(key_digest(key)),
        "workspaces": json.dumps(granted),
    }
    if read_only:
        fields["methods"] = "[" + ", ".join(READ_ONLY_METHODS) + "]"
    change = vaultfile.set_entry(path, "clients", name, fields, check_vault_text)

    methods = ", ".join(READ_ONLY_METHODS) if read_only else "every method"
    granted_text = granted if isinstance(granted, str) else ", ".join(granted) or "none"
    print(
        f"Added client {name} to {path}: workspaces {granted_text}; {methods}.\n"
        "Its key, shown only this once (the vault keeps only its SHA-256 digest):\n\n"
        f"  {key}\n\n"
        f"Use it as http://{name}:{key}@HOST:PORT/... or curl -u {name}:{key} ...\n"
        "A running proxy accepts the client once it reloads the vault.",
        flush=True,
    )
    _note_layout(path, change)
    return 0


def _list(path: Path) -> int:
    clients = parse_entries(path).clients
    if not clients:
        print(f"{path}: no clients")
        return 0
    rows: list[tuple[str, ...]] = [("NAME", "WORKSPACES", "METHODS", "KEY DIGEST")]
    for name in sorted(clients):
        client = clients[name]
        digest = "sha256:" + client.key_sha256.hex()[:DIGEST_PREFIX_LENGTH]
        rows.append((name, client.describe_workspaces(), client.describe_methods(), digest))
    print(_table(rows))
    return 0


def _remove(path: Path, name: str) -> int:
    clients = parse_entries(path).clients
    if name not in clients:
        raise ConfigError(f"{path}: client {name!r} not found (see eodh-proxy client list)")
    change = vaultfile.remove_entry(path, "clients", name, check_vault_text)
    print(f"Removed client {name} from {path}.")
    if len(clients) == 1:
        print(
            "The vault lists no clients now: a proxy on loopback needs no client "
            "credentials, and one listening beyond loopback rejects every request."
        )
    _note_layout(path, change)
    return 0


def _note_layout(path: Path, change: vaultfile.Change) -> None:
    if not change.layout_kept:
        print(
            f"{path}: note: the file was written anew, without its comments, "
            "because its layout could not be edited in place"
        )


def _check_name(name: str) -> None:
    if not CLIENT_NAME.match(name):
        raise ConfigError(f"invalid client name {name!r} (expected {CLIENT_NAME_RULE})")


def _parse_workspace_flags(values: list[str]) -> list[str] | str:
    if ALL_WORKSPACES in values:
        if len(values) > 1:
            raise ConfigError(
                f"--workspace '{ALL_WORKSPACES}' grants every workspace; give it alone"
            )
        return ALL_WORKSPACES
    for value in values:
        if not WORKSPACE_NAME.match(value):
            raise ConfigError(
                f"--workspace: invalid workspace name {value!r} (expected {WORKSPACE_NAME_RULE})"
            )
    return list(dict.fromkeys(values))


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
