"""Conformance: receivers' health saved for after a restart."""

from __future__ import annotations

from mqpy.model.domain import ReceiverHealth
from mqpy.store.base import Store
from tests.store.support import T0, Reopen, subscribe


class HealthConformance:
    async def test_saved_health_is_there_after_a_reopen(self, store: Store, reopen: Reopen) -> None:
        failing = await subscribe(store)
        fine = await subscribe(store)
        await subscribe(store)  # never attempted: nothing saved
        saved = [
            ReceiverHealth(
                failing.id,
                last_success_at=T0,
                last_failure_at=T0 + 5,
                consecutive_failures=3,
                unavailable=True,
                last_error="receiver answered HTTP 503",
                last_status=503,
                last_message_id="msg_1",
                last_attempt=3,
            ),
            ReceiverHealth(fine.id, T0 + 4, None, 0, False),
        ]
        await store.save_receiver_health(saved)
        reopened = await reopen(store)
        assert await reopened.receiver_health() == sorted(saved, key=lambda h: h.subscription_id)

    async def test_a_later_save_wins_and_an_older_one_does_not(self, store: Store) -> None:
        sub = await subscribe(store)
        newer = ReceiverHealth(sub.id, T0 + 10, T0 + 2, 0, False)
        older = ReceiverHealth(sub.id, None, T0 + 5, 1, False, "boom", 500, "msg_2", 1)
        await store.save_receiver_health([newer])
        await store.save_receiver_health([older])  # another node's, from before
        assert await store.receiver_health() == [newer]
        latest = ReceiverHealth(sub.id, T0 + 10, T0 + 11, 1, True, "refused", None, "msg_3", 1)
        await store.save_receiver_health([latest])
        assert await store.receiver_health() == [latest]

    async def test_a_removed_subscriptions_health_is_not_listed(self, store: Store) -> None:
        gone = await subscribe(store)
        await store.save_receiver_health([ReceiverHealth(gone.id, T0, None, 0, False)])
        await store.remove_subscription(gone.id, T0 + 1)
        assert await store.receiver_health() == []
