"""The table a `--processes` group shares (core/group_state.py): buckets and pauses
seen alike by every process that maps it, a probe held by one live process, a full
table that degrades to each process's share, and files of dead groups removed.
Real files, real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqpy.core.group_state import GroupState, remove_orphans
from mqpy.core.ratelimit import CREDIT_SECONDS, publish_limiter
from mqpy.delivery.group_pauses import GroupPauses
from mqpy.delivery.pace import pace_for
from mqpy.delivery.window import DEAD_AFTER, ReceiverWindows


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return GroupState.create(str(tmp_path))


@pytest.fixture
def group(table: Path) -> Iterator[GroupState]:
    """This process's view of `table`."""
    opened = GroupState(table)
    yield opened
    opened.close()


def small_group(tmp_path: Path, slots: int) -> GroupState:
    return GroupState(GroupState.create(str(tmp_path), slots=slots))


def in_another_process(table: Path, code: str) -> str:
    """Run `code` with `group`, the table opened by a process of its own; its output."""
    script = f"from mqpy.core.group_state import GroupState\ngroup = GroupState({str(table)!r})\n"
    done = subprocess.run(
        [sys.executable, "-c", script + code], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_a_publish_rate_is_one_bucket_for_every_process_of_the_group(
    table: Path, group: GroupState
) -> None:
    limiter = publish_limiter(10, 10, time.monotonic, group, processes=2)
    # Another process takes 8 of the key's 10.
    assert (
        in_another_process(table, "print(group.acquire('publish', 'k', 10, 10, 8))") == "(0.0, 0.0)"
    )
    assert limiter.acquire("k", 2) == 0.0
    assert limiter.acquire("k") > 0.05, "the burst is spent for the whole group"
    assert limiter.acquire("other") == 0.0, "keys keep their own buckets"


def test_a_process_takes_a_little_ahead_and_gives_back_what_it_did_not_spend(
    group: GroupState,
) -> None:
    # 1 a second, so next to nothing refills meanwhile; 1/8 of the burst split in two.
    limiter = publish_limiter(1, 800, time.monotonic, group, processes=2)

    def left() -> int:  # what the group's bucket holds, as any process sees it
        return round(group.level("publish", "k", 1, 800, 0) or 0)

    assert limiter.acquire("k") == 0.0
    assert left() == 749, "1 spent, 50 taken ahead"
    assert [limiter.acquire("k") for _ in range(50)] == [0.0] * 50
    assert left() == 749, "spent from what it took ahead"
    assert limiter.acquire("k") == 0.0
    assert left() == 698
    time.sleep(CREDIT_SECONDS * 1.5)
    assert limiter.acquire("k") == 0.0
    assert left() == 697, "the 50 it did not spend came back first"


def test_a_full_table_gives_each_process_its_share_and_never_refuses(tmp_path: Path) -> None:
    group = small_group(tmp_path, 4)
    limiter = publish_limiter(10, 10, time.monotonic, group, processes=2)
    for key in "abcd":  # four buckets in use fill the table
        assert limiter.acquire(key, 10) == 0.0
    assert group.acquire("publish", "e", 10, 10, 1) is None
    # "e" gets what one of two processes alone allows: 5, then 5 a second.
    assert [limiter.acquire("e") for _ in range(6)][4:] == [0.0, pytest.approx(0.2, abs=0.01)]
    group.close()


def test_a_bucket_that_refilled_leaves_its_slot_to_another_key(tmp_path: Path) -> None:
    group = small_group(tmp_path, 1)
    try:
        # 10 a second: "a" takes 0.1 s to refill. (At 1,000 a second, 1 ms between
        # the first two calls on a loaded machine had refilled it: a flaky test.)
        assert group.acquire("publish", "a", 10, 1, 1) == (0.0, 0.0)
        assert group.acquire("publish", "b", 10, 1, 1) is None
        time.sleep(0.15)  # "a" is full again: nothing to keep
        assert group.acquire("publish", "b", 10, 1, 1) == (0.0, 0.0)
    finally:
        group.close()


def test_a_receivers_pace_is_shared_and_runs_into_debt_rather_than_over(
    table: Path, group: GroupState
) -> None:
    pace = pace_for(7, 5.0, 0.0, group, processes=2)
    assert pace.available(0.0) == 5
    in_another_process(table, "for _ in range(5): group.level('pace', '7', 5.0, 5.0, 1.0)")
    assert pace.available(0.0) == 0
    pace.take(0.0)  # claimed at once by a process that looked before
    assert 0.35 < pace.next_at(0.0) < 0.45, "the debt is paid before the next one"


def test_a_pause_holds_every_process_off_and_one_live_process_probes(
    table: Path, group: GroupState
) -> None:
    clock = time.monotonic
    here = ReceiverWindows(lambda pauses: 0.2, group=GroupPauses(group, clock, 30.0))
    now = clock()
    for n in range(DEAD_AFTER):  # eight failures in a row: paused for 0.2 s
        here.failed(3, sent_at=now + n * 0.001, now=now + n * 0.001, cap=8)
    assert here.paused(3) and here.allowance(3, clock(), 8) == 0
    # Another process sees the pause, and once it is over takes the probe and holds it
    # until told to stop.
    other = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys, time
from mqpy.core.group_state import GroupState
group = GroupState({str(table)!r})
print(group.pause_of("3").pauses, flush=True)
time.sleep(0.25)
print(group.claim_probe("3", 30.0), flush=True)
sys.stdin.readline()
"""],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert other.stdin is not None and other.stdout is not None
    assert other.stdout.readline().strip() == "1"
    assert other.stdout.readline().strip() == "True"
    assert here.allowance(3, clock(), 8) == 0, "the other process holds the probe"
    other.stdin.close()
    other.wait()
    other.stdout.close()
    # It died without an answer: its probe is free.
    assert here.allowance(3, clock(), 8) == 1
    assert here.allowance(3, clock(), 8) == 1, "held by this process now"
    here.succeeded(3, sent_at=clock(), now=clock(), held=1, cap=8)
    assert not here.paused(3)
    assert in_another_process(table, "print(group.pause_of('3').pauses)") == "0"


def test_the_files_of_groups_whose_supervisor_died_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f"mqpy-group-{dead.pid}-x"
    orphan.touch()
    ours = GroupState.create(str(tmp_path))
    remove_orphans(str(tmp_path))
    assert not orphan.exists() and ours.exists()
