"""Security scenarios: what an ordinary user of a node tries against root's hook and mom-restart.

Each is an attack from the 2026-11 attack review (issue 11) or one found since, played as the job's
own user would (files planted through ``as_user``: that user's uid, gid and groups, no capabilities).
A scenario raises AssertionError when the attack works and returns the checks it made; the test suite
runs each once (tests/reliability/test_security.py) and ``make reliability`` many times.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from tests.helpers import (
    Job,
    Site,
    User,
    call_direct,
    call_hook,
    crash,
    installed,
    restart_args,
    seen_as,
    start_restart,
    verify_generation,
)

ROOT = Path(__file__).resolve().parents[2]
SUDOERS = Path("/etc/sudoers.d/mom-checkpoint-security-test")

Scenario = Callable[[Site, random.Random], list[str]]


def as_user(site: Site, code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Python ``code`` run as the job's user, the way a user's own shell on the node would."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={site.user.uid}",
            f"--regid={site.user.gid}",
            "--init-groups",
            "--inh-caps=-all",
            "--",
            "/usr/bin/python3",
            "-c",
            code,
            *args,
        ],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "MOM_CHECKPOINT_CONFIG": str(site.config)},
    )


def user_shell(site: Site, command: str) -> subprocess.CompletedProcess[str]:
    """A shell command of the job's user (a new job's script, or their login shell on the node)."""
    return subprocess.run(
        ["/bin/sh", "-c", command],
        user=site.user.uid,
        group=site.user.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=180,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "MOM_CHECKPOINT_CONFIG": str(site.config)},
    )


@contextlib.contextmanager
def sudo_rule() -> Iterator[Path]:
    """The packaged sudoers rule, for the program under test (and the test site's config through
    sudo: test-only, the shipped rule keeps sudo's env_reset)."""
    program = installed("mom-restart")
    rule = (
        (ROOT / "packaging" / "sudoers-mom-restart")
        .read_text()
        .replace("/usr/local/sbin/mom-restart", str(program))
    )
    rule += f'Defaults!{program} env_keep += "MOM_CHECKPOINT_CONFIG"\n'
    SUDOERS.write_text(rule)
    SUDOERS.chmod(0o440)
    try:
        yield program
    finally:
        SUDOERS.unlink()


def held(site: Site, job_id: str, **app_env: str) -> tuple[Job, list[object], Path]:
    """A job of the site's user checkpointed by qhold (SIGNAL 15) in job-user mode, then gone (its
    application's pid is kept as ``job.restored_app``)."""
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job(job_id, app_env={"COUNTER_LIMIT": "2000", **app_env})
    job.restored_app = job.app_pid()  # type: ignore[attr-defined]
    args = site.torque_args(job, signal_number=15)
    result = call_hook(args, site.config)
    assert result.returncode == 0, result.stderr
    job.wait_ended()
    crash(job)
    [generation] = site.generations(job_id)
    return job, args, generation


@contextlib.contextmanager
def roots_file(rng: random.Random, where: str = "/etc") -> Iterator[Path]:
    """A file of root's that an attack aims at (a line written into it would be root's doing)."""
    path = Path(where) / f"mom-checkpoint-target-{rng.randrange(10**9)}"
    path.write_text("root's own\n")
    path.chmod(0o644)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


DEEP_TREE = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
for _ in range(int(sys.argv[2])):
    os.mkdir("d", dir_fd=fd)
    child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = child
"""


DEEP_CHKPNT = """#!/usr/bin/python3
import os, subprocess, sys
status = subprocess.call(["{standin}", *sys.argv[1:]], close_fds=False)
if status == 0:
    sys.argv[1:] = [sys.argv[sys.argv.index("-od") + 1], "{depth}"]
    exec({tree!r})
sys.exit(status)
"""


def _psnc(site: Site, **keys: object) -> None:
    site.configure(
        backend="psnc",
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt")),
            "backends.psnc.resume": str(site.standin("resume")),
        },
        **keys,  # type: ignore[arg-type]
    )


def deep_trees(site: Site, rng: random.Random) -> list[str]:
    """A user's folder tree thousands of levels deep, left where root cleans up or measures: grown by
    their own checkpointer in its image during the dump (job-user mode; after the dump nothing of
    the image is theirs to reach) and in a killed restart's work folder (an older version's, whose
    restorer folder was the user's). None of it may break a restart, list, prune, metrics or the
    next checkpoint, for anyone."""
    depth = rng.randrange(1500, 4000)
    metrics = site.base / "metrics.prom"
    _psnc(site, metrics_file=str(metrics), **{"backends.psnc.run_as": "job-user"})
    # the user's own checkpointer (job-user mode) grows the tree in its image folder during the dump:
    # after the dump no path of the user's reaches the image (issue 25 #2)
    growing = site.base / "bin" / "chkpnt-deep"
    growing.write_text(DEEP_CHKPNT.format(standin=site.standin("chkpnt"), tree=DEEP_TREE, depth=depth))
    growing.chmod(0o755)
    site.configure(
        backend="psnc",
        metrics_file=str(metrics),
        **{"backends.psnc.chkpnt": str(growing), "backends.psnc.run_as": "job-user"},
        **{"backends.psnc.resume": str(site.standin("resume"))},
    )
    job = site.start_job("3001.head")
    grown = call_hook(site.torque_args(job), site.config)
    assert grown.returncode == 77 and "folders deep" in grown.stderr, (grown.returncode, grown.stderr)
    assert not site.generations("3001.head") and not site.incoming(), "the deep image was kept"
    checks = [f"a tree {depth} folders deep grown in the image during the dump: refused (77), removed"]
    _psnc(site, metrics_file=str(metrics), **{"backends.psnc.run_as": "job-user"})
    args = site.torque_args(job)
    assert call_hook(args, site.config).returncode == 0
    [generation] = site.generations("3001.head")

    # the work folder of a restart that pbs_mom killed with -9: its criu/ folder was the user's
    (site.spool / ".restarts").mkdir(mode=0o711)
    stale = site.spool / ".restarts" / f"{socket.gethostname()}.{2**22 + rng.randrange(1000)}.1"
    stale.mkdir(mode=0o711)
    (stale / "criu").mkdir(mode=0o700)
    os.chown(stale / "criu", site.user.uid, site.user.gid)
    as_user(site, DEEP_TREE, str(stale / "criu"), str(depth))

    listing = call_direct(["list"], site.config)
    assert listing.returncode == 0, f"list: {listing.returncode} {listing.stderr}"
    checks.append("list works (0)")

    other = site.start_job("3002.head", app_env={"COUNTER_LIMIT": "30"})
    assert call_hook(site.torque_args(other), site.config).returncode == 0, "another job's checkpoint failed"
    counted = 'mom_checkpoint_checkpoints_total{backend="psnc"} 2.0'
    assert counted in metrics.read_text(), f"the metrics file missed a checkpoint: {metrics.read_text()}"
    checks.append("another job's checkpoint with metrics_file set (the spool's size is measured): 0")

    second = call_hook(site.torque_args(job, depth="1"), site.config)
    assert second.returncode == 0, f"the next checkpoint (DEPTH 1 prunes the first): {second.stderr}"
    assert not generation.exists(), "the first generation was not pruned"
    checks.append("the job's next checkpoint prunes its first generation (0)")

    crash(other)
    restart = call_direct(["--job", "3002.head"], site.config, program="mom-restart")
    assert restart.returncode == 0, f"mom-restart: {restart.returncode} {restart.stderr}"
    assert not stale.exists(), "the killed restart's work folder was not cleaned"
    checks.append("a later restart of another job cleans the deep work folder and restores (0)")

    pruned = call_direct(["prune", "--keep", "1"], site.config)
    assert pruned.returncode == 0, f"prune: {pruned.returncode} {pruned.stderr}"
    checks.append("prune works (0)")
    return checks


FORGE_MANIFEST = """
import json, sys
path = sys.argv[1]
data = json.load(open(path))
data["job"]["uid"] = data["job"]["gid"] = 0
open(path, "w").write(json.dumps(data))
"""


def forged_manifest(site: Site, rng: random.Random) -> list[str]:
    """Issue 11 #1: the user rewrites uid/gid in their manifest to 0 and swaps their output file for a
    symlink to a root-owned file, then pbs_mom restarts the job (qrls): root must not write there."""
    job, args, generation = held(site, "3101.head")
    manifest = generation / "manifest.json"
    st = manifest.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600), (
        f"the manifest is {st.st_uid}'s, mode {st.st_mode:o}"
    )
    forged = as_user(site, FORGE_MANIFEST, str(manifest), check=False)
    assert forged.returncode != 0 and "Permission denied" in forged.stderr, (
        "the user could rewrite the manifest"
    )
    checks = ["the manifest is root's 0600: the user can neither read nor rewrite it (job-user mode)"]
    with roots_file(rng) as target:
        as_user(site, "import os, sys; os.unlink(sys.argv[1]); os.symlink(sys.argv[2], sys.argv[1])",
                str(job.output), str(target))  # fmt: skip
        restart = start_restart(restart_args(job, args), site.config)
        status = restart.wait(timeout=120)
        err = restart.stderr.read().decode() if restart.stderr else ""
        assert target.read_text() == "root's own\n", "the restored job wrote into a root-owned file"
        assert status == 77 and "as momtest: Permission denied" in err, (status, err)
    checks.append(
        "the output file swapped for a symlink to a root-owned file: opened with the user's rights, "
        "refused (77), the root file untouched"
    )
    return checks


def own_surface(site: Site, rng: random.Random) -> list[str]:
    """Issue 11 #2 and #7: through sudo, --own --image names, walks or restores nothing outside the
    spool, and another user's job is 'no such job'."""
    job, _args, generation = held(site, "3201.head")
    secret = Path("/root") / f"mom-checkpoint-secret-{rng.randrange(10**9)}"
    secret.write_text("x")
    home_copy = Path(site.user.home) / f"copy-{rng.randrange(10**6)}"
    checks = []
    try:
        with sudo_rule() as program:
            root_dir = user_shell(site, f"sudo -n {program} --own --image /root")
            assert root_dir.returncode == 66, (root_dir.returncode, root_dir.stderr)
            assert secret.name not in root_dir.stderr and root_dir.stderr.count("\n") == 1, root_dir.stderr
            checks.append("--own --image /root: 66, one line that names nothing in it")
            exists = user_shell(site, f"sudo -n {program} --own --image {secret}")
            missing = user_shell(site, f"sudo -n {program} --own --image {secret}-not-there")
            assert exists.returncode == missing.returncode == 66, (exists.stderr, missing.stderr)
            assert exists.stderr == missing.stderr.replace("-not-there", ""), (exists.stderr, missing.stderr)
            checks.append("--own --image of a root-only file: the answer a path that does not exist gets")
            # a copy of the user's own generation, in their home, with a forged manifest
            subprocess.run(["cp", "-a", str(generation), str(home_copy)], check=True)
            subprocess.run(["chown", "-R", f"{site.user.uid}:{site.user.gid}", str(home_copy)], check=True)
            as_user(site, FORGE_MANIFEST, str(home_copy / "manifest.json"))
            result = user_shell(site, f"sudo -n {program} --own --image {home_copy}")
            assert result.returncode == 66 and "of yours in the spool" in result.stderr, result.stderr
            checks.append("--own --image of a forged copy in the user's home: 66, nothing restored")
            # another user's job: the same answer as a job that does not exist
            root_job = site.start_job("3202.head", user=_root())
            site.configure(**{"backends.criu.run_as": "root"})  # root mode for root's own job
            assert call_hook(site.torque_args(root_job), site.config).returncode == 0
            theirs = user_shell(site, f"sudo -n {program} --own --job 3202.head")
            nobody = user_shell(site, f"sudo -n {program} --own --job 3299.head")
            assert theirs.returncode == nobody.returncode == 66, (theirs.stderr, nobody.stderr)
            assert theirs.stderr.replace("3202", "3299") == nobody.stderr, (theirs.stderr, nobody.stderr)
            hashed = [e for e in site.log_events() if e.get("event") == "restart.start"]
            assert not hashed, "a restore of another user's job was started"
            checks.append("--own --job of another user's job: the very answer an unknown job gets (66)")
    finally:
        secret.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(home_copy)], check=False)
    assert not job.processes()
    return checks


