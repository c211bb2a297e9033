"""What a claim hands out, decided the same way on every backend.

A backend asks `ClaimBuilder` how many due deliveries to read for each ungrouped
subscription and each group (what their room allows), reads their ids and due times its
own way (one query per target on SQLite and in memory, handed to `choose`; one statement
for all on PostgreSQL, then `oldest_due`), keeps the oldest due, has `assign` choose
the member for each, and only then leases and reads the chosen ones in full. The
builder shares a group's deliveries out to its members in turn, caps each receiver at
its room and the whole claim at `limit`, oldest due first, and works out when the
next delivery falls due.

A row is `CLAIM_COLUMNS`, in order, read from deliveries `d` joined to messages `m`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mqpy.model.domain import Claim, ClaimedDelivery
from mqpy.store.routes import Member, Routes
from mqpy.store.rows import load_attributes

CLAIM_COLUMNS = (
    "d.id, d.attempts, d.due_at, m.id, m.body, m.published_at, m.topic, m.attributes, "
    "m.ordering_key, m.deliver_at"
)

# (is a group, subscription or group id, how many at most) -> its due deliveries as
# (delivery id, due at), oldest first; (is a group, id) -> when its next falls due.
DueOf = Callable[[bool, int, int], Sequence[tuple[int, float]]]
NextDueOf = Callable[[bool, int], float | None]

_NO_ATTRIBUTES: dict[str, str] = {}  # shared, never changed: most messages have none


@dataclass(slots=True)
class _Candidate:
    due_at: float
    delivery: ClaimedDelivery


class ClaimBuilder:
    """One claim in the making: rooms, the rows read for each target, the choice."""

    def __init__(
        self,
        routes: Routes,
        *,
        limit: int,
        now: float,
        lease: str,
        per_subscription_limit: int,
        busy: Mapping[int, int],
        for_subscription: int | None = None,
    ) -> None:
        self._routes = routes
        self._limit = limit
        self._now = now
        self.lease = lease
        if for_subscription is None:
            # The dispatcher's claim: push subscriptions only, each up to its cap (its
            # own max_concurrency, else the caller's). Pull deliveries wait for a pull.
            self._room = {
                member.id: (member.max_concurrency or per_subscription_limit)
                - busy.get(member.id, 0)
                for member in routes.members.values()
                if not (member.paused or member.pull or member.disabled)
            }
        else:
            # A consumer's pull: its subscription (or its group) alone, up to `limit`.
            member = routes.members.get(for_subscription)
            pulls = member is not None and member.pull and not member.paused
            self._room = {for_subscription: limit} if pulls else {}
        self._candidates: list[_Candidate] = []
        self._secrets: dict[int, tuple[str, ...]] = {}  # per member, once per claim
        self.next_due: float | None = None

    def capped(self) -> list[Member]:
        """The subscriptions with room whose own `max_concurrency` bounds them: a bound
        across every node or process sharing the store, so the backend counts what
        all of them hold (`hold_to_cap`) before choosing."""
        members = self._routes.members
        return [
            members[member_id]
            for member_id, room in self._room.items()
            if room > 0 and members[member_id].max_concurrency is not None
        ]

    def hold_to_cap(self, leased: Mapping[int, int]) -> None:
        """`leased`: per subscription of `capped()`, how many of its deliveries are
        under a live lease, held by any node (this one included; absent: none). The
        dispatcher's count covers only its own node's."""
        for member in self.capped():
            assert member.max_concurrency is not None
            room = member.max_concurrency - leased.get(member.id, 0)
            self._room[member.id] = min(self._room[member.id], room)

    def subscription_takes(self) -> list[tuple[Member, int]]:
        """Each ungrouped subscription with room, and how many rows to read for it."""
        return [
            (member, min(self._room[member.id], self._limit))
            for member in self._routes.members.values()
            if member.group_id is None and self._room.get(member.id, 0) > 0
        ]

    def group_takes(self) -> list[tuple[int, int]]:
        """Each group with a member with room, and how many rows to read for it."""
        takes = []
        for group_id, member_ids in self._routes.group_members.items():
            total = min(sum(max(self._room.get(m, 0), 0) for m in member_ids), self._limit)
            if total > 0:
                takes.append((group_id, total))
        return takes

    def targets(self) -> list[tuple[bool, int, int]]:
        """Every target with room, as (is a group, subscription or group id, rows to
        read for it): `subscription_takes` then `group_takes`."""
        found = [(False, member.id, take) for member, take in self.subscription_takes()]
        return found + [(True, group_id, take) for group_id, take in self.group_takes()]

    def choose(self, due_of: DueOf, next_due_of: NextDueOf) -> dict[int, tuple[bool, int]]:
        """The due deliveries to lease, by id, with their target (is a group, id): the
        oldest first, at most each target's take and `limit` in all, read one target at
        a time with `due_of`. Asks `next_due_of` only of a target with no more due now,
        and notes when the next delivery falls due."""
        rows: list[tuple[int, bool, int, float]] = []  # target, is a group, id, due at
        takes: dict[tuple[bool, int], int] = {}
        for is_group, target, take in self.targets():
            # The one row beyond what we take tells whether more are due right now.
            found = due_of(is_group, target, take + 1)
            if len(found) <= take:
                self.consider(next_due_of(is_group, target))
            takes[(is_group, target)] = take
            rows.extend((target, is_group, delivery_id, due_at) for delivery_id, due_at in found)
        chosen, more_due_now = oldest_due(rows, takes, self._limit)
        if more_due_now:
            self.consider(self._now)
        return chosen

    def consider(self, due_at: float | None) -> None:
        """A delivery of a target falls due at `due_at` (None: nothing does)."""
        if due_at is not None and (self.next_due is None or due_at < self.next_due):
            self.next_due = due_at

    @property
    def taken(self) -> int:
        """Deliveries handed to the builder so far."""
        return len(self._candidates)

    def assign(self, targets: Sequence[tuple[bool, int]]) -> list[int]:
        """The member to lease each of these chosen deliveries to, before they are read
        (is group, subscription or group id; in due order): a group's go to its members
        in turn. Each takes room; `add_leased` or `give_back` follows for each."""
        members = self._routes.members
        free: dict[int, list[Member]] = {}  # per group, its members with room at the start
        assigned = []
        for is_group, target in targets:
            if not is_group:
                member_id = target
            else:
                if target not in free:
                    free[target] = [
                        members[m]
                        for m in self._routes.group_members[target]
                        if self._room.get(m, 0) > 0
                    ]
                turn = self._routes.turn.get(target, 0)
                member_id = self._next_member(free[target], turn).id
                self._routes.turn[target] = turn + 1
            self._room[member_id] -= 1
            assigned.append(member_id)
        return assigned

    def add_leased(self, member_id: int, row: Sequence[Any]) -> None:
        """A delivery `assign` gave to this member, leased and read."""
        member = self._routes.members[member_id]
        # Read before the lease counted this attempt.
        delivery = _delivery(row, member, self.lease, self._secrets_of(member), row[1] + 1)
        self._candidates.append(_Candidate(row[2], delivery))

    def give_back(self, member_id: int) -> None:
        """A delivery `assign` gave to this member went to another node meanwhile."""
        self._room[member_id] += 1

    def finish(self) -> Claim:
        """The oldest due of what was read, at most `limit`; the rest stays due."""
        self._candidates.sort(key=lambda candidate: candidate.due_at)
        chosen = [candidate.delivery for candidate in self._candidates[: self._limit]]
        if len(self._candidates) > self._limit:
            self.consider(self._now)
        return Claim(chosen, self.next_due)

    def _next_member(self, free: list[Member], turn: int) -> Member:
        """Members take turns; one with no room left is skipped. `free` always has one
        with room, since the group was asked for no more rows than its members' room."""
        for offset in range(len(free)):
            member = free[(turn + offset) % len(free)]
            if self._room[member.id] > 0:
                return member
        raise AssertionError("a group claimed more deliveries than its members have room for")

    def _secrets_of(self, member: Member) -> tuple[str, ...]:
        found = self._secrets.get(member.id)
        if found is None:
            found = self._secrets[member.id] = member.signing_secrets(self._now)
        return found


