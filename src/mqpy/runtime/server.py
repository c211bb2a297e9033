"""The server's lifecycle: open the store, start delivering, serve HTTP, and on
SIGTERM or SIGINT stop in the reverse order without losing anything."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from mqpy.api.app import create_app
from mqpy.api.http_errors import ProblemAppRunner
from mqpy.auth.access import Access
from mqpy.config import Settings, format_duration
from mqpy.core.broker import Broker, DeliveryListeners, Limits
from mqpy.core.group_state import GroupState
from mqpy.core.key_registry import KeyRegistry
from mqpy.core.peers import CatalogSync, Heartbeat, node_address
from mqpy.delivery.dispatcher import Dispatcher
from mqpy.delivery.endpoint_health import EndpointHealth
from mqpy.delivery.guard import AddressPolicy
from mqpy.delivery.receiver_checks import ReceiverChecks
from mqpy.delivery.retry import RedeliveryPolicy
from mqpy.delivery.sender import Sender
from mqpy.model.errors import StoreCannotOpen, StoreError
from mqpy.observability import Observer
from mqpy.observability.health_keeper import HealthKeeper
from mqpy.pull import PullService
from mqpy.runtime.stopping import StopSignals
from mqpy.runtime.supervisor import group_metrics_dir, inherited_data_lock, process_slot
from mqpy.store import Store, StoreLocation, open_store

log = logging.getLogger("mqpy.server")

LINGER_SECONDS = 2.0

# How often delivered messages past --message-retention and idempotency keys past
# --dedup-window are forgotten: often enough that neither piles up between sweeps, and
# at least twice per retention so a short one is kept to within half of itself.
SWEEP_INTERVAL_SECONDS = 30.0
MIN_SWEEP_INTERVAL_SECONDS = 0.5
# How often deliveries never attempted are checked against --max-age: a tenth of it,
# within these bounds, so one is dead-lettered at most that late.
MIN_EXPIRY_INTERVAL_SECONDS = 1.0
MAX_EXPIRY_INTERVAL_SECONDS = 30.0
# The least a lease may outlast --delivery-timeout: a claim, the POST's own setup and
# recording its outcome all happen under the lease too.
LEASE_MARGIN_SECONDS = 5.0
# How long past the delivery timeout a process of a group holds a paused receiver's
# probe before another may send it (its holder died, or had nothing to send).
PROBE_MARGIN_SECONDS = 5.0


def sweep_interval(settings: Settings) -> float:
    shortest = min(settings.message_retention, settings.dedup_window) / 2
    return max(MIN_SWEEP_INTERVAL_SECONDS, min(SWEEP_INTERVAL_SECONDS, shortest))


def expiry_interval(settings: Settings) -> float:
    tenth = settings.max_age / 10
    return max(MIN_EXPIRY_INTERVAL_SECONDS, min(MAX_EXPIRY_INTERVAL_SECONDS, tenth))


class StartupRefused(Exception):
    """The settings would make an unsafe or impossible server; the message says why."""


def run(settings: Settings) -> int:
    """Run the broker until SIGTERM or SIGINT; the process's exit code."""
    try:
        import uvloop
    except ImportError:  # uvloop is optional where it does not build
        return asyncio.run(serve(settings))
    return int(uvloop.run(serve(settings)))


async def serve(settings: Settings) -> int:
    stop = StopSignals()
    stop.install(asyncio.get_running_loop())
    watchdog = asyncio.create_task(stop.exit_if_stuck(settings.shutdown_grace))
    try:
        return await _serve(settings, stop)
    finally:
        watchdog.cancel()


async def _serve(settings: Settings, stop: StopSignals) -> int:
    try:
        check_lease(settings)
        location = StoreLocation.parse(settings.store, settings.data_dir)
        slot = process_slot()
        member = None if slot is None else (slot, settings.process_count)
        store = open_store(location, data_lock=inherited_data_lock(), member=member)
    except (StartupRefused, StoreCannotOpen) as exc:
        log.error("%s", exc)
        return 2
    try:
        await store.open()
    except StoreError as exc:  # cannot open, locked, unreachable: nothing to serve from
        log.error("%s", exc)
        return 1
    try:
        return await _serve_with_store(settings, store, location, stop)
    except StartupRefused as exc:
        log.error("%s", exc)
        return 2
    finally:
        await store.close()


