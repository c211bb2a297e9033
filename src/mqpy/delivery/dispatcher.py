"""The dispatcher: claims due deliveries from the store and hands them to workers.

At most `workers` deliveries are in flight and at most `jobs` more wait in memory for a
worker, as in MQ Go. What each receiver may hold of both is its adaptive window
(`window.py`): it grows while the receiver answers quickly and shrinks when it fails or
slows down, up to its cap (the subscription's `max_concurrency`, else
`receiver_concurrency`), so a slow receiver fills its own few slots and no others. The
claim loop claims again as soon as a share of the room is free, so the next deliveries
are in memory before the current ones finish. Everything else (when to retry, what is
dead) lives in the store and the retry policy: a restart loses no schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from asyncio import FIRST_COMPLETED
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from mqpy.core.group_state import GroupState
from mqpy.delivery.group_pauses import GroupPauses
from mqpy.delivery.pace import Paces, pace_for
from mqpy.delivery.retry import RedeliveryPolicy
from mqpy.delivery.sender import DeliverySender, Outcome
from mqpy.delivery.window import ReceiverWindows
from mqpy.model.domain import Claim, ClaimedDelivery, ClaimOffer, Subscription
from mqpy.model.errors import StoreUnavailable
from mqpy.observability import Observer
from mqpy.store import Store

log = logging.getLogger("mqpy.delivery")

# The longest the claim loop sleeps without being woken; it catches deliveries whose
# leases expired and deliveries added by anything that did not notify us.
MAX_IDLE_SECONDS = 1.0


class Dispatcher:
    """Moves due deliveries from the store to receivers, `workers` at a time."""

    def __init__(
        self,
        store: Store,
        sender: DeliverySender,
        policy: RedeliveryPolicy,
        *,
        workers: int,
        jobs: int,
        receiver_concurrency: int,
        lease_seconds: float,
        observer: Observer,
        clock: Callable[[], float] = time.time,
        processes: int = 1,
        group: GroupState | None = None,
        probe_seconds: float = 60.0,
    ) -> None:
        """`group`: the state the `processes` of a `--processes` group share, where
        receivers' max_per_second and pauses are kept; a probe of a paused receiver
        is the group's for up to `probe_seconds` (a delivery's timeout and more)."""
        self._store = store
        self._processes = processes
        self._group = group
        self._observer = observer
        self._sender = sender
        self._policy = policy
        self._workers = workers
        self._capacity = workers + jobs
        # A receiver's window grows up to this, unless its subscription says otherwise.
        self._max_window = receiver_concurrency
        # How long a claim lasts before another claimer may take the delivery over.
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._queue: asyncio.Queue[ClaimedDelivery] = asyncio.Queue()
        self._held: Counter[int] = Counter()  # per subscription: queued + in flight
        self._in_flight: dict[asyncio.Task[None], ClaimedDelivery] = {}
        # Every delivery claimed and not yet settled, whose leases the renewer extends.
        self._holding: dict[int, ClaimedDelivery] = {}
        # Deliveries being sent, by delivery id.
        self._sending: dict[int, _Sending] = {}
        self._wake = asyncio.Event()
        # Whether the last claim left something due for want of room (its limit, a
        # receiver's window or pace): only then can a finished delivery make more
        # claimable. Otherwise a claim per finished delivery would find nothing, a
        # store transaction per delivery for nothing at a steady, modest rate.
        self._held_back = True
        # The earliest time a delivery sent since the claim loop last looked becomes
        # overdue (`_check_overdue_at`), and whether the loop is asleep now.
        self._recheck_at = math.inf
        self._asleep = False
        self._wake_at = math.inf  # when the sleeping loop wakes by itself
        self._all_settled = asyncio.Event()  # set when nothing is in flight at shutdown
        # Acknowledgements on their way to the store, with what each acknowledges: the
        # worker that sent each went on to its next delivery.
        self._recording: dict[asyncio.Future[None], tuple[ClaimedDelivery, float]] = {}
        self._claimer: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._windows = ReceiverWindows(
            policy.backoff,
            group=None if group is None else GroupPauses(group, clock, probe_seconds),
        )
        # Receivers disconnected while deliveries for them were claimed; those are
        # skipped rather than sent. An id leaves the set once nothing is held for it.
        self._forgotten: set[int] = set()
        # Receivers' own max_per_second and max_concurrency, told by the broker when a
        # subscription is made or changed (and confirmed by each claimed delivery).
        self._paces: dict[int, Paces] = {}
        self._own_caps: dict[int, int] = {}
        # Tokens of receivers' paces reserved for the claim under way.
        self._reserved: dict[int, int] = {}
        # Receivers whose last claim took all its pace allowed and wanted more: the
        # loop claims again at their next token. Their bucket may refill during the
        # claim itself, after the check, and nothing else would wake the loop.
        self._held_back_by_pace: set[int] = set()
        # The claim left with the store while the loop sleeps, for the next transaction
        # that publishes (`Store.offer_claim`), and whether its answer came.
        self._offered: ClaimOffer | None = None
        self._offer_answered = asyncio.Event()
        self._giving_back: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> int:
        """Deliveries claimed and not yet settled (waiting in memory or in flight)."""
        return self._held.total()

    def notify(self) -> None:
        """Something may be due now (a publish, a connect, a redrive)."""
        self._wake.set()

    def subscription_changed(self, subscription: Subscription) -> None:
        """A subscription was made or changed: its own cap and pace hold from its very
        first claim (a pace whose rate is unchanged keeps its tokens)."""
        spec = subscription.spec
        self._settings_of(subscription.id, spec.max_concurrency, spec.max_per_second, self._clock())
        self._retract_offer()

    def forget_subscription(self, subscription_id: int) -> None:
        """The receiver disconnected: whatever is claimed for it and not yet being sent
        is dropped (the store already dropped the deliveries themselves)."""
        self._forgotten.add(subscription_id)
        self._paces.pop(subscription_id, None)
        self._own_caps.pop(subscription_id, None)
        self._windows.forget(subscription_id)
        self._observer.forget(subscription_id)

    @property
    def in_flight(self) -> int:
        """Deliveries being sent right now."""
        return len(self._in_flight)

    async def start(self) -> None:
        self._claimer = asyncio.create_task(self._claim_loop(), name="mqpy-claimer")
        self._renewer = asyncio.create_task(self._renew_loop(), name="mqpy-lease-renewer")
        self._worker_tasks = [
            asyncio.create_task(self._work(), name=f"mqpy-worker-{n}") for n in range(self._workers)
        ]

    async def stop(self, grace: float, interrupt: asyncio.Event | None = None) -> None:
        """Stop claiming, give queued deliveries back, let those in flight finish for up
        to `grace` seconds (or until `interrupt` is set), and give back whatever is still
        unfinished."""
        self._stopping = True
        for task in (self._claimer, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._offered is not None and not self._store.withdraw_claim():
            # A transaction is claiming with it: what it leases is held, then given back.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._offer_answered.wait(), grace)
        if self._giving_back:
            await asyncio.wait(self._giving_back, timeout=grace)
        queued = _drain(self._queue)
        if self._in_flight:
            self._all_settled.clear()
            await self._wait_for_in_flight(grace, interrupt or asyncio.Event())
        unfinished = list(self._in_flight.values())
        if self._recording:  # acknowledgements the writer has not committed yet
            await asyncio.wait(list(self._recording), timeout=grace)
        for task in self._worker_tasks:
            task.cancel()
        await asyncio.gather(*self._worker_tasks, return_exceptions=True)
        if queued or unfinished:
            now = self._clock()
            if queued:
                await self._store.release(queued, now)
            if unfinished:  # being sent: the receiver may have it, so the attempt counts
                await self._store.release(unfinished, now, attempted=True)
            log.info("released %d deliveries for after the restart", len(queued) + len(unfinished))

    async def _wait_for_in_flight(self, grace: float, interrupt: asyncio.Event) -> None:
        """Until every delivery in flight settles, `grace` runs out or `interrupt` is set;
        saying what it waits for, since a slow receiver can make that the whole grace."""
        receivers = len({delivery.subscription_id for delivery in self._in_flight.values()})
        log.info(
            "waiting up to %s for %d deliveries in flight to %d receivers; stop again to "
            "give them back now (they are delivered again after the restart)",
            f"{grace:g} s",
            len(self._in_flight),
            receivers,
        )
        settled = asyncio.create_task(self._all_settled.wait())
        interrupted = asyncio.create_task(interrupt.wait())
        await asyncio.wait({settled, interrupted}, timeout=grace, return_when=FIRST_COMPLETED)
        for task in (settled, interrupted):
            task.cancel()

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._withdraw_offer()
            self._recheck_at = math.inf  # `_find_overdue` below sees everything sent so far
            timeout = MAX_IDLE_SECONDS
            room = self._capacity - self.held
            if room > 0:
                now = self._clock()
                try:
                    overdue, next_overdue_at = self._find_overdue(now)
                    claim_busy = self._busy(now, overdue)
                    claim = await self._store.claim(
                        limit=room,
                        now=now,
                        lease_seconds=self._lease_seconds,
                        per_subscription_limit=self._windows.first(self._max_window),
                        busy=claim_busy,
                    )
                except StoreUnavailable as exc:
                    self._held_back = True
                    self._settle_paces([], now)
                    log.error("cannot claim deliveries: %s; trying again shortly", exc)
                    await asyncio.sleep(MAX_IDLE_SECONDS)
                    continue
                given_back = self._hold(claim, room, claim_busy, now)
                # After the rest is held, so a stop meanwhile still releases those (these
                # would wait for their leases).
                if given_back:
                    await self._give_back(given_back, now)
                if claim.next_due_at is not None:
                    timeout = min(timeout, max(0.0, claim.next_due_at - now))
                if next_overdue_at is not None:
                    timeout = min(timeout, max(0.0, next_overdue_at - now))
                resume_at = self._windows.next_resume_at(now)
                if resume_at is not None:
                    timeout = min(timeout, max(0.0, resume_at - now))
                timeout = min(timeout, self._next_token_in())
                if claim.deliveries and timeout == 0.0:
                    continue
            timeout = min(timeout, max(0.0, self._recheck_at - self._clock()))
            if timeout > 0.0 and not self._held_back:
                # Held back, it claims again as slots free up: an offer would only be
                # withdrawn. Not held back, it sleeps until something is published.
                self._offer()
            self._wake_at = self._clock() + timeout
            self._asleep = True
            # wait_for, not asyncio.timeout: with a timeout of 0 it returns at once,
            # where the latter takes one more turn of the loop; measured on Python 3.11,
            # delivery to 1 receiver 12,100 against 11,100 a second (bench, --repeat 3).
            # A cancellation it may lose at stop is covered by `_stopping`.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._asleep = False

    def _hold(
        self, claim: Claim, room: int, busy: dict[int, int], now: float
    ) -> list[ClaimedDelivery]:
        """Take what `claim` (for `room` deliveries, `busy` as given) leased: queue it
        for the workers, and return what must be given back (`_admit_new_receivers`)."""
        deliveries, given_back = self._admit_new_receivers(claim.deliveries, busy, now)
        self._held_back = bool(given_back) or self._claim_held_back(claim, room, busy, now)
        self._settle_paces(deliveries, now)
        for delivery in deliveries:
            if delivery.subscription_id in self._forgotten:
                continue  # claimed just before its receiver disconnected
            self._holding[delivery.delivery_id] = delivery
            self._held[delivery.subscription_id] += 1
            self._queue.put_nowait(delivery)
        for subscription_id in busy:
            if not self._held[subscription_id]:
                self._windows.probe_unused(subscription_id)
        # No claim is under way here, so a forgotten receiver with nothing held can no
        # longer turn up.
        self._forgotten = {s for s in self._forgotten if self._held[s] > 0}
        return given_back

    def _offer(self) -> None:
        """Before the loop sleeps, with room to spare: leave a claim with the store for
        the next publish, so that its deliveries leave without a claim of their own and
        nobody is woken for them (`Store.offer_claim`). Not while a receiver is paused
        or paced: a probe or a pace's tokens would stay reserved for a claim that may
        not come; those are claimed when the loop wakes, as before."""
        room = self._capacity - self.held
        if self._stopping or room <= 0 or self._paces:
            return
        if any(self._windows.paused(s) for s in {*self._windows.receivers(), *self._held}):
            return
        now = self._clock()
        overdue, _ = self._find_overdue(now)
        offer = ClaimOffer(
            limit=room,
            lease_seconds=self._lease_seconds,
            per_subscription_limit=self._windows.first(self._max_window),
            busy=self._busy(now, overdue),
            clock=self._clock,
        )
        if self._store.offer_claim(offer, self._offer_taken):
            self._offered = offer
            self._offer_answered.clear()

    def _retract_offer(self) -> None:
        """A receiver's room shrank (it failed or slowed down) or its settings changed:
        an offer made before must not be taken now. One a transaction took already
        stands, as a claim under way would."""
        if self._offered is not None and self._store.withdraw_claim():
            self._offered = None

    async def _withdraw_offer(self) -> None:
        """The loop is awake and may claim: the offer goes, or if a transaction is
        claiming with it, its answer is awaited (a claim meanwhile would fill the same
        room twice)."""
        if self._offered is None:
            return
        if self._store.withdraw_claim():
            self._offered = None
            return
        await self._offer_answered.wait()

    def _offer_taken(self, claim: Claim | None) -> None:
        """A publish's transaction claimed with the offer and committed (None: it rolled
        back, and leased nothing). Called on the loop, before that transaction's
        publishes return."""
        offer, self._offered = self._offered, None
        self._offer_answered.set()
        if offer is None:
            return
        if claim is None:
            self._held_back = True
            self._wake.set()
            return
        now = self._clock()
        given_back = self._hold(claim, offer.limit, dict(offer.busy), now)
        if given_back:
            task = asyncio.create_task(self._give_back(given_back, now))
            self._giving_back.add(task)
            task.add_done_callback(self._giving_back.discard)
        next_due_at = math.inf if claim.next_due_at is None else claim.next_due_at
        if self._held_back or next_due_at < self._wake_at:
            # More is due, or falls due before the loop would look: it claims and plans
            # its sleep. (Deliveries in flight fall due when their leases would run out:
            # no reason to wake it.)
            self._wake.set()
        elif self._asleep:
            self._offer()  # ready for the next publish

    def _admit_new_receivers(
        self, deliveries: list[ClaimedDelivery], busy: dict[int, int], now: float
    ) -> tuple[list[ClaimedDelivery], list[ClaimedDelivery]]:
        """The claim's deliveries this process may start, and those to give back. A
        receiver it knew nothing of (not in `busy`) got a first window's worth from the
        store without anyone asking the group: if another process of the group has
        paused it (a Retry-After, a run of failures), they go back, and the receiver now
        has a window here, so the next claim asks the group first."""
        kept: list[ClaimedDelivery] = []
        given_back: list[ClaimedDelivery] = []
        allowed: dict[int, int] = {}
        for delivery in deliveries:
            subscription_id = delivery.subscription_id
            if subscription_id in busy:
                kept.append(delivery)
                continue
            if subscription_id not in allowed:
                cap = delivery.max_concurrency or self._max_window  # not learned yet
                allowed[subscription_id] = self._windows.admit(subscription_id, now, cap)
            if allowed[subscription_id] > 0:
                allowed[subscription_id] -= 1
                kept.append(delivery)
            else:
                given_back.append(delivery)
        return kept, given_back

    async def _give_back(self, deliveries: list[ClaimedDelivery], now: float) -> None:
        """Release claimed deliveries unsent: due again now, their attempt undone."""
        try:
            await self._store.release(deliveries, now)
        except StoreUnavailable as exc:  # their leases run out instead
            log.error("cannot give back %d deliveries: %s", len(deliveries), exc)

    async def _renew_loop(self) -> None:
        """Extend the leases of everything held, three times per lease: a node that
        dies stops renewing, and another takes its deliveries once they run out."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            held = list(self._holding.values())
            if not held:
                continue
            try:
                lost = await self._store.renew(
                    held, now=self._clock(), lease_seconds=self._lease_seconds
                )
            except StoreUnavailable as exc:
                log.error("cannot renew the leases of %d deliveries: %s", len(held), exc)
                continue
            if lost:
                # Another node may be delivering these now; our outcome will not count.
                log.warning("lost the lease of %d deliveries to another node", len(lost))

    def _find_overdue(self, now: float) -> tuple[Counter[int], float | None]:
        """Per receiver, its deliveries out past its patience (each newly overdue one
        shrinks its window once); and when the next one will be, if any is out."""
        overdue: Counter[int] = Counter()
        next_at: float | None = None
        for sending in self._sending.values():
            subscription_id = sending.subscription_id
            due_at = sending.sent_at + self._windows.patience(subscription_id)
            if now < due_at:
                next_at = due_at if next_at is None else min(next_at, due_at)
                continue
            overdue[subscription_id] += 1
            if not sending.overdue:
                sending.overdue = True
                self._windows.overdue(subscription_id, sent_at=sending.sent_at, now=now)
        return overdue, next_at

    def _busy(self, now: float, overdue: Counter[int]) -> dict[int, int]:
        """What the store's claim should count each known receiver as holding, so that
        it hands the receiver no more than its room: its window (none while paused, one
        as a probe) less what it holds, not counting overdue deliveries (window.py), and
        no more than its own pace (max_per_second) lets it start now.

        The store gives a receiver `cap - busy`, where `cap` is the subscription's own
        max_concurrency, else the first window (`per_subscription_limit`, for receivers
        this node has not seen yet); a receiver whose window outgrew that cap is counted
        as holding less than nothing."""
        first_window = self._windows.first(self._max_window)
        busy: dict[int, int] = {}
        self._reserved = {}
        for subscription_id in {*self._windows.receivers(), *self._held, *self._paces}:
            cap = self._cap_of(subscription_id)
            window = self._windows.allowance(subscription_id, now, cap)
            held = self._held.get(subscription_id, 0)
            # Overdue ones are presumed hung and do not count against the window: all
            # of them while the receiver answers others quickly, else a window's worth.
            # Everything held still counts against the receiver's cap.
            hung = overdue[subscription_id]
            if not self._windows.responsive(subscription_id, now):
                hung = min(hung, window)
            room = min(window - held + hung, cap - held)
            pace = self._paces.get(subscription_id)
            if pace is not None:
                # Reserved before the claim: the processes of a group claiming at once
                # split the receiver's tokens instead of each taking all of them.
                wanted = max(room, 0)
                room = pace.reserve(now, wanted)
                self._reserved[subscription_id] = room
                if room < wanted:
                    self._held_back_by_pace.add(subscription_id)
            store_cap = self._own_caps.get(subscription_id, first_window)
            busy[subscription_id] = store_cap - max(room, 0)
        return busy

    def _claim_held_back(self, claim: Claim, room: int, busy: dict[int, int], now: float) -> bool:
        """Whether `claim` may have left due deliveries behind for want of room: it
        took all it was allowed, the store saw more due now, a receiver had no room
        (a full or paused window, a pace), or a receiver's own max_concurrency, which
        the store counts across the processes and nodes sharing it, bounded it."""
        if len(claim.deliveries) >= room or self._own_caps or self._held_back_by_pace:
            return True
        if claim.next_due_at is not None and claim.next_due_at <= now:
            return True
        first_window = self._windows.first(self._max_window)
        return any(held >= first_window for held in busy.values())

    def _next_token_in(self) -> float:
        """Seconds until a receiver the pace held back may start its next delivery
        (now, if its bucket refilled while the claim ran); inf if none was held back."""
        now = self._clock()
        waits = [
            self._paces[subscription_id].next_at(now) - now
            for subscription_id in self._held_back_by_pace
            if subscription_id in self._paces
        ]
        return max(0.0, min(waits, default=math.inf))

    def _cap_of(self, subscription_id: int) -> int:
        """The most a receiver's window may grow to."""
        return self._own_caps.get(subscription_id, self._max_window)

    def _settle_paces(self, deliveries: list[ClaimedDelivery], now: float) -> None:
        """Count claimed deliveries against their receivers' max_per_second: what was
        reserved for them, and what was reserved and not claimed goes back."""
        claimed: Counter[int] = Counter()
        held_back, self._held_back_by_pace = self._held_back_by_pace, set()
        for delivery in deliveries:
            self._settings_of(
                delivery.subscription_id, delivery.max_concurrency, delivery.max_per_second, now
            )
            claimed[delivery.subscription_id] += 1
        for subscription_id in {*claimed, *self._reserved}:
            pace = self._paces.get(subscription_id)
            if pace is None:
                continue
            unused = self._reserved.get(subscription_id, 0) - claimed[subscription_id]
            if unused > 0:
                pace.give_back(now, unused)
            elif subscription_id in held_back:
                # Everything reserved was claimed, so more is likely due.
                self._held_back_by_pace.add(subscription_id)
            for _ in range(-unused):  # a pace the claim itself made known
                pace.take(now)
        self._reserved = {}

    def _settings_of(
        self, subscription_id: int, max_concurrency: int | None, rate: float | None, now: float
    ) -> None:
        if max_concurrency is None:
            self._own_caps.pop(subscription_id, None)
        else:
            self._own_caps[subscription_id] = max_concurrency
        if rate is None:
            self._paces.pop(subscription_id, None)
            return
        pace = self._paces.get(subscription_id)
        if pace is None or pace.rate != rate:
            self._paces[subscription_id] = pace_for(
                subscription_id, rate, now, self._group, self._processes
            )

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while True:
            delivery = await self._queue.get()
            self._in_flight[task] = delivery
            try:
                if delivery.subscription_id not in self._forgotten:
                    await self._deliver(delivery)
            except StoreUnavailable as exc:
                # The outcome is lost, not the delivery: its lease runs out and it is
                # attempted again, which at-least-once allows.
                log.error("cannot record the outcome of %s: %s", delivery.message_id, exc)
            except Exception:
                # Last line of defence: a bug in handling one delivery must not kill the
                # worker, or deliveries would stop for every receiver. The lease expires
                # and the delivery is tried again.
                log.exception("unexpected error delivering %s", delivery.message_id)
            finally:
                del self._in_flight[task]
                self._holding.pop(delivery.delivery_id, None)
                if not self._in_flight:
                    self._all_settled.set()
                self._held[delivery.subscription_id] -= 1
                if self._held[delivery.subscription_id] <= 0:
                    del self._held[delivery.subscription_id]
                self._slot_freed()

    def _check_overdue_at(self, due_at: float) -> None:
        """Have the claim loop look again at `due_at`, when a delivery just sent becomes
        overdue: its sleep may have been planned before this delivery was sent. A hung
        delivery of a receiver whose window is full would otherwise hold back its next
        delivery until the loop's idle timeout (bench `flaky`: gaps of 1 s, many times
        over). A timer only while the loop sleeps, and only for an earlier time than
        one already set: deliveries sent later mostly fall due later."""
        if due_at >= self._recheck_at:
            return
        self._recheck_at = due_at
        if self._asleep:
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time() + max(0.0, due_at - self._clock()), self._recheck)

    def _recheck(self) -> None:
        """`_check_overdue_at`'s timer: wake the sleeping loop if a delivery sent since it
        looked is overdue now. Most were answered long before: waking it for them would
        be a claim for nothing (a transaction) per timer, so the timer looks first, and
        comes back for the next one still out, if any."""
        if not self._asleep:
            return  # awake, the loop looks at every delivery out
        now = self._clock()
        due_at = min(
            (
                sending.sent_at + self._windows.patience(sending.subscription_id)
                for sending in self._sending.values()
                if not sending.overdue
            ),
            default=math.inf,
        )
        if due_at <= now:
            self._wake.set()
            return
        self._recheck_at = due_at
        if due_at < math.inf:
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time() + (due_at - now), self._recheck)

    def _slot_freed(self) -> None:
        # Claim again once a worthwhile share of the room is free, or as soon as the
        # workers run dry: a claim per finished delivery would be a store round trip
        # per delivery, mostly for nothing.
        if not self._held_back:
            return
        room = self._capacity - self.held
        if self._queue.empty() or room >= max(1, self._capacity // 4):
            self._wake.set()

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        self._observer.attempt_started(delivery.subscription_id)
        started = time.perf_counter()
        sent_at = self._clock()
        self._sending[delivery.delivery_id] = _Sending(delivery.subscription_id, sent_at)
        self._check_overdue_at(sent_at + self._windows.patience(delivery.subscription_id))
        try:
            outcome = await self._sender.send(delivery)
        finally:
            del self._sending[delivery.delivery_id]
            took = time.perf_counter() - started
            self._observer.attempt_ended(delivery.subscription_id, took)
            # Settling it now: a renewal racing the outcome's commit would find the
            # lease gone and report it lost to another node.
            self._holding.pop(delivery.delivery_id, None)
        subscription_id = delivery.subscription_id
        if outcome.ok:
            acked_at = self._clock()
            window = self._windows.size(subscription_id)
            self._windows.succeeded(
                subscription_id,
                sent_at=sent_at,
                now=acked_at,
                held=self._held[subscription_id],
                cap=self._cap_of(subscription_id),
            )
            now_window = self._windows.size(subscription_id)
            if window is not None and now_window is not None and now_window < window:
                self._retract_offer()  # a slow answer
            self._observer.window_changed(subscription_id, now_window)
            if self._store.background_acks:
                recording = self._store.ack_soon(
                    delivery,
                    now=acked_at,
                    status=outcome.status,
                    attempted_at=sent_at,
                    duration=took,
                )
                self._recording[recording] = (delivery, acked_at)
                recording.add_done_callback(self._recorded)
                return
            await self._store.ack(
                delivery, now=acked_at, status=outcome.status, attempted_at=sent_at, duration=took
            )
            self._acknowledged(delivery, acked_at)
            return
        # A retry falls due later, a pause ends later: the claim loop must plan its
        # sleep again once this slot is free, as after a claim that was held back.
        self._held_back = True
        self._retract_offer()
        if outcome.receiver_unavailable:
            policy = self._policy.overridden_by(delivery.retry)
            self._windows.failed(
                subscription_id,
                sent_at=sent_at,
                now=self._clock(),
                cap=self._cap_of(subscription_id),
                retry_after=policy.retry_after_wait(outcome.retry_after),
                backoff=policy.backoff,
                answered=outcome.status is not None,
            )
            self._observer.window_changed(subscription_id, self._windows.size(subscription_id))
        await self._settle_failure(delivery, outcome, _Timing(sent_at, took))

    def _recorded(self, recording: asyncio.Future[None]) -> None:
        """An acknowledgement reached the store, or could not."""
        delivery, acked_at = self._recording.pop(recording)
        exc = None if recording.cancelled() else recording.exception()
        if exc is None:
            self._acknowledged(delivery, acked_at)
            if delivery.ordering_key is not None:
                self._slot_freed()  # its own slot was freed before the key's next was free
        elif isinstance(exc, StoreUnavailable):
            # The outcome is lost, not the delivery: its lease runs out and it is
            # attempted again, which at-least-once allows.
            log.error("cannot record the outcome of %s: %s", delivery.message_id, exc)
        else:
            log.error("unexpected error recording %s", delivery.message_id, exc_info=exc)

    def _acknowledged(self, delivery: ClaimedDelivery, acked_at: float) -> None:
        self._observer.delivered(delivery, acked_at)
        if delivery.ordering_key is not None:
            self._held_back = True  # the key's next message is free to go now

    async def _settle_failure(
        self, delivery: ClaimedDelivery, outcome: Outcome, timing: _Timing
    ) -> None:
        now = self._clock()
        error = outcome.error or "delivery failed"
        due_at = self._policy.overridden_by(delivery.retry).next_attempt_at(
            attempt=delivery.attempt,
            # A delayed message ages from when it was due, not from its publish.
            published_at=max(delivery.published_at, delivery.deliver_at or 0.0),
            now=now,
            retry_after=outcome.retry_after,
        )
        # Exactly one log line per failed attempt, with structured fields for JSON
        # logs; never the body.
        fields = {
            "receiver_id": delivery.subscription_id,
            "message_id": delivery.message_id,
            "attempt": delivery.attempt,
            "reason": error,
            "status": outcome.status,
        }
        self._observer.failed(
            delivery,
            at=now,
            reason=error,
            status=outcome.status,
            unavailable=self._windows.failures(delivery.subscription_id) > 0,
            dead=due_at is None,
        )
        if due_at is None:
            log.warning(
                "dead-lettered %s for receiver %d after %d attempts: %s",
                delivery.message_id,
                delivery.subscription_id,
                delivery.attempt,
                error,
                extra={**fields, "outcome": "dead_lettered"},
            )
            await self._store.dead_letter(
                delivery,
                now=now,
                error=error,
                status=outcome.status,
                attempted_at=timing.sent_at,
                duration=timing.took,
            )
            return
        next_try, retry_in = self._next_try(delivery.subscription_id, due_at, now)
        log.info(
            "delivery of %s to receiver %d failed (attempt %d): %s; %s",
            delivery.message_id,
            delivery.subscription_id,
            delivery.attempt,
            error,
            next_try,
            extra={**fields, "outcome": "retried", "retry_in": round(retry_in, 3)},
        )
        await self._store.retry(
            delivery,
            due_at=due_at,
            error=error,
            status=outcome.status,
            attempted_at=timing.sent_at,
            duration=timing.took,
        )

    def _next_try(self, subscription_id: int, due_at: float, now: float) -> tuple[str, float]:
        """When the next try will really be, said for the log, and in how many seconds
        at the earliest: a paused receiver holds its deliveries past their own schedule."""
        resume_at = self._windows.paused_until(subscription_id)
        if resume_at is None:
            return f"next try in {due_at - now:.1f} s", due_at - now
        how = "then one delivery goes as a probe, and the others once one succeeds"
        if resume_at <= now:
            return f"next try once the receiver's probe succeeds (it is paused; {how})", 0.0
        if due_at <= resume_at:
            return (
                f"next try in {resume_at - now:.1f} s at the earliest, not {due_at - now:.1f} s: "
                f"the receiver is paused until then ({how})",
                resume_at - now,
            )
        return (
            f"next try in {due_at - now:.1f} s if the receiver is back by then: it is paused "
            f"for {resume_at - now:.1f} s ({how})",
            due_at - now,
        )


@dataclass(slots=True)
class _Sending:
    """A delivery being sent: to whom, since when, and whether it is overdue yet
    (unanswered past its receiver's patience, window.py)."""

    subscription_id: int
    sent_at: float
    overdue: bool = False


@dataclass(frozen=True, slots=True)
class _Timing:
    """When an attempt was sent and how long it took, for the delivery's history."""

    sent_at: float
    took: float


def _drain(queue: asyncio.Queue[ClaimedDelivery]) -> list[ClaimedDelivery]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
