"""The PostgreSQL schema as a versioned list of migrations, applied under a lock.

Add a migration by appending to MIGRATIONS; never edit one that has shipped. The
first node to start migrates while holding an advisory lock; nodes starting at the
same moment wait for it and then find nothing left to do.

The tables mirror the SQLite store's, with three differences that several nodes
need: ids are handed out through `issued_ids` (a primary key decides a race, not a
read before the write); the figures every publish and ack would otherwise update in
one row (`tallies`, `topic_counts`) are spread over slots, so nodes do not queue on
one row lock; and `catalog` carries a version that every change to subscriptions,
groups or keys bumps, so each node knows when its cached routes are stale.
"""

from __future__ import annotations

import asyncpg

from mqpy.model.errors import SchemaTooNew

# Slots of the spread counters: a transaction updates one, a reader sums them all.
TALLY_SLOTS = 16
# pg_advisory_xact_lock keys of our own (any 64-bit numbers; these spell "mqpy...").
MIGRATION_LOCK = 0x6D71_7079_0001
CATALOG_LOCK = 0x6D71_7079_0002
SWEEP_LOCK = 0x6D71_7079_0003
# NOTIFY channels: deliveries became due; connections, subscriptions or keys changed.
DUE_CHANNEL = "mqpy_due"
CATALOG_CHANNEL = "mqpy_catalog"

