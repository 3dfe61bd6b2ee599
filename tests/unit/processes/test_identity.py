"""Identity: what a core image records (criu_images) and what may run as a job's owner (identity)."""

from __future__ import annotations

import struct

import pytest

from mom_checkpoint.image.criu_images import CORE_MAGIC, IMG_COMMON_MAGIC, ImageError, read_core
from mom_checkpoint.processes.identity import Credentials, JobUser, credentials_problem
from tests.criu_forge import Field, encode

OWNER = JobUser("alice", 1001, 1001, (1001, 2000))


def core_image(creds: list[Field] | None, *, task_state: int = 1, extra: tuple[Field, ...] = ()) -> bytes:
    thread_core: list[Field] = [(1, 0, 0), (2, 0, 0)]
    if creds is not None:
        thread_core.append((10, 2, encode(creds)))
    core: list[Field] = [(1, 0, 1), (3, 2, encode([(1, 0, task_state)])), (5, 2, encode(thread_core)), *extra]
    message = encode(core)
    return struct.pack("<III", IMG_COMMON_MAGIC, CORE_MAGIC, len(message)) + message


def creds(uid: int = 1001, gid: int = 1001, caps: int = 0, groups: tuple[int, ...] = (1001,)) -> list[Field]:
    fields: list[Field] = [(n, 0, uid) for n in (1, 3, 5, 7)]
    fields += [(n, 0, gid) for n in (2, 4, 6, 8)]
    for number in (9, 10, 11, 19):
        fields += [(number, 0, caps & 0xFFFFFFFF), (number, 0, caps >> 32)]
    fields += [(12, 0, 0xFFFFFFFF), (12, 0, 0x1FF), (13, 0, 0)]
    return fields + [(14, 0, g) for g in groups]


def test_a_core_image_gives_its_credentials_and_state() -> None:
    core = read_core(7, core_image(creds(caps=1 << 40), task_state=3))
    assert core.tid == 7 and core.stopped
    assert core.credentials.uids == (1001,) * 4 and core.credentials.gids == (1001,) * 4
    assert core.credentials.groups == {1001}
    assert core.credentials.capabilities == {
        "CapInh": 1 << 40,
        "CapPrm": 1 << 40,
        "CapEff": 1 << 40,
        "CapAmb": 1 << 40,
    }
    assert core.bounding == (0x1FF << 32) | 0xFFFFFFFF


def test_packed_repeated_fields_read_the_same() -> None:
    packed = [f for f in creds() if f[0] != 14] + [(14, 2, bytes([0xE9, 0x07, 0xD0, 0x0F]))]  # 1001, 2000
    assert read_core(1, core_image(packed)).credentials.groups == {1001, 2000}


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (core_image(None), "no credentials"),
        (core_image(creds(), extra=((5, 2, encode([(10, 2, encode(creds(uid=0)))])),)), "no thread_core"),
        (core_image([*creds(), (1, 0, 0)]), "not one number"),  # a second uid: which one would CRIU take?
        (core_image([f for f in creds() if f[0] != 7]), "without field 7"),
        (b"\x00" * 12, "not a CRIU core image"),
        (core_image(creds())[:-3], "truncated"),
    ],
)
def test_an_ambiguous_or_broken_core_image_is_refused(image: bytes, words: str) -> None:
    with pytest.raises(ImageError, match=words):
        read_core(1, image)


def ids(
    uid: int = 1001, gid: int = 1001, groups: frozenset[int] = frozenset({1001}), caps: int = 0
) -> Credentials:
    return Credentials(
        (uid,) * 4, (gid,) * 4, groups, {n: caps for n in ("CapInh", "CapPrm", "CapEff", "CapAmb")}
    )


@pytest.mark.parametrize(
    ("creds_", "words"),
    [
        (ids(), None),
        (ids(gid=2000, groups=frozenset({1001, 2000})), None),  # one of the owner's own groups
        (ids(groups=frozenset()), None),  # fewer groups than the owner has
        (ids(uid=0), "uids 0/0/0/0, not alice's 1001"),
        (
            Credentials(
                (1001, 0, 1001, 1001),
                (1001,) * 4,
                frozenset(),
                dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapAmb"), 0),
            ),
            "uids 1001/0/1001/1001",
        ),
        (ids(gid=42), "gids 42/42/42/42, not groups of alice"),
        (ids(groups=frozenset({1001, 0})), "supplementary groups [0]"),
        (ids(caps=1 << 19), "holds capabilities"),
        (Credentials((1001,) * 4, (1001,) * 4, frozenset(), {"CapEff": 0}), "cannot all be read"),
    ],
)
def test_only_the_owners_identity_without_capabilities_passes(creds_: Credentials, words: str | None) -> None:
    problem = credentials_problem("task 9", creds_, OWNER)
    assert problem is None if words is None else (problem is not None and words in problem), problem


def test_root_jobs_keep_roots_capabilities() -> None:
    root = JobUser("root", 0, 0, (0,))
    assert (
        credentials_problem("task 1", ids(uid=0, gid=0, groups=frozenset({0}), caps=(1 << 41) - 1), root)
        is None
    )


def test_the_parent_death_signal_is_set_and_nothing_else_changes() -> None:
    from mom_checkpoint.image.criu_images import with_pdeath_signal
    from tests.criu_forge import decode

    image = core_image(creds(), task_state=1)
    patched = with_pdeath_signal(image, 9)
    assert read_core(1, patched) == read_core(1, image)  # the credentials and the state as they were
    core = decode(patched[12:])
    [thread_core] = [f[2] for f in core if f[0] == 5]
    assert isinstance(thread_core, bytes)
    assert [f for f in decode(thread_core) if f[0] == 8] == [(8, 0, 9)]
    assert with_pdeath_signal(patched, 9) == patched  # set once, not twice
