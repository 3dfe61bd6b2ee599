"""Issue 25 #7: TORQUE's checkpoint folder is 1777, so another ordinary user can create ``<job>.CK``
(a symlink, a file, a folder of theirs) before the job's first checkpoint; pbs_mom's own mkdir then
fails and it calls the hook anyway. The job's checkpoints must still work: root follows and trusts
nothing that user planted, moves it out of the way, makes the job's folder itself and says what it
found in its log."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import Job, Site, call_hook, crash, group_name, start_restart, verify_generation

ATTACKER = "nobody"  # another ordinary user of the node (tests/reliability uses it the same way)


@pytest.fixture
def shared(site: Site) -> Site:
    """A node whose TORQUE checkpoint folder is what TORQUE leaves: root's, 1777; psnc stand-ins."""
    site.torque_root.chmod(0o1777)
    site.configure(
        backend="psnc",
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt")),
            "backends.psnc.resume": str(site.standin("resume")),
        },
    )
    return site


def attacker() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(ATTACKER)
    except KeyError:
        pytest.skip(f"no user {ATTACKER} to plant entries as")
        raise


def as_attacker(code: str, *args: object) -> None:
    """Python ``code`` run as the other user, the way their own shell on the node would."""
    them = attacker()
    subprocess.run(
        ["/usr/bin/python3", "-c", code, *[str(a) for a in args]],
        user=them.pw_uid,
        group=them.pw_gid,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        timeout=60,
    )


def torque_args(site: Site, job: Job, ckdir: Path, signal_number: int = 0) -> list[object]:
    """pbs_mom's 8 arguments, without creating CHECKPOINT_DIR: its mkdir failed on what is planted
    there (and it chowns only a folder it made), so the hook gets the path as it is."""
    name = f"ckpt.{job.job_id}.{int(time.time() * 1000)}"
    return [
        job.session_id,
        job.job_id,
        job.user.name,
        group_name(job.user.gid),
        ckdir,
        name,
        signal_number,
        "-",
    ]


def planted_events(site: Site) -> list[dict[str, object]]:
    return [e for e in site.log_events() if e["event"] == "checkpoint_dir.planted"]


def aside(site: Site, job_id: str) -> list[Path]:
    return sorted(site.torque_root.glob(f".{job_id}.CK.planted-*"))


def assert_fresh_folder_with_the_pointer(site: Site, ckdir: Path, name: str, job_id: str) -> None:
    st = ckdir.lstat()
    assert stat.S_ISDIR(st.st_mode), f"{ckdir} is not a real folder: {st.st_mode:o}"
    assert (st.st_uid, st.st_gid) == (site.user.uid, site.user.gid), (st.st_uid, st.st_gid)
    assert stat.S_IMODE(st.st_mode) == 0o755, f"{stat.S_IMODE(st.st_mode):o}"
    pointer = ckdir / name
    pst = pointer.lstat()
    assert stat.S_ISREG(pst.st_mode) and pst.st_uid == site.user.uid, pst
    data = json.loads(pointer.read_text())
    [generation] = site.generations(job_id)
    assert data["generation"] == str(generation) and data["job_id"] == job_id
    verify_generation(generation)


def test_a_symlink_to_a_root_only_folder_is_moved_aside_never_followed(shared: Site) -> None:
    site = shared
    them = attacker()
    secret = site.base / "root-only"
    secret.mkdir(mode=0o700)
    (secret / "keep").write_text("root's own\n")
    ckdir = site.torque_root / "701.head.CK"
    as_attacker("import os, sys; os.symlink(sys.argv[1], sys.argv[2])", secret, ckdir)
    job = site.start_job("701.head")
    args = torque_args(site, job, ckdir)

    result = call_hook(args, site.config)

    assert result.returncode == 0, result.stderr
    assert_fresh_folder_with_the_pointer(site, ckdir, str(args[5]), "701.head")
    assert sorted(p.name for p in secret.iterdir()) == ["keep"], "something was written through the link"
    sst = secret.stat()
    assert (sst.st_uid, stat.S_IMODE(sst.st_mode)) == (0, 0o700), "the link's target was changed"
    [moved] = aside(site, "701.head")
    assert moved.is_symlink() and os.readlink(moved) == str(secret)  # kept as it was, only renamed
    assert moved.lstat().st_uid == them.pw_uid
    [event] = planted_events(site)
    assert event["kind"] == "symlink" and event["uid"] == them.pw_uid, event
    assert event["moved_to"] == moved.name and event["job_id"] == "701.head", event
    assert str(secret) not in json.dumps(event), "the log repeats the link's target"
    assert job.is_running()


