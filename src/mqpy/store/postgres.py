"""The PostgreSQL store: several broker processes, on one or several hosts, share it.

Every node reads and writes the same tables; nothing that decides a message's fate
lives only in one process. Publishes and delivery outcomes are group-committed (one
transaction and one round trip per batch, `batching.Batcher`); claims lock due
deliveries with `FOR UPDATE SKIP LOCKED` under a lease whose token alone can settle
them; subscriptions, groups and keys change under an exclusive advisory lock that
publishes take shared, and bump `catalog.version`, so a node's cached routes are
never older than the transaction that uses them.

Times are the caller's, as on every store. No transaction stays open while waiting
on anything but the database.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from mqpy.model.domain import (
    ApiKey,
    BrokerStats,
    Claim,
    ClaimedDelivery,
    ClaimOffer,
    Connection,
    DeadLetter,
    Filter,
    Mode,
    NewMessage,
    NodeInfo,
    Page,
    Published,
    ReceiverHealth,
    Role,
    SeekResult,
    StartAt,
    StoredMessage,
    Subscription,
    SubscriptionChanges,
    SubscriptionSpec,
    TopicInfo,
    int_cursor,
    name_cursor,
)
from mqpy.model.errors import BacklogFull, StoreUnavailable
from mqpy.model.events import subscription_disabled, subscription_resumed
from mqpy.model.ids import new_lease_token, node_name
from mqpy.store import endpoint_health
from mqpy.store import postgres_sql as sql
from mqpy.store.base import Store, TopicBacklog
from mqpy.store.batching import Batcher, Settlement
from mqpy.store.claiming import ClaimBuilder, leased_deliveries
from mqpy.store.endpoint_health import dead_letter_events, expiry_events
from mqpy.store.expiry import EXPIRE_CHUNK, expiry_targets
from mqpy.store.health import (
    HEALTH_COLUMNS,
    health_from_rows,
    health_row,
    load_health_sql,
    save_health_sql,
)
from mqpy.store.history import (
    HISTORY_COLUMNS,
    MAX_ATTEMPTS_KEPT,
    attempt_row,
    failed,
    failures,
    histories,
)
from mqpy.store.postgres_catalog import (
    CONNECTION_COLUMNS,
    change_group_filter,
    connection_from_row,
    fetch_subscription,
    insert_subscription,
    new_id,
)
from mqpy.store.postgres_claim import Lease, claim_rounds
from mqpy.store.postgres_dsn import connect_arguments
from mqpy.store.postgres_events import publish_events
from mqpy.store.postgres_listen import Listener
from mqpy.store.postgres_publish import PublishPlan, PublishRequest, held_idempotency_keys
from mqpy.store.postgres_replay import seek as seek_target
from mqpy.store.postgres_schema import (
    CATALOG_CHANNEL,
    CATALOG_LOCK,
    DUE_CHANNEL,
    SWEEP_LOCK,
    TALLY_SLOTS,
    migrate,
)
from mqpy.store.postgres_sql import PgConnection, one, row_count
from mqpy.store.replay import target_of
from mqpy.store.routes import (
    GROUP_ROUTE_COLUMNS,
    SUBSCRIPTION_ROUTE_COLUMNS,
    Routes,
    RouteTable,
    build_routes,
)
from mqpy.store.rows import (
    DEAD_LETTER_QUERY,
    DELIVERY_STATUS_COLUMNS,
    SUBSCRIPTION_COLUMNS,
    SUBSCRIPTIONS_FROM,
    changed_spec,
    dead_letter_cursor,
    dead_letter_page,
    delivery_status,
    dump_filter,
    dump_settings,
    load_attributes,
    subscription_from_row,
)
from mqpy.store.subscription_rows import SubscriptionPager

log = logging.getLogger("mqpy.store")


# Delivered messages (and expired idempotency keys) forgotten per transaction.
SWEEP_CHUNK = 500
# Publish and outcome transactions in flight at once, and the connections for them,
# the claim, lease renewals, heartbeats and API reads.
PUBLISH_FLUSHES = 3
OUTCOME_FLUSHES = 2
POOL_SIZE = 12
# Every statement of ours finds its rows through an index, but asyncpg prepares each
# once per connection and PostgreSQL keeps the plan it made while the tables were
# small: on a fresh database, until autovacuum's first ANALYZE (a minute or more),
# batch statements of a few rows scanned all of `messages` (measured: 2 ms per ack
# batch at 2,500 messages). Sequential scans stay possible where no index serves.
SESSION_SETTINGS = {"enable_seqscan": "off", "jit": "off"}
# What says the session itself is gone (the server ended it: a restart, a failover, an
# administrator), not the statement: asyncpg may also report a session whose end it read
# but has not yet closed as an operation in progress (InterfaceError), or a pooled
# connection the server closed under it as an InternalClientError.
_SESSION_LOST = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
# What tells us the database is out of reach (or refusing work for now), as opposed
# to a statement of ours being wrong: the caller hears StoreUnavailable (HTTP 503).
_UNAVAILABLE = (
    *_SESSION_LOST,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.TransactionRollbackError,
)
# What says the database takes reads but refuses writes for now: a full disk, or a
# primary demoted to a read-only standby. Readiness then probes with a write.
_WRITES_REFUSED = (asyncpg.InsufficientResourcesError, asyncpg.ReadOnlySQLTransactionError)


class PostgresStore(Store):
    """The `Store` interface on a PostgreSQL database that several nodes share."""

    def __init__(self, dsn: str, *, pool_size: int = POOL_SIZE) -> None:
        # Parsed here, so a conninfo string that is not one stops the start at once.
        self._dsn, self._connect_options = connect_arguments(dsn)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._closed = False
        # The dispatcher's claim for the next publish transaction (`offer_claim`).
        self._offer: tuple[ClaimOffer, Callable[[Claim | None], None]] | None = None
        # Why the last write was refused, until a durable commit succeeds (readiness).
        self._write_failure: str | None = None
        self.node = node_name()
        self._routes = RouteTable()
        self._routes_version: int | None = None
        # A few transactions at a time: while one waits for its commit's fsync, the
        # next batch is already on its way.
        self._publishes: Batcher[PublishRequest, list[Published]] = Batcher(
            self._flush_publishes, max_batch=256, max_concurrent=PUBLISH_FLUSHES
        )
        self._outcomes: Batcher[Settlement, None] = Batcher(
            self._flush_outcomes, max_batch=1000, max_concurrent=OUTCOME_FLUSHES
        )
        self._listener: Listener | None = None
        self._clock_offset = 0.0  # the database's clock minus ours

    # Lifecycle.

    async def open(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn, **self._connect_options)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                server_settings=SESSION_SETTINGS,
                reset=_keep_session,
                **self._connect_options,
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot reach PostgreSQL: {exc}") from None
        # Before anything leases by `clock`: a host whose clock runs ahead of the
        # database's would otherwise take over live leases on its first claims.
        await self._read_clock()

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            await self._listener.stop()
        await self._publishes.close()
        await self._outcomes.close()
        if self._pool is not None:
            await self._pool.close()

    def observe_commits(self, callback: Callable[[int, float], None]) -> None:
        self._publishes.on_flush = callback

    def watch(self, on_due: Callable[[], None], on_catalog: Callable[[], None]) -> None:
        self._listener = Listener(
            self._dsn,
            self._connect_options,
            {DUE_CHANNEL: on_due, CATALOG_CHANNEL: on_catalog},
        )
        self._listener.start()

    def clock(self) -> float:
        """Our clock, set to the database's: leases written by nodes on different
        hosts expire by one clock, not by each host's own."""
        return time.time() + self._clock_offset

    async def _read_clock(self) -> None:
        async with self._connection() as conn:
            before = time.time()
            database = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())")
            after = time.time()
        # The database read its clock somewhere in the round trip: assume the middle.
        self._clock_offset = float(database) - (before + after) / 2

    async def catalog_version(self) -> int:
        async with self._connection() as conn:
            return int(await conn.fetchval("SELECT version FROM catalog"))

    async def heartbeat(self, node: NodeInfo) -> None:
        async with self._transaction(durable=False) as conn:
            await conn.execute(
                sql.HEARTBEAT,
                node.name,
                node.started_at,
                node.seen_at,
                node.address,
                node.held,
                node.in_flight,
            )
            await conn.execute(sql.FORGET_NODES, node.seen_at - 86400.0)
        await self._read_clock()

    async def save_receiver_health(self, health: Sequence[ReceiverHealth]) -> None:
        async with self._transaction(durable=False) as conn:
            # By id, so two nodes saving the same receivers lock them in one order.
            rows = sorted((health_row(h) for h in health), key=lambda row: row[0])
            await conn.executemany(_SAVE_HEALTH, rows)

    async def receiver_health(self) -> list[ReceiverHealth]:
        async with self._connection() as conn:
            return health_from_rows(await conn.fetch(load_health_sql("true")))

    async def nodes(self, *, seen_since: float) -> list[NodeInfo]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT name, started_at, seen_at, address, held, in_flight FROM nodes "
                "WHERE seen_at >= $1 ORDER BY name",
                seen_since,
            )
        return [NodeInfo(*row) for row in rows]

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[PgConnection]:
        """A pooled connection, for a single statement (it is its own transaction)."""
        if self._closed or self._pool is None:
            raise StoreUnavailable("the store is closed")
        pool = self._pool
        try:
            async with pool.acquire() as conn:
                try:
                    yield conn
                except _SESSION_LOST:
                    # What ended this session most likely ended every idle one in the
                    # pool too: replace them all on their next use, rather than have
                    # each fail a request (and a readiness probe) of its own.
                    conn.terminate()
                    await pool.expire_connections()
                    raise
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"the store could not be reached: {exc}") from None

    @contextlib.asynccontextmanager
    async def _transaction(
        self, *, durable: bool = True, first: str = ""
    ) -> AsyncIterator[PgConnection]:
        """A transaction on a pooled connection. `durable=False` is for bookkeeping
        whose loss in a crash only means a delivery is made again (claims, outcomes):
        its commit does not wait for the WAL flush. `first` is a statement without
        parameters to run at once: it travels with BEGIN, in the same round trip."""
        begin = "BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit = off"
        if first:
            begin = f"{begin}; {first}"
        async with self._connection() as conn:
            await conn.execute(begin)
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException as exc:
                if isinstance(exc, _WRITES_REFUSED):
                    self._write_failure = str(exc)
                # A broken connection cannot roll back; the pool resets it on release.
                with contextlib.suppress(*_UNAVAILABLE, asyncpg.PostgresError):
                    await conn.execute("ROLLBACK")
                raise
        if durable:
            self._write_failure = None  # a durable commit: the database takes writes

    async def _catalog_change(self, conn: PgConnection) -> None:
        """Serialise a change to subscriptions, groups or keys against every publish
        on every node, and mark every node's routes stale."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1), pg_notify($2, '')", CATALOG_LOCK, CATALOG_CHANNEL
        )
        await conn.execute("UPDATE catalog SET version = version + 1")
        self._routes.invalidate()
        self._routes_version = None

    async def _current_routes(self, conn: PgConnection) -> Routes:
        version = await conn.fetchval("SELECT version FROM catalog")
        return await self._load_routes_if_stale(conn, version)

    async def _load_routes_if_stale(self, conn: PgConnection, version: int) -> Routes:
        if version != self._routes_version:
            subscriptions = await conn.fetch(
                f"SELECT {SUBSCRIPTION_ROUTE_COLUMNS} FROM subscriptions WHERE active ORDER BY id"
            )
            groups = await conn.fetch(
                f"SELECT {GROUP_ROUTE_COLUMNS} FROM groups WHERE active ORDER BY id"
            )
            routes = build_routes(subscriptions, groups)
            self._routes.invalidate()
            self._routes.get(lambda: routes)
            self._routes_version = version
        return self._routes.get(_never_stale)

    # Connections and subscriptions.

    async def add_connection(
        self,
        mode: Mode,
        client_url: str,
        topic: str,
        now: float,
        *,
        key_id: str | None = None,
        secret: str | None = None,
        group: str | None = None,
        filter: Filter | None = None,
        start_at: StartAt = None,
    ) -> Connection:
        async with self._transaction() as conn:
            await self._catalog_change(conn)
            connection_id = await new_id(conn)
            await conn.execute(
                "INSERT INTO connections (id, mode, client_url, topic, connected_at, key_id) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                connection_id,
                mode.value,
                client_url,
                topic,
                now,
                key_id,
            )
            if mode is Mode.RECEIVE:
                spec = SubscriptionSpec(url=client_url, topic=topic, group=group, filter=filter)
                await insert_subscription(
                    conn, connection_id, spec, now, key_id, secret, connection_id, start_at
                )
            return Connection(connection_id, mode, client_url, topic, now, key_id)

    async def add_subscription(
        self,
        spec: SubscriptionSpec,
        now: float,
        *,
        key_id: str | None,
        secret: str | None,
        paused: bool = False,
        start_at: StartAt = None,
    ) -> Subscription:
        async with self._transaction() as conn:
            await self._catalog_change(conn)
            subscription_id = await new_id(conn)
            await insert_subscription(
                conn, subscription_id, spec, now, key_id, secret, None, start_at
            )
            if paused:
                await conn.execute(
                    "UPDATE subscriptions SET paused = true WHERE id = $1", subscription_id
                )
            subscription = await fetch_subscription(conn, subscription_id)
            assert subscription is not None
            return subscription

    async def seek(self, subscription_id: int, time: float, now: float) -> SeekResult | None:
        async with self._transaction() as conn:
            # No message this reads is swept meanwhile, and seeks go one at a time.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SWEEP_LOCK)
            target = target_of(await self._current_routes(conn), subscription_id)
            if target is None:
                return None
            result = await seek_target(conn, target, time, now)
            if result.due:
                await conn.execute("SELECT pg_notify($1, '')", DUE_CHANNEL)
        return result

    async def subscription(self, subscription_id: int) -> Subscription | None:
        async with self._connection() as conn:
            return await fetch_subscription(conn, subscription_id)

    async def subscriptions(
        self, *, topic: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[Subscription]:
        after = int_cursor(cursor)
        async with self._transaction() as conn:
            pager = SubscriptionPager(topic, after, limit)
            while pager.wants_more():
                pager.take(
                    await conn.fetch(
                        f"SELECT {SUBSCRIPTION_COLUMNS} FROM {SUBSCRIPTIONS_FROM} "
                        "WHERE s.active AND s.id > $1 ORDER BY s.id LIMIT $2",
                        pager.after,
                        pager.chunk,
                    )
                )
        return pager.page()

    async def update_subscription(
        self, subscription_id: int, changes: SubscriptionChanges
    ) -> Subscription | None:
        async with self._transaction() as conn:
            await self._catalog_change(conn)
            current = await fetch_subscription(conn, subscription_id)
            if current is None:
                return None
            spec = changed_spec(current.spec, changes)
            if spec.filter != current.spec.filter and spec.group is not None:
                await change_group_filter(conn, subscription_id, spec)
            await conn.execute(
                "UPDATE subscriptions SET url = $1, filter = $2, settings = $3 WHERE id = $4",
                spec.url,
                dump_filter(spec.filter),
                dump_settings(spec),
                subscription_id,
            )
            if current.connection_id is not None:
                await conn.execute(
                    "UPDATE connections SET client_url = $1 WHERE id = $2",
                    spec.url,
                    current.connection_id,
                )
            return await fetch_subscription(conn, subscription_id)

    async def set_paused(self, subscription_id: int, paused: bool) -> Subscription | None:
        async with self._transaction() as conn:
            await self._catalog_change(conn)
            await conn.execute(
                "UPDATE subscriptions SET paused = $1 WHERE id = $2 AND active",
                paused,
                subscription_id,
            )
            return await fetch_subscription(conn, subscription_id)

    async def resume(self, subscription_id: int, now: float) -> Subscription | None:
        async with self._transaction() as conn:
            await self._catalog_change(conn)
            current = await fetch_subscription(conn, subscription_id)
            if current is None:
                return None
            await conn.execute(
                "UPDATE subscriptions SET paused = false, disabled_at = NULL, "
                "disabled_reason = NULL, failing_since = NULL WHERE id = $1",
                subscription_id,
            )
            resumed = await fetch_subscription(conn, subscription_id)
            assert resumed is not None
            if current.disabled is not None:
                event = subscription_resumed(resumed, now, current.disabled.at)
                await publish_events(conn, await self._current_routes(conn), [event], now)
            return resumed

    async def failing_subscriptions(self) -> list[Subscription]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {SUBSCRIPTION_COLUMNS} FROM {SUBSCRIPTIONS_FROM} WHERE {_FAILING} "
                "ORDER BY s.id"
            )
        return [subscription_from_row(row) for row in rows]

    async def disable_subscription(
        self, subscription_id: int, *, failing_since: float, now: float, reason: str
    ) -> Subscription | None:
        async with self._transaction() as conn:
            await self._catalog_change(conn)
            disabled = await conn.fetchval(
                "UPDATE subscriptions s SET disabled_at = $1, disabled_reason = $2 "
                f"WHERE s.id = $3 AND s.failing_since = $4 AND {_FAILING} RETURNING s.id",
                now,
                reason,
                subscription_id,
                failing_since,
            )
            if disabled is None:
                return None
            subscription = await fetch_subscription(conn, subscription_id)
            assert subscription is not None
            routes = await self._current_routes(conn)
            await publish_events(conn, routes, [subscription_disabled(subscription)], now)
            return subscription

    async def remove_subscription(self, subscription_id: int, now: float) -> Subscription | None:
        async with self._transaction() as conn:
            await self._catalog_change(conn)
            subscription = await fetch_subscription(conn, subscription_id)
            if subscription is None:
                return None
            if subscription.connection_id is not None:
                await conn.execute(
                    "UPDATE connections SET disconnected_at = $1 "
                    "WHERE id = $2 AND disconnected_at IS NULL",
                    now,
                    subscription.connection_id,
                )
            await self._end_subscription(conn, subscription_id, now)
            return subscription

    async def rotate_secret(
        self, subscription_id: int, secret: str, *, now: float, overlap_seconds: float
    ) -> bool:
        async with self._transaction() as conn:
            await self._catalog_change(conn)
            status = await conn.execute(
                "UPDATE subscriptions SET previous_secret = secret, "
                "previous_secret_until = $1, secret = $2 WHERE id = $3 AND active",
                now + overlap_seconds,
                secret,
                subscription_id,
            )
            return row_count(status) > 0

    async def remove_connection(self, connection_id: int, now: float) -> Connection | None:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {CONNECTION_COLUMNS} FROM connections "
                "WHERE id = $1 AND disconnected_at IS NULL FOR UPDATE",
                connection_id,
            )
            if row is None:
                return None
            connection = connection_from_row(row)
            await self._catalog_change(conn)
            await conn.execute(
                "UPDATE connections SET disconnected_at = $1 WHERE id = $2", now, connection_id
            )
            if connection.mode is Mode.RECEIVE:
                await self._end_subscription(conn, connection_id, now)
            return connection

    async def _end_subscription(self, conn: PgConnection, subscription_id: int, now: float) -> None:
        ended = await conn.fetchrow(
            "UPDATE subscriptions SET active = false WHERE id = $1 AND active RETURNING group_id",
            subscription_id,
        )
        if ended is None:
            return
        group_id = ended[0]
        if group_id is not None:
            others = await conn.fetchval(
                "SELECT count(*) FROM subscriptions WHERE group_id = $1 AND active", group_id
            )
            if others:
                # The group's work stays for the other members; what this member held
                # is due again now rather than when its lease would run out.
                await conn.execute(
                    "UPDATE deliveries SET lease = NULL, leased_by = NULL, due_at = $1 "
                    "WHERE group_id = $2 AND subscription_id = $3 AND state = 'pending' "
                    "AND lease IS NOT NULL",
                    now,
                    group_id,
                    subscription_id,
                )
                return
            await conn.execute("UPDATE groups SET active = false WHERE id = $1", group_id)
            rows = await conn.fetch(
                "DELETE FROM deliveries WHERE group_id = $1 AND state <> 'delivered' "
                "RETURNING message_seq",
                group_id,
            )
        else:
            # Dead letters go too: nothing could redrive them to a receiver that is
            # gone. Delivered rows stay, as the message's history, until it is swept.
            rows = await conn.fetch(
                "DELETE FROM deliveries WHERE subscription_id = $1 AND group_id IS NULL "
                "AND state <> 'delivered' RETURNING message_seq",
                subscription_id,
            )
        await _finish_messages(conn, {row[0]: now for row in rows})

    async def connection(self, connection_id: int) -> Connection | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {CONNECTION_COLUMNS} FROM connections "
                "WHERE id = $1 AND disconnected_at IS NULL",
                connection_id,
            )
        return None if row is None else connection_from_row(row)

    async def connections(self) -> list[Connection]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {CONNECTION_COLUMNS} FROM connections WHERE disconnected_at IS NULL"
            )
        return [connection_from_row(row) for row in rows]

    # Publishing.

    async def publish(
        self,
        messages: Sequence[NewMessage],
        *,
        max_backlog: int = 0,
        dedup_since: float = 0.0,
    ) -> list[Published]:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        return await self._publishes.submit(PublishRequest(messages, max_backlog, dedup_since))

    async def _flush_publishes(
        self, requests: Sequence[PublishRequest]
    ) -> list[list[Published] | BaseException]:
        try:
            return await self._publish_together(requests)
        except StoreUnavailable:
            raise
        except Exception:
            if len(requests) == 1:
                raise
        # One request spoiled the shared transaction: give each its own, so only the
        # one at fault hears of it.
        outcomes: list[list[Published] | BaseException] = []
        for request in requests:
            try:
                outcomes.extend(await self._publish_together([request]))
            except Exception as exc:  # noqa: BLE001 - handed to its own caller
                outcomes.append(exc)
        return outcomes

    def offer_claim(self, offer: ClaimOffer, answer: Callable[[Claim | None], None]) -> bool:
        self._offer = (offer, answer)
        return True

    def withdraw_claim(self) -> bool:
        # Not taken back: a publish transaction took it, and will answer.
        taken_back = self._offer is not None
        self._offer = None
        return taken_back

    async def _publish_together(
        self, requests: Sequence[PublishRequest]
    ) -> list[list[Published] | BaseException]:
        taken = _TakenOffer()  # the dispatcher's offer, if this transaction takes it
        try:
            outcomes = await self._publish_and_claim(requests, taken)
        except BaseException:
            if taken.answer is not None:
                taken.answer(None)  # rolled back: nothing was leased
            raise
        if taken.answer is None:
            return outcomes
        # The dispatcher holds what was leased before any of these publishes returns.
        taken.answer(taken.claim)
        if not taken.took_all:
            return outcomes
        return [
            [Published(p.id, p.duplicate, p.deliveries, claimed=True) for p in outcome]
            if isinstance(outcome, list)
            else outcome
            for outcome in outcomes
        ]

    async def _publish_and_claim(
        self, requests: Sequence[PublishRequest], taken: _TakenOffer
    ) -> list[list[Published] | BaseException]:
        """The publishes, and the claim offered (`offer_claim`) if they make
        deliveries due now, noted in `taken`."""
        # Shared: publishes on every node go side by side, and a subscription change
        # waits until they commit (and they for it), so no message is routed by a table
        # that a committed change has made stale.
        async with self._transaction(
            first=f"SELECT pg_advisory_xact_lock_shared({CATALOG_LOCK})"
        ) as conn:
            version, stored = await one(
                conn,
                "SELECT (SELECT version FROM catalog), (SELECT sum(stored)::bigint FROM tallies)",
            )
            routes = await self._load_routes_if_stale(conn, version)
            plan = PublishPlan(routes)
            outcomes: list[list[Published] | BaseException] = []
            accepted: list[tuple[int, PublishRequest]] = []
            for request in requests:
                if request.max_backlog > 0 and stored + len(request.messages) > request.max_backlog:
                    outcomes.append(
                        BacklogFull(
                            f"the broker holds {request.max_backlog} undelivered messages, "
                            "its --max-backlog"
                        )
                    )
                    continue
                stored += len(request.messages)
                accepted.append((len(outcomes), request))
                outcomes.append([])
            plan.held = await held_idempotency_keys(conn, [r for _, r in accepted])
            for index, request in accepted:
                outcomes[index] = [plan.add(message) for message in request.messages]
            if self._offer is None or not plan.made.due_now:
                await plan.write(conn)
                return outcomes
            (offer, taken.answer), self._offer = self._offer, None
            await plan.write(conn, wake=False)
            taken.claim = await self._claim_in(
                conn,
                routes,
                limit=offer.limit,
                now=offer.clock(),
                lease_seconds=offer.lease_seconds,
                per_subscription_limit=offer.per_subscription_limit,
                busy=offer.busy,
            )
            taken.took_all = plan.made.taken_by(taken.claim)
            if not taken.took_all:
                # What the claim left waits for the others' claims (and pulls).
                await conn.execute("SELECT pg_notify($1, '')", DUE_CHANNEL)
            return outcomes

    # Reading messages, and forgetting them.

    async def message(self, message_id: str, now: float) -> StoredMessage | None:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                "SELECT seq, topic, body, attributes, ordering_key, published_at, deliver_at "
                "FROM messages WHERE id = $1",
                message_id,
            )
            if row is None:
                return None
            rows = await conn.fetch(
                f"SELECT d.id, {DELIVERY_STATUS_COLUMNS} FROM deliveries d "
                "LEFT JOIN groups g ON g.id = d.group_id WHERE d.message_seq = $1 ORDER BY d.id",
                row["seq"],
            )
            kept = histories(
                await conn.fetch(
                    f"SELECT {HISTORY_COLUMNS} FROM delivery_attempts WHERE message_seq = $1 "
                    "ORDER BY delivery_id, id",
                    row["seq"],
                )
            )
        return StoredMessage(
            id=message_id,
            topic=row["topic"],
            body=row["body"],
            attributes=load_attributes(row["attributes"]),
            ordering_key=row["ordering_key"],
            published_at=row["published_at"],
            deliver_at=row["deliver_at"],
            deliveries=[
                delivery_status(now, *delivery, history=kept.get(delivery_id, ()))
                for delivery_id, *delivery in rows
            ],
        )

    async def sweep(self, *, delivered_before: float, dedup_before: float) -> int:
        removed = 0
        while True:
            # Each chunk is its own short transaction: publishes and acks go in between,
            # and vacuum can reclaim what a chunk deleted as soon as it commits.
            async with self._transaction(durable=False) as conn:
                # One node sweeps at a time; the others find the work in hand.
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SWEEP_LOCK):
                    return removed
                seqs = await conn.fetch(
                    "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages "
                    "WHERE done_at IS NOT NULL AND done_at < $1 LIMIT $2 "
                    "FOR UPDATE SKIP LOCKED) RETURNING seq",
                    delivered_before,
                    SWEEP_CHUNK,
                )
                swept = [row[0] for row in seqs]
                await conn.execute(
                    "DELETE FROM deliveries WHERE message_seq = ANY($1::bigint[])", swept
                )
                await conn.execute(
                    "DELETE FROM delivery_attempts WHERE message_seq = ANY($1::bigint[])", swept
                )
                keys = row_count(
                    await conn.execute(
                        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM "
                        "idempotency_keys WHERE created_at < $1 LIMIT $2 "
                        "FOR UPDATE SKIP LOCKED))",
                        dedup_before,
                        SWEEP_CHUNK,
                    )
                )
            removed += len(seqs)
            if len(seqs) < SWEEP_CHUNK and keys < SWEEP_CHUNK:
                return removed

    # Claiming and settling deliveries.

    async def expire(self, *, now: float, max_age: float) -> int:
        async with self._connection() as conn:
            routes = await self._current_routes(conn)
        expired = 0
        for target in expiry_targets(routes, now=now, max_age=max_age):
            grouped = target.group_id is not None
            while True:
                # Chunk by chunk, each its own short transaction, as in `sweep`; under
                # the catalog lock, taken first, since each dead letter's event is routed.
                routed = f"SELECT pg_advisory_xact_lock_shared({CATALOG_LOCK})"
                async with self._transaction(durable=False, first=routed) as conn:
                    rows = await conn.fetch(
                        sql.EXPIRE_FOR_GROUP if grouped else sql.EXPIRE_FOR_SUBSCRIPTION,
                        now,
                        target.error,
                        target.subscription_id,
                        target.group_id if grouped else target.subscription_id,
                        target.cutoff,
                        EXPIRE_CHUNK,
                    )
                    if rows:
                        routes = await self._current_routes(conn)
                        dead = [(r[0], r[1], r[2], r[3]) for r in rows]
                        events = expiry_events(routes, dead, target.error, now)
                        await publish_events(conn, routes, events, now)
                count = len(rows)
                expired += count
                if count < EXPIRE_CHUNK:
                    break
        return expired

    async def claim(
        self,
        *,
        limit: int,
        now: float,
        lease_seconds: float,
        per_subscription_limit: int,
        busy: Mapping[int, int],
        for_subscription: int | None = None,
    ) -> Claim:
        async with self._transaction(durable=False) as conn:
            return await self._claim_in(
                conn,
                await self._current_routes(conn),
                limit=limit,
                now=now,
                lease_seconds=lease_seconds,
                per_subscription_limit=per_subscription_limit,
                busy=busy,
                for_subscription=for_subscription,
            )

    async def _claim_in(
        self,
        conn: PgConnection,
        routes: Routes,
        *,
        limit: int,
        now: float,
        lease_seconds: float,
        per_subscription_limit: int,
        busy: Mapping[int, int],
        for_subscription: int | None = None,
    ) -> Claim:
        """`claim`, in the transaction under way."""
        lease = new_lease_token()
        builder = ClaimBuilder(
            routes,
            limit=limit,
            now=now,
            lease=lease,
            per_subscription_limit=per_subscription_limit,
            busy=busy,
            for_subscription=for_subscription,
        )
        await claim_rounds(
            conn, builder, Lease(now + lease_seconds, lease, self.node), limit=limit, now=now
        )
        return builder.finish()

    async def _settle(self, outcome: Settlement) -> None:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        await self._outcomes.submit(outcome)

    async def _flush_outcomes(self, outcomes: Sequence[Settlement]) -> list[None]:
        acks = sorted(
            (o for o in outcomes if o.due_at is None and not o.dead),
            key=lambda o: o.delivery.delivery_id,
        )
        retries = [o for o in outcomes if o.due_at is not None]
        deaths = [o for o in outcomes if o.dead]
        turns = endpoint_health.turns(outcomes)
        # A dead letter publishes its event, routed as a publish is: under the catalog
        # lock, taken first (before any row lock a catalog change might wait for).
        routed = f"SELECT pg_advisory_xact_lock_shared({CATALOG_LOCK})" if deaths else ""
        # A large batch is planned for its own arrays: a generic plan, made once per
        # connection while the tables looked small, can join them in a nested loop
        # (measured on a freshly filled database: 150 µs per acked message in batches
        # of 500, 77 planned per call). Small batches, the dispatcher's, keep their
        # cached plans: planning each one cost more than it saved (bench delivery).
        custom = "SET LOCAL plan_cache_mode = force_custom_plan" if len(outcomes) >= 64 else ""
        first = "; ".join(statement for statement in (routed, custom) if statement)
        async with self._transaction(durable=False, first=first) as conn:
            # The failed attempts' history (the attempt that delivered goes on its
            # delivery's row), with each subscription's failing_since
            # (endpoint_health.py), in one statement.
            rows = [attempt_row(outcome) for outcome in failed(outcomes)]
            columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * 9
            await conn.execute(
                _RECORD_ATTEMPTS_AND_TURNS, *columns, *endpoint_health.postgres_parameters(turns)
            )
            if rows:
                await conn.execute(sql.TRIM_ATTEMPTS, failures(outcomes), MAX_ATTEMPTS_KEPT)
            if retries:
                await conn.execute(sql.RETRY, *_outcome_arrays(retries, due=True))
            if deaths:
                await self._dead_letter(conn, deaths)
            if acks:
                acked = await conn.fetch(
                    sql.ACK,
                    [o.delivery.delivery_id for o in acks],
                    [o.delivery.lease for o in acks],
                    [o.at for o in acks],
                    [o.status for o in acks],
                    [o.attempted_at for o in acks],
                    [o.duration for o in acks],
                )
                await _finish_messages(
                    conn, {row[0]: row[1] for row in acked}, delivered=len(acked), locked=True
                )
        return [None] * len(outcomes)

    async def _dead_letter(self, conn: PgConnection, deaths: Sequence[Settlement]) -> None:
        """Dead-letter these, and publish an event for each whose lease held (so each is
        reported once however often it is settled)."""
        dead = {
            row[0] for row in await conn.fetch(sql.DEAD_LETTER, *_outcome_arrays(deaths, due=False))
        }
        reported = [o for o in deaths if o.delivery.delivery_id in dead]
        if reported:
            routes = await self._current_routes(conn)
            events = dead_letter_events(routes, reported)
            await publish_events(conn, routes, events, max(o.at for o in reported))

    async def renew(
        self, deliveries: Sequence[ClaimedDelivery], *, now: float, lease_seconds: float
    ) -> list[int]:
        async with self._transaction(durable=False) as conn:
            kept = {
                row[0]
                for row in await conn.fetch(
                    sql.RENEW,
                    now + lease_seconds,
                    [d.delivery_id for d in deliveries],
                    [d.lease for d in deliveries],
                )
            }
        return [d.delivery_id for d in deliveries if d.delivery_id not in kept]

    async def leased(
        self, subscription_id: int, leases: Collection[tuple[int, str]], *, now: float
    ) -> list[ClaimedDelivery]:
        async with self._transaction(durable=False) as conn:
            routes = await self._current_routes(conn)
            rows = await conn.fetch(sql.LEASED, [i for i, _ in leases], subscription_id, now)
        return leased_deliveries(routes, subscription_id, [tuple(r) for r in rows], leases)

    async def release(
        self, deliveries: Sequence[ClaimedDelivery], now: float, *, attempted: bool = False
    ) -> None:
        async with self._transaction(durable=False) as conn:
            await conn.execute(
                sql.RELEASE,
                now,
                [d.delivery_id for d in deliveries],
                [d.lease for d in deliveries],
                0 if attempted else 1,
            )

    # API keys.

    async def add_key(self, key: ApiKey) -> None:
        async with self._transaction() as conn:
            await self._catalog_change(conn)
            await conn.execute(
                "INSERT INTO api_keys (id, role, topics, secret_hash, created_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                key.id,
                key.role.value,
                "\n".join(key.topics),
                key.secret_hash,
                key.created_at,
            )

    async def keys(self) -> list[ApiKey]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT id, role, topics, secret_hash, created_at FROM api_keys "
                "WHERE revoked_at IS NULL ORDER BY created_at, id"
            )
        return [
            ApiKey(key_id, Role(role), tuple(filter(None, topics.split("\n"))), hashed, at)
            for key_id, role, topics, hashed, at in rows
        ]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        async with self._transaction() as conn:
            await self._catalog_change(conn)
            status = await conn.execute(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                now,
                key_id,
            )
        return row_count(status) > 0

    # Dead letters.

    async def dead_letters(
        self, *, subscription_id: int | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[DeadLetter]:
        dead_at, delivery_id = dead_letter_cursor(cursor)
        query = (
            f"{DEAD_LETTER_QUERY} AND (d.dead_at, d.id) > ($1, $2) "
            "AND ($3::bigint IS NULL OR d.subscription_id = $3) "
            "ORDER BY d.dead_at, d.id LIMIT $4"
        )
        async with self._connection() as conn:
            rows = await conn.fetch(query, dead_at, delivery_id, subscription_id, limit + 1)
        return dead_letter_page(rows, limit)

    async def redrive(
        self, now: float, receiver_id: int | None = None, *, message_id: str | None = None
    ) -> int:
        async with self._transaction() as conn:
            status = await conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, due_at = $1, "
                "dead_at = NULL, lease = NULL, leased_by = NULL WHERE state = 'dead' AND ("
                "(group_id IS NULL AND subscription_id IN "
                "(SELECT id FROM subscriptions WHERE active)) OR "
                "group_id IN (SELECT id FROM groups WHERE active)) "
                f"AND {_ONE_OR_ALL_DEAD_LETTERS.format(subscription='$2', message='$3')}",
                now,
                receiver_id,
                message_id,
            )
            if row_count(status):
                await conn.execute("SELECT pg_notify($1, '')", DUE_CHANNEL)
        return row_count(status)

    async def purge_dead_letters(
        self,
        subscription_id: int | None = None,
        *,
        now: float,
        message_id: str | None = None,
    ) -> int:
        async with self._transaction() as conn:
            rows = await conn.fetch(
                "DELETE FROM deliveries WHERE state = 'dead' AND "
                f"{_ONE_OR_ALL_DEAD_LETTERS.format(subscription='$1', message='$2')} "
                "RETURNING message_seq",
                subscription_id,
                message_id,
            )
            await _finish_messages(conn, {row[0]: now for row in rows})
        return len(rows)

    # Topics and figures.

    async def topics(self, *, cursor: str | None = None, limit: int = 100) -> Page[TopicInfo]:
        after = name_cursor(cursor)
        async with self._transaction() as conn:
            names = [
                row[0]
                for row in await conn.fetch(
                    "SELECT name FROM topics WHERE name > $1 ORDER BY name LIMIT $2",
                    after,
                    limit + 1,
                )
            ]
            page = [await self._topic_info(conn, name) for name in names[:limit]]
        more = len(names) > limit
        return Page([t for t in page if t is not None], names[limit - 1] if more else None)

    async def topic(self, name: str) -> TopicInfo | None:
        async with self._transaction() as conn:
            return await self._topic_info(conn, name)

    async def _topic_info(self, conn: PgConnection, name: str) -> TopicInfo | None:
        row = await conn.fetchrow(
            "SELECT (SELECT coalesce(sum(published), 0) FROM topic_counts WHERE topic = $1) "
            "FROM topics WHERE name = $1",
            name,
        )
        if row is None:
            return None
        backlog, oldest = await one(
            conn,
            "SELECT count(*), min(published_at) FROM messages m WHERE topic = $1 "
            "AND done_at IS NULL AND EXISTS (SELECT 1 FROM deliveries d "
            "WHERE d.message_seq = m.seq AND d.state = 'pending')",
            name,
        )
        routes = await self._current_routes(conn)
        subscriptions = routes.subscriptions_on(name)
        return TopicInfo(name, int(row[0]), backlog, oldest, subscriptions)

    async def stats(self) -> BrokerStats:
        async with self._transaction() as conn:
            by_mode = {
                row[0]: row[1]
                for row in await conn.fetch(
                    "SELECT mode, count(*) FROM connections WHERE disconnected_at IS NULL "
                    "GROUP BY mode"
                )
            }
            pending, delivered = await one(
                conn,
                "SELECT (SELECT count(*) FROM deliveries WHERE state = 'pending'), "
                "(SELECT sum(delivered)::bigint FROM tallies)",
            )
        return BrokerStats(
            receivers=by_mode.get(Mode.RECEIVE.value, 0),
            senders=by_mode.get(Mode.SEND.value, 0),
            queue_length=pending,
            completed=int(delivered),
        )

    async def ping(self) -> None:
        # After writes were refused while reads still work, a write instead: only one
        # that commits makes the store ready again (as the SQLite store does).
        failed = self._write_failure
        if failed is None:
            async with self._connection() as conn:
                await conn.fetchval("SELECT 1")
            return
        try:
            async with self._transaction() as conn:
                await conn.execute("UPDATE catalog SET version = version")
        except StoreUnavailable:
            raise StoreUnavailable(f"the store cannot write: {self._write_failure}") from None

    async def topic_backlogs(self) -> list[TopicBacklog]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT topic, count(*), min(published_at) FROM messages m WHERE EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.message_seq = m.seq "
                "AND d.state = 'pending') GROUP BY topic ORDER BY topic"
            )
        return [TopicBacklog(topic, count, oldest) for topic, count, oldest in rows]

    async def dead_letter_count(self) -> int:
        async with self._connection() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM deliveries WHERE state = 'dead'"))


_SAVE_HEALTH = save_health_sql([f"${n}" for n in range(1, len(HEALTH_COLUMNS) + 2)])
_RECORD_ATTEMPTS_AND_TURNS = endpoint_health.POSTGRES_CTE + sql.RECORD_ATTEMPTS
# A push subscription that could be disabled: failing, active, neither paused nor
# disabled already (`s`: the subscriptions table).
_FAILING = (
    "s.failing_since IS NOT NULL AND s.active AND NOT s.paused AND s.disabled_at IS NULL "
    "AND s.kind = 'push'"
)

# Dead letters of one subscription, of one message, or both (the one dead letter); a
# null parameter leaves that condition out.
_ONE_OR_ALL_DEAD_LETTERS = (
    "({subscription}::bigint IS NULL OR subscription_id = {subscription}) AND "
    "({message}::text IS NULL OR message_seq = (SELECT seq FROM messages WHERE id = {message}))"
)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool runs on a connection handed back, after rolling back a transaction
    left open: nothing. asyncpg's default (RESET ALL, CLOSE ALL, UNLISTEN *, release
    advisory locks) is a round trip per use, and undoes what we never do: our settings
    are SET LOCAL, our advisory locks end with their transaction, and LISTEN has a
    connection of its own."""


