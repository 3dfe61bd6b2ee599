"""Node slots: one user's checkpoints never hold every slot of the node (issue 25 #4).

Two jobs of one user whose checkpointers that user kept stopped held both slots of a node
(max_concurrent = 2) until timeout_s, and every other user's checkpoint waited that long and failed
with 75. A user's checkpoints now hold at most max(1, max_concurrent - 1) slots at once: the user's
further checkpoints wait for that user's own, and another user finds a slot free.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from mom_checkpoint.platform.errors import Busy
from mom_checkpoint.spool.locking import node_slot, user_share

ALICE, BOB, CAROL = 1001, 1002, 1003


def _no_wait(seconds: float) -> None:
    raise AssertionError("waited for a slot that should have been free")


@pytest.mark.parametrize(("max_concurrent", "share"), [(1, 1), (2, 1), (3, 2), (4, 3), (8, 7)])
def test_a_users_share_is_all_slots_but_one(max_concurrent: int, share: int) -> None:
    assert user_share(max_concurrent) == share


@pytest.mark.parametrize("max_concurrent", [2, 3, 4])
def test_another_user_finds_a_slot_whatever_one_user_holds(tmp_path: Path, max_concurrent: int) -> None:
    with contextlib.ExitStack() as alice:
        held = [
            alice.enter_context(node_slot(tmp_path, max_concurrent, 0, uid=ALICE, sleep=_no_wait))
            for _ in range(user_share(max_concurrent))
        ]
        assert sorted(held) == list(range(max_concurrent - 1))
        with pytest.raises(Busy, match=r"the job's owner already runs \d+ checkpoint\(s\) on this node"):
            alice.enter_context(node_slot(tmp_path, max_concurrent, 0, uid=ALICE))
        with node_slot(tmp_path, max_concurrent, 0, uid=BOB, sleep=_no_wait) as bobs:
            assert bobs == max_concurrent - 1  # the one slot Alice could not take
            with pytest.raises(Busy, match=rf"the node already runs max_concurrent={max_concurrent}"):
                alice.enter_context(node_slot(tmp_path, max_concurrent, 0, uid=CAROL))


def test_a_users_next_checkpoint_waits_for_that_users_own_slot(tmp_path: Path) -> None:
    """With two slots, Alice's second checkpoint waits while her first runs, even with a node slot
    free, and takes a slot as soon as her first one ends (within its wait)."""
    first = contextlib.ExitStack()
    first.enter_context(node_slot(tmp_path, 2, 0, uid=ALICE))
    waited: list[float] = []

    def first_ends(seconds: float) -> None:
        waited.append(seconds)
        first.close()

    with node_slot(tmp_path, 2, 30, uid=ALICE, sleep=first_ends) as slot:
        assert slot == 0 and len(waited) == 1


def test_the_wait_ends_at_its_deadline(tmp_path: Path) -> None:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    with node_slot(tmp_path, 2, 0, uid=ALICE), pytest.raises(Busy, match="within 5s"):  # noqa: SIM117
        with node_slot(tmp_path, 2, 5, uid=ALICE, sleep=sleep, monotonic=lambda: clock[0]):
            pass
    assert 5 <= clock[0] < 6


def test_one_slot_is_still_one_slot(tmp_path: Path) -> None:
    """max_concurrent = 1: a user's checkpoint holds the node's only slot, as before (the stopped
    checkpointer is killed after a few seconds: environment.StoppedFails)."""
    with node_slot(tmp_path, 1, 0, uid=ALICE), pytest.raises(Busy, match="max_concurrent=1"):  # noqa: SIM117
        with node_slot(tmp_path, 1, 0, uid=BOB):
            pass


def test_a_slot_and_a_share_are_free_again_after_use_and_after_a_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), node_slot(tmp_path, 2, 0, uid=ALICE):
        raise RuntimeError("the dump failed")
    with node_slot(tmp_path, 2, 0, uid=ALICE, sleep=_no_wait) as slot:
        assert slot == 0
    # the share's holder is named by the lock's own name: root's file, in root's lock folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slot-0.lock", f"user-{ALICE}-0.lock"]
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o600}