MIGRATIONS: list[str] = [
    # 1: everything the SQLite store has at its schema 3.
    f"""
    CREATE TABLE issued_ids (id bigint PRIMARY KEY);
    CREATE TABLE connections (
        id bigint PRIMARY KEY,
        mode text NOT NULL,
        client_url text NOT NULL,
        topic text NOT NULL,
        connected_at double precision NOT NULL,
        disconnected_at double precision,
        key_id text
    );
    CREATE INDEX connections_open ON connections (id) WHERE disconnected_at IS NULL;
    CREATE TABLE groups (
        id bigserial PRIMARY KEY,
        topic text NOT NULL,
        name text NOT NULL,
        filter text,
        created_at double precision NOT NULL,
        active boolean NOT NULL DEFAULT true
    );
    CREATE UNIQUE INDEX groups_active ON groups (topic, name) WHERE active;
    CREATE TABLE subscriptions (
        id bigint PRIMARY KEY,
        topic text NOT NULL,
        url text NOT NULL,
        created_at double precision NOT NULL,
        active boolean NOT NULL DEFAULT true,
        secret text,
        previous_secret text,
        previous_secret_until double precision,
        group_id bigint,
        filter text,
        settings text,
        paused boolean NOT NULL DEFAULT false,
        key_id text,
        connection_id bigint
    );
    CREATE INDEX subscriptions_active ON subscriptions (id) WHERE active;
    CREATE TABLE messages (
        seq bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        topic text NOT NULL,
        body text NOT NULL,
        publisher_id bigint,
        published_at double precision NOT NULL,
        routed boolean NOT NULL,
        attributes text,
        ordering_key text,
        deliver_at double precision,
        done_at double precision
    );
    CREATE INDEX messages_waiting ON messages (topic, seq) WHERE NOT routed;
    CREATE INDEX messages_done ON messages (done_at) WHERE done_at IS NOT NULL;
    -- A pending delivery is due at due_at. Claiming it moves due_at to the end of the
    -- lease, so an expired lease simply makes it due again (a visibility timeout);
    -- `lease` is the claim's own token, so a node whose lease ran out and was taken
    -- over can no longer ack, retry or renew it. `leased_by` names the node.
    CREATE TABLE deliveries (
        id bigserial PRIMARY KEY,
        message_seq bigint NOT NULL,
        subscription_id bigint,
        group_id bigint,
        ordering_key text,
        state text NOT NULL CHECK (state IN ('pending', 'dead', 'delivered')),
        attempts integer NOT NULL DEFAULT 0,
        due_at double precision NOT NULL,
        lease text,
        leased_by text,
        last_error text,
        last_status integer,
        dead_at double precision,
        delivered_at double precision
    );
    CREATE INDEX deliveries_due ON deliveries (subscription_id, due_at, id)
        WHERE state = 'pending' AND group_id IS NULL;
    CREATE INDEX deliveries_group_due ON deliveries (group_id, due_at, id)
        WHERE state = 'pending' AND group_id IS NOT NULL;
    CREATE INDEX deliveries_ordering ON deliveries (ordering_key, id)
        WHERE state = 'pending' AND ordering_key IS NOT NULL;
    CREATE INDEX deliveries_dead ON deliveries (dead_at, id) WHERE state = 'dead';
    CREATE INDEX deliveries_by_message ON deliveries (message_seq, state);
    CREATE TABLE api_keys (
        id text PRIMARY KEY,
        role text NOT NULL,
        topics text NOT NULL,
        secret_hash text NOT NULL,
        created_at double precision NOT NULL,
        revoked_at double precision
    );
    CREATE TABLE topics (
        name text PRIMARY KEY,
        first_seen double precision NOT NULL
    );
    CREATE TABLE topic_counts (
        topic text NOT NULL,
        slot integer NOT NULL,
        published bigint NOT NULL,
        PRIMARY KEY (topic, slot)
    );
    CREATE TABLE tallies (
        slot integer PRIMARY KEY,
        stored bigint NOT NULL DEFAULT 0,  -- messages not fully delivered
        delivered bigint NOT NULL DEFAULT 0  -- deliveries acknowledged, ever
    );
    INSERT INTO tallies (slot) SELECT generate_series(0, {TALLY_SLOTS - 1});
    CREATE TABLE idempotency_keys (
        key_id text NOT NULL,
        idempotency_key text NOT NULL,
        message_id text NOT NULL,
        created_at double precision NOT NULL,
        PRIMARY KEY (key_id, idempotency_key)
    );
    CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
    CREATE TABLE nodes (
        name text PRIMARY KEY,
        started_at double precision NOT NULL,
        seen_at double precision NOT NULL,
        address text NOT NULL,
        held integer NOT NULL,
        in_flight integer NOT NULL
    );
    CREATE TABLE catalog (version bigint NOT NULL);
    INSERT INTO catalog (version) VALUES (1);
    -- The hot tables churn: every delivery is inserted, updated a few times and
    -- deleted within --message-retention. Vacuum them after 1% of rows changed
    -- rather than the default 20%, so dead rows never grow to a multiple of live ones.
    ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
    ALTER TABLE messages SET (autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
    ALTER TABLE idempotency_keys SET (autovacuum_vacuum_scale_factor = 0.02);
    -- Rewritten by every transaction: keep room on each page for HOT updates.
    ALTER TABLE tallies SET (fillfactor = 10, autovacuum_vacuum_scale_factor = 0.0,
        autovacuum_vacuum_threshold = 1000);
    ALTER TABLE topic_counts SET (fillfactor = 50);
    """,
    # 2: each delivery's attempts (store/history.py), written with the settlements
    # they record. By message: a message's journey is read, and swept, by its seq.
    """
    CREATE TABLE delivery_attempts (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        message_seq bigint NOT NULL,
        delivery_id bigint NOT NULL,
        attempt integer NOT NULL,
        subscription_id bigint NOT NULL,
        sent_at double precision NOT NULL,
        duration double precision,
        outcome text NOT NULL,
        status integer,
        error text
    );
    CREATE INDEX delivery_attempts_by_message ON delivery_attempts (message_seq, delivery_id, id);
    ALTER TABLE delivery_attempts SET (autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);
    """,
    # 3: each receiver's health (domain.ReceiverHealth), saved every few seconds and at
    # shutdown by each node, so `mqpy status` still knows it after a restart.
    """
    CREATE TABLE receiver_health (
        subscription_id bigint PRIMARY KEY,
        last_success_at double precision,
        last_failure_at double precision,
        consecutive_failures integer NOT NULL,
        unavailable boolean NOT NULL,
        last_error text,
        last_status integer,
        last_message_id text,
        last_attempt integer,
        changed_at double precision NOT NULL
    );
    """,
    # 4: pull subscriptions: consumers ask for their deliveries instead of the broker
    # POSTing them (their url is empty; their ack deadline is in settings).
    """
    ALTER TABLE subscriptions ADD COLUMN kind text NOT NULL DEFAULT 'push';
    """,
    # 5: the attempt that delivered, kept on its delivery's row (store/history.py): a
    # delivery that succeeds at once writes no history row of its own.
    """
    ALTER TABLE deliveries ADD COLUMN sent_at double precision,
        ADD COLUMN duration double precision;
    """,
    # 6: one rule for messages nobody was subscribed to: they are done at once, kept for
    # the retention window, and reach a later subscription only by its start_at or a
    # seek. Those still waiting for a first receiver are done as of this upgrade (so
    # the whole window is left to replay them), off the count of undelivered messages;
    # `routed` goes (and its index with it).
    """
    UPDATE tallies SET stored = stored - (SELECT count(*) FROM messages
        WHERE NOT routed AND done_at IS NULL) WHERE slot = 0;
    UPDATE messages SET done_at = extract(epoch FROM clock_timestamp())
        WHERE NOT routed AND done_at IS NULL;
    ALTER TABLE messages DROP COLUMN routed;
    """,
    # 7: endpoint health (store/endpoint_health.py): since when every attempt to a push
    # subscription failed, written only when that changes, and when and why the
    # broker disabled it for failing too long.
    """
    ALTER TABLE subscriptions ADD COLUMN failing_since double precision;
    ALTER TABLE subscriptions ADD COLUMN disabled_at double precision;
    ALTER TABLE subscriptions ADD COLUMN disabled_reason text;
    CREATE INDEX subscriptions_failing ON subscriptions (failing_since)
        WHERE failing_since IS NOT NULL AND active;
    """,
]


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the database up to the newest schema; returns the resulting version.

    One transaction under a transaction-scoped advisory lock (safe behind PgBouncer in
    transaction mode, where a session lock could outlive its session's connection):
    nodes starting together migrate one at a time, the first does the work, the
    others find it done. PostgreSQL's DDL is transactional, so a migration that fails
    leaves nothing half done."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS mqpy_schema (version integer NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM mqpy_schema") or 0
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"the database was written by a newer mq-py (schema {version}, this one "
                f"knows {len(MIGRATIONS)}); upgrade mq-py to use it"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO mqpy_schema (version) VALUES ($1)", number)
    return len(MIGRATIONS)
