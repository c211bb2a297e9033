"""Claims made inside publishes' own transactions (`Store.offer_claim`); the hand-over
between the event loop and SQLite's writer thread.

At a steady, modest rate every message used to cost two transactions before it left:
its publish, then the dispatcher's claim, woken by that publish (in a group, the claims
of every process, all but one finding nothing). Instead the dispatcher, with room to
spare and nothing to do, leaves a claim with the store; the next transaction that
publishes deliveries due now runs it once those are written, and the claim's answer
reaches the dispatcher before the publishes' own. A publish all of whose deliveries
that claim took wakes nobody: not the dispatcher, not the group's other processes.

The offer is made on the event loop and taken in the writer's thread; a lock guards
the hand-over. The claim itself is `Store.claim`'s, so every rule of a claim holds
(windows, caps, ordering keys, groups).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable

from mqpy.model.domain import Claim, ClaimOffer

log = logging.getLogger("mqpy.store")

Answer = Callable[[Claim | None], None]
ClaimIn = Callable[[sqlite3.Connection, ClaimOffer], Claim]


class PublishedDeliveries:
    """What one transaction's publishes made due, and whether its claim took it all.

    A publish keeps a reference to its transaction's, to read `claimed` once it
    committed."""

    def __init__(self) -> None:
        self.due_now = 0  # deliveries due at once
        self.message_ids: set[str] = set()  # the messages they belong to
        self.later = False  # some deliveries are due later (a delayed message)
        self.claimed = False  # set at the commit: the claim took every one due now

    def add(self, message_id: str, deliveries: int, *, due_now: bool) -> None:
        if not deliveries:
            return
        if due_now:
            self.due_now += deliveries
            self.message_ids.add(message_id)
        else:
            self.later = True

    def taken_by(self, claim: Claim) -> bool:
        """Whether `claim` took every delivery these publishes made (and none of them
        is due later, which only a claim then can take)."""
        if self.later or not self.due_now:
            return False
        took = sum(1 for d in claim.deliveries if d.message_id in self.message_ids)
        return took == self.due_now


class ClaimOffers:
    """The dispatcher's standing offer, and the claim made of it in the transaction
    under way. Used by the event loop (`offer`, `withdraw`) and by whichever thread
    holds the writer's connection (the rest)."""

    def __init__(self, claim_in: ClaimIn) -> None:
        self._claim_in = claim_in
        self._lock = threading.Lock()
        self._offer: tuple[ClaimOffer, Answer, asyncio.AbstractEventLoop] | None = None
        self.transaction = PublishedDeliveries()
        # The claim made in the transaction under way, until its commit or rollback.
        self._made: tuple[Claim | None, Answer, asyncio.AbstractEventLoop] | None = None

    def offer(self, offer: ClaimOffer, answer: Answer) -> None:
        with self._lock:
            self._offer = (offer, answer, asyncio.get_running_loop())

    def withdraw(self) -> bool:
        with self._lock:
            taken_back = self._offer is not None
            self._offer = None
        return taken_back

    def claim(self, conn: sqlite3.Connection) -> None:
        """Inside the transaction, its publishes written: run the offer, if there is
        one and the transaction made deliveries due now."""
        if not self.transaction.due_now or self._made is not None:
            return
        with self._lock:
            taken, self._offer = self._offer, None
        if taken is None:
            return
        offer, answer, loop = taken
        conn.execute("SAVEPOINT offered_claim")
        try:
            claim: Claim | None = self._claim_in(conn, offer)
        except sqlite3.Error as exc:
            # Only the claim is undone: the publishes stand, and the dispatcher claims
            # as usual once woken.
            conn.execute("ROLLBACK TO offered_claim")
            log.warning("a claim inside a publish failed: %s", exc)
            claim = None
        conn.execute("RELEASE offered_claim")
        self._made = (claim, answer, loop)

    def committed(self) -> bool:
        """After the commit: hand the claim to its dispatcher (ahead of the
        publishes' answers, which are queued after this) and say whether it took
        every delivery the transaction's publishes made."""
        made, self._made = self._made, None
        published, self.transaction = self.transaction, PublishedDeliveries()
        if made is None:
            return False
        claim, answer, loop = made
        published.claimed = claim is not None and published.taken_by(claim)
        loop.call_soon_threadsafe(answer, claim)
        return published.claimed

    def rolled_back(self) -> None:
        """The whole transaction was undone: so was its claim."""
        made, self._made = self._made, None
        self.transaction = PublishedDeliveries()
        if made is not None:
            _, answer, loop = made
            loop.call_soon_threadsafe(answer, None)
