"""Commands that talk to a running broker over its HTTP API (`mqpy keys ...`).

They reach it through `mqpy.Client` (see `broker_client`). What they share lives here:
the `--url` and `--key` options, and exit codes that mean the same in every command:

- 0: done;
- 1: the server refused (its problem+json detail is printed to stderr);
- 2: the command line is wrong (argparse's own code for usage errors);
- 3: the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import IO, Any

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "MQPY_URL"
KEY_ENV = "MQPY_KEY"

Handler = Callable[[argparse.Namespace], int]


class CommandFailed(Exception):
    """Ends a command with `exit_code`; the message is printed to stderr."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--url and --key, which every command that talks to the server takes."""
    parser.add_argument(
        "--url",
        default=None,
        help=f"the broker's base URL (default: {DEFAULT_URL}; env {URL_ENV})",
    )
    parser.add_argument(
        "--key",
        default=None,
        help=f"API key sent as 'Authorization: Bearer' (env {KEY_ENV}; prefer the "
        "environment: a flag shows in `ps`)",
    )


def add_server_options_with_epilog(parser: argparse.ArgumentParser) -> None:
    """--url and --key, and an epilog naming their environment variables: for the
    subcommands of `keys`, `dead-letters`, `topics` and `subscriptions`."""
    add_server_options(parser)
    parser.epilog = f"Environment: {URL_ENV} (the broker's URL), {KEY_ENV} (the API key)."


def print_usage(parser: argparse.ArgumentParser) -> int:
    """A command group run without its subcommand: its help, and the usage exit code."""
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def set_handler(parser: argparse.ArgumentParser, handler: Handler) -> None:
    """`handler` runs when this (sub)command is chosen; see `run`."""
    parser.set_defaults(run=run, handler=handler, command_name=parser.prog)


def run(args: argparse.Namespace) -> int:
    """Run the chosen command's handler; a CommandFailed becomes its exit code."""
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandFailed as failure:
        print(f"{args.command_name}: {failure}", file=sys.stderr)
        return failure.exit_code


def print_json(value: Any, out: IO[str] | None = None) -> None:
    print(json.dumps(value, indent=2), file=out or sys.stdout)
