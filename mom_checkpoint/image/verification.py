"""Before anything is restored: the generation is complete, untampered, and nobody else could have
written it.

- every file the manifest lists is there with its size and digest (BLAKE3, or an older sha256), and
  nothing else is in the image;
- no symlinks anywhere in the generation;
- folders and files belong to root or to the job's user (only when the restore itself runs as that
  user), and no other user can write any of them or the folders above them in the spool.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from mom_checkpoint.image.hashing import (
    ImageFile,
    OpenFiles,
    Progress,
    SizeChanged,
    algorithm_of,
    digest_files,
    open_files,
)
from mom_checkpoint.image.layout import IMAGE, KEPT, MANIFEST
from mom_checkpoint.image.manifest import Manifest, read
from mom_checkpoint.platform import safefs
from mom_checkpoint.platform.errors import Refused, VerificationFailed


class TrustedGeneration(msgspec.Struct, frozen=True):
    """A generation folder and root's manifest of it, read once (read_trusted_manifest): what root
    decides from (whose checkpoint, which files, which sizes) before anything in the image is read."""

    path: Path
    manifest: Manifest

    @classmethod
    def read(cls, path: Path) -> TrustedGeneration:
        return cls(path, read_trusted_manifest(path))

    @property
    def writers(self) -> frozenset[int]:
        """Who may own its folders and files: root, and in job-user mode the job's user (their
        checkpointer wrote the image), as root's record says."""
        job_user = self.manifest.backend.run_as == "job-user"
        return frozenset({0, self.manifest.job.uid} if job_user else {0})

    def verified(
        self, *, expected_job: str | None = None, deadline: float | None = None
    ) -> VerifiedGeneration:
        """Its layout checked against the manifest, in one walk of it (check_layout): what is left to
        check is the content of its files."""
        check_layout(self.path, self.manifest, allowed_uids=self.writers, expected_job=expected_job,
                     deadline=deadline)  # fmt: skip
        return VerifiedGeneration(self.path, self.manifest)


class VerifiedGeneration(msgspec.Struct, frozen=True):
    """A generation whose layout passed check_layout: the restart and ``verify`` check its digests
    through it, all at once or (the job's memory) while the restorer runs."""

    path: Path
    manifest: Manifest

    def check_digests(
        self,
        *,
        progress: Progress | None = None,
        deadline: float | None = None,
        read_from: Path | None = None,
        files: Sequence[ImageFile] | None = None,
    ) -> None:
        check_digests(self.path, self.manifest, progress=progress, deadline=deadline, read_from=read_from,
                      files=files)  # fmt: skip

    def check_digests_meanwhile(
        self, files: Sequence[ImageFile], *, read_from: Path, deadline: float | None
    ) -> InBackground:
        return check_digests_meanwhile(self.path, files, read_from=read_from, deadline=deadline)


def check_layout(
    generation: Path,
    manifest: Manifest,
    *,
    allowed_uids: frozenset[int],
    expected_job: str | None,
    deadline: float | None,
) -> None:
    """Everything but the digests, against the manifest root wrote (read_trusted_manifest): owners and
    modes, no link or special file, exactly the files the manifest lists."""
    entries = check_ownership(generation, allowed_uids, deadline)
    if expected_job is not None and manifest.job.id != expected_job:
        raise VerificationFailed(f"{generation} holds job {manifest.job.id}, not {expected_job}")
    listed = {f.path for f in manifest.files}
    present = set(image_files(generation, entries))
    if missing := sorted(listed - present):
        raise VerificationFailed(f"{generation}: image file missing: {missing[0]} ({len(missing)} missing)")
    if extra := sorted(present - listed):
        raise VerificationFailed(f"{generation}: image file not in the manifest: {extra[0]}")
    kept = {e.path: e for e in entries if e.path.startswith(f"{KEPT}/")}
    if {k.copy for k in manifest.kept} != {path for path, e in kept.items() if e.kind == "file"}:
        raise VerificationFailed(f"{generation}: the kept files are not those the manifest lists")
    if any(e.uid != 0 for e in kept.values()) and os.geteuid() == 0:
        raise Refused(f"{generation}: a kept file is not root's: refusing to restore")


def check_digests(
    generation: Path,
    manifest: Manifest,
    *,
    progress: Progress | None = None,
    deadline: float | None = None,
    read_from: Path | None = None,
    files: Sequence[ImageFile] | None = None,
    kept: bool = True,
) -> None:
    """Every image file's size and digest as the manifest records them. ``read_from``: a folder
    holding the copy of image/ that the restorer will read (staging): that copy is what is hashed.
    ``files``: only these of the manifest's image files (default: all); ``kept``: the kept files too."""
    checked = manifest.files if files is None else list(files)
    with _open_for_check(generation, checked, read_from) as opened:
        digests = _digests(generation, opened, progress=progress, deadline=deadline)
    if kept:
        _check_kept(generation, manifest)
    _compare(generation, checked, digests)


def check_digests_meanwhile(
    generation: Path, files: Sequence[ImageFile], *, read_from: Path, deadline: float | None
) -> InBackground:
    """check_digests of ``files`` in a thread of its own, while the caller goes on. The files are opened
    here, in the caller's thread, with its rights (a size that differs refuses at once): what the
    caller does meanwhile (acting as the job's user to open its files) cannot change what is read."""
    opened = _open_for_check(generation, files, read_from)
    stop = threading.Event()

    def stopped(_nbytes: int) -> None:  # told after each chunk hashed
        if stop.is_set():
            raise VerificationFailed(f"{generation}: the check was cancelled")

    def check() -> None:
        with opened:
            digests = _digests(generation, opened, progress=stopped, deadline=deadline)
        _compare(generation, files, digests)

    return InBackground(check, stop)