async def _serve_with_store(
    settings: Settings, store: Store, location: StoreLocation, stop: StopSignals
) -> int:
    """Start the parts, serve until asked to stop, then stop them in reverse.

    Each part's stop goes on `parts` as it starts, so a failed start (a port in use, a
    store error) and SIGTERM unwind the same way, and the order parts start in is the
    reverse of the order they stop in: HTTP first, so nothing new is accepted (long
    polls answer and streams end at once rather than holding the shutdown), then
    deliveries, then the health they leave, then the peers' view. The caller closes
    the store, once nobody can write to it any more."""
    async with contextlib.AsyncExitStack() as parts:
        serving = await _start(parts, settings, store, stop)
        if serving is None:
            return 1
        runner, heartbeat, tls = serving
        scheme = "https" if tls else "http"
        # Listed among the nodes before it says it listens: whoever waits for that line
        # finds it in the list at once.
        await heartbeat.start(node_address(scheme, runner.addresses))
        for address in runner.addresses:
            log.info("listening on %s://%s:%d", scheme, *address[:2])
        log.info(
            "store %s, %d workers, %d jobs, %d per receiver",
            location,  # its str() hides any password
            settings.workers,
            settings.jobs,
            settings.effective_receiver_concurrency,
        )
        await log_work_in_hand(store, "resuming")
        await stop.requested.wait()
        log.info("shutting down (a second Ctrl-C or SIGTERM stops at once)")
    await log_work_in_hand(store, "left for the next start")
    log.info("stopped")
    return 0


