"""The command line: `eodh-proxy serve`, `explain`, `demo`, `check`, `vault` and `client`.

This module parses arguments, builds settings and hands over; a `ConfigError`
from anywhere below becomes one line on standard error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.client_cli import add_client_commands, run_client_command
from proxy.errors import ConfigError
from proxy.log import configure
from proxy.settings import (
    DEFAULT_FILES_UPSTREAM,
    DEFAULT_LISTEN,
    DEFAULT_UPSTREAM,
    default_config_path,
    default_vault_path,
    load_settings,
)

EXIT_USAGE = 2
EXIT_REJECTED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eodh-proxy",
        description="Local authenticating reverse proxy for the EODH API: adds each "
        "workspace's token to requests sent to http://localhost:8080.",
    )
    parser.add_argument("--version", action="version", version=f"eodh-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the proxy",
        description="Run the proxy. Flags override the config file, which overrides defaults.",
    )
    add_settings_flags(serve)
    serve.add_argument(
        "--workers",
        metavar="N",
        help="number of worker processes sharing the listening port, or 'auto' for one per "
        "CPU (default: 1)",
    )

    explain = commands.add_parser(
        "explain",
        help="show what the proxy would do with a URL, sending nothing",
        description="Print the route, workspace, token fingerprint and upstream URL the proxy "
        "would use for URL, without sending anything. Exit status 1 when the proxy would "
        "reject the request, with the reason on standard error.",
    )
    explain.add_argument(
        "url",
        metavar="URL",
        help="a proxy URL such as http://localhost:8080/api/..., or just its path and query; "
        "on a team gateway, http://NAME:KEY@HOST:PORT/... checks that client's key and grants",
    )
    explain.add_argument(
        "-X",
        "--method",
        default="GET",
        metavar="METHOD",
        help="HTTP method of the request, for clients limited to some methods "
        "(default: %(default)s)",
    )
    add_settings_flags(explain)

    demo = commands.add_parser(
        "demo",
        help="run the proxy in front of a built-in stand-in EODH API, offline",
        description="Start a stand-in EODH API on loopback with a generated demo vault, "
        "put the proxy in front of it, and print curl commands to try.",
    )
    demo.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="address the demo proxy listens on (default: %(default)s)",
    )
    add_vault_commands(commands)
    add_client_commands(commands, add_vault_flags)
    add_check_command(commands)
    return parser


def add_check_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check",
        help="ask the upstream whether it accepts each token in the vault",
        description="Validate the config and vault, then send one request with each token "
        "to the upstream (GET of the workspace's process list) and print a table of "
        "workspace, HTTP status and verdict. Exit status 0 when every token is accepted, "
        "1 when any is not, 2 for a mistake in the config or vault.",
    )
    check.add_argument(
        "--config",
        metavar="FILE",
        help=f"config file (default: {default_config_path()} when it exists)",
    )
    check.add_argument(
        "--vault", metavar="FILE", help=f"vault file of tokens (default: {default_vault_path()})"
    )
    check.add_argument(
        "--upstream", metavar="URL", help=f"EODH API origin (default: {DEFAULT_UPSTREAM})"
    )
    check.add_argument(
        "--ca-bundle",
        metavar="FILE",
        help="PEM file of extra CA certificates to trust for the upstream (default: none)",
    )


def add_vault_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vault = commands.add_parser(
        "vault",
        help="add, list or remove workspace tokens in the vault",
        description="Manage the token vault. Changes are written atomically with mode 0600; "
        "a running proxy loads them without a restart.",
    )
    actions = vault.add_subparsers(dest="vault_command", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="add or replace a workspace's token, read from standard input",
        description="Add WORKSPACE's token to the vault, or replace it. The token is read "
        "from standard input (a hidden prompt on a terminal), never from an argument.",
    )
    add.add_argument("workspace", metavar="WORKSPACE", help="workspace name, as in EODH URLs")
    add.add_argument(
        "--expires",
        metavar="DATE",
        help="when the token expires: a date (2027-01-31) or an ISO 8601 timestamp "
        "(default: not recorded)",
    )
    list_ = actions.add_parser(
        "list", help="show workspaces, token fingerprints and expiry; never tokens"
    )
    remove = actions.add_parser("remove", help="remove a workspace's token from the vault")
    remove.add_argument("workspace", metavar="WORKSPACE", help="workspace name")
    for action in (add, list_, remove):
        add_vault_flags(action)


def add_vault_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vault",
        metavar="FILE",
        help=f"vault file (default: the config file's 'vault', else {default_vault_path()})",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"config file naming the vault (default: {default_config_path()} when it exists)",
    )


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags shared by every command that builds `Settings`."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"config file (default: {default_config_path()} when it exists)",
    )
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help=f"address to listen on (default: {DEFAULT_LISTEN})"
    )
    parser.add_argument(
        "--upstream", metavar="URL", help=f"EODH API origin (default: {DEFAULT_UPSTREAM})"
    )
    parser.add_argument(
        "--vault", metavar="FILE", help=f"vault file of tokens (default: {default_vault_path()})"
    )
    parser.add_argument(
        "--ca-bundle",
        metavar="FILE",
        help="PEM file of extra CA certificates to trust for the upstream (default: none)",
    )
    parser.add_argument(
        "--files-upstream",
        metavar="URL",
        help="URL template of a workspace's files host, with {workspace} as a host label or "
        f"path segment (default: {DEFAULT_FILES_UPSTREAM})",
    )
    parser.add_argument(
        "--insecure-no-client-auth",
        action="store_true",
        default=None,
        help="allow listening beyond loopback with no clients in the vault, so that anyone "
        "who can reach the port can use every token (default: off)",
    )
    parser.add_argument(
        "--audit-log",
        metavar="FILE",
        help="append one JSON line per request to FILE, or to standard output for '-' "
        "(default: no audit log)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure()
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            from proxy.demo import run_demo

            return run_demo(args.listen)
        if args.command == "vault":
            return _vault(args)
        if args.command == "explain":
            return _explain(args)
        if args.command == "client":
            return run_client_command(args)
        if args.command == "check":
            return _check(args)
    except ConfigError as error:
        print(f"eodh-proxy: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0


def _serve(args: argparse.Namespace) -> int:
    from proxy.server import serve

    flags = {**_settings_flags(args), "workers": args.workers}
    settings = load_settings(flags)
    return serve(settings, flags=flags)


def _explain(args: argparse.Namespace) -> int:
    import datetime as dt

    from proxy.errors import ProxyError
    from proxy.explain import explain, render
    from proxy.vault import load_vault

    settings = load_settings(_settings_flags(args))
    vault = load_vault(settings.vault_path)
    try:
        explanation = explain(args.url, settings, vault, args.method)
    except ProxyError as error:
        print(
            f"eodh-proxy: the proxy would reject this request with HTTP {error.status}: "
            f"{error.detail}",
            file=sys.stderr,
        )
        return EXIT_REJECTED
    for line in render(explanation, dt.datetime.now(dt.timezone.utc)):
        print(line)
    return 0


def _settings_flags(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        "config": args.config,
        "listen": args.listen,
        "upstream": args.upstream,
        "vault": args.vault,
        "ca_bundle": args.ca_bundle,
        "files_upstream": args.files_upstream,
        "insecure_no_client_auth": args.insecure_no_client_auth,
        "audit_log": args.audit_log,
    }


def _vault(args: argparse.Namespace) -> int:
    from proxy import vaultcmd

    vault_path = load_settings({"config": args.config, "vault": args.vault}).vault_path
    if args.vault_command == "add":
        return vaultcmd.add(vault_path, args.workspace, args.expires, sys.stdin)
    if args.vault_command == "remove":
        return vaultcmd.remove(vault_path, args.workspace)
    return vaultcmd.list_entries(vault_path)


def _check(args: argparse.Namespace) -> int:
    from proxy.check import run_check

    settings = load_settings(
        {
            "config": args.config,
            "vault": args.vault,
            "upstream": args.upstream,
            "ca_bundle": args.ca_bundle,
        }
    )
    return run_check(settings)