def _root() -> User:
    return User.named("root")


def restart_signals(site: Site, rng: random.Random) -> list[str]:
    """Issue 11 #3: what mom-restart reads back is never the user's: its work folder is root's, no pid
    file is read, and a signal is passed to the restored job only, never to a pid the user names."""
    job, args, _generation = held(site, "3301.head", COUNTER_LIMIT="0")
    victim = subprocess.Popen(["sleep", "300"])  # a root process the attack aims at
    try:
        restart = start_restart(restart_args(job, args), site.config)
        deadline = time.monotonic() + 60
        work = None
        # the application has its PID back, in its namespace
        while work is None or seen_as(restart.pid, job.restored_app) is None:  # type: ignore[attr-defined,unused-ignore]
            assert time.monotonic() < deadline and restart.poll() is None, "the job was not restored"
            found = [p for p in (site.spool / ".restarts").glob(f"*.{restart.pid}.*")]
            work = found[0] if found else None
            time.sleep(0.05)
        st = work.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700), f"the work folder is uid {st.st_uid}'s"
        restorer = work / "restorer"
        for folder in (restorer, work):
            planted = as_user(site, "import sys; open(sys.argv[1] + '/restored.pid', 'w').write(sys.argv[2])",
                              str(folder), str(victim.pid), check=False)  # fmt: skip
            assert planted.returncode != 0, f"the user wrote into {folder}"
        os.kill(restart.pid, signal.SIGTERM)  # pbs_mom's qdel, or sudo relaying the user's signal
        status = restart.wait(timeout=60)
        assert victim.poll() is None, "mom-restart signalled the root process the user named"
        assert status == -signal.SIGTERM, status  # ends by the job's own signal: pbs_mom sees 271
    finally:
        victim.kill()
        victim.wait()
    return [
        "mom-restart's work folder is root's (0700): the user reaches neither it nor the restorer's folder",
        "a restored.pid naming a root process, planted by the user: ignored; SIGTERM reaches the job only",
    ]