async def _start(
    parts: contextlib.AsyncExitStack, settings: Settings, store: Store, stop: StopSignals
) -> tuple[web.AppRunner, Heartbeat, ssl.SSLContext | None] | None:
    """Every part built and started, its stop on `parts`; None if it cannot listen."""
    # Every time that decides a message's fate is read from the store's clock: on a
    # shared database it is the database's, so nodes on several hosts agree on leases.
    clock = store.clock
    access = Access(settings.admin_key)
    policy = AddressPolicy(deny_private=settings.deny_private_receivers)
    sender = Sender(settings.delivery_timeout, policy, receiver_tls(settings))
    gate = ReceiverChecks(
        policy, aiohttp.ThreadedResolver(), sender, verify=settings.verify_receivers
    )
    # In a --processes group: the publish rate, receivers' paces and pauses it shares.
    group = GroupState.joined() if process_slot() is not None else None
    if group is not None:
        parts.callback(group.close)
    broker = Broker(
        store, limits(settings, group_size(settings)), clock=clock, gate=gate, group=group
    )
    # A registry of this server's own: no global state shared between instances; in a
    # group, it reads the metrics every process of the group writes.
    observer = Observer(store, broker, CollectorRegistry(), group_metrics=group_metrics_dir())
    # Last of all at stop (callbacks run in reverse): what the final deliveries counted
    # reaches the group's files.
    parts.callback(observer.flush_metrics)
    key_registry = KeyRegistry(store, access, broker, clock=clock, group=group)
    await key_registry.start()
    check_exposure(settings, access)
    tls = server_tls(settings)
    retry_policy = RedeliveryPolicy(
        base=settings.retry_base,
        max_delay=settings.retry_max,
        max_attempts=settings.max_attempts,
        max_age=settings.max_age,
    )
    dispatcher = Dispatcher(
        store,
        sender,
        retry_policy,
        workers=settings.workers,
        jobs=settings.jobs,
        receiver_concurrency=settings.effective_receiver_concurrency,
        lease_seconds=settings.lease_seconds,
        observer=observer,
        clock=clock,
        processes=group_size(settings),
        group=group,
        # A probe's answer comes within the delivery timeout; a probe held longer
        # belongs to a process that died or had nothing to send.
        probe_seconds=settings.delivery_timeout + PROBE_MARGIN_SECONDS,
    )
    # Pull consumers settle the same deliveries under the same retry policy.
    pulls = PullService(store, broker, retry_policy, clock=clock, on_acked=observer.delivered)
    listeners = DeliveryListeners(dispatcher, pulls)
    await broker.start(listeners, observer)
    # Stopped last: heartbeats show the node draining until it is done.
    heartbeat = Heartbeat(store, dispatcher)
    parts.push_async_callback(heartbeat.stop)
    # What other nodes change of connections, subscriptions and keys: keys first, so
    # a revoked key is refused before anything else is reloaded. Stopped next to last:
    # requests still being answered and deliveries still finishing go by the other
    # nodes' latest changes (a key revoked meanwhile).
    sync = CatalogSync(store, [key_registry.reload, broker.reload])
    store.watch(on_due=listeners.notify, on_catalog=sync.poke)
    sync.start()
    parts.push_async_callback(sync.stop)
    # Receivers' health from before the restart, before the first attempt changes it;
    # saved once no attempt can end any more, so what it saves is the last word.
    health = HealthKeeper(store, observer)
    await health.start()
    parts.push_async_callback(health.stop)
    await sender.start()
    parts.push_async_callback(sender.close)
    await dispatcher.start()
    parts.push_async_callback(dispatcher.stop, settings.shutdown_grace, stop.forced)
    runner = _runner(settings, broker, access, key_registry, pulls, observer)
    await runner.setup()
    parts.push_async_callback(runner.cleanup)
    parts.callback(pulls.stop)
    endpoints = EndpointHealth(
        store, broker, observer, disable_after=settings.disable_after, clock=clock
    )
    await observer.start_following_group()
    sweeper = asyncio.gather(
        asyncio.create_task(sweep_forever(store, settings), name="mqpy-sweeper"),
        asyncio.create_task(expire_forever(store, settings), name="mqpy-expiry"),
        asyncio.create_task(endpoints.run(), name="mqpy-endpoint-health"),
        asyncio.create_task(observer.follow_group(), name="mqpy-group-rates"),
    )
    parts.push_async_callback(_stop_sweeping, sweeper)
    try:
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            backlog=1024,
            ssl_context=tls,
            # One of --processes N: all N listen on this one port (SO_REUSEPORT).
            reuse_port=settings.process_count > 1,
        )
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror)
        return None
    return runner, heartbeat, tls


def _runner(
    settings: Settings,
    broker: Broker,
    access: Access,
    key_registry: KeyRegistry,
    pulls: PullService,
    observer: Observer,
) -> ProblemAppRunner:
    return ProblemAppRunner(
        create_app(
            broker,
            access,
            key_registry,
            pulls=pulls,
            observer=observer,
            max_body_bytes=settings.max_message_bytes,
            max_batch_bytes=settings.max_batch_bytes,
            body_timeout=settings.body_timeout,
        ),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_grace,
        # Closes connections that hold no complete request for this long: idle
        # keep-alives, and clients dribbling their headers (slowloris).
        keepalive_timeout=settings.idle_timeout,
        max_line_size=settings.max_url_bytes,
        max_field_size=settings.max_header_bytes,
        # After answering a request whose body it did not read (a 404, a 405), aiohttp
        # reads the rest of the body for up to this long before closing, so the client
        # is not reset mid-upload. Its default of 10 s held a connection whose chunked
        # body broke after the answer (the parser then waits for nothing) for all 10 s.
        lingering_time=LINGER_SECONDS,
    )


def group_size(settings: Settings) -> int:
    """How many processes share this one's rate limits: its group's, or 1."""
    return settings.process_count if process_slot() is not None else 1


def limits(settings: Settings, processes: int = 1) -> Limits:
    return Limits(
        processes=processes,
        max_backlog=settings.max_backlog,
        max_connections_per_key=settings.max_connections_per_key,
        publish_rate=settings.publish_rate,
        publish_burst=settings.publish_burst or settings.publish_rate,
        secret_overlap=settings.secret_overlap,
        dedup_window=settings.dedup_window,
    )


