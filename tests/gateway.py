"""Helpers for the team gateway tests: a vault with clients, and Basic credentials."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from tests.upstream import TOKENS, UpstreamServer

# Client name -> (key, workspaces, methods). Keys are long enough to search output for.
CLIENTS = {
    "alice": ("alice-key-Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5", ["alpha-ws"], None),
    "reader": ("reader-key-cmVhZGVyLW9ubHktMTIzNDU2Nzg5", ["alpha-ws"], ["GET", "HEAD"]),
    "ops": ("ops-key-b3BzLWFsbC13b3Jrc3BhY2VzLTEyMzQ1Njc", "*", None),
    "guest": ("guest-key-Z3Vlc3Qtb25seS1nYW1tYS0xMjM0NTY3", ["gamma-ws"], None),
}


def key_of(name: str) -> str:
    return CLIENTS[name][0]


def basic(name: str, key: str | None = None) -> str:
    """Return an HTTP Basic header value for a client, with its own key unless one is given."""
    secret = key_of(name) if key is None else key
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


def write_gateway_vault(path: Path, *, with_clients: bool = True) -> Path:
    """Write a vault with the alpha-ws and beta-ws tokens and, optionally, `CLIENTS`."""
    lines = ["workspaces:"]
    for workspace in ("alpha-ws", "beta-ws"):
        lines += [f"  {workspace}:", f"    token: '{TOKENS[workspace]}'"]
    if with_clients:
        lines.append("clients:")
        for name, (key, workspaces, methods) in CLIENTS.items():
            digest = hashlib.sha256(key.encode()).hexdigest()
            granted = "'*'" if workspaces == "*" else "[" + ", ".join(workspaces) + "]"
            lines += [f"  {name}:", f"    key_sha256: '{digest}'", f"    workspaces: {granted}"]
            if methods is not None:
                lines.append(f"    methods: [{', '.join(methods)}]")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def secrets_in(text: str) -> list[str]:
    """Return every client key and workspace token that appears in `text`."""
    secrets = [key for key, _, _ in CLIENTS.values()] + list(TOKENS.values())
    return [secret for secret in secrets if secret in text]


def serve_args(upstream: UpstreamServer, vault: Path, listen: str, *extra: str) -> list[str]:
    """Return `serve` arguments that keep every upstream, files hosts included, on loopback."""
    return [
        "serve",
        "--listen",
        listen,
        "--upstream",
        upstream.origin,
        "--files-upstream",
        upstream.files_template,
        "--vault",
        str(vault),
        *extra,
    ]
