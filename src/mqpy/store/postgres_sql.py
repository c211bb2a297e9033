"""The PostgreSQL store's statements that take the most thought (the publish, the
claim and the outcomes of deliveries, each one round trip for a whole batch), and the
small helpers that run statements.

Arrays go in through `unnest`, so a batch of any size is one statement with a fixed
text (asyncpg prepares it once per connection).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
import asyncpg.pool

from mqpy.store.claiming import CLAIM_COLUMNS

# What a pooled connection is to the type checker (the stubs make it generic).
PgConnection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"


async def one(conn: PgConnection, query: str, *args: Any) -> asyncpg.Record:
    """The one row a query always returns (aggregates, sub-selects)."""
    row = await conn.fetchrow(query, *args)
    assert row is not None, query
    return row


def row_count(status: str) -> int:
    """Rows changed, from a command tag such as `UPDATE 3`."""
    return int(status.rsplit(" ", 1)[-1])


# A batch of messages and all their deliveries, the topics they name, their publish
# counts (in the transaction's slot), the stored-message tally and, when deliveries were
# made, the wake-up for the other nodes: one statement. Deliveries are inserted in the
# order given, so their ids follow publish order. One notification per transaction
# ($20): NOTIFY serialises commits on a global lock, so never one per message.
PUBLISH = """
WITH new_messages AS (
    INSERT INTO messages (id, topic, body, publisher_id, published_at, done_at, attributes,
        ordering_key, deliver_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::float8[],
        $6::float8[], $7::text[], $8::text[], $9::float8[])
    RETURNING seq, id
), new_deliveries AS (
    INSERT INTO deliveries (message_seq, subscription_id, group_id, ordering_key, state, due_at)
    SELECT n.seq, t.subscription_id, t.group_id, t.ordering_key, 'pending', t.due_at
    FROM unnest($10::text[], $11::bigint[], $12::bigint[], $13::text[], $14::float8[])
        WITH ORDINALITY AS t (message_id, subscription_id, group_id, ordering_key, due_at, n)
    JOIN new_messages n ON n.id = t.message_id
    ORDER BY t.n
), named_topics AS (
    INSERT INTO topics (name, first_seen)
    SELECT * FROM unnest($15::text[], $16::float8[]) ON CONFLICT (name) DO NOTHING
), counted AS (
    INSERT INTO topic_counts (topic, slot, published)
    SELECT name, $17, count FROM unnest($15::text[], $18::bigint[]) AS c (name, count)
    ON CONFLICT (topic, slot) DO UPDATE SET published = topic_counts.published + excluded.published
), tallied AS (
    UPDATE tallies SET stored = stored + $19 WHERE slot = $17 AND $19 <> 0
)
SELECT pg_notify($20, '') FROM (SELECT 1) AS once WHERE $21
"""

# Idempotency keys: the ones returned are ours (new, or older than the dedup window
# and so free again); for the others, an earlier publish holds the key.
CLAIM_IDEMPOTENCY_KEYS = """
INSERT INTO idempotency_keys (key_id, idempotency_key, message_id, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])
ON CONFLICT (key_id, idempotency_key) DO UPDATE
    SET message_id = excluded.message_id, created_at = excluded.created_at
    WHERE idempotency_keys.created_at < $5
RETURNING key_id, idempotency_key
"""
HELD_IDEMPOTENCY_KEYS = """
SELECT k.key_id, k.idempotency_key, k.message_id FROM idempotency_keys k
JOIN unnest($1::text[], $2::text[]) AS w (key_id, idempotency_key)
    ON k.key_id = w.key_id AND k.idempotency_key = w.idempotency_key
