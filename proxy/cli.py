"""The command line: `eodh-proxy serve`, `eodh-proxy demo`.

This module parses arguments, builds settings and hands over; a `ConfigError`
from anywhere below becomes one line on standard error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.errors import ConfigError
from proxy.log import configure
from proxy.settings import (
    DEFAULT_LISTEN,
    DEFAULT_UPSTREAM,
    default_config_path,
    default_vault_path,
    load_settings,
)

EXIT_USAGE = 2


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
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure()
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            from proxy.demo import run_demo

            return run_demo(args.listen)
    except ConfigError as error:
        print(f"eodh-proxy: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0


def _serve(args: argparse.Namespace) -> int:
    from proxy.server import serve

    flags = {
        "config": args.config,
        "listen": args.listen,
        "upstream": args.upstream,
        "vault": args.vault,
        "ca_bundle": args.ca_bundle,
    }
    settings = load_settings(flags)
    serve(settings)
    return 0