FORGING_CRIU = """#!/usr/bin/python3
# The job user's own CRIU (job-user mode: it runs with their uid): after a good dump, it rewrites the
# credentials in the image's core files, as the user could while the dump runs, before root hashes it.
import glob, os, subprocess, sys
from pathlib import Path
{forge}
if sys.argv[1] != "dump":
    os.execv("/usr/local/sbin/criu", ["criu", *sys.argv[1:]])
status = subprocess.call(["/usr/local/sbin/criu", *sys.argv[1:]], close_fds=False)
if status == 0:
    image = Path(sys.argv[sys.argv.index("-D") + 1])
    for core in glob.glob(str(image / "core-*.img")):
        forge(Path(core), **{changes})
sys.exit(status)
"""
FORGERIES: list[tuple[str, dict[str, list[int]]]] = [
    (
        "CAP_CHECKPOINT_RESTORE and CAP_SETPCAP kept",
        {"cap_prm": [1 << 8, 1 << 8], "cap_eff": [1 << 8, 1 << 8]},
    ),
    ("CAP_SYS_PTRACE in the ambient set", {"cap_amb": [1 << 19, 0], "cap_prm": [1 << 19, 0]}),
    ("gid 42 (shadow) everywhere", {"gid": [42], "egid": [42], "sgid": [42], "fsgid": [42]}),
    ("uid 0 everywhere", {"uid": [0], "euid": [0], "suid": [0], "fsuid": [0]}),
    ("supplementary group 0", {"groups": [0]}),
]


def forged_credentials(site: Site, rng: random.Random) -> list[str]:
    """Issue 11 #1 and #2: the credentials in the image's core files forged (capabilities, gid 42,
    uid 0, group 0) by the user while their own CRIU dumps, so that root's manifest even records the
    forged files' digests. The restart refuses before CRIU runs; nothing of the job runs."""
    name, changes = rng.choice(FORGERIES)
    forger = site.base / "bin" / "criu"
    forger.parent.mkdir(mode=0o755, exist_ok=True)
    source = (ROOT / "tests" / "criu_forge.py").read_text().split('"""', 2)[2]
    source = source.replace("from __future__ import annotations", "")
    forger.write_text(FORGING_CRIU.format(forge=source, changes=repr(changes)))
    forger.chmod(0o755)
    site.configure(**{"backends.criu.run_as": "job-user", "backends.criu.binary": str(forger)})
    job = site.start_job("3401.head", app_env={"COUNTER_LIMIT": "2000"})
    pids = [job.exec_pid(), job.app_pid()]
    args = site.torque_args(job, signal_number=15)
    result = call_hook(args, site.config)
    assert result.returncode == 0, result.stderr
    job.wait_ended()
    crash(job)
    counted = job.output.read_text()
    restart = start_restart(restart_args(job, args), site.config)
    status = restart.wait(timeout=120)
    err = restart.stderr.read().decode() if restart.stderr else ""
    assert status == 77 and "core-" in err and "not momtest's" in err, (status, err)
    time.sleep(1)
    assert job.output.read_text() == counted, "the forged job ran"
    assert not any(psutil.pid_exists(pid) for pid in pids), "a forged task is left"
    return [
        f"core files forged during the dump ({name}): the restart refuses (77) before CRIU runs",
        "nothing of the job ran (its output did not grow); no task of it is left",
    ]


HOSTILE_CRIU = """#!/usr/bin/python3
# The job user's own CRIU (job-user mode: their uid), which they can stop, kill or race: after its
# dump it leaves the image the way the attack wants it, and ends with the attack's exit status.
import os, subprocess, sys
from pathlib import Path
if sys.argv[1] != "dump":
    os.execv("/usr/local/sbin/criu", ["criu", *sys.argv[1:]])
subprocess.call(["/usr/local/sbin/criu", *sys.argv[1:]], close_fds=False)
image = Path(sys.argv[sys.argv.index("-D") + 1])
{action}
sys.exit({status})
"""
HOSTILE_DUMPS: list[tuple[str, str, int, int, str]] = [
    # what the user did, the code, their CRIU's exit status, the hook's, words in its one line
    (
        "a FIFO planted as dump.log, CRIU failing",
        "os.mkfifo(image / 'dump.log')",
        1,
        80,
        "criu failed (exit 1)",
    ),
    (
        "a symlink to a root-only file planted as dump.log, CRIU failing",
        "os.symlink('{secret}', image / 'dump.log')",
        1,
        80,
        "criu failed (exit 1)",
    ),
    (
        "an 8 GiB sparse file planted in the image",
        "open(image / 'pages-99.img', 'wb').truncate(8 << 30)",
        0,
        74,
        "more than the",
    ),
    (
        "a folder of the image that is a symlink to /etc",
        "os.symlink('/etc', image / 'sub')",
        0,
        77,
        "symlink",
    ),
    (  # (found by review) the user's own file, rewritable through its other name after the dump
        "a hard link to a file of the user's own planted in the image",
        "Path('{own}').write_bytes(b'x' * 8192); os.link('{own}', image / 'pages-98.img')",
        0,
        77,
        "hard link",
    ),
]


