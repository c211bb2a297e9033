"""What both ways of `mqpy listen` share: stopping on a signal, and printing a message."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from mqpy.client import ConnectionFailed, NotFound
from mqpy.commands import EXIT_UNREACHABLE, CommandFailed
from mqpy.commands.terminal import visible

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: asyncio.Event) -> None:
    """The first Ctrl-C or SIGTERM stops gracefully (clean up, then exit); a second one
    is handled the default way, ending a stop that hangs on an unreachable broker."""
    loop = asyncio.get_running_loop()

    def first_signal() -> None:
        stop.set()
        for number in _STOP_SIGNALS:
            loop.remove_signal_handler(number)

    for number in _STOP_SIGNALS:
        loop.add_signal_handler(number, first_signal)


class Shown(Protocol):
    """A message as both ways in hand it over: a checked push delivery, or a pulled one."""

    @property
    def message_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def topic(self) -> str: ...
    @property
    def body(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, str]: ...
    @property
    def ordering_key(self) -> str | None: ...


def message_line(message: Shown, *, as_json: bool) -> str:
    """One message as `listen` prints it: its body on one line (line breaks and control
    characters escaped), or with --json an object with its id, attempt and topic."""
    if not as_json:
        return visible(message.body)
    record: dict[str, object] = {
        "message_id": message.message_id,
        "attempt": message.attempt,
        "topic": message.topic,
        "body": message.body,
    }
    if message.attributes:
        record["attributes"] = dict(message.attributes)
    if message.ordering_key is not None:
        record["ordering_key"] = message.ordering_key
    return json.dumps(record, ensure_ascii=False)


async def remove_when_stopping(
    removal: Callable[[], Awaitable[None]],
    subscription_id: int,
    *,
    name: str,
    removed: str,
    kept: str,
) -> None:
    """Remove what listen made for itself (`name`, such as "receiver 12"); if the broker
    cannot be reached, say what it keeps meanwhile (`kept`) and how to remove it later."""
    try:
        await removal()
    except NotFound:
        print(f"{name} was already {removed}", file=sys.stderr)
        return
    except ConnectionFailed as error:
        raise CommandFailed(
            EXIT_UNREACHABLE,
            f"{error}, so {name} {kept}. Once the broker is back, remove it with: mqpy "
            f"subscriptions delete {subscription_id} (with the same --url and key)",
        ) from None
    print(f"{removed} {name}", file=sys.stderr)
