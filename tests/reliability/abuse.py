"""Abuse scenarios: hostile input must be refused with one clear stderr line and change nothing.

Each scenario takes a fresh ``Site`` and a seeded ``random.Random``, raises AssertionError when the
product gives in, and returns the checks it made (``make reliability`` counts them into
docs/RELIABILITY.md; the test suite runs each once). Most use the PSNC stand-in, whose image files are
quick to make; the modes scenario checkpoints with real CRIU.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.helpers import Job, Site, User, assert_refused, call_hook

Scenario = Callable[[Site, random.Random], list[str]]

# Job ids and checkpoint names that must never become a path part. argv cannot carry NUL (execve ends
# the string there): the parser's own tests (tests/unit/test_fuzz.py) feed it NUL.
UNSAFE_NAMES = [
    "../x", "a/b", "..", "x/../../etc", "/etc/passwd", "a..b", "a\nb", "a\rb", "a\tb", "x;id",
    "$(id -u)", "`id`", "a b", "a|b", "a&b", "a>b", "*", "-rf", ".hidden", "~root", "a\x1bb",
    "\u202e", "42.head\u00a0", "a" * 201, "b" * 5000,
]  # fmt: skip


def _psnc(site: Site, **keys: object) -> None:
    site.configure(
        backend="psnc",
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt")),
            "backends.psnc.resume": str(site.standin("resume")),
        },
        **keys,  # type: ignore[arg-type]
    )


def _still_running(job: Job, what: str) -> str:
    assert job.is_running(), f"{what}: the job was touched"
    return f"{what}: the job kept running"


def unsafe_names(site: Site, rng: random.Random) -> list[str]:
    """Job ids and checkpoint names with /, .., control characters, shell syntax, 200+ characters."""
    _psnc(site)
    job = site.start_job("2001.head")
    args = [str(a) for a in site.torque_args(job)]
    names = rng.sample(UNSAFE_NAMES, 8)
    for name in names:
        as_id = [args[0], name, *args[2:]]
        assert_refused(site, as_id, 64, "JOB_ID", direct=True)
        assert_refused(site, [args[0], name], 64, "JOB_ID", direct=True)
        as_name = [*args[:5], name, *args[6:]]
        assert_refused(site, as_name, 64, "CHECKPOINT_NAME", direct=True)
        assert_refused(site, [f"--job={name}"], 64, "JOB_ID", direct=True, program="mom-restart")
        assert_refused(site, ["prune", f"--job={name}"], 64, "--job", direct=True)
    return [
        f"{len(names)} hostile names ({', '.join(repr(n[:12]) for n in names)}) refused with 64 as "
        "JOB_ID (TORQUE and seed forms), CHECKPOINT_NAME, mom-restart --job and prune --job",
        "nothing on disk changed",
        _still_running(job, "after the refusals"),
    ]


def argument_injection(site: Site, rng: random.Random) -> list[str]:
    """What TORQUE itself lets through its shell: extra words, expanded $(...), a steered CHECKPOINT_DIR."""
    _psnc(site)
    job = site.start_job("2002.head")
    args = site.torque_args(job)
    # qsub -c 'enabled,dir=/x y': pbs_mom joins the words with spaces, its shell splits them again
    assert_refused(site, [*args[:4], "/x", "y", *args[5:]], 64, "got 9")
    # qsub -c 'enabled,dir=/x$(id -u)': root's shell expands it; what arrives is outside the roots
    assert_refused(site, [*args[:4], "/x$(id -u)", *args[5:]], 77, "outside the allowed roots")
    elsewhere = site.base / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    outside = rng.choice(["/tmp", "/", "/etc", "/root", str(elsewhere), str(site.spool)])
    assert_refused(site, [*args[:4], outside, *args[5:]], 77, "outside the allowed roots")
    root = site.torque_root
    link = root / f"link-{rng.randrange(10**6)}.CK"
    link.symlink_to(elsewhere)
    (elsewhere / "sub").mkdir()
    assert_refused(site, [*args[:4], link, *args[5:]], 77, "symlink")
    assert_refused(site, [*args[:4], link / "sub", *args[5:]], 77, "symlink")
    assert_refused(site, [*args[:4], f"{root}/../../{rng.choice(['x', 'etc', 'tmp'])}", *args[5:]], 77, "")
    assert_refused(site, [*args[:4], "relative/dir", *args[5:]], 64, "absolute path")
    assert not any(elsewhere.rglob("ckpt*")), "a pointer was written through the symlink"
    return [
        "9 words (dir=/x y) refused with 64",
        "a $(...) expanded by pbs_mom's shell, a directory outside the roots "
        f"({outside}), a symlink at and above CHECKPOINT_DIR, a .. path: refused with 77",
        "nothing written through the symlink; nothing on disk changed",
        _still_running(job, "after the refusals"),
    ]


def foreign_processes(site: Site, rng: random.Random) -> list[str]:
    """A PID of another user's job, a PID inside the job that is not its session leader, a system PID."""
    _psnc(site)
    root = User.named("root")
    theirs = site.start_job("2003.head", user=root)
    mine = site.start_job("2004.head")
    args = site.torque_args(mine)
    stolen = [theirs.session_id, *args[1:]]  # EUSER momtest, the session is root's
    assert_refused(site, stolen, 77, f"not to {site.user.name}")
    inner = rng.choice([mine.app_pid(), mine.exec_pid()])
    assert_refused(site, [inner, *args[1:]], 66, "is not a session leader")
    assert_refused(site, [1, *args[1:]], 64, "above 1")
    assert_refused(site, [2**22 + rng.randrange(1000), *args[1:]], 66, "no process")
    return [
        "another user's session as SESSION_ID: 77, naming the owner",
        "a process of the job that is not its session leader: 66",
        "pid 1 and a pid that does not exist: refused",
        _still_running(theirs, "the other user's job"),
        _still_running(mine, "the job"),
    ]


