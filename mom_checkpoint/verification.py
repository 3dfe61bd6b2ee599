"""Before anything is restored: the generation is complete, untampered, and nobody else could have
written it.

- every file the manifest lists is there with its size and sha256, and nothing else is in the image;
- no symlinks anywhere in the generation;
- folders and files belong to root or to the job's user (only when the restore itself runs as that
  user), and no other user can write any of them or the folders above them in the spool.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mom_checkpoint.errors import Refused, VerificationFailed
from mom_checkpoint.hashing import NotARegularFile, Progress, digest_files
from mom_checkpoint.manifest import Manifest, read
from mom_checkpoint.storage import IMAGE, MANIFEST


def verify(
    generation: Path,
    *,
    allowed_uids: frozenset[int],
    expected_job: str | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Check a generation folder completely; return its manifest."""
    check_ownership(generation, allowed_uids)
    manifest = read(generation / MANIFEST)
    if expected_job is not None and manifest.job.id != expected_job:
        raise VerificationFailed(f"{generation} holds job {manifest.job.id}, not {expected_job}")
    listed = {f.path for f in manifest.files}
    present = set(image_files(generation))
    if missing := sorted(listed - present):
        raise VerificationFailed(f"{generation}: image file missing: {missing[0]} ({len(missing)} missing)")
    if extra := sorted(present - listed):
        raise VerificationFailed(f"{generation}: image file not in the manifest: {extra[0]}")
    try:
        digests = digest_files(generation, [f.path for f in manifest.files], progress=progress)
    except NotARegularFile as exc:
        raise VerificationFailed(f"{generation}: {exc}") from None
    except OSError as exc:
        raise VerificationFailed(f"{generation}: cannot read an image file: {exc}") from None
    for expected, actual in zip(manifest.files, digests, strict=True):
        if (expected.size, expected.sha256) != (actual.size, actual.sha256):
            raise VerificationFailed(
                f"{generation}: {expected.path} has changed since the checkpoint "
                f"(size {actual.size}, expected {expected.size}; checksum mismatch): refusing to restore it"
            )
    return manifest


def image_files(generation: Path) -> list[str]:
    """Every entry below image/, relative to the generation; a symlink or special file is refused."""
    found = []
    for dirpath, dirnames, filenames in os.walk(generation / IMAGE, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise Refused(f"{path} is a symlink: refusing to restore from {generation}")
            if stat.S_ISREG(mode):
                found.append(str(path.relative_to(generation)))
            elif not stat.S_ISDIR(mode):
                raise Refused(f"{path} is not a regular file: refusing to restore from {generation}")
    return found


def check_ownership(generation: Path, allowed_uids: frozenset[int]) -> None:
    """Refuse a generation that a user other than root (or the restoring job user) could have written."""
    for path in [generation.parent, generation, *_walk(generation)]:
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise VerificationFailed(f"{path} does not exist") from None
        if stat.S_ISLNK(st.st_mode):
            raise Refused(f"{path} is a symlink: refusing to restore from {generation}")
        if st.st_uid not in allowed_uids:
            raise Refused(
                f"{path} belongs to uid {st.st_uid}: refusing to restore from a folder another user controls"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise Refused(
                f"{path} can be written by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
                "refusing to restore"
            )


def _walk(generation: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(generation, followlinks=False):
        found += [Path(dirpath) / name for name in [*dirnames, *filenames]]
    return found
