"""`mqpy listen`: a receiver on this machine that prints every message it gets."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from mqpy.client import ConnectionFailed, MQError, NotFound
from mqpy.commands import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    KEY_ENV,
    URL_ENV,
    CommandFailed,
    add_server_options,
    set_handler,
)
from mqpy.commands.broker_client import ClientSettings, client_settings, failure
from mqpy.commands.options import filter_of, group_name, topic_pattern
from mqpy.commands.terminal import visible

if TYPE_CHECKING:  # imported when run: they load aiohttp, which `mqpy --help` need not
    from mqpy.client.aio import AsyncClient
    from mqpy.receiver import Delivery, ReceiverServer

EXIT_INTERRUPTED = 130
SECRET_ENV = "MQPY_SECRET"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def register(subparsers: Any) -> None:
    """Add `listen` to the `mqpy` parser's subparsers."""
    parser = subparsers.add_parser(
        "listen",
        help="receive messages here and print them as they arrive",
        description="Start a receiver on this machine, connect it to the broker (its "
        "ClientURL pointing at itself), and print each message on stdout as it arrives, "
        "one line each (line breaks and control characters escaped). Deliveries are "
        "checked against the signing secret the broker returns; a forged or altered one "
        "is refused. Ctrl-C or SIGTERM disconnects the receiver and exits 0. Delivery is "
        "at least once: after a lost answer a message can be printed twice (--json shows "
        "the message id and attempt). --topic chooses what it receives (a topic, or a "
        "pattern of them), --group shares the messages with the group's other members "
        "(each message goes to one of them), --filter keeps only messages whose "
        "attributes match. Exit codes: 0 stopped, 1 the server refused, 2 usage error, 3 "
        "server unreachable.",
        epilog=f"""\
examples:
  mqpy listen
  mqpy listen --topic 'orders.>' --json
  mqpy listen --topic orders.eu --group billing        # run it twice: they share the work
  mqpy listen --topic orders.eu --filter kind=created --filter kind=paid
  mqpy listen --filter region^=eu- --filter '!test'
  mqpy listen --no-connect --port 9000 --path /hook --secret whsec_...   # you connect it

--filter NAME=VALUE: the attribute equals VALUE (repeat for any of several values);
NAME^=PREFIX: it starts with PREFIX; NAME: the message has it; !NAME: it has not.
Nothing else parses: kind==x, kind!=x or n>3 is refused.
Members of one group must give the same filter.

environment: {URL_ENV} (the broker's URL), {KEY_ENV} (the API key; a subscriber or admin key)""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--topic",
        type=topic_pattern,
        default=None,
        help="the topic to receive, or a pattern: orders.* (one more segment), orders.> "
        "(any number) (default: the broker's, 'default')",
    )
    parser.add_argument(
        "--group",
        type=group_name,
        default=None,
        help="join this consumer group: each message goes to one of its members",
    )
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="CONDITION",
        help="receive only messages whose attributes match (all conditions must hold); see below",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface the receiver listens on (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port the receiver listens on (default: 0, any free)"
    )
    parser.add_argument("--path", default="/", help="path deliveries are POSTed to (default: /)")
    parser.add_argument(
        "--client-url",
        metavar="URL",
        help="the URL the broker should POST to, when it reaches this machine by another "
        "address than --host (default: http://HOST:PORT/PATH)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object per message: {"message_id", "attempt", "body"}',
    )
    parser.add_argument(
        "--no-connect",
        action="store_true",
        help="only listen: do not connect to the broker (connect the receiver yourself, "
        "with POST /connect, and give --secret from its answer); Ctrl-C just stops",
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get(SECRET_ENV),
        metavar="SECRET",
        help=f"with --no-connect, the signing secret deliveries are checked with: the "
        f"whsec_... that /connect answered (or {SECRET_ENV})",
    )
    add_server_options(parser)
    set_handler(parser, listen)


def listen(args: argparse.Namespace) -> int:
    if not args.path.startswith("/"):
        raise CommandFailed(EXIT_USAGE, f"--path must start with '/', not {args.path!r}")
    if args.client_url is None and _is_unspecified(args.host):
        raise CommandFailed(
            EXIT_USAGE,
            f"--host {args.host} is not an address the broker can POST to; "
            "give the receiver's reachable address with --client-url",
        )
    logging.basicConfig(level=logging.WARNING, format="mqpy listen: %(message)s")
    if args.no_connect:
        return _listen_only(args)
    settings = client_settings(args)
    args.filter_object = filter_of(args.filter)
    try:
        return asyncio.run(_listen(args, settings))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were set, or a second one
        return EXIT_INTERRUPTED


async def _listen(args: argparse.Namespace, settings: ClientSettings) -> int:
    from mqpy.client.aio import AsyncClient
    from mqpy.receiver import ReceiverServer

    stop = asyncio.Event()
    _stop_on_signals(stop)
    printer = _Printer(args.json, stop)
    server = ReceiverServer(printer.show, host=args.host, port=args.port, path=args.path)
    await _start(server, args)
    try:
        async with AsyncClient(settings.url, key=settings.key) as client:
            receiver_id = await _connect(client, server, args)
            print(
                f"listening on {server.url} as receiver {receiver_id}{_what(args)}; Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            await stop.wait()
            await _disconnect(client, receiver_id)
    except MQError as error:
        raise failure(error) from None
    finally:
        await server.close()
    return EXIT_OK


def _listen_only(args: argparse.Namespace) -> int:
    """--no-connect: a receiver someone else connected, checking deliveries with the
    secret its /connect answered."""
    if not args.secret:
        raise CommandFailed(
            EXIT_USAGE,
            f"--no-connect needs the receiver's signing secret, to check deliveries: give "
            f"--secret with the whsec_... that /connect answered (or set {SECRET_ENV})",
        )
    if args.topic or args.group or args.filter:
        raise CommandFailed(
            EXIT_USAGE,
            "--topic, --group and --filter are sent when listen connects; with "
            "--no-connect, give them in your own POST /connect",
        )
    try:
        return asyncio.run(_serve_only(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _serve_only(args: argparse.Namespace) -> int:
    from mqpy.receiver import ReceiverServer

    stop = asyncio.Event()
    _stop_on_signals(stop)
    printer = _Printer(args.json, stop)
    server = ReceiverServer(
        printer.show, host=args.host, port=args.port, path=args.path, secret=args.secret
    )
    await _start(server, args)
    try:
        print(
            f"listening on {server.url}, not connected (connect it with POST /connect); "
            "Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await server.close()
    return EXIT_OK


async def _start(server: ReceiverServer, args: argparse.Namespace) -> None:
    try:
        await server.start()
    except OSError as error:
        raise CommandFailed(
            EXIT_USAGE, f"cannot listen on {args.host}:{args.port}: {error.strerror or error}"
        ) from None


async def _connect(client: AsyncClient, server: ReceiverServer, args: argparse.Namespace) -> int:
    connection = await client.connect(
        "receive",
        args.client_url or server.url,
        topic=args.topic,
        group=args.group,
        filter=args.filter_object,
    )
    if connection.secret is None:
        await client.disconnect(connection.id)
        raise CommandFailed(
            EXIT_REFUSED,
            "the broker returned no signing secret, so deliveries cannot be checked; "
            "is it an mq-py server with signed deliveries?",
        )
    server.secret = connection.secret
    return connection.id


def _what(args: argparse.Namespace) -> str:
    """What the receiver takes, for the first line on stderr."""
    parts = [f"topic {args.topic}"] if args.topic else []
    if args.group:
        parts.append(f"group {args.group}")
    if args.filter_object:
        parts.append(f"filter {json.dumps(args.filter_object)}")
    return f" ({', '.join(parts)})" if parts else ""


async def _disconnect(client: AsyncClient, receiver_id: int) -> None:
    try:
        await client.disconnect(receiver_id)
    except NotFound:
        print(f"receiver {receiver_id} was already disconnected", file=sys.stderr)
        return
    except ConnectionFailed as error:
        # The broker keeps the receiver, and keeps routing messages to it, until told.
        raise CommandFailed(
            EXIT_UNREACHABLE,
            f"{error}, so receiver {receiver_id} is still registered there: the broker "
            "keeps its messages and retries them until they are dead letters. Once the "
            f"broker is back, remove it with: mqpy subscriptions delete {receiver_id} "
            "(with the same --url and key)",
        ) from None
    print(f"disconnected receiver {receiver_id}", file=sys.stderr)


def _stop_on_signals(stop: asyncio.Event) -> None:
    """The first Ctrl-C or SIGTERM stops gracefully (disconnect, then exit); a second
    one is handled the default way, ending a stop that hangs on an unreachable broker."""
    loop = asyncio.get_running_loop()

    def first_signal() -> None:
        stop.set()
        for number in _STOP_SIGNALS:
            loop.remove_signal_handler(number)

    for number in _STOP_SIGNALS:
        loop.add_signal_handler(number, first_signal)


class _Printer:
    def __init__(self, as_json: bool, stop: asyncio.Event) -> None:
        self.as_json = as_json
        self.stop = stop

    async def show(self, delivery: Delivery) -> None:
        if self.as_json:
            record: dict[str, object] = {
                "message_id": delivery.message_id,
                "attempt": delivery.attempt,
                "topic": delivery.topic,
                "body": delivery.body,
            }
            if delivery.attributes:
                record["attributes"] = dict(delivery.attributes)
            if delivery.ordering_key is not None:
                record["ordering_key"] = delivery.ordering_key
            line = json.dumps(record, ensure_ascii=False)
        else:
            line = visible(delivery.body)
        try:
            print(line, flush=True)
        except BrokenPipeError:
            # Whoever read our output is gone (`mqpy listen | head -1`): stop, and leave
            # the message unacknowledged so the broker keeps it.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.stop.set()
            from aiohttp import web

            raise web.HTTPServiceUnavailable(text="the listener's output is closed") from None


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