def hostile_dumps(site: Site, rng: random.Random) -> list[str]:
    """Issue 11 #5 and #6: the user's own CRIU leaves a FIFO or a link to a root-only file as its log,
    an 8 GiB sparse file, a link to /etc or a hard link to a file of their own in the image. Root
    reads none of it, follows none of it, ends within timeout_s, publishes nothing, and the job runs
    on."""
    return hostile_dump(site, rng, rng.choice(HOSTILE_DUMPS))


def hostile_dump(site: Site, rng: random.Random, attack: tuple[str, str, int, int, str]) -> list[str]:
    """One of HOSTILE_DUMPS."""
    name, action, criu_status, status, words = attack
    theirs = site.base / "theirs"  # a folder of the user's own, outside the image
    theirs.mkdir(mode=0o755, exist_ok=True)
    os.chown(theirs, site.user.uid, site.user.gid)
    own = theirs / f"own-{rng.randrange(10**9)}"
    secret = Path("/root") / f"mom-checkpoint-secret-{rng.randrange(10**9)}"
    marker = f"TOPSECRET{rng.randrange(10**9)}"
    secret.write_text(f"Error (criu/x.c:1): {marker}\n")
    secret.chmod(0o600)
    wrapper = site.base / "bin" / "criu"
    wrapper.parent.mkdir(mode=0o755, exist_ok=True)
    wrapper.write_text(HOSTILE_CRIU.format(action=action.format(secret=secret, own=own), status=criu_status))
    wrapper.chmod(0o755)
    timeout_s = 20
    site.configure(
        timeout_s=timeout_s, **{"backends.criu.run_as": "job-user", "backends.criu.binary": str(wrapper)}
    )
    try:
        job = site.start_job("3501.head")
        # a hook that does not end within timeout_s (and 10 s to spare) fails: TimeoutExpired
        result = call_hook(site.torque_args(job), site.config, timeout=timeout_s + 10)
    finally:
        secret.unlink()
    assert result.returncode == status and words in result.stderr, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and marker not in result.stderr, result.stderr
    assert not site.generations("3501.head") and not site.incoming(), "something was published or left"
    logged = site.log.read_text()
    assert marker not in logged, "root read the root-only file the user linked"
    job.wait_count(job.count() + 3)
    return [
        f"{name}: {status}, one line, ended within timeout_s ({timeout_s}) + 10 s, nothing published",
        "nothing of a root-only file reached the comment or the log; the job runs on",
    ]


def spool_share(site: Site, rng: random.Random) -> list[str]:
    """Issue 12 #4: qsub -c depth=999999 keeps no more than max_keep generations, a user's images stop
    at user_quota_gib, another user's checkpoints go on, and a full spool is explained in root's log
    only."""
    image = rng.choice((2, 3, 4)) << 20
    quota_gib = rng.choice((0.05, 0.06))
    site.configure(
        backend="psnc",
        max_keep=3,
        user_quota_gib=quota_gib,
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt", STANDIN_IMAGE_BYTES=str(image))),
            "backends.psnc.resume": str(site.standin("resume")),
        },
    )
    greedy = site.start_job("3601.head")
    for _ in range(5):
        result = call_hook(site.torque_args(greedy, depth="999999"), site.config)
        assert result.returncode == 0, result.stderr
    assert len(site.generations("3601.head")) == 3, site.generations("3601.head")
    assert [e for e in site.log_events() if e["event"] == "retention.capped"], "the cap was not logged"
    checks = ["depth=999999: 3 generations kept (max_keep = 3), the cap logged"]
    refused = None
    for i in range(30):
        job = site.start_job(f"361{i:02d}.head")
        result = call_hook(site.torque_args(job), site.config)
        if result.returncode != 0:
            refused = (job, result)
            break
    assert refused is not None, "user_quota_gib never stopped the user's checkpoints"
    job, result = refused
    assert result.returncode == 74 and "user_quota_gib" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and job.is_running()
    held = sum(
        json.loads((g / "manifest.json").read_text())["total_bytes"]
        for g in site.spool.glob("*/[0-9]*")
        if json.loads((g / "manifest.json").read_text())["job"]["uid"] == site.user.uid
    )
    assert held <= quota_gib * 2**30, f"{held} bytes held, past the quota"
    checks.append(f"the user's images stopped at user_quota_gib ({quota_gib:g} GiB): 74, the job runs on")
    theirs = site.start_job("3699.head", user=_root())
    assert call_hook(site.torque_args(theirs), site.config).returncode == 0, "another user was refused"
    checks.append("another user's checkpoint is taken")
    site.configure(backend="psnc", space_margin=1e12, **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))})
    full = call_hook(site.torque_args(job), site.config)
    assert full.returncode == 74 and "root" not in full.stderr.replace(str(site.base), ""), full.stderr
    [told] = [e for e in site.log_events() if e["event"] == "spool.full"][-1:]
    assert site.user.name in {u["user"] for u in told["users"]}, told
    checks.append("a full spool: the job's line names no other user; root's log lists whose images fill it")
    return checks


def same_job_id(site: Site, rng: random.Random) -> list[str]:
    """Issue 12 #3: TORQUE and OpenPBS on one node share the spool, and another user's OpenPBS job has
    the id of a held TORQUE job. Its checkpoints must not prune the TORQUE job's generations, and the
    TORQUE job's restart must take its own."""
    from tests.integration.test_openpbs import make_mom
    from tests.openpbs import Task

    site.configure(
        backend="psnc",
        keep=2,
        pbs_checkpoint_roots=[str(site.base / "pbs" / "checkpoint")],
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt")),
            "backends.psnc.resume": str(site.standin("resume")),
        },
    )
    job_id = f"{rng.randrange(1000, 9999)}.vm"
    victim = site.start_job(job_id, app_env={"COUNTER_LIMIT": "30"})
    args = site.torque_args(victim)
    for _ in range(2):
        assert call_hook(args, site.config).returncode == 0
    theirs = site.generations(job_id)
    assert len(theirs) == 2
    mom = make_mom(site)
    other = site.start_job(f"other-{job_id}", user=_root())
    task = Task(other, job_id)
    rounds = rng.randrange(2, 5)
    for _ in range(rounds):
        outcome = mom.checkpoint(task)
        assert outcome.status == 0, outcome
    assert all(g.exists() for g in theirs), "the other system's job pruned the TORQUE job's generations"
    assert len(site.generations(job_id)) == 4, site.generations(job_id)  # 2 of each: keep = 2 apiece
    checks = [f"{rounds} OpenPBS checkpoints of another user's job {job_id}: the TORQUE job's 2 kept"]
    crash(victim)
    restart = start_restart(
        [victim.session_id, job_id, site.user.name, site.user.name, args[4], "gone"], site.config
    )
    assert restart.wait(timeout=120) == 0, restart.stderr.read() if restart.stderr else ""
    started = [e for e in site.log_events() if e.get("event") == "restart.start"]
    assert started and started[-1]["path"] == str(theirs[-1]), started
    checks.append("the TORQUE job's restart takes its own newest generation, not the other job's")
    return checks


