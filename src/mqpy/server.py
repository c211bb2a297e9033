"""The server's lifecycle: open the store, start delivering, serve HTTP, and on
SIGTERM or SIGINT stop in the reverse order without losing anything."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from mqpy.api.app import create_app
from mqpy.broker import Broker
from mqpy.config import Settings
from mqpy.delivery.dispatcher import Dispatcher
from mqpy.delivery.retry import RetryPolicy
from mqpy.delivery.sender import Sender
from mqpy.store import Store, open_store
from mqpy.store.sqlite import DataDirLocked

log = logging.getLogger("mqpy.server")


def run(settings: Settings) -> int:
    """Run the broker until SIGTERM or SIGINT; the process's exit code."""
    try:
        import uvloop
    except ImportError:  # uvloop is optional where it does not build
        return asyncio.run(serve(settings))
    return int(uvloop.run(serve(settings)))


async def serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = open_store(settings.data_dir)
    try:
        await store.open()
    except DataDirLocked as exc:
        log.error("%s", exc)
        return 1
    broker = Broker(store)
    await broker.start()
    sender = Sender(settings.delivery_timeout)
    await sender.start()
    dispatcher = Dispatcher(
        store,
        sender,
        RetryPolicy(
            base=settings.retry_base,
            max_delay=settings.retry_max,
            max_attempts=settings.max_attempts,
            max_age=settings.max_age,
        ),
        workers=settings.workers,
        jobs=settings.jobs,
        receiver_concurrency=settings.effective_receiver_concurrency,
        delivery_timeout=settings.delivery_timeout,
    )
    broker.set_delivery_listener(dispatcher)
    await dispatcher.start()
    runner = web.AppRunner(
        create_app(broker, max_body_bytes=settings.max_message_bytes),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_grace,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror)
        await _shut_down(runner, dispatcher, sender, store, settings)
        return 1
    for address in runner.addresses:
        log.info("listening on http://%s:%d", *address[:2])
    log.info(
        "store %s, %d workers, %d jobs, %d per receiver",
        settings.data_dir,
        settings.workers,
        settings.jobs,
        settings.effective_receiver_concurrency,
    )
    await stop.wait()
    log.info("shutting down")
    await _shut_down(runner, dispatcher, sender, store, settings)
    log.info("stopped")
    return 0


async def _shut_down(
    runner: web.AppRunner,
    dispatcher: Dispatcher,
    sender: Sender,
    store: Store,
    settings: Settings,
) -> None:
    # HTTP first, so nothing new is accepted; then deliveries; the store last, once
    # nobody can write to it any more.
    await runner.cleanup()
    await dispatcher.stop(settings.shutdown_grace)
    await sender.close()
    await store.close()