WHERE k.key_id = ANY($1::text[]) AND k.idempotency_key = ANY($2::text[])  -- see LEASE_DUE
"""

# One key's deliveries leave in publish order: each publish takes a transaction-long
# lock per ordering key (sorted, so two batches never wait on each other in a cycle)
# before its messages get their sequence numbers, so sequence order is commit order.
LOCK_ORDERING_KEYS = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k"

# Blocked by an older unfinished delivery of the key, or by any of the key's that is in
# flight (a redriven head is older than the one it must wait for).
_HEAD_OF_SUBSCRIPTION = """
    (d.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries e
        WHERE e.ordering_key = d.ordering_key AND e.state = 'pending' AND e.id <> d.id
        AND (e.id < d.id OR e.lease IS NOT NULL)
        AND e.group_id IS NULL AND e.subscription_id = d.subscription_id))"""
_HEAD_OF_GROUP = """
    (d.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries e
        WHERE e.ordering_key = d.ordering_key AND e.state = 'pending' AND e.id <> d.id
        AND (e.id < d.id OR e.lease IS NOT NULL) AND e.group_id = d.group_id))"""

# Due deliveries of every target with room: per target at most `take` rows, oldest
# due first, on the index that matches the ORDER BY. A plain read, without locks:
# locking here would hold every row read (more than a claim takes) away from the
# other nodes' claims for the length of this transaction. When $7, one more row, with
# no target, says when the next of these targets' deliveries falls due after $5 (a
# retry, a delayed message, another node's lease running out), in the same round trip.
DUE = f"""
SELECT t.id, false, x.id, x.due_at
FROM unnest($1::bigint[], $2::integer[]) AS t (id, take)
CROSS JOIN LATERAL (
    SELECT d.id, d.due_at FROM deliveries d
    WHERE d.subscription_id = t.id AND d.group_id IS NULL AND d.state = 'pending'
        AND d.due_at <= $5 AND d.id <> ALL($6::bigint[]) AND {_HEAD_OF_SUBSCRIPTION}
    ORDER BY d.due_at, d.id LIMIT t.take
) AS x
UNION ALL
SELECT t.id, true, x.id, x.due_at
FROM unnest($3::bigint[], $4::integer[]) AS t (id, take)
CROSS JOIN LATERAL (
    SELECT d.id, d.due_at FROM deliveries d
    WHERE d.group_id = t.id AND d.state = 'pending' AND d.due_at <= $5
        AND d.id <> ALL($6::bigint[]) AND {_HEAD_OF_GROUP}
    ORDER BY d.due_at, d.id LIMIT t.take
) AS x
UNION ALL
SELECT NULL, NULL, NULL, min(due) FROM (
    SELECT (SELECT d.due_at FROM deliveries d WHERE d.subscription_id = t.id
        AND d.group_id IS NULL AND d.state = 'pending' AND d.due_at > $5
        ORDER BY d.due_at LIMIT 1) AS due
    FROM unnest($1::bigint[]) AS t (id)
    UNION ALL
    SELECT (SELECT d.due_at FROM deliveries d WHERE d.group_id = t.id
        AND d.state = 'pending' AND d.due_at > $5 ORDER BY d.due_at LIMIT 1)
    FROM unnest($3::bigint[]) AS t (id)
) AS next
WHERE $7 HAVING $7
"""

# Claims for subscriptions with their own max_concurrency take turns across nodes: each
# locks those subscriptions' rows (in id order, so two claims cannot deadlock), and
# counts their live leases only once the claim before it committed its own.
LOCK_CAPPED = """
SELECT id FROM subscriptions WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE
"""
# Deliveries under a live lease by any node: ungrouped ($1), and group members ($2 in
# groups $3). Each half reads its partial index, as DUE does.
LIVE_LEASES = """
SELECT d.subscription_id, count(*) FROM deliveries d
WHERE d.subscription_id = ANY($1::bigint[]) AND d.group_id IS NULL AND d.state = 'pending'
    AND d.due_at > $4 AND d.lease IS NOT NULL
GROUP BY d.subscription_id
UNION ALL
SELECT d.subscription_id, count(*) FROM deliveries d
WHERE d.group_id = ANY($3::bigint[]) AND d.subscription_id = ANY($2::bigint[])
    AND d.state = 'pending' AND d.due_at > $4 AND d.lease IS NOT NULL