REACH = """
import errno, json, os, sys
# what the job's user tries on their own generation (its path: from the pointer they hold) and on
# the job's run folder: each try says what it got
generation, run = sys.argv[1], sys.argv[2]
create = os.O_WRONLY | os.O_CREAT
tries = {
    "create a file in the image": lambda: os.open(generation + "/image/extra", create, 0o600),
    "open a pages file for writing": lambda: os.open(generation + "/image/pages-1.img", os.O_WRONLY),
    "open the image folder": lambda: os.open(generation + "/image", os.O_RDONLY | os.O_DIRECTORY),
    "list the job's run folder": lambda: os.listdir(run),
    "create a folder in the generation": lambda: os.mkdir(generation + "/more"),
}
result = {}
for name, attempt in tries.items():
    try:
        attempt()
        result[name] = "done"
    except OSError as exc:
        result[name] = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps(result))
"""


def reach_own_generation(site: Site, rng: random.Random) -> list[str]:
    """Issue 25 #2: in job-user mode the run and generation folders were 0711 and the image folder
    the user's, so after the dump the user went on writing into their own generation by the path
    the pointer names (190 MiB past user_quota_gib, a full spool for the next user). Now the run
    folder is root's 0700 in both modes and the job user's CRIU gets its image folder as a
    descriptor: nothing of the spool is reachable by the user's path, during the dump or after.
    A run folder an older version left 0711 is closed by the next checkpoint; the job still
    restores in job-user mode (its restorer's folder handed over the same way)."""
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("3801.head", app_env={"COUNTER_LIMIT": "2000"})
    args = site.torque_args(job)
    assert call_hook(args, site.config).returncode == 0
    [generation] = site.generations("3801.head")
    run = generation.parent
    named = json.loads((Path(str(args[4])) / str(args[5])).read_text())["generation"]
    assert named == str(generation)
    if rng.random() < 0.5:  # an older version's run folder, and its generation, left open to pass
        run.chmod(0o711)
        generation.chmod(0o711)
        assert call_hook(site.torque_args(job), site.config).returncode == 0
        assert run.stat().st_mode & 0o777 == 0o700, "the next checkpoint left the old run folder open"
    before = {p: p.stat().st_size for g in site.generations("3801.head") for p in (g / "image").iterdir()}
    for target in site.generations("3801.head"):
        tried = json.loads(as_user(site, REACH, str(target), str(run)).stdout)
        assert set(tried.values()) == {"EACCES"}, tried
    after = {p: p.stat().st_size for g in site.generations("3801.head") for p in (g / "image").iterdir()}
    assert after == before, "the image changed after the dump"
    for g in site.generations("3801.head"):
        verify_generation(g)
    job_args = site.torque_args(job, signal_number=15)
    assert call_hook(job_args, site.config).returncode == 0
    job.wait_ended()
    crash(job)
    counted = job.count()
    restart = start_restart(restart_args(job, job_args), site.config)
    try:
        assert job.wait_count(counted + 3, timeout=60) > counted, "the job did not come back"
    finally:
        os.kill(restart.pid, signal.SIGTERM)
        restart.wait(timeout=60)
    return [
        "after the dump, the user can neither create nor open for writing anything in their own "
        "generation, open its image folder, nor list the run folder (EACCES each): the images are "
        "unchanged and verify",
        "a run folder left 0711 by an older version is 0700 after the next checkpoint",
        "the job still checkpoints and restores in job-user mode",
    ]


MANY_DESCRIPTORS = """#!/usr/bin/python3
# A job that holds many descriptors of /dev/null (each added a ghost file's 1 MiB to the image bound),
# then counts as the test application does.
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
wanted = int(os.environ["HELD_DEVNULL"])
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted + 64), hard))
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(wanted)]
for fd in held:
    os.set_inheritable(fd, True)
os.execv(sys.executable, [sys.executable, "{counter}"])
"""


def ghost_allowance(site: Site, rng: random.Random) -> list[str]:
    """Issue 25 #3: a 12 MiB job held 1,500 descriptors of /dev/null, each adding a ghost file's
    allowance (1 MiB) to the image bound, and the user's own CRIU planted a 1.2 GiB sparse file in
    its image folder during the dump: accepted as a 1.29 GB checkpoint, hashed whole by root and
    copied dense to the shared vault. Now only files CRIU copies (deleted ones, memfds) count, each
    inode once: the same job checkpoints with the real CRIU, and the planted file is refused (74)
    before a byte of it is read; the job runs on."""
    from tests.helpers import COUNTER

    descriptors = rng.choice((1200, 1500, 1800))
    planted = (descriptors - rng.choice((200, 300))) << 20  # well inside the old allowance
    app = site.base / "many-descriptors.py"
    app.write_text(MANY_DESCRIPTORS.format(counter=COUNTER))
    app.chmod(0o755)
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("3901.head", app=app, app_env={"HELD_DEVNULL": str(descriptors)})
    held = sum(1 for fd in os.listdir(f"/proc/{job.app_pid()}/fd") if _is_devnull(job.app_pid(), fd))
    assert held >= descriptors, f"the job holds {held} descriptors of /dev/null"
    honest = call_hook(site.torque_args(job), site.config)
    assert honest.returncode == 0, honest.stderr
    [generation] = site.generations("3901.head")
    checks = [f"a job holding {held} descriptors of /dev/null checkpoints with the real CRIU (job-user mode)"]

    wrapper = site.base / "bin" / "criu"
    wrapper.parent.mkdir(mode=0o755, exist_ok=True)
    action = f"open(image / 'pages-99.img', 'wb').truncate({planted})"
    wrapper.write_text(HOSTILE_CRIU.format(action=action, status=0))
    wrapper.chmod(0o755)
    site.configure(**{"backends.criu.run_as": "job-user", "backends.criu.binary": str(wrapper)})
    result = call_hook(site.torque_args(job), site.config)
    assert result.returncode == 74 and "more than the" in result.stderr, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert site.generations("3901.head") == [generation], "the planted image was published"
    assert not site.incoming(), "the planted image was left in the spool"
    [done] = [e for e in site.log_events() if e["event"] == "dump.done"][-1:]
    assert done.get("hashed_meanwhile", 0) < planted // 2, done
    job.wait_count(job.count() + 3)
    checks.append(
        f"with {planted >> 20} MiB planted sparse in the image by the user's own CRIU: 74, one line, "
        "nothing published or left, the planted file never hashed; the job runs on"
    )
    return checks


