"""ReceiverWindows: each receiver's window grows while it answers quickly, shrinks when
it fails or slows down, never to nothing, and a receiver that is down is paused as a
whole and then probed one delivery at a time."""

from __future__ import annotations

from mqpy.delivery.window import DEAD_AFTER, INITIAL_WINDOW, ReceiverWindows

CAP = 64
FAST = 0.001  # seconds a fast receiver takes to answer


def doubling(pauses: int) -> float:
    return 2.0 ** (pauses - 1)


def answer_quickly(windows: ReceiverWindows, receiver: int, now: float, times: int) -> float:
    """`times` quick 2xx while the receiver uses its whole window; returns the time after."""
    for _ in range(times):
        held = windows.allowance(receiver, now, CAP)
        windows.succeeded(receiver, sent_at=now, now=now + FAST, held=held, cap=CAP)
        now += FAST
    return now


def test_a_receiver_starts_small() -> None:
    windows = ReceiverWindows(doubling)
    assert windows.allowance(1, now=0.0, cap=CAP) == INITIAL_WINDOW
    assert windows.allowance(1, now=0.0, cap=2) == 2, "never above the cap"
    assert windows.first(CAP) == INITIAL_WINDOW


def test_quick_answers_grow_the_window_up_to_the_cap() -> None:
    windows = ReceiverWindows(doubling)
    answer_quickly(windows, 1, 0.0, 10)
    assert windows.allowance(1, now=1.0, cap=CAP) == INITIAL_WINDOW + 10, "slow start: +1 each"
    answer_quickly(windows, 1, 1.0, 200)
    assert windows.allowance(1, now=2.0, cap=CAP) == CAP
    assert windows.allowance(2, now=2.0, cap=CAP) == INITIAL_WINDOW, "others are not affected"


def test_a_receiver_not_using_its_window_does_not_grow_it() -> None:
    windows = ReceiverWindows(doubling)
    for n in range(100):
        windows.succeeded(1, sent_at=n, now=n + FAST, held=1, cap=CAP)
    assert windows.allowance(1, now=200.0, cap=CAP) == INITIAL_WINDOW


def test_a_failure_shrinks_the_window_once_per_round_trip() -> None:
    windows = ReceiverWindows(doubling)
    now = answer_quickly(windows, 1, 0.0, 36)  # 40
    assert windows.allowance(1, now, CAP) == 40
    # Ten deliveries sent together all fail: one bad moment, one decrease.
    for _ in range(10):
        windows.failed(1, sent_at=now, now=now + 0.01, cap=CAP)
    assert windows.allowance(1, now + 0.01, CAP) == 28
    assert not windows.paused(1), "a receiver with room left is not paused"
    # A delivery sent after the decrease that fails too shrinks it again.
    windows.failed(1, sent_at=now + 0.02, now=now + 0.03, cap=CAP)
    assert windows.allowance(1, now + 0.03, CAP) == 19


def test_after_a_failure_the_window_grows_more_slowly() -> None:
    windows = ReceiverWindows(doubling)
    now = answer_quickly(windows, 1, 0.0, 16)  # 20
    windows.failed(1, sent_at=now, now=now, cap=CAP)  # 14
    now = answer_quickly(windows, 1, now + 1, 14)
    assert windows.allowance(1, now, CAP) == 14, "one per window's worth, not one each"
    now = answer_quickly(windows, 1, now, 2)
    assert windows.allowance(1, now, CAP) == 15


def test_a_much_slower_answer_shrinks_the_window() -> None:
    windows = ReceiverWindows(doubling)
    now = answer_quickly(windows, 1, 0.0, 16)  # 20, fastest answer 1 ms
    windows.succeeded(1, sent_at=now, now=now + 0.040, held=20, cap=CAP)
    assert windows.allowance(1, now, CAP) == 21, "40 ms is within the margin"
    windows.succeeded(1, sent_at=now + 1, now=now + 1.5, held=20, cap=CAP)
    assert windows.allowance(1, now + 2, CAP) == 14


def test_a_receiver_slow_for_good_is_judged_by_its_new_pace_before_long() -> None:
    windows = ReceiverWindows(doubling)
    answer_quickly(windows, 1, 0.0, 16)
    now = 30.0
    for n in range(20):  # half a second each from now on, one a second
        sent = now + n
        windows.succeeded(1, sent_at=sent, now=sent + 0.5, held=64, cap=CAP)
    shrunk = windows.allowance(1, now + 20, CAP)
    assert shrunk < 20, "answers 500 times slower than before shrink the window"
    # Two periods on, the 1 ms answers are forgotten: half a second is the usual now.
    for n in range(20, 40):
        sent = now + n
        windows.succeeded(1, sent_at=sent, now=sent + 0.5, held=64, cap=CAP)
    assert windows.allowance(1, now + 40, CAP) > shrunk


def test_a_flaky_receiver_keeps_getting_deliveries() -> None:
    windows = ReceiverWindows(doubling)
    now = 0.0
    for n in range(300):  # three failures in five, never three in a row
        now += 0.01
        if n % 5 in (0, 2, 4):
            windows.failed(1, sent_at=now - 0.005, now=now, cap=CAP)
        else:
            held = windows.allowance(1, now, CAP)
            windows.succeeded(1, sent_at=now - 0.005, now=now, held=held, cap=CAP)
        assert windows.allowance(1, now, CAP) >= 1, f"nothing allowed after outcome {n}"
    assert not windows.paused(1)