def test_another_users_file_is_moved_aside_and_left_as_it_was(shared: Site) -> None:
    site = shared
    them = attacker()
    ckdir = site.torque_root / "702.head.CK"
    as_attacker("import sys; open(sys.argv[1], 'w').write('not yours\\n')", ckdir)
    job = site.start_job("702.head")
    args = torque_args(site, job, ckdir)

    result = call_hook(args, site.config)

    assert result.returncode == 0, result.stderr
    assert_fresh_folder_with_the_pointer(site, ckdir, str(args[5]), "702.head")
    [moved] = aside(site, "702.head")
    mst = moved.lstat()
    assert stat.S_ISREG(mst.st_mode) and mst.st_uid == them.pw_uid
    assert moved.read_text() == "not yours\n"
    [event] = planted_events(site)
    assert event["kind"] == "file" and event["uid"] == them.pw_uid, event
    assert "not yours" not in site.log.read_text(), "the log repeats the file's content"


def test_another_users_folder_is_moved_aside_and_nothing_written_into_it(shared: Site) -> None:
    site = shared
    them = attacker()
    ckdir = site.torque_root / "703.head.CK"
    # a folder anyone may write in, so root's pointer would land there (and be theirs to rewrite)
    as_attacker("import os, sys; os.mkdir(sys.argv[1]); os.chmod(sys.argv[1], 0o777)", ckdir)
    job = site.start_job("703.head")
    args = torque_args(site, job, ckdir)

    result = call_hook(args, site.config)

    assert result.returncode == 0, result.stderr
    assert_fresh_folder_with_the_pointer(site, ckdir, str(args[5]), "703.head")
    [moved] = aside(site, "703.head")
    mst = moved.lstat()
    assert stat.S_ISDIR(mst.st_mode) and mst.st_uid == them.pw_uid
    assert stat.S_IMODE(mst.st_mode) == 0o777, "their folder's mode was changed"
    assert list(moved.iterdir()) == [], "the pointer was written into the other user's folder"
    [event] = planted_events(site)
    assert event["kind"] == "dir" and event["uid"] == them.pw_uid, event
    # the next checkpoint finds the job's own folder and uses it as it is
    args = torque_args(site, job, ckdir)
    assert call_hook(args, site.config).returncode == 0
    assert (ckdir / str(args[5])).is_file() and len(planted_events(site)) == 1


def test_a_plant_removed_after_pbs_moms_mkdir_failed_leaves_a_folder_made_for_the_job(shared: Site) -> None:
    site = shared
    ckdir = site.torque_root / "704.head.CK"  # nothing there any more when the hook looks
    job = site.start_job("704.head")
    args = torque_args(site, job, ckdir)

    result = call_hook(args, site.config)

    assert result.returncode == 0, result.stderr
    assert_fresh_folder_with_the_pointer(site, ckdir, str(args[5]), "704.head")
    assert any(e["event"] == "checkpoint_dir.missing" for e in site.log_events())


def test_the_jobs_own_folder_is_used_as_it_is(shared: Site) -> None:
    site = shared
    job = site.start_job("705.head")
    args = site.torque_args(job)  # pbs_mom made it: 0755, the job user's
    ckdir = Path(str(args[4]))
    before = ckdir.stat().st_ino

    assert call_hook(args, site.config).returncode == 0
    assert ckdir.stat().st_ino == before and not planted_events(site)
    assert not aside(site, "705.head")


@pytest.mark.parametrize(
    ("mode", "owner"),
    [(0o777, "root"), (0o1777, ATTACKER)],  # others may rename what root makes there; not root's
)
def test_nothing_is_moved_in_a_folder_that_is_not_roots_and_sticky(
    shared: Site, mode: int, owner: str
) -> None:
    site = shared
    them = attacker()
    parent = site.torque_root / "sub"
    parent.mkdir()
    os.chown(parent, *((0, 0) if owner == "root" else (them.pw_uid, them.pw_gid)))
    parent.chmod(mode)
    ckdir = parent / "706.head.CK"
    as_attacker("import os, sys; os.symlink('/tmp', sys.argv[1])", ckdir)
    job = site.start_job("706.head")

    result = call_hook(torque_args(site, job, ckdir), site.config)

    # refused: for the link, or first for the folder above it, which is another user's
    why = "symlink" if owner == "root" else "another user's folder"
    assert result.returncode == 77 and why in result.stderr, result.stderr
    assert ckdir.is_symlink() and sorted(p.name for p in parent.iterdir()) == ["706.head.CK"]
    assert not planted_events(site)
    assert job.is_running()