def _rewrite_manifest(generation: Path, change: Callable[[dict[str, object]], None]) -> None:
    path = generation / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _first_image_file(generation: Path) -> Path:
    return sorted(p for p in (generation / "image").rglob("*") if p.is_file())[0]


def _flip_a_byte(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    data[rng.randrange(len(data))] ^= 0xFF
    path.write_bytes(bytes(data))


def _set_schema(value: object) -> Callable[[dict[str, object]], None]:
    def change(data: dict[str, object]) -> None:
        data["schema"] = value

    return change


def _file_outside(data: dict[str, object]) -> None:
    files = data["files"]
    assert isinstance(files, list)
    files[0]["path"] = "image/../../../../etc/passwd"


TAMPERS: list[tuple[str, Callable[[Path, random.Random], object], int, str]] = [
    ("an image file changed", lambda g, r: _flip_a_byte(_first_image_file(g), r), 65, "has changed"),
    ("an image file removed", lambda g, r: _first_image_file(g).unlink(), 65, "image file missing"),
    ("a file added", lambda g, r: (g / "image" / "extra").write_bytes(b"x"), 65, "not in the manifest"),
    ("the generation group-writable", lambda g, r: g.chmod(0o775), 77, "written by group or others"),
    ("the manifest a stranger's", lambda g, r: os.chown(g / "manifest.json", 4242, 4242), 77, "uid 4242"),
    (
        "an image file swapped for a symlink",
        lambda g, r: _swap_for_symlink(_first_image_file(g)),
        77,
        "symlink",
    ),
    ("a manifest naming ../../etc/passwd", lambda g, r: _rewrite_manifest(g, _file_outside), 65, "outside"),
    ("manifest schema 99", lambda g, r: _rewrite_manifest(g, _set_schema(99)), 65, "newer than"),
    ("manifest schema 0", lambda g, r: _rewrite_manifest(g, _set_schema(0)), 65, "not supported"),
    ("manifest schema 'one'", lambda g, r: _rewrite_manifest(g, _set_schema("one")), 65, "no schema"),
    ("a manifest that is not JSON", lambda g, r: (g / "manifest.json").write_text("{"), 65, "not valid JSON"),
    ("no manifest", lambda g, r: (g / "manifest.json").unlink(), 65, "no manifest"),
]


def _swap_for_symlink(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/passwd")


def tampered_generations(site: Site, rng: random.Random) -> list[str]:
    """Every kind of tampering with a complete generation: verify and mom-restart refuse, nothing runs."""
    _psnc(site)
    job = site.start_job("2005.head")
    args = site.torque_args(job)
    assert call_hook(args, site.config).returncode == 0
    [original] = site.generations("2005.head")
    other = site.start_job("2009.head")
    assert call_hook(site.torque_args(other), site.config).returncode == 0
    [others] = site.generations("2009.head")
    pristine = site.base / "pristine"
    shutil.copytree(original, pristine, symlinks=True)
    checks = []
    for name, tamper, status, words in sorted(TAMPERS, key=lambda _: rng.random()):  # a random order
        shutil.rmtree(original)
        shutil.copytree(pristine, original, symlinks=True)
        original.chmod(0o700)
        tamper(original, rng)
        assert_refused(site, ["verify", original], status, words, direct=True)
        assert_refused(site, ["--image", original], status, words, direct=True, program="mom-restart")
        assert_refused(site, ["--job", "2005.head"], status, words, direct=True, program="mom-restart")
        checks.append(f"{name}: verify and mom-restart (--image, --job) refuse with {status}")
    checks.sort(key=lambda check: [t[0] for t in TAMPERS].index(check.split(":")[0]))
    # the pointer travels through the user's hands (TORQUE copies it to the server and back)
    pointer = Path(str(args[4])) / str(args[5])
    forged = json.loads(pointer.read_text())
    forged["generation"] = str(others)
    pointer.write_text(json.dumps(forged))
    restart_args = [job.session_id, job.job_id, job.user.name, job.user.name, args[4], args[5]]
    assert_refused(site, restart_args, 77, "names no checkpoint of job 2005.head", program="mom-restart")
    checks.append("a forged pointer naming another job's generation: mom-restart refuses with 77")
    assert not [c for c in site.standin_calls() if c["prog"] == "resume"], "a tampered image was restored"
    checks.append("nothing was ever restored; no refusal changed anything on disk")

    # a symlink swapped into the spool in place of the job's run folder
    shutil.rmtree(original)
    run_dir = original.parent
    decoy = site.base / "decoy"
    decoy.mkdir(mode=0o700)
    shutil.rmtree(run_dir)
    run_dir.symlink_to(decoy)
    assert_refused(site, site.torque_args(job), 77, "symlink swapped into the spool")
    assert not any(decoy.iterdir()), "the hook wrote through a symlink in the spool"
    assert_refused(
        site, ["--job", "2005.head"], 66, "no complete checkpoint", direct=True, program="mom-restart"
    )
    checks.append("a run folder swapped for a symlink: the hook refuses (77) and writes nothing through it")
    checks.append("mom-restart ignores it (66: no complete checkpoint)")
    return checks


CONFIG_ABUSE: list[tuple[str, dict[str, object] | str, str]] = [
    ("an unknown key", "kepe = 3\n", "kepe: unknown key"),
    ("an unknown backend key", "[backends.criu]\nbinari = 'criu'\n", "backends.criu.binari: unknown key"),
    ("an unknown table", "[backend.criu]\nbinary = 'criu'\n", "backend"),
    ("keep as a string", {"keep": "two"}, "keep: expected an integer"),
    ("keep negative", {"keep": -1}, "keep: must be at least 1"),
    ("max_concurrent zero", {"max_concurrent": 0}, "max_concurrent"),
    ("timeout_s negative", {"timeout_s": -5}, "timeout_s"),
    ("timeout_s a word", {"timeout_s": "soon"}, "timeout_s: expected a number"),
    ("space_margin negative", {"space_margin": -1}, "space_margin"),
    ("abort_grace_s negative", {"abort_grace_s": -1}, "abort_grace_s"),
    ("backend unknown", {"backend": "dmtcp"}, "backend: must be one of"),
    ("roots not a list", {"torque_checkpoint_roots": "/var/spool/torque/checkpoint"}, "expected a list"),
    ("run_as unknown", {"backends.criu.run_as": "nobody"}, "run_as: must be one of"),
    ("not TOML", "keep = [\n", "config"),
]


def bad_config(site: Site, rng: random.Random) -> list[str]:
    """Config files with unknown keys, wrong types, negative limits, or writable by others."""
    job = site.start_job("2006.head")
    args = site.torque_args(job)
    picked = rng.sample(CONFIG_ABUSE, 8)
    for _name, content, words in picked:
        if isinstance(content, str):
            site.configure()
            site.configure(text=site.config.read_text() + content)
        else:
            site.configure(**content)  # type: ignore[arg-type]
        assert_refused(site, args, 78, words)
    site.configure()
    site.config.chmod(0o666)
    assert_refused(site, args, 78, "writable")
    site.config.chmod(0o644)
    os.chown(site.config, site.user.uid, site.user.gid)
    assert_refused(site, args, 78, "not root")
    os.chown(site.config, 0, 0)
    return [
        f"{len(picked)} bad config files ({', '.join(n for n, _, _ in picked)}): 78, naming the key",
        "a config file others can write, and one the job's user owns: 78 (the hook runs as root)",
        "nothing on disk changed",
        _still_running(job, "after the refusals"),
    ]


def _modes(root: Path) -> list[tuple[Path, os.stat_result]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            found.append((path, path.lstat()))
    return found


def private_modes(site: Site, rng: random.Random) -> list[str]:
    """After real CRIU checkpoints in both modes: nothing group- or world-readable, and another user
    really cannot read an image (tried as nobody)."""
    root = User.named("root")
    site.configure(**{"backends.criu.run_as": "job-user"})
    job = site.start_job("2007.head", app_env={"COUNTER_MIB": str(rng.choice((1, 8, 32)))})
    args = site.torque_args(job)
    for _ in range(2):
        assert call_hook(args, site.config).returncode == 0
    site.configure(**{"backends.criu.run_as": "root"})  # root mode, on a job of root's
    roots_job = site.start_job("2008.head", user=root)
    assert call_hook(site.torque_args(roots_job), site.config).returncode == 0

    spool = _modes(site.spool)
    assert spool, "nothing was written"
    for path, st in spool:
        assert not stat.S_ISLNK(st.st_mode), f"{path} is a symlink"
        allowed = 0o011 if stat.S_ISDIR(st.st_mode) else 0  # folders: others may only pass through
        assert stat.S_IMODE(st.st_mode) & 0o077 & ~allowed == 0, f"{path} has mode {st.st_mode:o}"
        assert st.st_uid in (0, site.user.uid), f"{path} belongs to uid {st.st_uid}"
    pointer = Path(str(args[4])) / str(args[5])
    st = pointer.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (site.user.uid, 0o600), (
        "the pointer must be the user's 0600"
    )

    images = [p for p, st in spool if stat.S_ISREG(st.st_mode) and "/image/" in str(p)]
    tried = rng.sample(images, min(4, len(images)))
    for path in tried:
        as_nobody = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(path)],
            capture_output=True,
        )
        assert as_nobody.returncode != 0 and not as_nobody.stdout, f"nobody could read {path}"
    user_owned = [p for p, st in spool if st.st_uid == site.user.uid]
    roots_images = [p for p in images if "2008.head" in str(p)]
    for path in rng.sample(roots_images, min(2, len(roots_images))):
        as_user = subprocess.run(
            [
                "setpriv",
                f"--reuid={site.user.uid}",
                f"--regid={site.user.gid}",
                "--clear-groups",
                "cat",
                str(path),
            ],
            capture_output=True,
        )
        assert as_user.returncode != 0 and not as_user.stdout, f"the job's user could read root's {path}"
    return [
        f"{len(spool)} paths in the spool: files 0600 or stricter, folders at most 0711, none a symlink",
        f"{len(user_owned)} of them the job's user's (job-user mode), the rest root's",
        "the pointer at CHECKPOINT_DIR/CHECKPOINT_NAME is the job user's, 0600",
        f"nobody cannot read {len(tried)} image files; the job's user cannot read root-mode images",
    ]


ABUSE: dict[str, tuple[Scenario, int]] = {
    # name: (scenario, runs by `make reliability`)
    "hostile job ids and checkpoint names": (unsafe_names, 5),
    "argument injection through pbs_mom's shell and a steered CHECKPOINT_DIR": (argument_injection, 5),
    "PIDs of another user, inside the job, of the system": (foreign_processes, 3),
    "tampered generations and a symlink swapped into the spool": (tampered_generations, 3),
    "bad and unsafe config files": (bad_config, 3),
    "modes of everything created; reads by other users (real CRIU)": (private_modes, 3),
}
