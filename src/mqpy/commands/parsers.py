"""How a command that talks to a broker is laid out on the command line, so each one
says only what is its own.

A command group (`mqpy topics`) is `command_group`; a command (`mqpy status`, or one
of a group's, `mqpy topics show`) is `command`, then its own arguments, then
`talks_to_broker`, which adds what every command that talks to a broker takes: --json
where it prints an answer, --url and --key, the epilog naming their environment
variables, and the handler. For example:

    show = command(commands, "show", help="...", description="...")
    show.add_argument("topic", type=topic_name, metavar="TOPIC", help="the topic's name")
    talks_to_broker(show, show_topic, json_help=ANSWER_AS_JSON)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mqpy.commands import DEFAULT_URL, EXIT_USAGE, KEY_ENV, URL_ENV, Handler, set_handler

EXIT_CODES = "Exit codes: 0 done, 1 the server refused, 2 usage error, 3 server unreachable."
SERVER_EPILOG = f"Environment: {URL_ENV} (the broker's URL), {KEY_ENV} (the API key)."
ANSWER_AS_JSON = "print the server's answer as JSON instead"


def needs_key(which: str, *, codes: str = EXIT_CODES) -> str:
    """The end of a group's description: the key it needs (`an admin key`), and the exit
    codes."""
    return f"Needs {which} (--key or {KEY_ENV}) unless the server has none configured. {codes}"


def command_group(
    subparsers: Any, name: str, *, help: str, description: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """`mqpy NAME COMMAND ...`: the group's parser, which run alone prints its help and
    exits 2; returns the subparsers its commands are added to."""
    group: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=description, allow_abbrev=False
    )
    group.set_defaults(run=lambda args: print_usage(group))
    return group.add_subparsers(dest=f"{name.replace('-', '_')}_command", metavar="COMMAND")


def command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str,
    **settings: Any,
) -> argparse.ArgumentParser:
    """A command of `mqpy` or of a group (`commands`, its subparsers); `settings` go to
    `add_parser` (an epilog, a formatter)."""
    return commands.add_parser(
        name, help=help, description=description, allow_abbrev=False, **settings
    )


def talks_to_broker(
    parser: argparse.ArgumentParser,
    handler: Handler,
    *,
    json_help: str | None = None,
    epilog: bool = True,
) -> None:
    """Finish a command that talks to the broker: --json (given `json_help`), --url and
    --key, an epilog naming their variables (unless `epilog` is False: the command
    writes its own) and the handler that runs it."""
    if json_help is not None:
        parser.add_argument("--json", action="store_true", help=json_help)
    add_server_options(parser)
    if epilog:
        parser.epilog = SERVER_EPILOG
    set_handler(parser, handler)


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


def print_usage(parser: argparse.ArgumentParser) -> int:
    """A command group run without its subcommand: its help, and the usage exit code."""
    parser.print_help(sys.stderr)
    return EXIT_USAGE
