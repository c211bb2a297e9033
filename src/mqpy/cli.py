"""The `mqpy` command. `mqpy serve` runs the broker and `mqpy backup` copies its store;
`keys`, `publish`, `listen`, `status`, `dead-letters`, `topics` and `subscriptions`
talk to a running broker over HTTP (mqpy/commands/).

Flags are accepted Go-style (`-port 8080`, as MQ Go took them) and GNU-style
(`--port 8080`, `--port=8080`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from mqpy import __version__
from mqpy.commands import (
    backup,
    dead_letters,
    keys,
    listen,
    messages,
    publish,
    status,
    subscriptions,
    topics,
)
from mqpy.config import (
    AUTO_PROCESSES,
    Option,
    SettingError,
    format_duration,
    options,
    parse_duration,
    parse_processes,
    resolve,
)
from mqpy.runtime.logging_setup import configure_logging
from mqpy.runtime.supervisor import process_slot, supervise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqpy",
        description="mq-py: a durable HTTP message broker that speaks the MQ Go protocol.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"mq-py {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker. Every option can also be set as MQPY_<NAME> in the "
        "environment; flags win over the environment.",
        allow_abbrev=False,
    )
    for option in options():
        if option.secret:
            continue
        go_style = "-" + option.flag[2:]
        help_text = f"{option.help} (default: {_show(option)}; env {option.env})"
        if option.is_switch:
            serve.add_argument(
                go_style,
                option.flag,
                dest=option.name,
                action="store_const",
                const="true",
                default=None,
                help=help_text,
            )
            continue
        serve.add_argument(
            go_style,
            option.flag,
            dest=option.name,
            default=None,
            metavar=_metavar(option),
            help=help_text,
        )
    serve.epilog = "Environment only: " + ", ".join(
        f"{o.env} ({o.help})" for o in options() if o.secret
    )
    keys.register(commands)
    backup.register(commands)
    publish.register(commands)
    listen.register(commands)
    dead_letters.register(commands)
    messages.register(commands)
    status.register(commands)
    topics.register(commands)
    subscriptions.register(commands)
    return parser


def _metavar(option: Option) -> str:
    if option.parse is parse_duration:
        return "DURATION"
    if option.name in ("port",):
        return "PORT"
    if isinstance(option.default, int):
        return "N" if "bytes" not in option.name else "BYTES"
    if isinstance(option.default, float):
        return "N"
    return option.name.split("_")[-1].upper()


def _show(option: Option) -> str:
    if option.parse is parse_duration:
        return format_duration(option.default)
    if option.parse is parse_processes and option.default == AUTO_PROCESSES:
        return "auto"
    return str(option.default)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    code: int | None = None
    try:
        try:
            args = parser.parse_args(argv)
            if args.command != "serve":
                code = _run_command(parser, args)
                return code
        finally:
            # Flushed here, not at exit, so a reader that is gone surfaces below.
            sys.stdout.flush()
    except BrokenPipeError:
        _reader_gone()
        # A command that failed still says so (a refused line), reader or not.
        return 0 if code is None else code
    return _serve(parser, args, argv)


def _run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if hasattr(args, "run"):  # a command that talks to a running server
        return int(args.run(args))
    parser.print_help()
    return 2


def _reader_gone() -> None:
    """Whoever read our output stopped reading (`mqpy status | head -8`): that is the
    reader's choice, not our failure, so a command that did its work exits 0 as
    `mqpy listen | head -1` does, and under `set -o pipefail` the pipeline still
    succeeds. What is still buffered goes to devnull, else the interpreter's own flush
    at exit would raise again (the Python docs' recipe for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    try:
        settings = resolve({o.name: getattr(args, o.name, None) for o in options()})
    except SettingError as exc:
        parser.exit(2, f"mqpy serve: {exc}\n")
    slot = process_slot()
    configure_logging(
        settings.log_level,
        settings.log_format,
        process_slot=f"{slot}/{settings.process_count}" if slot else "",
    )
    if settings.process_count > 1 and slot is None:
        from mqpy.runtime.server import StartupRefused, check_lease

        try:  # refused before the supervisor takes the store, as one process would be
            check_lease(settings)
        except StartupRefused as exc:
            logging.getLogger("mqpy.server").error("%s", exc)
            return 2
        # The supervisor starts the processes with this same command line.
        return supervise(settings, argv)
    from mqpy.runtime.gc_tuning import tune_for_serving
    from mqpy.runtime.server import run

    tune_for_serving()
    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())
