"""verification: the page files' check that runs while CRIU restores (check_digests_meanwhile), and
the generation checked once through root's manifest (TrustedGeneration -> VerifiedGeneration)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import pytest

from mom_checkpoint.image.hashing import ImageFile
from mom_checkpoint.image.verification import TrustedGeneration, check_digests_meanwhile
from mom_checkpoint.platform.errors import Refused, VerificationFailed
from mom_checkpoint.vault.store import write_manifest
from tests.helpers import digest_of
from tests.torque import manifest


def _image(base: Path, sizes: dict[str, int]) -> list[ImageFile]:
    (base / "image").mkdir(parents=True)
    files = []
    for name, size in sizes.items():
        data = os.urandom(size)
        (base / "image" / name).write_bytes(data)
        files.append(ImageFile(f"image/{name}", size, digest_of(data)))
    return files


def test_the_files_are_opened_before_the_call_returns(tmp_path: Path) -> None:
    """mom-restart acts as the job's user (seteuid, for every thread) to open the job's output files
    while the pages are hashed: the hashing thread must not open anything itself. Here every name is
    gone the moment the call returns, and the check still reads the very files it was given."""
    files = _image(tmp_path / "staged", {"pages-1.img": 9 << 20, "pages-2.img": 70_000})
    pending = check_digests_meanwhile(tmp_path, files, read_from=tmp_path / "staged", deadline=None)
    shutil.rmtree(tmp_path / "staged")
    pending.result()


def test_a_mismatch_or_another_size_is_a_refusal(tmp_path: Path) -> None:
    files = _image(tmp_path / "staged", {"pages-1.img": 9 << 20})
    victim = tmp_path / "staged" / "image" / "pages-1.img"
    with open(victim, "r+b") as fh:  # one byte flipped (writing a fixed byte may write the same one)
        fh.seek(5 << 20)
        byte = fh.read(1)[0]
        fh.seek(5 << 20)
        fh.write(bytes([byte ^ 0xFF]))
    pending = check_digests_meanwhile(tmp_path, files, read_from=tmp_path / "staged", deadline=None)
    with pytest.raises(VerificationFailed, match=r"pages-1\.img has changed since the checkpoint"):
        pending.result()
    os.truncate(victim, 100)
    with pytest.raises(VerificationFailed, match="size 100"):  # refused at once, before any restore
        check_digests_meanwhile(tmp_path, files, read_from=tmp_path / "staged", deadline=None)


def test_a_cancelled_check_stops_at_its_next_chunk(tmp_path: Path) -> None:
    """A restart that failed meanwhile cancels the check of the pages: it stops instead of hashing on."""
    files = _image(tmp_path / "staged", {"pages-1.img": 64 << 20})
    pending = check_digests_meanwhile(tmp_path, files, read_from=tmp_path / "staged", deadline=None)
    pending.cancel()
    assert pending.done(timeout=10)
    with pytest.raises(VerificationFailed, match="cancelled"):
        pending.result()


def _generation(tmp_path: Path, *, run_as: str, uid: int) -> Path:
    """A generation of root's with one image file, its manifest written as root writes it (0600)."""
    generation = tmp_path / "1.42.head" / "000001-20261130T000000Z"
    generation.mkdir(parents=True, mode=0o700)
    os.chmod(generation.parent, 0o700)
    files = _image(generation, {"pages-1.img": 70_000})
    base = manifest("42.head", 1, generation.name, 2, 1.0)
    record = msgspec.structs.replace(
        base,
        job=msgspec.structs.replace(base.job, uid=uid),
        backend=msgspec.structs.replace(base.backend, run_as=run_as),
        files=files,
        total_bytes=sum(f.size for f in files),
    )
    write_manifest(generation, record)
    return generation


@pytest.mark.skipif(os.geteuid() != 0, reason="root owns the generation and hands a file to a user")
@pytest.mark.parametrize("run_as", ["root", "job-user"])
def test_who_may_own_a_generations_files_comes_from_roots_manifest(tmp_path: Path, run_as: str) -> None:
    """One manifest read, one walk: in job-user mode the job's user wrote the image (their checkpointer)
    and may own its files; a root-mode generation holding a file of a user is refused, whoever asks."""
    generation = _generation(tmp_path, run_as=run_as, uid=4242)
    os.chown(generation / "image" / "pages-1.img", 4242, 4242)
    trusted = TrustedGeneration.read(generation)
    assert trusted.writers == ({0, 4242} if run_as == "job-user" else {0})
    if run_as == "root":
        with pytest.raises(Refused, match="belongs to uid 4242"):
            trusted.verified()
        return
    verified = trusted.verified(expected_job="42.head")
    verified.check_digests()
    with pytest.raises(VerificationFailed, match=r"holds job 42\.head, not 43\.head"):
        trusted.verified(expected_job="43.head")
    with open(generation / "image" / "pages-1.img", "r+b") as fh:
        byte = fh.read(1)[0]
        fh.seek(0)
        fh.write(bytes([byte ^ 0xFF]))
    with pytest.raises(VerificationFailed, match="checksum mismatch"):
        verified.check_digests()
