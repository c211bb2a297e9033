"""ReceiverHealth: a receiver that is down is paused as a whole, then probed."""

from __future__ import annotations

from mqpy.delivery.health import ReceiverHealth

CAP = 8


def doubling(failures: int) -> float:
    return 2.0 ** (failures - 1)


def test_a_healthy_receiver_gets_its_cap() -> None:
    health = ReceiverHealth(doubling)
    assert health.allowance(1, now=0.0, cap=CAP) == CAP
    assert health.next_resume_at(0.0) is None


def test_a_failure_pauses_then_allows_one_probe() -> None:
    health = ReceiverHealth(doubling)
    health.failed(1, now=100.0)
    assert health.allowance(1, now=100.5, cap=CAP) == 0
    assert health.next_resume_at(100.5) == 101.0
    assert health.allowance(1, now=101.0, cap=CAP) == 1
    assert health.allowance(2, now=100.5, cap=CAP) == CAP, "others are not affected"


def test_pauses_grow_with_consecutive_failures_and_success_clears_them() -> None:
    health = ReceiverHealth(doubling)
    for n in range(1, 4):
        health.failed(1, now=100.0)
        assert health.failures(1) == n
    assert health.next_resume_at(100.0) == 104.0
    health.succeeded(1)
    assert health.allowance(1, now=100.0, cap=CAP) == CAP
    assert health.failures(1) == 0


def test_retry_after_lengthens_the_pause() -> None:
    health = ReceiverHealth(doubling)
    health.failed(1, now=100.0, retry_after=30.0)
    assert health.allowance(1, now=129.0, cap=CAP) == 0
    assert health.allowance(1, now=130.0, cap=CAP) == 1


def test_a_forgotten_receiver_leaves_no_state() -> None:
    health = ReceiverHealth(doubling)
    health.failed(1, now=100.0)
    health.forget(1)
    assert health.paused_or_probing() == []
    assert health.next_resume_at(100.0) is None