def test_a_restart_does_not_follow_a_link_planted_after_the_checkpoint(shared: Site) -> None:
    """pbs_mom removes its copy after a good checkpoint; a link planted then is not the pointer: the
    restart names it in its log and restores the job's newest generation."""
    site = shared
    them = attacker()
    job = site.start_job("707.head", app_env={"COUNTER_LIMIT": "40", "COUNTER_EXIT": "5"})
    args = site.torque_args(job, signal_number=15)
    assert call_hook(args, site.config).returncode == 0
    job.wait_ended()
    crash(job)
    ckdir = Path(str(args[4]))
    (ckdir / str(args[5])).unlink()
    ckdir.rmdir()
    decoy = site.base / "decoy"
    decoy.mkdir(mode=0o755)
    as_attacker("import os, sys; os.symlink(sys.argv[1], sys.argv[2])", decoy, ckdir)

    restart = start_restart(
        [job.session_id, job.job_id, site.user.name, group_name(site.user.gid), ckdir, args[5]],
        site.config,
    )
    assert restart.wait(timeout=60) == 5, restart.stderr.read() if restart.stderr else ""
    [missing] = [e for e in site.log_events() if e["event"] == "restart.pointer_missing"]
    assert "symlink" in str(missing["error"]) and f"uid {them.pw_uid}" in str(missing["error"]), missing
    assert any(e["event"] == "restart.newest" for e in site.log_events())
    assert ckdir.is_symlink() and list(decoy.iterdir()) == []


def test_a_dir_naming_another_users_folder_gets_no_pointer_and_steers_no_restart(shared: Site) -> None:
    """Issue 25 #9: `qsub -c dir=` may name another user's folder inside the roots (here one of the
    other user's own in the 1777 root). Root wrote the job's pointer there, and that user then chose
    what the job's restart read. A checkpoint into it is refused (77) with nothing written there; a
    restart whose CHECKPOINT_DIR is in it reads no pointer there and takes the spool's newest."""
    site = shared
    them = attacker()
    theirs = site.torque_root / "their-private"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, them.pw_uid, them.pw_gid)
    ckdir = theirs / "7301.head.CK"
    ckdir.mkdir(mode=0o755)  # pbs_mom (root) makes <dir>/<job>.CK for the job wherever dir= says
    os.chown(ckdir, site.user.uid, site.user.gid)
    job = site.start_job("7301.head")
    refused = call_hook(torque_args(site, job, theirs / "7301.head.CK"), site.config)
    assert refused.returncode == 77 and "another user's folder" in refused.stderr, refused.stderr
    assert list(ckdir.iterdir()) == [] and not site.generations("7301.head")

    own = site.checkpoint_dir("7301.head")  # the job's first good checkpoint, in its own folder
    args = torque_args(site, job, own, signal_number=15)
    assert call_hook(args, site.config).returncode == 0
    job.wait_ended()
    crash(job)
    [generation] = site.generations("7301.head")
    # the other user plants a pointer of their choosing in their folder, and the restart is told
    # to read it there (as pbs_mom would after a dir= naming it)
    pointer = json.loads((own / str(args[5])).read_text()) | {"generation": "/nonexistent"}
    as_attacker(  # their folder: they may replace the job's .CK in it by one of their own
        "import os, sys; os.rename(sys.argv[1], sys.argv[1] + '.old'); os.mkdir(sys.argv[1]);"
        "open(os.path.join(sys.argv[1], sys.argv[2]), 'w').write(sys.argv[3])",
        ckdir,
        args[5],
        json.dumps(pointer),
    )
    restart = start_restart(
        [job.session_id, job.job_id, job.user.name, group_name(job.user.gid), ckdir, args[5]], site.config
    )
    try:
        deadline = time.monotonic() + 60
        while not any(e["event"] == "restart.running" for e in site.log_events()):
            assert time.monotonic() < deadline and restart.poll() is None, restart.stderr
            time.sleep(0.1)
    finally:
        restart.terminate()
        restart.wait(timeout=60)
    events = site.log_events()
    missing = [e for e in events if e["event"] == "restart.pointer_missing"]
    assert missing and "another user's folder" in str(missing[-1]["error"])
    started = [e for e in events if e["event"] == "restart.start"]
    assert started[-1]["path"] == str(generation)
