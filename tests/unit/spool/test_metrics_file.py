"""The Prometheus textfile in a folder another account owns (node_exporter's): root creates, writes and
sets the mode of its file through descriptors, never by path, so that account's links lead it nowhere."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mom_checkpoint.platform.safefs import UnsafePath
from mom_checkpoint.spool import metrics
from tests.helpers import User, make_base, remove_base

SECRET = b"root's secret\n"
STATE: dict[str, Any] = {"backends": {"psnc": {"checkpoints": 3}}}


@pytest.fixture
def base() -> Iterator[Path]:
    path = make_base()  # root's, 0755, in /tmp
    try:
        yield path
    finally:
        remove_base(path)


def as_user(user: User, *argv: str) -> None:
    """What the exporter's account does in its own folder, with its own rights."""
    subprocess.run(argv, user=user.uid, group=user.gid, extra_groups=[], check=True, timeout=30)


def textfile_folder(base: Path, user: User) -> Path:
    """<base>/exporter/textfile, both the user's (as /var/lib/prometheus/node-exporter often is)."""
    exporter = base / "exporter"
    (exporter / "textfile").mkdir(parents=True)
    for path in (exporter, exporter / "textfile"):
        os.chown(path, user.uid, user.gid)
        path.chmod(0o755)
    return exporter / "textfile"


def root_only_file(folder: Path, name: str = "secret") -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = folder / name
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    return secret


def assert_untouched(secret: Path) -> None:
    st = os.lstat(secret)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, secret.read_bytes()) == (0o600, 0, SECRET)


def assert_written(prom: Path) -> None:
    st = os.lstat(prom)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o644
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
    }
    assert values[("mom_checkpoint_checkpoints_total", (("backend", "psnc"),))] == 3
    assert values[("mom_checkpoint_spool_bytes", ())] == 4096


def refusal(path: str) -> str:
    """Why root refused to write the textfile at ``path`` ("" if it wrote it)."""
    try:
        metrics.write(path, STATE, 4096)
    except UnsafePath as exc:
        return str(exc)
    return ""


def test_links_planted_for_the_textfile_and_its_temporary_are_replaced_never_followed(
    base: Path, job_user: User
) -> None:
    secret = root_only_file(base / "root-only")
    folder = textfile_folder(base, job_user)
    prom = folder / "mom_checkpoint.prom"
    # the account plants links at the textfile's name and at every name root might pick for its temporary
    # file; prometheus_client's is <path>.<pid>.<thread>, found by planting a range of pids (here the one)
    guessed = f"{prom.name}.{os.getpid()}.{threading.current_thread().ident}"
    as_user(job_user, "ln", "-s", str(secret), str(prom))
    as_user(job_user, "ln", "-s", str(secret), str(folder / guessed))

    metrics.write(str(prom), STATE, 4096)

    assert_untouched(secret)
    assert_written(prom)
    assert sorted(p.name for p in folder.iterdir()) == sorted([prom.name, guessed]), "no temporary left"


def test_a_textfile_swapped_for_a_link_once_in_place_leaves_the_link_target_alone(
    base: Path, job_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = root_only_file(base / "root-only")
    folder = textfile_folder(base, job_user)
    prom = folder / "mom_checkpoint.prom"
    as_user(job_user, "ln", "-s", str(secret), str(folder / "bait"))

    def swap_after(real: Callable[..., None]) -> Callable[..., None]:
        def renamed(src: Any, dst: Any, **kwargs: Any) -> None:
            real(src, dst, **kwargs)
            if os.path.basename(os.fsdecode(dst)) == prom.name and (folder / "bait").is_symlink():
                # the race won: the account swaps the new textfile for its link before root's next step
                as_user(job_user, "mv", "-T", str(folder / "bait"), str(prom))

        return renamed

    monkeypatch.setattr(os, "rename", swap_after(os.rename))
    monkeypatch.setattr(os, "replace", swap_after(os.replace))
    metrics.write(str(prom), STATE, 4096)
    monkeypatch.undo()

    assert prom.is_symlink(), "the swap happened"
    assert_untouched(secret)


def test_a_textfile_folder_swapped_for_a_link_to_a_root_folder_is_refused(base: Path, job_user: User) -> None:
    secret = root_only_file(base / "root-only", "mom_checkpoint.prom")
    folder = textfile_folder(base, job_user)
    prom = folder / "mom_checkpoint.prom"
    as_user(job_user, "mv", "-T", str(folder), str(folder.parent / "away"))
    as_user(job_user, "ln", "-s", str(secret.parent), str(folder))

    refused = refusal(str(prom))

    assert_untouched(secret)
    assert [p.name for p in secret.parent.iterdir()] == [secret.name], "nothing written there"
    assert "symlink" in refused


def test_a_link_in_a_folder_another_account_owns_is_refused_anywhere_in_the_path(
    base: Path, job_user: User
) -> None:
    # <base>/exporter is the account's; it swaps <base>/exporter/node for a link to a root folder that
    # happens to hold a textfile/ folder of root's
    secret = root_only_file(base / "root-only" / "textfile", "mom_checkpoint.prom")
    (base / "root-only").chmod(0o700)
    exporter = textfile_folder(base, job_user).parent
    as_user(job_user, "ln", "-s", str(base / "root-only"), str(exporter / "node"))

    refused = refusal(str(exporter / "node" / "textfile" / "mom_checkpoint.prom"))

    assert_untouched(secret)
    assert [p.name for p in secret.parent.iterdir()] == [secret.name], "nothing written there"
    assert "symlink" in refused


def test_links_only_root_can_have_made_are_followed(base: Path) -> None:
    # as /var/run -> /run: links in folders that only root can write are the admin's
    real = base / "real" / "textfile"
    real.mkdir(parents=True)
    (base / "absolute").symlink_to(real)
    (base / "up").mkdir()
    (base / "up" / "relative").symlink_to("../real/textfile")

    for path in (base / "absolute" / "a.prom", base / "up" / "relative" / "b.prom"):
        metrics.write(str(path), STATE, 4096)
    assert_written(real / "a.prom")
    assert_written(real / "b.prom")
    assert sorted(p.name for p in real.iterdir()) == ["a.prom", "b.prom"]


def test_the_textfile_is_written_whole_with_its_mode_whatever_the_umask(base: Path) -> None:
    prom = base / "m.prom"
    prom.write_text("old\n")
    old = os.umask(0o077)
    try:
        metrics.write(str(prom), STATE, 4096)
        metrics.write(str(prom), STATE, 4096)
    finally:
        os.umask(old)
    assert_written(prom)
    assert [p.name for p in base.iterdir()] == ["m.prom"]


def test_a_textfile_folder_swapped_for_a_fifo_is_refused_without_waiting(base: Path, job_user: User) -> None:
    folder = textfile_folder(base, job_user)
    as_user(job_user, "rmdir", str(folder))
    as_user(job_user, "mkfifo", str(folder))

    assert "not a folder" in refusal(str(folder / "mom_checkpoint.prom"))
