"""The Debian and RPM packages, built by the very scripts `make deb` and `make rpm` run.

The deb is installed on this machine with dpkg -i, checked file by file, used for a real checkpoint
and restart of a job of the test user, and purged at the end, leaving the machine as it was (a
config file of an earlier `make install` is put back). The RPM is built with Debian's rpmbuild,
inspected with rpm -qlp / -qip, and its payload unpacked and run (it is not installed: this is not
an RPM system). Tools come from `make packaging-tools`; without them these tests skip (fail in CI).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mom_checkpoint import __version__
from mom_checkpoint.cli.admin import COMMANDS
from tests.helpers import MOM_ENV, HookResult, Site, User, crash, start_restart, verify_generation

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ("mom-checkpoint", "mom-restart", "mom-checkpoint-run")
SBIN = Path("/usr/sbin")
DEB_LIB = Path("/usr/lib/mom-checkpoint")
CONFIG = Path("/etc/mom-checkpoint/config.toml")
SPOOL = Path("/var/spool/checkpoint")
DOC = Path("/usr/share/doc/mom-checkpoint")
PYTHON_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
NEXT_PYTHON_VERSION = f"{sys.version_info[0]}.{sys.version_info[1] + 1}"
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"package test cannot run in CI: {reason}")
    pytest.skip(reason)


def run(args: Sequence[object], timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def build(script: str) -> str:
    """Run a build script as `make` does (VENV: the virtualenv these tests run in)."""
    proc = run(["sh", ROOT / "scripts" / script], cwd=ROOT, env={**os.environ, "VENV": sys.prefix})
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def call_installed(args: Sequence[object], config: Path, program: str = "mom-checkpoint") -> HookResult:
    """tests.helpers.call_hook with the package's program: pbs_mom's popen("<program> <args> 2>&1
    1>/dev/null") as root, PATH=/bin:/usr/bin, stderr read back."""
    words = [str(SBIN / program), *[str(a) for a in args]]
    proc = subprocess.run(
        ["/bin/sh", "-c", " ".join(words) + " 2>&1 1>/dev/null"],
        env={**MOM_ENV, "MOM_CHECKPOINT_CONFIG": str(config)},
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
    )
    return HookResult(proc.returncode, proc.stdout.decode(errors="replace"), words)


def direct(args: Sequence[object], config: Path | None = None) -> subprocess.CompletedProcess[str]:
    """An installed program with exactly these arguments, in pbs_mom's bare environment."""
    env = dict(MOM_ENV)
    if config is not None:
        env["MOM_CHECKPOINT_CONFIG"] = str(config)
    return run(args, timeout=120, env=env, cwd="/")


# -- the Debian package ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deb() -> Path:
    if shutil.which("dpkg-deb") is None:
        unavailable("dpkg-deb is missing: not a Debian machine")
    build("build-deb.sh")
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    package = ROOT / "dist" / f"mom-checkpoint_{__version__}_{arch}.deb"
    assert package.is_file(), f"build-deb.sh made no {package}"
    return package


@dataclass
class Saved:
    """What installing and purging the package could change that it does not own."""

    config: bytes | None
    spool_existed: bool
    log_existed: bool


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        unavailable("needs root to install the package")
    if run(["dpkg-query", "-W", "-f=${Status}", "mom-checkpoint"]).stdout.endswith(" installed"):
        unavailable("the mom-checkpoint package is already installed here; the test would replace it")
    log = Path("/var/log/mom-checkpoint.log")
    saved = Saved(CONFIG.read_bytes() if CONFIG.exists() else None, SPOOL.exists(), log.exists())
    try:
        proc = run(
            ["dpkg", "--force-confnew", "-i", deb], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        )
        assert proc.returncode == 0, f"dpkg -i failed:\n{proc.stdout}\n{proc.stderr}"
        yield deb
    finally:
        purge = run(["dpkg", "--purge", "mom-checkpoint"])
        if saved.config is not None:  # a `make install` config the package's conffile replaced
            CONFIG.parent.mkdir(mode=0o755, exist_ok=True)
            CONFIG.write_bytes(saved.config)
            CONFIG.chmod(0o644)
        if not saved.spool_existed and SPOOL.is_dir() and not any(SPOOL.iterdir()):
            SPOOL.rmdir()
        if not saved.log_existed and log.exists() and log.stat().st_size == 0:
            log.unlink()
    assert purge.returncode == 0, f"dpkg --purge failed:\n{purge.stdout}\n{purge.stderr}"
    assert not DEB_LIB.exists() and not any((SBIN / p).exists() for p in PROGRAMS)


def test_deb_control_fields(deb: Path) -> None:
    fields = run(["dpkg-deb", "-f", deb, "Package", "Version", "Depends", "Recommends", "Section"]).stdout
    control = dict(line.split(": ", 1) for line in fields.splitlines())
    assert control["Package"] == "mom-checkpoint"
    assert control["Version"] == __version__
    depends = [d.strip() for d in control["Depends"].split(",")]
    assert f"python3 (>= {PYTHON_VERSION})" in depends
    assert f"python3 (<< {NEXT_PYTHON_VERSION})" in depends
    assert "util-linux" in depends
    assert control["Recommends"] == "criu"
    assert control["Section"] == "admin"
    conffiles = run(["dpkg-deb", "-I", deb, "conffiles"]).stdout.split()
    assert conffiles == ["/etc/mom-checkpoint/config.toml", "/etc/logrotate.d/mom-checkpoint"]


def test_installed_files(installed: Path) -> None:
    for program in PROGRAMS:
        path = SBIN / program
        st = path.stat()
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755, f"{path}: {st.st_mode:o}"
        assert path.read_text().splitlines()[0] == "#!/usr/bin/python3 -IS"
    # everyone may read the libraries (mom-checkpoint-run runs as the job's user), nobody else write them
    for path in [DEB_LIB, *DEB_LIB.rglob("*")]:
        st = path.lstat()
        need = 0o555 if stat.S_ISDIR(st.st_mode) else 0o444
        assert st.st_uid == 0 and st.st_mode & need == need and st.st_mode & 0o022 == 0, path
    assert list(DEB_LIB.glob("psutil/_psutil_linux*.so")), "psutil's compiled module is missing"
    assert not (DEB_LIB / "bin").exists(), "pip's console scripts (naming the build venv) were shipped"
    assert list(DEB_LIB.glob("mom_checkpoint/__pycache__/*.cpython-*.pyc")), "no byte code shipped"

    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "mom-checkpoint"]).stdout
    assert re.search(r"^ /etc/mom-checkpoint/config.toml [0-9a-f]{32}$", conffiles, re.M), conffiles
    assert CONFIG.read_bytes() == (ROOT / "packaging" / "config.toml").read_bytes()
    st = CONFIG.stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o644
    st = SPOOL.stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o711, "postinst did not create the spool"
    assert (
        Path("/usr/lib/tmpfiles.d/mom-checkpoint.conf").read_text()
        == (ROOT / "packaging" / "tmpfiles.d-mom-checkpoint.conf").read_text()
    )

    for program in PROGRAMS:
        page = gzip.decompress(Path(f"/usr/share/man/man8/{program}.8.gz").read_bytes()).decode()
        title = program.upper().replace("-", r"\-")
        assert page.startswith(f'.TH {title} "8" ') or f'\n.TH {title} "8" ' in page, program
        assert __version__ in page and "@VERSION@" not in page
    checkpoint_page = gzip.decompress(Path("/usr/share/man/man8/mom-checkpoint.8.gz").read_bytes()).decode()
    for command in COMMANDS:  # generated from the parser as it is now
        assert "mom\\-checkpoint " + command.replace("-", "\\-") in checkpoint_page, command
    if shutil.which("man"):
        rendered = run(
            ["man", "-l", "/usr/share/man/man8/mom-checkpoint-run.8.gz"], env={**os.environ, "MANWIDTH": "80"}
        )
        assert rendered.returncode == 0 and "$checkpoint_run_exe" in rendered.stdout

    copyright_text = (DOC / "copyright").read_text()
    assert (
        "License: Apache-2.0" in copyright_text and "/usr/share/common-licenses/Apache-2.0" in copyright_text
    )
    for library in ("psutil", "structlog", "filelock"):
        assert f"{DEB_LIB.relative_to('/')}/{library}/*" in copyright_text, library
    mom_lines = (DOC / "mom_priv-config").read_text().splitlines()
    settings = dict(line.split(None, 1) for line in mom_lines if line.startswith("$"))
    assert settings["$checkpoint_script"] == "/usr/sbin/mom-checkpoint"
    assert settings["$restart_script"] == "/usr/sbin/mom-restart"
    assert settings["$checkpoint_run_exe"] == "/usr/sbin/mom-checkpoint-run"
    openpbs = [line.split() for line in (DOC / "openpbs-mom_priv-config").read_text().splitlines()]
    actions = {words[1]: words[3] for words in openpbs if words and words[0] == "$action"}
    assert actions == dict.fromkeys(
        ("checkpoint", "checkpoint_abort", "restart"), "!/usr/sbin/mom-checkpoint"
    )
    for unit in ("mom-checkpoint-tick.service", "mom-checkpoint-tick.timer"):
        text = Path("/lib/systemd/system", unit).read_text()
        assert "/usr/local/sbin" not in text, unit
    assert (
        "ExecStart=/usr/sbin/mom-checkpoint tick"
        in Path("/lib/systemd/system/mom-checkpoint-tick.service").read_text()
    )
    assert "root /usr/sbin/mom-checkpoint tick" in (DOC / "cron.d-mom-checkpoint-tick").read_text()
    tick = Path("/lib/systemd/system/mom-checkpoint-tick.service").read_text()
    sync = Path("/lib/systemd/system/mom-checkpoint-vault-sync.service").read_text()
    assert "Wants=network-online.target mom-checkpoint-vault-sync.service" in tick  # started with each tick
    assert "ExecStart=/usr/sbin/mom-checkpoint vault-sync --if-enabled" in sync and "/usr/local" not in sync
    assert (
        "root /usr/sbin/mom-checkpoint vault-sync --if-enabled"
        in (DOC / "cron.d-mom-checkpoint-tick").read_text()
    )
    if shutil.which("systemd-analyze"):
        units = [f"/lib/systemd/system/mom-checkpoint-tick.{kind}" for kind in ("service", "timer")]
        units.append("/lib/systemd/system/mom-checkpoint-vault-sync.service")
        analyzed = run(["systemd-analyze", "verify", *units])
        assert analyzed.returncode == 0, analyzed.stdout + analyzed.stderr
    sudoers = (DOC / "sudoers-mom-restart").read_text()
    assert "/usr/local/sbin" not in sudoers and "= /usr/sbin/mom-restart --own *" in sudoers
    assert run(["visudo", "-cf", DOC / "sudoers-mom-restart"]).returncode == 0, "sudoers syntax"
    for example in ("checkpointable-job.sh", "run_job.sh", "resume_job.sh"):
        assert (DOC / "examples" / example).read_bytes() == (
            ROOT / "packaging" / "examples" / example
        ).read_bytes()
    # issue 26 #7: the documents the README points to are installed with it
    installed_docs = {p.name.removesuffix(".gz") for p in DOC.iterdir()}
    for doc_page in (ROOT / "docs").glob("*.md"):
        assert doc_page.name in installed_docs, f"{doc_page.name} is not installed"


