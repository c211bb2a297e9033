"""`mqpy listen --serve`: a receiver on this machine that the broker POSTs to, printing
every message it gets. For a machine the broker can reach; `mqpy listen` without
--serve pulls instead, from anywhere."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from typing import TYPE_CHECKING

from mqpy.client import MQError
from mqpy.commands import EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, CommandFailed
from mqpy.commands.broker_client import ClientSettings, client_settings, failure
from mqpy.commands.listening import message_line, remove_when_stopping, stop_on_signals
from mqpy.commands.terminal import printed

if TYPE_CHECKING:  # imported when run: they load aiohttp, which `mqpy --help` need not
    from mqpy.client.aio import AsyncClient
    from mqpy.client.receiver import Delivery, ReceiverServer

SECRET_ENV = "MQPY_SECRET"


def serve(args: argparse.Namespace) -> int:
    args.host = args.host or "127.0.0.1"
    args.path = args.path or "/"
    if not args.path.startswith("/"):
        raise CommandFailed(EXIT_USAGE, f"--path must start with '/', not {args.path!r}")
    if args.client_url is None and _is_unspecified(args.host):
        raise CommandFailed(
            EXIT_USAGE,
            f"--host {args.host} is not an address the broker can POST to; "
            "give the receiver's reachable address with --client-url",
        )
    if args.no_connect:
        return _listen_only(args)
    settings = client_settings(args)
    try:
        return asyncio.run(_listen(args, settings))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were set, or a second one
        return EXIT_INTERRUPTED


async def _listen(args: argparse.Namespace, settings: ClientSettings) -> int:
    from mqpy.client.aio import AsyncClient
    from mqpy.client.receiver import ReceiverServer

    stop = asyncio.Event()
    stop_on_signals(stop)
    printer = _Printer(args.json, stop)
    server = ReceiverServer(printer.show, host=args.host, port=args.port, path=args.path)
    await _start(server, args)
    try:
        async with AsyncClient(settings.url, key=settings.key) as client:
            receiver_id = await _connect(client, server, args)
            print(
                f"listening on {server.url} as receiver {receiver_id}{what(args)}; Ctrl-C to stop",
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
    from mqpy.client.receiver import ReceiverServer

    stop = asyncio.Event()
    stop_on_signals(stop)
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


def what(args: argparse.Namespace) -> str:
    """What the listener takes, for the first line on stderr."""
    parts = [f"topic {args.topic}"] if args.topic else []
    if args.group:
        parts.append(f"group {args.group}")
    if args.filter_object:
        parts.append(f"filter {json.dumps(args.filter_object)}")
    return f" ({', '.join(parts)})" if parts else ""


async def _disconnect(client: AsyncClient, receiver_id: int) -> None:
    # Until told, the broker keeps the receiver, and keeps routing messages to it.
    await remove_when_stopping(
        lambda: client.disconnect(receiver_id),
        receiver_id,
        name=f"receiver {receiver_id}",
        removed="disconnected",
        kept="is still registered there: the broker keeps its messages and retries them "
        "until they are dead letters",
    )


class _Printer:
    def __init__(self, as_json: bool, stop: asyncio.Event) -> None:
        self.as_json = as_json
        self.stop = stop

    async def show(self, delivery: Delivery) -> None:
        line = message_line(delivery, as_json=self.as_json)
        if not printed(line):
            # Whoever read our output is gone: stop, and leave the message
            # unacknowledged so the broker keeps it.
            self.stop.set()
            from aiohttp import web

            raise web.HTTPServiceUnavailable(text="the listener's output is closed")


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