def test_hung_deliveries_timing_out_together_do_not_pause_a_receiver_that_answers() -> None:
    # Twenty deliveries hang; meanwhile a later one succeeds; then the twenty time out
    # one after another, as they do at the end of the delivery timeout.
    windows = ReceiverWindows(doubling)
    windows.succeeded(1, sent_at=1.0, now=1.0 + FAST, held=1, cap=CAP)
    hung_at = [1.01 + n * 0.001 for n in range(20)]
    windows.succeeded(1, sent_at=1.05, now=1.05 + FAST, held=1, cap=CAP)
    for sent_at in hung_at:
        windows.failed(1, sent_at=sent_at, now=3.02 + sent_at, cap=CAP)
    assert not windows.paused(1), "the receiver answered after these were sent"
    assert windows.failures(1) == 0
    # Failures of deliveries sent after its last success do count.
    for n in range(DEAD_AFTER + 3):
        windows.failed(1, sent_at=5.0 + n, now=5.001 + n, cap=CAP)
    assert windows.paused(1)


def test_a_receiver_that_fails_every_time_is_paused_then_probed() -> None:
    windows = ReceiverWindows(doubling)
    now = 100.0
    for _ in range(20):  # each attempt sent after the previous one failed
        if windows.paused(1):
            break
        windows.failed(1, sent_at=now, now=now + 0.001, cap=CAP)
        now += 0.002
    assert windows.paused(1)
    assert windows.failures(1) >= DEAD_AFTER
    assert windows.allowance(1, now, CAP) == 0
    resume = windows.next_resume_at(now)
    assert resume is not None and resume <= now + 1.0
    assert windows.allowance(1, resume, CAP) == 1, "one probe once the pause is over"
    # The probe fails: a longer pause (doubling: 1 s, then 2 s).
    windows.failed(1, sent_at=resume, now=resume + 0.001, cap=CAP)
    assert windows.next_resume_at(resume + 0.001) == resume + 0.001 + 2.0
    # The next probe succeeds: the pause lifts, the window is one and grows again.
    later = resume + 3.0
    windows.succeeded(1, sent_at=later, now=later + FAST, held=1, cap=CAP)
    assert not windows.paused(1)
    assert windows.failures(1) == 0
    assert windows.allowance(1, later, CAP) == 2


def test_retry_after_pauses_the_receiver_for_as_long_as_asked() -> None:
    windows = ReceiverWindows(doubling)
    windows.failed(1, sent_at=100.0, now=100.0, cap=CAP, retry_after=30.0)
    assert windows.allowance(1, now=129.0, cap=CAP) == 0
    assert windows.allowance(1, now=130.0, cap=CAP) == 1


def test_a_receivers_own_backoff_sets_its_pauses() -> None:
    windows = ReceiverWindows(doubling)
    for n in range(10):
        windows.failed(1, sent_at=float(n), now=n + 0.5, cap=CAP, backoff=lambda _: 7.0)
        if windows.paused(1):
            assert windows.next_resume_at(n + 0.5) == n + 7.5
            return
    raise AssertionError("never paused")


def test_a_forgotten_receiver_leaves_no_state() -> None:
    windows = ReceiverWindows(doubling)
    windows.failed(1, sent_at=100.0, now=100.0, cap=CAP, retry_after=5.0)
    windows.forget(1)
    assert windows.receivers() == []
    assert windows.next_resume_at(100.0) is None


def test_a_delivery_unanswered_past_the_receivers_patience_shrinks_the_window_once() -> None:
    windows = ReceiverWindows(doubling)
    assert windows.patience(1) == float("inf"), "no patience to judge by before an answer"
    now = answer_quickly(windows, 1, 0.0, 16)  # 20, fastest answer 1 ms
    assert windows.patience(1) == FAST + 0.05
    # Three sent together are all overdue: one decrease, as for one slow answer.
    for _ in range(3):
        windows.overdue(1, sent_at=now, now=now + 0.1)
    assert windows.allowance(1, now + 0.1, CAP) == 14
    # When the late answer comes it does not shrink the window again.
    windows.succeeded(1, sent_at=now, now=now + 2.0, held=14, cap=CAP)
    assert windows.allowance(1, now + 2.0, CAP) == 14


def test_a_receiver_is_responsive_while_it_answers_quickly() -> None:
    windows = ReceiverWindows(doubling)
    assert not windows.responsive(1, now=0.0)
    now = answer_quickly(windows, 1, 0.0, 4)
    assert windows.responsive(1, now + 0.5)
    windows.succeeded(1, sent_at=now + 1, now=now + 2, held=4, cap=CAP)  # slow
    assert not windows.responsive(1, now + 2), "a slow answer is not a quick one"


def test_a_quick_error_answer_shows_the_receiver_is_answering() -> None:
    windows = ReceiverWindows(doubling)
    now = answer_quickly(windows, 1, 0.0, 4)
    later = now + 5  # no success since: the success alone no longer counts
    windows.failed(1, sent_at=later, now=later + FAST, cap=CAP, answered=True)  # a quick 500
    assert windows.responsive(1, later + 0.5)
    # A failure with no answer (a dropped connection, a timeout) shows nothing of the kind.
    windows.failed(1, sent_at=later + 5, now=later + 5 + FAST, cap=CAP)
    assert not windows.responsive(1, later + 5 + FAST)
