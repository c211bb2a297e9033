"""The SQLite schema as a versioned list of migrations (PRAGMA user_version).

Add a migration by appending to MIGRATIONS; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3

from mqpy.model.errors import SchemaTooNew

MIGRATIONS: list[str] = [
    # 1: connections, subscriptions, messages, deliveries, counters.
    """
    CREATE TABLE connections (
        id INTEGER PRIMARY KEY,
        mode TEXT NOT NULL,
        client_url TEXT NOT NULL,
        topic TEXT NOT NULL,
        connected_at REAL NOT NULL,
        disconnected_at REAL
    );
    CREATE TABLE subscriptions (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        url TEXT NOT NULL,
        created_at REAL NOT NULL,
        active INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX subscriptions_by_topic ON subscriptions (topic) WHERE active = 1;
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        body TEXT NOT NULL,
        publisher_id INTEGER,
        published_at REAL NOT NULL,
        routed INTEGER NOT NULL
    );
    CREATE INDEX messages_waiting ON messages (topic, seq) WHERE routed = 0;
    -- A pending delivery is due at due_at. Claiming it moves due_at to the end of the
    -- lease, so an expired lease simply makes it due again (a visibility timeout).
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        message_seq INTEGER NOT NULL REFERENCES messages (seq),
        subscription_id INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at REAL NOT NULL,
        lease TEXT,
        last_error TEXT,
        last_status INTEGER,
        dead_at REAL
    );
    CREATE INDEX deliveries_due ON deliveries (subscription_id, due_at)
        WHERE state = 'pending';
    CREATE INDEX deliveries_dead ON deliveries (dead_at) WHERE state = 'dead';
    CREATE INDEX deliveries_by_message ON deliveries (message_seq);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters (name, value) VALUES ('delivered', 0);
    """,
    # 2: API keys, connection ownership, signing secrets, a stored-message count for
    # the backlog limit.
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        topics TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    ALTER TABLE connections ADD COLUMN key_id TEXT;
    ALTER TABLE subscriptions ADD COLUMN secret TEXT;
    ALTER TABLE subscriptions ADD COLUMN previous_secret TEXT;
    ALTER TABLE subscriptions ADD COLUMN previous_secret_until REAL;
    INSERT INTO counters (name, value) SELECT 'messages', COUNT(*) FROM messages;
    """,
    # 3: topics, consumer groups, filters, ordering keys, delayed delivery, idempotent
    # publish, subscription settings, and delivered messages kept for a while. The
    # deliveries table is rebuilt: its state CHECK gains 'delivered'.
    """
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        name TEXT NOT NULL,
        filter TEXT,
        created_at REAL NOT NULL,
        active INTEGER NOT NULL DEFAULT 1
    );
    CREATE UNIQUE INDEX groups_active ON groups (topic, name) WHERE active = 1;
    ALTER TABLE subscriptions ADD COLUMN group_id INTEGER;
    ALTER TABLE subscriptions ADD COLUMN filter TEXT;
    ALTER TABLE subscriptions ADD COLUMN settings TEXT;
    ALTER TABLE subscriptions ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE subscriptions ADD COLUMN key_id TEXT;
    ALTER TABLE subscriptions ADD COLUMN connection_id INTEGER;
    UPDATE subscriptions SET connection_id = id,
        key_id = (SELECT key_id FROM connections c WHERE c.id = subscriptions.id);
    ALTER TABLE messages ADD COLUMN attributes TEXT;
    ALTER TABLE messages ADD COLUMN ordering_key TEXT;
    ALTER TABLE messages ADD COLUMN deliver_at REAL;
    ALTER TABLE messages ADD COLUMN done_at REAL;
    CREATE INDEX messages_done ON messages (done_at) WHERE done_at IS NOT NULL;
    CREATE TABLE deliveries_v3 (
        id INTEGER PRIMARY KEY,
        message_seq INTEGER NOT NULL REFERENCES messages (seq),
        -- Ungrouped: the subscription. A group's: the member that took it last.
        subscription_id INTEGER,
        group_id INTEGER,
        ordering_key TEXT,
        state TEXT NOT NULL CHECK (state IN ('pending', 'dead', 'delivered')),
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at REAL NOT NULL,
        lease TEXT,
        last_error TEXT,
        last_status INTEGER,
        dead_at REAL,
        delivered_at REAL
    );
    INSERT INTO deliveries_v3 (id, message_seq, subscription_id, state, attempts, due_at,
        lease, last_error, last_status, dead_at)
        SELECT id, message_seq, subscription_id, state, attempts, due_at, lease, last_error,
        last_status, dead_at FROM deliveries;
    DROP TABLE deliveries;
    ALTER TABLE deliveries_v3 RENAME TO deliveries;
    CREATE INDEX deliveries_due ON deliveries (subscription_id, due_at)
        WHERE state = 'pending' AND group_id IS NULL;
    CREATE INDEX deliveries_group_due ON deliveries (group_id, due_at)
        WHERE state = 'pending' AND group_id IS NOT NULL;
    CREATE INDEX deliveries_ordering ON deliveries (ordering_key, id)
        WHERE state = 'pending' AND ordering_key IS NOT NULL;
    CREATE INDEX deliveries_dead ON deliveries (dead_at, id) WHERE state = 'dead';
    -- By state too: "is anything of this message left to deliver?" after every ack is
    -- two index seeks, not a walk over each of its deliveries.
    CREATE INDEX deliveries_by_message ON deliveries (message_seq, state);
    CREATE TABLE topics (
        name TEXT PRIMARY KEY,
        first_seen REAL NOT NULL,
        published INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO topics (name, first_seen, published)
        SELECT topic, MIN(published_at), COUNT(*) FROM messages GROUP BY topic;
    INSERT OR IGNORE INTO topics (name, first_seen)
        SELECT topic, MIN(created_at) FROM subscriptions WHERE active = 1 GROUP BY topic;
    CREATE TABLE idempotency_keys (
        key_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (key_id, idempotency_key)
    );
    CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
    """,
    # 4: messages waiting for a first receiver are listed in a table of their own. A
    # connect then inserts their deliveries and deletes their list rows, instead of
    # rewriting every waiting message, body and all, to flip its `routed` flag (2,000
    # waiting 8 KB messages made one connect write 25 MB). messages.routed stays, no
    # longer read: dropping it would rewrite the whole table once.
    """
    CREATE TABLE waiting (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL);
    INSERT INTO waiting (seq, topic) SELECT seq, topic FROM messages WHERE routed = 0;
    CREATE INDEX waiting_by_topic ON waiting (topic, seq);
    DROP INDEX messages_waiting;
    """,
    # 5: each delivery's attempts (store/history.py), written with the settlements
    # they record. By message: a message's journey is read, and swept, by its seq.
    """
    CREATE TABLE delivery_attempts (
        id INTEGER PRIMARY KEY,
        message_seq INTEGER NOT NULL,
        delivery_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        subscription_id INTEGER NOT NULL,
        sent_at REAL NOT NULL,
        duration REAL,
        outcome TEXT NOT NULL,
        status INTEGER,
        error TEXT
    );
    CREATE INDEX delivery_attempts_by_message ON delivery_attempts (message_seq, delivery_id);
    """,
    # 6: each receiver's health (domain.ReceiverHealth), saved every few seconds and at
    # shutdown, so `mqpy status` still knows it after a restart.
    """
    CREATE TABLE receiver_health (
        subscription_id INTEGER PRIMARY KEY,
        last_success_at REAL,
        last_failure_at REAL,
        consecutive_failures INTEGER NOT NULL,
        unavailable INTEGER NOT NULL,
        last_error TEXT,
        last_status INTEGER,
        last_message_id TEXT,
        last_attempt INTEGER,
        changed_at REAL NOT NULL
    );
    """,
    # 7: what processes sharing the file (`mqpy serve --processes N`) tell each other:
    # a version that every change to connections, subscriptions or keys moves, so each
    # knows its cached routes are stale, and the list of live processes.
    """
    INSERT INTO counters (name, value) VALUES ('catalog', 0);
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        started_at REAL NOT NULL,
        seen_at REAL NOT NULL,
        address TEXT NOT NULL,
        held INTEGER NOT NULL,
        in_flight INTEGER NOT NULL
    );
    """,
    # 8: pull subscriptions: consumers ask for their deliveries instead of the broker
    # POSTing them (their url is empty; their ack deadline is in settings).
    """
    ALTER TABLE subscriptions ADD COLUMN kind TEXT NOT NULL DEFAULT 'push';
    """,
    # 9: the attempt that delivered, kept on its delivery's row (store/history.py): a
    # delivery that succeeds at once writes no history row of its own.
    """
    ALTER TABLE deliveries ADD COLUMN sent_at REAL;
    ALTER TABLE deliveries ADD COLUMN duration REAL;
    """,
    # 10: one rule for messages nobody was subscribed to: they are done at once, kept for
    # the retention window, and reach a later subscription only by its start_at or a
    # seek. Those still waiting for a first receiver are done as of this upgrade (so
    # the whole window is left to replay them), off the count of undelivered messages.
    """
    UPDATE counters SET value = value - (SELECT COUNT(*) FROM waiting w JOIN messages m
        ON m.seq = w.seq WHERE m.done_at IS NULL) WHERE name = 'messages';
    UPDATE messages SET done_at = (julianday('now') - 2440587.5) * 86400.0
        WHERE seq IN (SELECT seq FROM waiting) AND done_at IS NULL;
    DROP TABLE waiting;
    """,
    # 11: endpoint health (store/endpoint_health.py): since when every attempt to a push
    # subscription failed, written only when that changes, and when and why the
    # broker disabled it for failing too long.
    """
    ALTER TABLE subscriptions ADD COLUMN failing_since REAL;
    ALTER TABLE subscriptions ADD COLUMN disabled_at REAL;
    ALTER TABLE subscriptions ADD COLUMN disabled_reason TEXT;
    CREATE INDEX subscriptions_failing ON subscriptions (failing_since)
        WHERE failing_since IS NOT NULL AND active = 1;
    """,
]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database up to the newest schema; returns the resulting version."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise SchemaTooNew(
            f"the data directory was written by a newer mq-py (schema {version}, "
            f"this one knows {len(MIGRATIONS)}); upgrade mq-py to use it"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")
    return len(MIGRATIONS)
