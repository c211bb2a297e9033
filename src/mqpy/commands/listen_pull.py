"""`mqpy listen`: take a topic's messages from anywhere the broker's URL reaches, through
a pull subscription (one made for this run and deleted when it stops, or `--subscription
ID`), print each and ack it; or with --forward-to, POST each to a local URL as a push
delivery would be and ack it on a 2xx."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mqpy.client import ConnectionFailed, MQError, PulledMessage
from mqpy.commands import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandFailed
from mqpy.commands.broker_client import ClientSettings, client_settings, failure
from mqpy.commands.listen_serve import SECRET_ENV, what
from mqpy.commands.listening import message_line, remove_when_stopping, stop_on_signals
from mqpy.commands.terminal import printed
from mqpy.model.domain import DeliveryFormat

if TYPE_CHECKING:  # imported when run: they load aiohttp, which `mqpy --help` need not
    from mqpy.client.aio import AsyncClient
    from mqpy.commands.forward import Forwarder

# With --forward-to, messages are pulled a few at a time: each waits its turn at the
# local receiver, and must not wait out its ack deadline meanwhile.
FORWARD_BATCH = 10
LONG_POLL_SECONDS = 30.0
# After the broker could not be reached, try again after 1 s, 2 s, ... up to this.
MAX_RECONNECT_SECONDS = 30.0

# Handles one message; False when listening should stop (the message left unacked).
Handler = Callable[[PulledMessage], Awaitable[bool]]


@dataclass(frozen=True)
class Listening:
    subscription_id: int
    secret: str | None
    made_here: bool  # deleted when listen stops


def pull_listen(args: argparse.Namespace) -> int:
    _check_options(args)
    settings = client_settings(args)
    try:
        return asyncio.run(_listen(args, settings))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were set, or a second one
        return EXIT_INTERRUPTED


def _check_options(args: argparse.Namespace) -> None:
    served = [f"--{name.replace('_', '-')}" for name in _SERVE_ONLY if getattr(args, name)]
    if served:
        verb = "applies" if len(served) == 1 else "apply"
        raise CommandFailed(
            EXIT_USAGE,
            f"{', '.join(served)} {verb} to a local receiver the broker POSTs to: add "
            "--serve (without it, listen pulls from the broker and needs no port)",
        )
    if args.subscription is not None and (args.topic or args.group or args.filter):
        raise CommandFailed(
            EXIT_USAGE,
            f"--topic, --group and --filter make a new subscription; subscription "
            f"{args.subscription} has its own (leave them out, or leave out --subscription)",
        )
    if args.subscription is not None and args.forward_to and not args.secret:
        raise CommandFailed(
            EXIT_USAGE,
            f"--forward-to signs each message with the subscription's secret, which the "
            f"broker showed once, when subscription {args.subscription} was made: give it "
            f"with --secret (or {SECRET_ENV})",
        )
    if args.format is not None and not args.forward_to:
        raise CommandFailed(EXIT_USAGE, "--format lays out what --forward-to POSTs; give both")


# Options of `listen --serve` alone (their defaults are all falsy).
_SERVE_ONLY = ("host", "port", "path", "client_url", "no_connect")


async def _listen(args: argparse.Namespace, settings: ClientSettings) -> int:
    from mqpy.client.aio import AsyncClient

    stop = asyncio.Event()
    stop_on_signals(stop)
    async with AsyncClient(settings.url, key=settings.key) as client:
        try:
            listening = await _subscription(client, args)
        except MQError as error:
            raise failure(error) from None
        try:
            await _until_stopped(_consume(client, listening, args, stop), stop)
        except MQError as error:
            raise failure(error) from None
        finally:
            if listening.made_here:
                await _delete(client, listening.subscription_id)
    return EXIT_OK


async def _subscription(client: AsyncClient, args: argparse.Namespace) -> Listening:
    if args.subscription is not None:
        subscription_id = int(args.subscription)
        print(
            f"listening to subscription {subscription_id}{_where(args)}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        return Listening(subscription_id, args.secret, made_here=False)
    made = await client.create_subscription(
        args.topic or "default",
        kind="pull",
        group=args.group,
        filter=args.filter_object,
        secret=args.secret,
    )
    print(
        f"listening to pull subscription {made.id}{what(args)}{_where(args)}; it is deleted "
        "when listen stops; Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    if args.forward_to and not args.secret:
        # The local receiver checks signatures with it; the broker shows it only now.
        print(f"signing secret: {made.secret}", file=sys.stderr, flush=True)
    return Listening(made.id, made.secret, made_here=True)


def _where(args: argparse.Namespace) -> str:
    return f", forwarding to {args.forward_to}" if args.forward_to else ""


async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> None:
    """Run `work` until it ends or `stop` is set, whichever comes first."""
    working = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (working, stopping):
        task.cancel()
    await asyncio.gather(stopping, return_exceptions=True)
    with contextlib.suppress(asyncio.CancelledError):
        await working


async def _consume(
    client: AsyncClient, listening: Listening, args: argparse.Namespace, stop: asyncio.Event
) -> None:
    if not args.forward_to:
        await _keep_trying(lambda: _stream(client, listening.subscription_id, args, stop), stop)
        return
    from mqpy.commands.forward import Forwarder

    assert listening.secret is not None
    format = DeliveryFormat(args.format or DeliveryFormat.MQ)
    async with Forwarder(
        args.forward_to, listening.subscription_id, listening.secret, format
    ) as forwarder:
        await _keep_trying(lambda: _forward(client, listening.subscription_id, forwarder), stop)


async def _keep_trying(attempt: Callable[[], Awaitable[bool]], stop: asyncio.Event) -> None:
    """Run `attempt` again whenever the broker could not be reached or its stream ended,
    backing off while it stays down, until it returns True (done) or `stop` is set."""
    pause = 1.0
    while not stop.is_set():
        try:
            if await attempt():
                return
            pause = 1.0
        except ConnectionFailed as error:
            print(f"{error}; trying again in {pause:g} s", file=sys.stderr, flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()
            pause = min(pause * 2, MAX_RECONNECT_SECONDS)


async def _stream(
    client: AsyncClient, subscription_id: int, args: argparse.Namespace, stop: asyncio.Event
) -> bool:
    """Print and ack what one stream brings; True once the reader of our output left."""
    async for message in client.stream(subscription_id):
        if not printed(message_line(message, as_json=args.json)):
            stop.set()  # left unacked: it comes again to whoever takes it next
            return True
        await client.ack(subscription_id, [message])
    return False  # the stream ended (the broker stopping): open another


async def _forward(client: AsyncClient, subscription_id: int, forwarder: Forwarder) -> bool:
    """Forward what one long poll brings, acking or nacking each; never done."""
    messages = await client.pull(
        subscription_id, max_messages=FORWARD_BATCH, wait_seconds=LONG_POLL_SECONDS
    )
    for message in messages:
        forwarded = await forwarder.forward(message)
        printed(forwarded.line())
        if forwarded.ok:
            await client.ack(subscription_id, [message])
        else:
            await client.nack(subscription_id, [message], delay_seconds=forwarded.nack_delay)
    return False


async def _delete(client: AsyncClient, subscription_id: int) -> None:
    # Until told, the broker keeps the subscription, and keeps its messages.
    try:
        await remove_when_stopping(
            lambda: client.delete_subscription(subscription_id),
            subscription_id,
            name=f"pull subscription {subscription_id}",
            removed="deleted",
            kept="is still there: the broker keeps its messages until they are dead letters",
        )
    except MQError as error:
        raise failure(error) from None
