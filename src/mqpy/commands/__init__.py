"""Commands that talk to a running broker over its HTTP API (`mqpy keys ...`).

They reach it through `mqpy.Client` (see `broker_client`); their parsers are laid out
by `parsers`, their arguments' types are in `options`, and what they print goes through
`terminal`. Here: the environment's names, how a handler is run, and exit codes that mean
the same in every command:

- 0: done;
- 1: the server refused (its problem+json detail is printed to stderr);
- 2: the command line is wrong (argparse's own code for usage errors);
- 3: the server could not be reached;
- 130: interrupted (Ctrl-C), the shell's own code for it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "MQPY_URL"
KEY_ENV = "MQPY_KEY"

Handler = Callable[[argparse.Namespace], int]


class CommandFailed(Exception):
    """Ends a command with `exit_code`; the message is printed to stderr."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
