"""Seek and start_at in memory (see store/replay.py for what they mean)."""

from __future__ import annotations

from mqpy.model.domain import SeekResult
from mqpy.model.filters import matches as filter_matches
from mqpy.model.topics import matches as topic_matches
from mqpy.store.memory_state import DELIVERED, PENDING, MemoryState
from mqpy.store.memory_writes import add_delivery
from mqpy.store.replay import due_at
from mqpy.store.routes import Target


def seek(state: MemoryState, target: Target, since: float, now: float) -> SeekResult:
    """Move `target` to `since`: what it had pending from before is acknowledged, and
    every retained message it takes from `since` on is due again from attempt 1, in
    publish order, except one out under a live lease, which is left to finish."""
    sid, gid = target.subscription_id, target.group_id
    mine = [d for d in state.deliveries.values() if d.of_target(sid, gid)]
    acked = []
    for d in mine:
        if d.state == PENDING and state.message_of(d).published_at < since:
            d.state, d.delivered_at, d.lease, d.last_error = DELIVERED, now, None, None
            acked.append(d.seq)
    state.finish_messages(set(acked), now)
    wanted = [
        m
        for m in state.messages.values()
        if m.published_at >= since
        and topic_matches(target.pattern, m.topic)
        and filter_matches(target.filter, m.attributes)
    ]
    wanted_seqs = {m.seq for m in wanted}
    in_flight = set()
    for d in mine:
        if d.seq not in wanted_seqs:
            continue
        if d.in_flight(now):
            in_flight.add(d.seq)
        else:
            del state.deliveries[d.id]
    due = 0
    for m in wanted:  # publish order: a key's deliveries leave oldest id first
        if m.seq in in_flight:
            continue
        add_delivery(state, m, sid, gid, due_at(m.deliver_at, now))
        m.done_at = None
        due += 1
    return SeekResult(due=due, acked=len(acked), in_flight=len(in_flight))