def test_logrotate_entry_is_valid(installed: Path, tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not os.access(logrotate, os.X_OK):
        unavailable("logrotate is missing: make packaging-tools")
    proc = run([logrotate, "--debug", "--state", tmp_path / "state", "/etc/logrotate.d/mom-checkpoint"])
    assert proc.returncode == 0, proc.stderr
    assert "/var/log/mom-checkpoint.log" in proc.stderr + proc.stdout


def test_installed_programs_start(installed: Path, job_user: User) -> None:
    version = direct([SBIN / "mom-checkpoint", "--version"])
    assert (version.returncode, version.stdout) == (0, f"mom-checkpoint {__version__}\n"), version.stderr
    helptext = direct([SBIN / "mom-restart", "--help"])
    assert helptext.returncode == 0 and helptext.stdout.startswith("usage: mom-restart"), helptext.stderr
    assert direct([SBIN / "mom-checkpoint-run"]).returncode == 64
    missing = direct([SBIN / "mom-checkpoint-run", "/nonexistent/shell"])
    assert missing.returncode == 127 and "/nonexistent/shell" in missing.stderr
    # the job's user runs it, and the shell takes its very process
    proc = subprocess.Popen(
        [str(SBIN / "mom-checkpoint-run"), "/bin/sh", "-c", "echo $$"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        env=dict(MOM_ENV),
        user=job_user.uid,
        group=job_user.gid,
        extra_groups=[],
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert int(out) == proc.pid
    # nothing compiled at start-up: the package's files are all there is, and unchanged
    owned = set(run(["dpkg", "-L", "mom-checkpoint"]).stdout.split())
    extra = [str(p) for p in DEB_LIB.rglob("*") if str(p) not in owned]
    assert extra == [], f"files the package does not own appeared: {extra[:5]}"
    verify = run(["dpkg", "--verify", "mom-checkpoint"])
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout


@pytest.mark.usefixtures("criu")
def test_installed_programs_checkpoint_and_restart_a_real_job(installed: Path, site: Site) -> None:
    site.configure(**{"backends.criu.run_as": "job-user"})  # root here cannot dump another user's process
    job = site.start_job("701.pkg", app_env={"COUNTER_LIMIT": "120", "COUNTER_EXIT": "5"})

    periodic = call_installed(site.torque_args(job), site.config)
    assert periodic.returncode == 0, periodic.stderr
    assert periodic.stderr == ""
    before = job.count()
    job.wait_count(before + 5)
    [generation] = site.generations("701.pkg")
    manifest = verify_generation(generation)
    assert manifest["job"]["id"] == "701.pkg" and manifest["job"]["user"] == site.user.name
    assert manifest["backend"]["name"] == "criu" and manifest["backend"]["run_as"] == "job-user"

    # qhold: checkpoint and end the job; then pbs_mom's $restart_script brings it back
    args = site.torque_args(job, signal_number=15)
    held = call_installed(args, site.config)
    assert held.returncode == 0, held.stderr
    job.wait_ended()
    checkpointed = job.count()
    assert len(site.generations("701.pkg")) == 2
    crash(job)
    job.output.write_text("")  # pbs_mom re-creates empty .OU/.ER files before a restart
    restart_args = [job.session_id, job.job_id, site.user.name, site.user.name, args[4], args[5]]
    restart = start_restart(restart_args, site.config, program=SBIN / "mom-restart")
    _, err = restart.communicate(timeout=120)
    assert restart.returncode == 5, err.decode(errors="replace")
    counted = job.counts()
    # what it printed before the qhold is put back into the re-created file, then it counts on
    assert counted == list(range(1, 121)), f"{counted[:3]}... after {checkpointed}"


@pytest.mark.usefixtures("criu")
def test_doctor_passes_with_the_packaged_mom_priv_lines(installed: Path, site: Site) -> None:
    clients = {name: str(site.standin(name)) for name in ("qstat", "qchkpt", "qalter")}  # TORQUE's
    site.configure(**{"backends.criu.run_as": "job-user"}, **clients)
    mom_config = site.base / "torque" / "mom_priv" / "config"  # its checkpoint/ is the site's root
    mom_config.parent.mkdir(mode=0o751)
    # the package's own snippet: the three lines naming /usr/sbin
    mom_config.write_text((DOC / "mom_priv-config").read_text())
    doctor = direct([SBIN / "mom-checkpoint", "doctor", "--mom-config", mom_config], site.config)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    # and OpenPBS's: its $action lines, as the package ships them
    pbs_root = site.base / "pbs" / "checkpoint"
    pbs_root.mkdir(parents=True, mode=0o700)
    site.configure(pbs_checkpoint_roots=[str(pbs_root)], **{"backends.criu.run_as": "job-user"})
    mom_config.write_text((DOC / "openpbs-mom_priv-config").read_text())
    doctor = direct([SBIN / "mom-checkpoint", "doctor", "--mom-config", mom_config], site.config)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "[ok  ] $action checkpoint_abort: " in doctor.stdout and "[ok  ] $action script" in doctor.stdout


# -- the RPM --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rpm() -> Path:
    if shutil.which("rpmbuild") is None:
        unavailable("rpmbuild is missing: make packaging-tools (Debian's rpm package)")
    build("build-rpm.sh")
    arch = run(["rpm", "--eval", "%{_arch}"]).stdout.strip()
    package = ROOT / "dist" / f"mom-checkpoint-{__version__}-1.{arch}.rpm"
    assert package.is_file(), f"build-rpm.sh made no {package}"
    assert (ROOT / "dist" / f"mom-checkpoint-{__version__}-1.src.rpm").is_file()
    return package


def test_rpm_lists_the_programs_config_and_man_pages(rpm: Path) -> None:
    files = set(run(["rpm", "-qlp", rpm]).stdout.split())
    for program in PROGRAMS:
        assert f"/usr/sbin/{program}" in files
        assert f"/usr/share/man/man8/{program}.8.gz" in files
    for path in (
        "/etc/mom-checkpoint/config.toml",
        "/etc/logrotate.d/mom-checkpoint",
        "/usr/lib/tmpfiles.d/mom-checkpoint.conf",
        "/usr/lib/systemd/system/mom-checkpoint-tick.timer",
        "/var/spool/checkpoint",
    ):
        assert path in files, path
    assert not any(f.startswith("/usr/lib/.build-id") for f in files)
    configs = run(["rpm", "-qcp", rpm]).stdout.split()
    assert sorted(configs) == ["/etc/logrotate.d/mom-checkpoint", "/etc/mom-checkpoint/config.toml"]
    modes = run(["rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]", rpm]).stdout.splitlines()
    assert "drwx--x--x /var/spool/checkpoint" in modes
    assert all(f"-rwxr-xr-x /usr/sbin/{p}" in modes for p in PROGRAMS)


def test_rpm_version_license_and_requires(rpm: Path, rpm_root: Path) -> None:
    info = run(["rpm", "-qip", rpm]).stdout
    fields = dict(re.findall(r"^(\w[\w ]*?)\s*: (.*)$", info, re.M))
    assert fields["Name"] == "mom-checkpoint"
    assert fields["Version"] == __version__
    assert fields["Architecture"] != "noarch"  # psutil's compiled module is vendored
    licence_terms = set(re.split(r"[\s()]+(?:AND|OR)?\s*", fields["License"])) - {""}
    assert fields["License"].startswith("Apache-2.0"), fields["License"]
    requires = run(["rpm", "-qp", "--requires", rpm]).stdout.splitlines()
    assert f"python(abi) = {PYTHON_VERSION}" in requires
    assert "util-linux" in requires
    assert run(["rpm", "-qp", "--recommends", rpm]).stdout.split() == ["criu"]
    # the License field covers every vendored library's licence
    [lib] = rpm_root.glob("usr/lib*/mom-checkpoint")
    vendored = run([sys.executable, ROOT / "scripts" / "vendored_licenses.py", "--spdx", lib]).stdout.split()
    assert {"Apache-2.0", "BSD-3-Clause"} <= set(vendored), vendored  # ours and psutil's at least
    assert set(vendored) <= licence_terms, f"{fields['License']} misses {set(vendored) - licence_terms}"


@pytest.fixture(scope="module")
def rpm_root(rpm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The RPM's payload unpacked (rpm2archive, then tar: Debian 12's Python has no extraction filter)."""
    work = tmp_path_factory.mktemp("rpm")
    root = work / "root"
    root.mkdir()
    archive = run(["sh", "-c", f'rpm2archive - <"{rpm}" >"{work}/payload.tgz"'])
    assert archive.returncode == 0, archive.stderr
    unpacked = run(["tar", "--no-same-owner", "-xzf", work / "payload.tgz", "-C", root])
    assert unpacked.returncode == 0, unpacked.stderr
    return root


def test_rpm_payload_runs_on_this_python(rpm_root: Path) -> None:
    root = rpm_root
    wrapper = (root / "usr/sbin/mom-checkpoint").read_text()
    [libdir] = re.findall(r'sys\.path\.insert\(0, "([^"]+)"\)', wrapper)
    assert wrapper.startswith("#!/usr/bin/python3 -IS\n")
    code = wrapper.replace(libdir, str(root) + libdir)
    version = run(["/usr/bin/python3", "-IS", "-c", code, "--version"])
    assert (version.returncode, version.stdout) == (0, f"mom-checkpoint {__version__}\n"), version.stderr
    psutil_check = run(
        [
            "/usr/bin/python3",
            "-IS",
            "-c",
            f"import sys; sys.path.insert(0, '{root}{libdir}'); import psutil; print(psutil.Process().pid)",
        ]
    )
    assert psutil_check.returncode == 0, psutil_check.stderr


# -- the files under packaging/ -------------------------------------------------------------------------


def test_example_jobs() -> None:
    examples = ROOT / "packaging" / "examples"
    wanted = {
        "checkpointable-job.sh": (
            "#PBS -c enabled,periodic,interval=10",
            "qsub -c enabled,periodic,interval=10",
        ),
        "run_job.sh": ("#PBS -c c=1", "qsub -c c=1"),
        "resume_job.sh": (None, "qsub resume_job.sh"),
    }
    for name, (directive, qsub) in wanted.items():
        lines = (examples / name).read_text().splitlines()
        assert lines[0] == "#!/bin/sh"
        assert run(["sh", "-n", examples / name]).returncode == 0, name
        # qsub reads #PBS lines only up to the first command
        first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
        directives = [line for line in lines if line.startswith("#PBS")]
        assert all(lines.index(d) < first_command for d in directives), name
        if directive is not None:
            assert directive in directives, name
        assert any(qsub in line for line in lines if line.startswith("#")), name
    resume = (examples / "resume_job.sh").read_text().splitlines()
    assert 'exec sudo -n mom-restart --own --job JOB_ID --cwd "$PBS_O_WORKDIR"' in resume
    assert any("JOB_ID" in line and "qsub printed" in line for line in resume if line.startswith("#"))