GROUP BY d.subscription_id
"""

# The batch statements below name their ids twice: joined to the unnest that carries
# each row's values, and as `= ANY`, which gives the planner an index condition. With
# the join alone, a generic plan made while the table looked small scans the whole
# table on every call (measured: 2 ms per ack batch at 2,500 messages, growing).

# Of the deliveries chosen, those still due that no other node is taking right now:
# lock them (skipping what another node has locked) and lease them to the member
# given for each ($6), in one statement. Returns CLAIM_COLUMNS, with the attempts and
# due time from before the lease.
LEASE_DUE = f"""
WITH locked AS (
    SELECT d.id, d.attempts, d.due_at FROM deliveries d
    WHERE d.id = ANY($1::bigint[]) AND d.state = 'pending' AND d.due_at <= $2
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE deliveries d SET attempts = d.attempts + 1, due_at = $3, lease = $4,
        leased_by = $5, subscription_id = u.member
    FROM locked JOIN unnest($1::bigint[], $6::bigint[]) AS u (id, member) ON u.id = locked.id
    WHERE d.id = ANY($1::bigint[]) AND d.id = locked.id
    RETURNING d.id, locked.attempts, locked.due_at, d.message_seq
)
SELECT {CLAIM_COLUMNS} FROM leased d JOIN messages m ON m.seq = d.message_seq
"""

# An ack also locks the acked deliveries' messages (in seq order, so two batches never
# wait on each other in a cycle), for FINISH_MESSAGES to decide on next: one row per
# acked delivery.
ACK = """
WITH acked AS (
    UPDATE deliveries d SET state = 'delivered', delivered_at = u.at, lease = NULL,
        leased_by = NULL, last_status = u.status, last_error = NULL, sent_at = u.sent_at,
        duration = u.duration
    FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::integer[], $5::float8[],
        $6::float8[]) AS u (id, lease, at, status, sent_at, duration)
    WHERE d.id = ANY($1::bigint[]) AND d.id = u.id AND d.lease = u.lease AND d.state = 'pending'
    RETURNING d.message_seq, u.at
)
SELECT m.seq, a.at FROM messages m JOIN acked a ON a.message_seq = m.seq
ORDER BY m.seq FOR UPDATE OF m
"""
RETRY = """
UPDATE deliveries d SET due_at = u.due_at, lease = NULL, leased_by = NULL,
    last_error = u.error, last_status = u.status
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[], $5::integer[])
    AS u (id, lease, due_at, error, status)
WHERE d.id = ANY($1::bigint[]) AND d.id = u.id AND d.lease = u.lease AND d.state = 'pending'
"""
# Each settled attempt into its delivery's history, while its lease still holds (before
# the outcome statements clear it); the arrays are history.attempt_row()'s columns.
RECORD_ATTEMPTS = """
INSERT INTO delivery_attempts (message_seq, delivery_id, attempt, subscription_id, sent_at,
    duration, outcome, status, error)
SELECT d.message_seq, u.id, u.attempt, u.subscription_id, u.sent_at, u.duration, u.outcome,
    u.status, u.error
FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::bigint[], $5::float8[], $6::float8[],
    $7::text[], $8::integer[], $9::text[])
    AS u (id, lease, attempt, subscription_id, sent_at, duration, outcome, status, error)
JOIN deliveries d ON d.id = u.id AND d.lease = u.lease
"""
# The failed deliveries' histories down to their newest $2 attempts.
TRIM_ATTEMPTS = """
DELETE FROM delivery_attempts WHERE id IN (
    SELECT old.id FROM unnest($1::bigint[]) AS f (delivery_id)
    JOIN deliveries d ON d.id = f.delivery_id
    CROSS JOIN LATERAL (
        SELECT a.id FROM delivery_attempts a
        WHERE a.message_seq = d.message_seq AND a.delivery_id = f.delivery_id
        ORDER BY a.id DESC OFFSET $2
    ) AS old
)
"""
DEAD_LETTER = """
UPDATE deliveries d SET state = 'dead', dead_at = u.at, lease = NULL, leased_by = NULL,
    last_error = u.error, last_status = u.status
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[], $5::integer[])
    AS u (id, lease, at, error, status)