async def sweep_forever(store: Store, settings: Settings) -> None:
    """Forget what the retention settings no longer keep, every `sweep_interval`.

    A failed sweep is logged and tried again next time: nothing is lost by waiting."""
    interval = sweep_interval(settings)
    while True:
        await asyncio.sleep(interval)
        now = store.clock()
        try:
            removed = await store.sweep(
                delivered_before=now - settings.message_retention,
                dedup_before=now - settings.dedup_window,
            )
        except Exception:
            log.exception("sweeping delivered messages and idempotency keys failed")
            continue
        if removed:
            log.debug("forgot %d delivered messages past --message-retention", removed)


async def expire_forever(store: Store, settings: Settings) -> None:
    """Dead-letter, every `expiry_interval`, the deliveries past their max-age that no
    failed attempt judged (paused receivers, backlogs). A failure is logged and tried
    again next time."""
    interval = expiry_interval(settings)
    while True:
        await asyncio.sleep(interval)
        try:
            expired = await store.expire(now=store.clock(), max_age=settings.max_age)
        except StoreError as exc:
            log.error("cannot dead-letter deliveries past --max-age: %s", exc)
            continue
        if expired:
            log.warning("dead-lettered %d deliveries past their max-age, unattempted", expired)


async def _stop_sweeping(sweeper: asyncio.Future[tuple[None, None, None, None]]) -> None:
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper


def check_lease(settings: Settings) -> None:
    """A delivery in flight must not lose its lease: another node would send it too."""
    shortest = settings.delivery_timeout + LEASE_MARGIN_SECONDS
    if settings.lease_seconds < shortest:
        raise StartupRefused(
            f"--lease-seconds {format_duration(settings.lease_seconds)} is shorter than "
            f"--delivery-timeout {format_duration(settings.delivery_timeout)} plus "
            f"{format_duration(LEASE_MARGIN_SECONDS)}: a delivery still in flight would "
            "lose its lease and another node could send it again; give --lease-seconds "
            f"{format_duration(shortest)} or more"
        )


def check_exposure(settings: Settings, access: Access) -> None:
    """Protected mode: with no API key configured, listen on loopback only."""
    if access.enabled:
        log.info(
            "API keys are on (%s): every request but the dashboard, /metrics and the "
            "probes needs 'Authorization: Bearer <key>'",
            access.describe(),
        )
        return
    if is_loopback(settings.host):
        log.info("no API key configured: every route is open, on loopback only")
        return
    if not settings.allow_unauthenticated:
        raise StartupRefused(
            f"refusing to listen on {settings.host} with no API key configured: anyone who "
            "can reach it could publish and read. Set MQPY_ADMIN_KEY (and create keys with "
            "`mqpy keys create`), or listen on 127.0.0.1, or pass --allow-unauthenticated "
            "if something in front of mq-py already authenticates every request."
        )
    log.warning(
        "UNAUTHENTICATED: listening on %s with no API key; anyone who can reach this "
        "port can publish, subscribe and read dead letters (--allow-unauthenticated)",
        settings.host,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_tls(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert and not settings.tls_key:
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise StartupRefused("HTTPS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupRefused(f"cannot load --tls-cert/--tls-key: {exc}") from None
    return context


def receiver_tls(settings: Settings) -> ssl.SSLContext | None:
    """Receivers' certificates are verified; --receiver-ca adds a private CA."""
    if not settings.receiver_ca:
        return None
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(settings.receiver_ca)
    except (OSError, ssl.SSLError) as exc:
        raise StartupRefused(f"cannot load --receiver-ca: {exc}") from None
    return context


async def log_work_in_hand(store: Store, when: str) -> None:
    """How much the store holds undelivered, so an operator knows what a start resumes
    and what a stop leaves (on a shared store: all nodes' work, not only this one's)."""
    try:
        stats = await store.stats()
        dead = await store.dead_letter_count()
    except StoreError as exc:
        log.warning("cannot count the deliveries pending %s: %s", when, exc)
        return
    log.info(
        "%s: queue length %d (deliveries pending), %d dead letters",
        when,
        stats.queue_length,
        dead,
    )
