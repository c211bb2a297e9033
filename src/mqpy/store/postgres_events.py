"""Publishing the broker's own events (events.py) on PostgreSQL, in the transaction
that makes the change they report, so they commit or roll back with it.

The caller holds the catalog lock (shared or exclusive) and passes the routes of its
transaction, so no subscription change commits between the routing and the commit.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from mqpy.model.events import EVENTS_TOPIC
from mqpy.store.endpoint_health import routed_events
from mqpy.store.postgres_schema import DUE_CHANNEL, TALLY_SLOTS
from mqpy.store.postgres_sql import PgConnection
from mqpy.store.routes import Routes
from mqpy.store.rows import dump_attributes

# The events, their deliveries, their topic's figures and the stored tally, and the
# wake-up of every node: one statement. An event no subscription takes is not kept:
# nobody asked for it.
_PUBLISH = """
WITH new_messages AS (
    INSERT INTO messages (id, topic, body, published_at, attributes)
    SELECT id, $2, body, $3, attributes
    FROM unnest($1::text[], $4::text[], $5::text[]) AS e (id, body, attributes)
    RETURNING seq, id
), new_deliveries AS (
    INSERT INTO deliveries (message_seq, subscription_id, group_id, state, due_at)
    SELECT n.seq, t.subscription_id, t.group_id, 'pending', $3
    FROM unnest($6::text[], $7::bigint[], $8::bigint[])
        WITH ORDINALITY AS t (message_id, subscription_id, group_id, n)
    JOIN new_messages n ON n.id = t.message_id
    ORDER BY t.n
), named_topic AS (
    INSERT INTO topics (name, first_seen) VALUES ($2, $3) ON CONFLICT (name) DO NOTHING
), counted AS (
    INSERT INTO topic_counts (topic, slot, published) VALUES ($2, $9, $10)
    ON CONFLICT (topic, slot) DO UPDATE SET published = topic_counts.published + excluded.published
), tallied AS (
    UPDATE tallies SET stored = stored + $10 WHERE slot = $9
)
SELECT pg_notify($11, '')
"""


async def publish_events(
    conn: PgConnection, routes: Routes, events: Sequence[dict[str, Any]], at: float
) -> None:
    routed = routed_events(routes, events, at)
    if not routed:
        return
    messages = [message for message, _ in routed]
    deliveries = [
        (message.id, t.subscription_id, t.group_id) for message, targets in routed for t in targets
    ]
    await conn.execute(
        _PUBLISH,
        [m.id for m in messages],
        EVENTS_TOPIC,
        at,
        [m.body for m in messages],
        [dump_attributes(m.attributes) for m in messages],
        [d[0] for d in deliveries],
        [d[1] for d in deliveries],
        [d[2] for d in deliveries],
        secrets.randbelow(TALLY_SLOTS),
        len(messages),
        DUE_CHANNEL,
    )