def _never_stale() -> Routes:
    raise AssertionError("routes are loaded before they are read")


async def _finish_messages(
    conn: PgConnection, done_at: dict[int, float], *, delivered: int = 0, locked: bool = False
) -> None:
    """Mark messages with nothing left to deliver as done (at the time given for each):
    they stay for the retention window, and come off the stored-message tally.
    `delivered` acks go on the tally too. `locked`: the caller holds the messages' row
    locks already (the ack statement takes them)."""
    if not done_at:
        return
    seqs = sorted(done_at)
    if not locked:
        await conn.execute(sql.LOCK_MESSAGES, seqs)
    await conn.execute(
        sql.FINISH_MESSAGES,
        seqs,
        [done_at[s] for s in seqs],
        delivered,
        secrets.randbelow(TALLY_SLOTS),
    )


def _outcome_arrays(outcomes: Sequence[Settlement], *, due: bool) -> list[list[Any]]:
    return [
        [o.delivery.delivery_id for o in outcomes],
        [o.delivery.lease for o in outcomes],
        [o.due_at if due else o.at for o in outcomes],
        [o.error for o in outcomes],
        [o.status for o in outcomes],
    ]


@dataclass(slots=True)
class _TakenOffer:
    """The dispatcher's claim, as a publish transaction took it (`offer_claim`)."""

    answer: Callable[[Claim | None], None] | None = None
    claim: Claim | None = None
    took_all: bool = False  # it took every delivery the transaction's publishes made