def _open_for_check(generation: Path, files: Sequence[ImageFile], read_from: Path | None) -> OpenFiles:
    try:
        return open_files(
            read_from or generation,
            [f.path for f in files],
            sizes=[f.size for f in files],
            algorithms=[algorithm_of(f.digest) for f in files],
        )
    except SizeChanged as exc:
        path, actual, expected = exc.args
        raise VerificationFailed(
            f"{generation}: {path} has changed since the checkpoint (size {actual}, expected "
            f"{expected}): refusing to restore it"
        ) from None
    except OSError as exc:
        raise VerificationFailed(f"{generation}: cannot read an image file: {exc}") from None


def _digests(
    generation: Path, opened: OpenFiles, *, progress: Progress | None, deadline: float | None
) -> list[ImageFile]:
    try:
        return opened.digest(progress=progress, deadline=deadline)
    except OSError as exc:
        raise VerificationFailed(f"{generation}: cannot read an image file: {exc}") from None


def _compare(generation: Path, expected: Sequence[ImageFile], actual: Sequence[ImageFile]) -> None:
    for want, got in zip(expected, actual, strict=True):
        if want.digest != got.digest:
            raise VerificationFailed(
                f"{generation}: {want.path} has changed since the checkpoint "
                f"(checksum mismatch): refusing to restore it"
            )


def _check_kept(generation: Path, manifest: Manifest) -> None:
    """Root's copies of what the job held: in the generation itself, never in a staged copy."""
    try:
        kept = digest_files(
            generation,
            [k.copy for k in manifest.kept],
            sizes=[k.size for k in manifest.kept],
            algorithms=[algorithm_of(k.digest) for k in manifest.kept],
        )
    except (SizeChanged, OSError) as exc:
        raise VerificationFailed(f"{generation}: a kept file has changed or cannot be read: {exc}") from None
    for k, actual in zip(manifest.kept, kept, strict=True):
        if k.digest != actual.digest:
            raise VerificationFailed(f"{generation}: {k.copy} has changed since the checkpoint: refusing it")


class InBackground:
    """A check run in a thread of its own while the caller goes on (the restore of the job, stopped):
    ``result()`` waits for it and raises what it raised; ``cancel()`` stops it at its next chunk (a
    restart that failed meanwhile exits without hashing on)."""

    def __init__(self, check: Callable[[], None], stop: threading.Event | None = None) -> None:
        self._error: BaseException | None = None
        self._stop = stop or threading.Event()
        self._thread = threading.Thread(target=self._run, args=(check,), name="verify", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._stop.set()

    def done(self, timeout: float) -> bool:
        """Whether the check has ended, waiting at most ``timeout`` seconds for it."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self, check: Callable[[], None]) -> None:
        try:
            check()
        except BaseException as exc:  # handed to the waiting thread
            self._error = exc

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def read_trusted_manifest(generation: Path) -> Manifest:
    """A generation's manifest, only if root wrote it and no user can have changed it since: the
    manifest a regular file of root's, readable by root alone, in folders of root's that nobody else
    can write. This is what root decides from (whose checkpoint it is, which files, which sizes),
    before anything in the image is read."""
    trusted = frozenset({0, os.geteuid()})
    for path in (generation.parent, generation):
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise VerificationFailed(f"{path} does not exist") from None
        _check_entry(str(path), st.st_mode, st.st_uid, trusted, generation)
        if not stat.S_ISDIR(st.st_mode):
            raise Refused(f"{path} is not a folder: refusing to restore from {generation}")
    path = generation / MANIFEST
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise VerificationFailed(f"{path}: no manifest (not a complete generation)") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in trusted or st.st_mode & 0o077:
        raise Refused(
            f"{path} belongs to uid {st.st_uid} (mode {stat.S_IMODE(st.st_mode):o}): only a manifest that "
            f"root wrote and alone can read is trusted (older job-user generations had their user's "
            f"manifest: take a new checkpoint)"
        )
    return read(path)


def image_files(generation: Path, entries: list[safefs.Entry]) -> list[str]:
    """The regular files below image/, relative to the generation (entries of a walk of it)."""
    prefix = f"{IMAGE}/"
    return [e.path for e in entries if e.kind == "file" and e.path.startswith(prefix)]


def check_ownership(
    generation: Path, allowed_uids: frozenset[int], deadline: float | None = None
) -> list[safefs.Entry]:
    """Refuse a generation that a user other than root (or the restoring job user) could have
    written, or that holds a symlink or special file anywhere; return the walk of it."""
    for path in (generation.parent, generation):
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise VerificationFailed(f"{path} does not exist") from None
        _check_entry(str(path), st.st_mode, st.st_uid, allowed_uids, generation)
    fd = safefs.open_dir(generation)
    try:
        entries = safefs.walk(fd, deadline=deadline)
    finally:
        os.close(fd)
    for entry in entries:
        _check_entry(f"{generation}/{entry.path}", entry.mode, entry.uid, allowed_uids, generation)
    return entries


def _check_entry(path: str, mode: int, uid: int, allowed_uids: frozenset[int], generation: Path) -> None:
    if stat.S_ISLNK(mode):
        raise Refused(f"{path} is a symlink: refusing to restore from {generation}")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise Refused(f"{path} is not a regular file: refusing to restore from {generation}")
    if uid not in allowed_uids:
        raise Refused(f"{path} belongs to uid {uid}: refusing to restore from a folder another user controls")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Refused(
            f"{path} can be written by group or others (mode {stat.S_IMODE(mode):o}): refusing to restore"
        )