def leased_deliveries(
    routes: Routes,
    subscription_id: int,
    rows: Iterable[Sequence[Any]],
    leases: Collection[tuple[int, str]],
) -> list[ClaimedDelivery]:
    """The deliveries of `rows` (`CLAIM_COLUMNS`, then the lease, read after their
    claim) that `subscription_id` holds under a lease among `leases` (delivery id,
    lease), as the claim handed them out."""
    member = routes.members.get(subscription_id)
    if member is None:
        return []
    wanted = set(leases)
    return [
        _delivery(row, member, row[-1], (), row[1]) for row in rows if (row[0], row[-1]) in wanted
    ]


def _delivery(
    row: Sequence[Any], member: Member, lease: str, secrets: tuple[str, ...], attempt: int
) -> ClaimedDelivery:
    (
        delivery_id,
        _attempts,
        _due,
        message_id,
        body,
        published_at,
        topic,
        attributes,
        key,
        deliver_at,
    ) = row[:10]
    return ClaimedDelivery(
        delivery_id=delivery_id,
        lease=lease,
        message_id=message_id,
        subscription_id=member.id,
        url=member.url,
        body=body,
        attempt=attempt,
        published_at=published_at,
        secrets=secrets,
        topic=topic,
        attributes=load_attributes(attributes) if attributes is not None else _NO_ATTRIBUTES,
        ordering_key=key,
        retry=member.retry,
        max_per_second=member.max_per_second,
        max_concurrency=member.max_concurrency,
        deliver_at=deliver_at,
        format=member.format,
    )


def oldest_due(
    rows: Iterable[Iterable[Any]], takes: Mapping[tuple[bool, int], int], left: int
) -> tuple[dict[int, tuple[bool, int]], bool]:
    """The oldest due of `rows` (target id, is group, delivery id, due at), at most
    each target's take and `left` in all, in due order; and whether any were left
    over, that is, whether more are due right now than were chosen."""
    per_target: dict[tuple[bool, int], list[tuple[float, int]]] = {}
    for target, is_group, delivery_id, due_at in rows:
        per_target.setdefault((is_group, target), []).append((due_at, delivery_id))
    more = False
    candidates: list[tuple[float, int, tuple[bool, int]]] = []
    for target, found in per_target.items():
        found.sort()
        take = takes[target]
        more = more or len(found) > take
        candidates.extend((due_at, delivery_id, target) for due_at, delivery_id in found[:take])
    candidates.sort()
    more = more or len(candidates) > left
    return {delivery_id: target for _, delivery_id, target in candidates[:left]}, more