def _is_devnull(pid: int, fd: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    except OSError:
        return False


STOPPER = """
import os, signal, sys
# The job's user stops their own CRIU (job-user mode: their uid), found through the TracerPid of
# their job's processes while it dumps them, each time one of their jobs is checkpointed.
pids = [int(p) for p in sys.argv[1:]]
stopped = set()
while True:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                tracer = int([l for l in status if l.startswith("TracerPid:")][0].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if tracer and tracer not in stopped:
            try:
                os.kill(tracer, signal.SIGSTOP)
                print("stopped", pid, tracer, flush=True)
            except OSError as exc:
                print("refused", pid, tracer, exc, flush=True)
            stopped.add(tracer)
"""


def _in_background(site: Site, args: list[object], timeout: float) -> Callable[[], tuple[int, str]]:
    """The hook called as pbs_mom calls it, in a thread: a function that waits for it and returns its
    status and its line; a call that has not ended within ``timeout`` fails."""
    done: list[tuple[int, str]] = []

    def call() -> None:
        result = call_hook(args, site.config, timeout=timeout)
        done.append((result.returncode, result.stderr))

    thread = threading.Thread(target=call, daemon=True)
    thread.start()

    def wait() -> tuple[int, str]:
        thread.join(timeout + 30)
        assert done, f"the hook call did not end within {timeout:g}s"
        return done[0]

    return wait


def _until_started(site: Site, job_ids: list[str], timeout: float = 60) -> None:
    """Wait until the hook has logged the start of a checkpoint of each of these jobs."""
    deadline = time.monotonic() + timeout
    while True:
        started = {e.get("job_id") for e in site.log_events() if e.get("event") == "checkpoint.start"}
        if set(job_ids) <= started:
            return
        assert time.monotonic() < deadline, f"no checkpoint of {sorted(set(job_ids) - started)} started"
        time.sleep(0.05)


def stopped_checkpointer(site: Site, rng: random.Random) -> list[str]:
    """Issue 25 #4: in job-user mode the user SIGSTOPs their own CRIU, found through the TracerPid of
    their job, in each of their jobs' checkpoints. Those held every node slot until timeout_s, and
    another user's checkpoint waited that long and failed (75). Now the stopped checkpointer is
    killed after a few seconds (80, one line; the job runs on), one user's checkpoints never hold
    every slot (max_concurrent >= 2), and another user's checkpoint is taken long before timeout_s.
    (A user who continues their CRIU now and then, to stay below a bound on each stop, is caught by
    the stopped time in all: tests/unit/platform/test_stopped_checkpointer.py; here CRIU would finish in
    those moments, and the attack proves nothing.)"""
    timeout_s = 60
    slots = rng.choice((1, 2))
    site.configure(timeout_s=timeout_s, max_concurrent=slots, **{"backends.criu.run_as": "job-user"})
    attacked = [site.start_job(f"390{i}.head") for i in range(slots)]  # as many jobs as the node has slots
    other = site.start_job("3909.head", user=_root())  # another user's job (root's: see own_surface)
    pids = [str(pid) for job in attacked for pid in (job.app_pid(), job.exec_pid())]
    stopper = subprocess.Popen(
        ["setpriv", f"--reuid={site.user.uid}", f"--regid={site.user.gid}", "--init-groups",
         "--inh-caps=-all", "--", "/usr/bin/python3", "-c", STOPPER, *pids],
        stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    try:
        assert stopper.stdout is not None
        # every call must end long before timeout_s (timeout_s / 2): the calls are given no longer
        calls = [_in_background(site, site.torque_args(attacked[0]), timeout_s / 2)]
        ready, _, _ = select.select([stopper.stdout], [], [], timeout_s)
        line = stopper.stdout.readline() if ready else "nothing within timeout_s"
        assert line.startswith("stopped "), f"the user could not stop their CRIU: {line!r}"
        calls += [_in_background(site, site.torque_args(job), timeout_s / 2) for job in attacked[1:]]
        _until_started(site, [job.job_id for job in attacked])  # (the second waits, or holds a slot)
        args = site.torque_args(other)
        os.chown(str(args[4]), 0, 0)  # root's job: its CHECKPOINT_DIR is root's, as pbs_mom makes it
        theirs = call_hook(args, site.config, timeout=timeout_s / 2)
        results = [wait() for wait in calls]
    finally:
        stopper.kill()
        stopper.wait()
    assert theirs.returncode == 0, f"another user's checkpoint: {theirs.returncode} {theirs.stderr}"
    checks = [
        f"max_concurrent = {slots}, {slots} of the user's checkpoints with their CRIU stopped: "
        f"another user's checkpoint taken (0) within timeout_s / 2 (timeout_s {timeout_s})"
    ]
    for status, line in results:
        assert status == 80 and "stopped (SIGSTOP)" in line, (status, line)
        assert line.count("\n") == 1, line
    for job in attacked:
        job.wait_count(job.count() + 3)
    assert not any(site.generations(job.job_id) for job in attacked) and not site.incoming()
    checks.append(
        "each stopped CRIU killed: 80, one line, long before timeout_s; nothing kept; the jobs run on"
    )
    return checks


ADDER = """
import os, sys, time
os.chdir(sys.argv[1])  # a descriptor of the folder, kept after its path is closed to the user
print("ready", flush=True)
n = 0
while True:
    for _ in range(1000):
        try:
            os.close(os.open(f"f{n}", os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError:
            time.sleep(0.01)
        n += 1
"""


def stalled_restart_folder(site: Site, rng: random.Random) -> list[str]:
    """Issue 25 #8: a killed restart's work folder whose restorer folder was the user's (an older
    version's) is filled by a process of theirs that never stops adding files (it keeps the folder
    as its working folder, a descriptor no later chmod takes away). Every later restart on the node
    first removed that folder with no deadline, so it never got to its own job. Now the removal stops
    after WORKDIR_CLEANUP_S and the restart goes on; what is left is the next one's."""
    _psnc(site)
    job = site.start_job("3901.head", app_env={"COUNTER_LIMIT": "30"})
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    crash(job)
    restarts = site.spool / ".restarts"
    restarts.mkdir(mode=0o711)  # as an older version left them
    stale = restarts / f"{socket.gethostname()}.{2**22 + rng.randrange(1000)}.1"
    stale.mkdir(mode=0o711)
    restorer = stale / "restorer"
    restorer.mkdir(mode=0o700)
    os.chown(restorer, site.user.uid, site.user.gid)
    adder = subprocess.Popen(
        ["setpriv", f"--reuid={site.user.uid}", f"--regid={site.user.gid}", "--init-groups",
         "--inh-caps=-all", "--", "/usr/bin/python3", "-c", ADDER, str(restorer)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert adder.stdout is not None and adder.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 60
        while len(os.listdir(restorer)) < 2000:  # some thousands of files already there
            assert time.monotonic() < deadline and adder.poll() is None, "the user's process adds no files"
            time.sleep(0.05)
        restart = call_direct(["--job", "3901.head"], site.config, program="mom-restart", timeout=240)
        assert restart.returncode == 0, f"mom-restart: {restart.returncode} {restart.stderr}"
        assert adder.poll() is None, "the user's process stopped adding"
    finally:
        adder.kill()
        adder.wait()
    assert restarts.stat().st_mode & 0o777 == 0o700, "the old .restarts was left open"
    return [
        "a killed restart's folder that a user's process keeps filling: the next restart removes what "
        "it can within its bound and restores its own job (0)",
        ".restarts is closed to users (0700) from then on",
    ]


SPY = """
import ctypes, errno, json, os, sys, time
# the job's user, during the dump: take a copy (pidfd_getfd) of every descriptor that appears in the
# job's processes (CRIU hands its log descriptor to the parasite it runs inside each of them); after
# the hook has returned, write through every copy taken
libc = ctypes.CDLL(None, use_errno=True)
pids = [int(p) for p in sys.argv[1].split(",")]
before = {p: set(os.listdir(f"/proc/{p}/fd")) for p in pids}
pidfds = {p: os.pidfd_open(p) for p in pids}
grabbed = []
print("ready", flush=True)
os.set_blocking(0, False)
while not sys.stdin.buffer.read(1):
    for pid, pidfd in pidfds.items():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            if fd in before[pid]:
                continue
            before[pid].add(fd)
            new = libc.syscall(438, pidfd, int(fd), 0)
            if new >= 0:
                grabbed.append(new)
    time.sleep(0.0005)
result = []
for fd in grabbed:
    target = os.readlink(f"/proc/self/fd/{fd}")
    try:
        os.write(fd, b"Error (criu/cr-dump.c:1): forged after the dump\\n" + b"x" * (4 << 20))
        result.append([target, "written"])
    except OSError as exc:
        result.append([target, errno.errorcode.get(exc.errno, str(exc.errno))])
print(json.dumps(result), flush=True)
"""


def parasite_descriptors(site: Site, rng: random.Random) -> list[str]:
    """Issue 25 #2, found again by a review: CRIU hands its log descriptor to the parasite it runs in
    every process it dumps, and those are the user's: another process of theirs copied it with
    pidfd_getfd during the dump and, after the hook had published the generation, wrote 64 MiB into
    its image/dump.log. The log is now a pipe of root's, closed once CRIU has ended: whatever the
    user copies from their processes during the dump, nothing they write after it reaches the spool."""
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("4001.head", app_env={"COUNTER_MIB": str(rng.choice((32, 64)))})
    pids = [job.exec_pid(), job.app_pid()]
    taken: list[list[str]] = []
    for _attempt in range(5):  # until the spy has caught a descriptor in the short dump
        spy = subprocess.Popen(
            ["setpriv", f"--reuid={site.user.uid}", f"--regid={site.user.gid}", "--init-groups",
             "--inh-caps=-all", "--", "/usr/bin/python3", "-c", SPY, ",".join(map(str, pids))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert spy.stdout is not None and spy.stdin is not None and spy.stdout.readline() == "ready\n"
        result = call_hook(site.torque_args(job), site.config)
        assert result.returncode == 0, result.stderr
        spy.stdin.write("go\n")
        spy.stdin.flush()
        taken = json.loads(spy.stdout.readline())
        spy.wait(timeout=60)
        if taken:
            break
    assert taken, "the spy caught no descriptor of the dump in 5 checkpoints"
    spool = str(site.spool)
    reached = [target for target, outcome in taken if outcome == "written" and target.startswith(spool)]
    assert not reached, f"the user wrote into the spool after the dump through {reached}"
    for generation in site.generations("4001.head"):
        verify_generation(generation)
    job.wait_count(job.count() + 3)
    kinds = sorted({target.split(":")[0] if not target.startswith("/") else "a path" for target, _ in taken})
    return [
        f"descriptors copied from the job's processes during the dump ({', '.join(kinds)}): none reaches "
        "the spool after it; every generation verifies",
    ]


OTHER_USER = "nobody"  # another ordinary account of the node (the exporter's, a planter)


def _other() -> User:
    return User.named(OTHER_USER)


def qalter_injection(site: Site, rng: random.Random) -> list[str]:
    """Issue 25 #5: the pointer is the user's file; a "generation" holding an attribute list and
    control characters was quoted into the qalter -W root runs when the restart failed, setting other
    attributes (an operator-only Priority among them). The mark is one fixed phrase now."""
    job, args, _generation = held(site, "4101.head")
    log = site.base / "qalter.log"
    site.configure(
        qalter=str(site.standin("qalter", QALTER_LOG=str(log))), **{"backends.criu.run_as": "job-user"}
    )
    hostile = rng.choice(
        (
            "/x,checkpoint_restart_status=Successfully restarted job,Priority=1023,x=",
            "/x\ncomment=\x1b[2J\u202eowned,hold_types=n",
        )
    )
    pointer = Path(str(args[4])) / str(args[5])
    forged = json.loads(pointer.read_text()) | {"generation": hostile}
    as_user(site, "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", str(pointer), json.dumps(forged))
    restart = start_restart(restart_args(job, args), site.config)
    assert restart.wait(timeout=120) == 77
    [mark] = [json.loads(line) for line in log.read_text().splitlines()]
    value = mark[1].removeprefix("checkpoint_restart_status=")
    assert mark[0] == "-W" and mark[2] == "4101.head" and value.startswith("Failed to restart job: exit 77")
    assert not set(value) & set(",=\n\x1b\u202e"), value
    return [f"a forged pointer naming {hostile!r}: restart refused (77), qalter -W got one fixed phrase"]


def metrics_link(site: Site, rng: random.Random) -> list[str]:
    """Issue 25 #6: the textfile folder is the exporter's account's; it swaps mom_checkpoint.prom (or
    the folder) for a link to a root-only file while root writes it: root's chmod 0644 followed the
    link. Root now creates, writes and renames the file through a descriptor of its folder."""
    other = _other()
    exporter = site.base / "exporter"
    exporter.mkdir(mode=0o755)
    os.chown(exporter, other.uid, other.gid)
    secret = site.base / "root-only"
    secret.write_text("root's\n")
    secret.chmod(0o600)
    swap = rng.choice(("file", "folder"))
    target = exporter / "mom_checkpoint.prom" if swap == "file" else exporter
    site.configure(metrics_file=str(exporter / "mom_checkpoint.prom"), **{"backends.criu.run_as": "job-user"})
    if swap == "folder":  # the folder itself a link to root's folder holding a file of that name
        private = site.base / "root-folder"
        private.mkdir(mode=0o700)
        (private / "mom_checkpoint.prom").symlink_to(secret)
        exporter.rmdir()
        exporter.symlink_to(private)
    else:
        subprocess.run(["ln", "-s", str(secret), str(target)], user=other.uid, group=other.gid, check=True)
    job = site.start_job("4102.head")
    result = call_hook(site.torque_args(job), site.config)
    assert result.returncode == 0, result.stderr
    st = os.stat(secret)
    assert (st.st_mode & 0o777, secret.read_text()) == (0o600, "root's\n"), "root followed the link"
    return [f"mom_checkpoint.prom's {swap} swapped for a link: the root-only file stays 0600, unchanged; "
            "the checkpoint succeeds"]  # fmt: skip


def planted_checkpoint_dir(site: Site, rng: random.Random) -> list[str]:
    """Issue 25 #7: TORQUE's checkpoint folder is 1777; another user plants <job>.CK (a link to a
    root-only folder, a file, a folder of theirs) before the job's checkpoint: every checkpoint of the
    job was refused. Now the plant is moved aside unread and the job's folder made."""
    other = _other()
    site.torque_root.chmod(0o1777)
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("4103.head")
    ckdir = site.torque_root / "4103.head.CK"
    kind = rng.choice(("link", "file", "folder"))
    plant = {
        "link": "import os, sys; os.symlink('/root', sys.argv[1])",
        "file": "import sys; open(sys.argv[1], 'w').write('planted')",
        "folder": "import os, sys; os.mkdir(sys.argv[1], 0o777)",
    }[kind]
    subprocess.run(["/usr/bin/python3", "-c", plant, str(ckdir)], user=other.uid, group=other.gid, check=True)
    args = [job.session_id, job.job_id, site.user.name, site.user.name, ckdir, f"ckpt.{job.job_id}.1", 0, "-"]
    result = call_hook(args, site.config)
    assert result.returncode == 0, result.stderr
    st = os.lstat(ckdir)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == site.user.uid, "the job's folder was not made"
    assert (ckdir / f"ckpt.{job.job_id}.1").is_file()
    assert any(e["event"] == "checkpoint_dir.planted" for e in site.log_events())
    return [f"another user's {kind} planted at <job>.CK: moved aside, the job's folder made, checkpoint 0"]


def foreign_checkpoint_dir(site: Site, rng: random.Random) -> list[str]:
    """Issue 25 #9: qsub -c dir= naming another user's folder inside the roots: root wrote the job's
    pointer there, and that user chose what the job's restart read. The checkpoint refuses (77)."""
    other = _other()
    site.torque_root.chmod(0o1777)
    theirs = site.torque_root / f"theirs-{rng.randrange(1000)}"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, other.uid, other.gid)
    ckdir = theirs / "4104.head.CK"
    ckdir.mkdir(mode=0o755)
    os.chown(ckdir, site.user.uid, site.user.gid)  # pbs_mom makes <dir>/<job>.CK for the job
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("4104.head")
    args = [job.session_id, job.job_id, site.user.name, site.user.name, ckdir, "ckpt.4104.head.1", 0, "-"]
    result = call_hook(args, site.config)
    assert result.returncode == 77 and "another user's folder" in result.stderr, result.stderr
    assert list(ckdir.iterdir()) == [] and not site.generations("4104.head")
    job.wait_count(job.count() + 3)
    return ["CHECKPOINT_DIR inside another user's folder: refused (77), nothing written, the job runs on"]


NEEDS_CRIU: set[Scenario] = {
    qalter_injection,
    metrics_link,
    planted_checkpoint_dir,
    foreign_checkpoint_dir,
    parasite_descriptors,
    stopped_checkpointer,
    reach_own_generation,
    forged_manifest,
    own_surface,
    restart_signals,
    forged_credentials,
    hostile_dumps,
    ghost_allowance,
}

SECURITY: dict[str, tuple[Scenario, int]] = {
    # name: (scenario, runs by `make reliability`)
    "a folder tree thousands deep where root cleans up and measures": (deep_trees, 3),
    "a forged manifest and an output file swapped for a link to root's file (real CRIU)": (
        forged_manifest,
        3,
    ),
    "sudo --own: paths outside the spool, a forged copy, another user's job (real CRIU)": (own_surface, 3),
    "a pid file naming a root process; signals through mom-restart (real CRIU)": (restart_signals, 3),
    "credentials forged in the image's core files during the dump (real CRIU)": (forged_credentials, 5),
    "depth=999999, one user's images filling the spool": (spool_share, 3),
    "the same job id from TORQUE and OpenPBS, two owners, one spool": (same_job_id, 3),
    "job-user mode: the user writes into their own generation after the dump (real CRIU)": (
        reach_own_generation,
        4,
    ),
    "a killed restart's work folder that the user keeps filling": (stalled_restart_folder, 3),
    "a forged pointer whose generation is an attribute list, into qalter -W (real CRIU)": (
        qalter_injection,
        3,
    ),
    "the exporter's account swaps the metrics file or folder for a link (real CRIU)": (metrics_link, 3),
    "another user plants <job>.CK in TORQUE's 1777 folder (real CRIU)": (planted_checkpoint_dir, 3),
    "qsub -c dir= naming another user's folder (real CRIU)": (foreign_checkpoint_dir, 3),
    "job-user mode: descriptors copied from the dumped processes, written after the dump (real CRIU)": (
        parasite_descriptors,
        4,
    ),
    "a FIFO, a root-only link, a sparse giant, a link to /etc, a hard link in the image (real CRIU)": (
        hostile_dumps,
        8,
    ),
    "many descriptors of /dev/null and a sparse giant planted during the dump (real CRIU)": (
        ghost_allowance,
        3,
    ),
    "job-user mode: the user SIGSTOPs their own CRIU in every slot of the node (real CRIU)": (
        stopped_checkpointer,
        4,
    ),
}