WHERE d.id = ANY($1::bigint[]) AND d.id = u.id AND d.lease = u.lease AND d.state = 'pending'
RETURNING d.id
"""
# Never-attempted deliveries past their max-age (expiry.py), one target at a time;
# rows a claim holds are skipped, not waited for.
_EXPIRE = """
UPDATE deliveries d SET state = 'dead', dead_at = $1, lease = NULL, leased_by = NULL,
    last_error = $2, subscription_id = COALESCE(d.subscription_id, $3)
WHERE d.id IN (
    SELECT e.id FROM deliveries e JOIN messages m ON m.seq = e.message_seq
    WHERE {target} AND e.state = 'pending' AND (e.lease IS NULL OR e.due_at <= $1)
        AND GREATEST(m.published_at, COALESCE(m.deliver_at, 0)) < $5
    LIMIT $6 FOR UPDATE OF e SKIP LOCKED
)
RETURNING d.subscription_id, (SELECT m.id FROM messages m WHERE m.seq = d.message_seq),
    (SELECT m.topic FROM messages m WHERE m.seq = d.message_seq), d.attempts
"""
EXPIRE_FOR_SUBSCRIPTION = _EXPIRE.format(target="e.subscription_id = $4 AND e.group_id IS NULL")
EXPIRE_FOR_GROUP = _EXPIRE.format(target="e.group_id = $4")
RENEW = """
UPDATE deliveries d SET due_at = $1
FROM unnest($2::bigint[], $3::text[]) AS u (id, lease)
WHERE d.id = ANY($2::bigint[]) AND d.id = u.id AND d.lease = u.lease AND d.state = 'pending'
RETURNING d.id
"""
# A pull consumer's deliveries still under a live lease, with the lease to compare.
LEASED = f"""
SELECT {CLAIM_COLUMNS}, d.lease FROM deliveries d JOIN messages m ON m.seq = d.message_seq
WHERE d.id = ANY($1::bigint[]) AND d.subscription_id = $2 AND d.state = 'pending'
    AND d.due_at > $3
"""
RELEASE = """
UPDATE deliveries d SET due_at = $1, lease = NULL, leased_by = NULL,
    attempts = d.attempts - $4
FROM unnest($2::bigint[], $3::text[]) AS u (id, lease)
WHERE d.id = ANY($2::bigint[]) AND d.id = u.id AND d.lease = u.lease AND d.state = 'pending'
"""

HEARTBEAT = """
INSERT INTO nodes (name, started_at, seen_at, address, held, in_flight)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at, address = excluded.address,
    held = excluded.held, in_flight = excluded.in_flight
"""
# Nodes silent for a day are forgotten (a restart names a new node).
FORGET_NODES = "DELETE FROM nodes WHERE seen_at < $1"

# A message is done once none of its deliveries is pending or dead. Two nodes may
# finish a message's last two deliveries at once, each still seeing the other's as
# pending: so lock the messages first (LOCK_MESSAGES, or ACK), and decide in the next
# statement, which sees whatever the other transaction committed meanwhile. The
# finished messages come off the stored tally and the acks go on the delivered one,
# in the same statement: last in the transaction, so the tally's row lock is held
# only for the commit.
LOCK_MESSAGES = "SELECT seq FROM messages WHERE seq = ANY($1::bigint[]) ORDER BY seq FOR UPDATE"
FINISH_MESSAGES = """
WITH finished AS (
    UPDATE messages m SET done_at = u.at
    FROM unnest($1::bigint[], $2::float8[]) AS u (seq, at)
    WHERE m.seq = ANY($1::bigint[]) AND m.seq = u.seq AND m.done_at IS NULL
        AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_seq = m.seq
            AND d.state IN ('pending', 'dead'))
    RETURNING m.seq
), counted AS (
    SELECT count(*) AS finished FROM finished
), tallied AS (
    UPDATE tallies t SET stored = t.stored - c.finished, delivered = t.delivered + $3
    FROM counted c WHERE t.slot = $4 AND (c.finished > 0 OR $3 > 0)
)
SELECT finished FROM counted
"""
