"""``doctor``: is this node ready to checkpoint and restart jobs? One check a line, with the fix."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec
from msgspec.structs import replace

from mom_checkpoint.batch.calls import PBS_ACTIONS
from mom_checkpoint.platform import config as config_module
from mom_checkpoint.platform.config import Config
from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import CheckpointerMissing, ConfigError, Error, ProgramMissing, shown
from mom_checkpoint.platform.log import open_log_file
from mom_checkpoint.platform.modes import this_node
from mom_checkpoint.platform.programs import find_program

DEFAULT_MOM_CONFIG = "/var/spool/torque/mom_priv/config"
OPENPBS_MOM_CONFIG = "/var/spool/pbs/mom_priv/config"
MIN_FREE_BYTES = 256 * 1024 * 1024
# what mom_priv/config must say, and which of our programs it must name
MOM_LINES = {
    "$checkpoint_script": "mom-checkpoint",
    "$restart_script": "mom-restart",
    "$checkpoint_run_exe": "mom-checkpoint-run",
}
# OpenPBS: the $action lines, the words after the program, and the time the tool needs beyond timeout_s
PBS_WORDS = ("%jobid", "%sid", "%taskid", "%login", "%path")
PBS_TIMEOUT_MARGIN_S = 60  # hashing, fsync and publishing after the checkpointer's own timeout_s


class Check(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run(env: Environment, mom_configs: Sequence[str], programs_dir: Path) -> list[Check]:
    """The node's checks, then each batch system's: ``mom_configs`` are the pbs_moms' config files
    (both TORQUE's and OpenPBS's on a node that has both)."""
    checks: list[Check] = []
    try:
        config = config_module.load(env.environ)
        checks.append(Check("config", True, f"{config.source} parses"))
    except ConfigError as exc:
        path, _ = config_module.config_path(env.environ)
        checks.append(
            Check("config", False, exc.message, f"correct {path}; the other checks use the defaults")
        )
        config = Config()
    checks += _backend(config, env)
    checks += _privileges(config)
    checks.append(_spool(config))
    if config.vault_dir:
        checks.append(vault := _vault(config))
        if vault.ok:
            checks.append(_vault_layout(config))
    checks.append(_log_file(config))
    for mom_config in mom_configs:
        system, found = _batch_system(mom_config, config, programs_dir)
        if len(mom_configs) > 1:  # say whose check each is
            found = [replace(c, name=f"{system} {c.name}") for c in found]
        checks += found
    return checks


def _batch_system(mom_config: str, config: Config, programs_dir: Path) -> tuple[str, list[Check]]:
    """Which batch system's pbs_mom reads ``mom_config``, and its checks."""
    try:
        text = Path(mom_config).read_text()
    except OSError as exc:
        system = "OpenPBS" if mom_config == OPENPBS_MOM_CONFIG else "TORQUE"
        roots = _openpbs_roots(config) if system == "OpenPBS" else _torque_roots(config)
        fix = "give its path with --mom-config"
        return system, [*roots, Check("mom_priv/config", False, f"{mom_config}: {exc.strerror}", fix)]
    actions = _pbs_actions(text)
    if actions or mom_config == OPENPBS_MOM_CONFIG or "$clienthost" in _mom_settings(text):
        return "OpenPBS", _openpbs_roots(config) + _openpbs(mom_config, text, actions, programs_dir, config)
    checks = _torque_roots(config)
    checks.append(_moms_checkpoint_folder(config, mom_config))
    checks += _torque_clients(config)
    return "TORQUE", checks + _mom_config(mom_config, text, programs_dir)


def _torque_roots(config: Config) -> list[Check]:
    return _roots(config.torque_checkpoint_roots, "torque_checkpoint_roots", "<torque home>/checkpoint")


def _openpbs_roots(config: Config) -> list[Check]:
    return _roots(config.pbs_checkpoint_roots, "pbs_checkpoint_roots", "<PBS_HOME>/checkpoint", 0o700)


def default_mom_configs() -> list[str]:
    """The pbs_mom config files of this node: TORQUE's, OpenPBS's, or both; TORQUE's where neither is
    there (its check then says it is missing)."""
    present = [path for path in (DEFAULT_MOM_CONFIG, OPENPBS_MOM_CONFIG) if os.path.exists(path)]
    return present or [DEFAULT_MOM_CONFIG]


def _backend(config: Config, env: Environment) -> list[Check]:
    from mom_checkpoint import backends

    backend = backends.create(config, env)
    key = f"backends.{config.backend}"
    try:
        binary = backend.find_binary()
    except CheckpointerMissing as exc:
        fix = "install CRIU >= 4 (scripts/install-criu.sh)" if config.backend == "criu" else f"set {key}"
        return [Check(f"{config.backend} binary", False, exc.message, fix)]
    checks = [Check(f"{config.backend} binary", True, binary)]
    if config.backend == "criu":
        version = backend.version(binary)
        major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
        checks.append(
            Check(
                "criu version",
                major >= 4,
                version,
                "" if major >= 4 else "install CRIU >= 4 (scripts/install-criu.sh)",
            )
        )
        check = env.runner.run([binary, "check"], timeout_s=60)
        said = (check.stdout + check.stderr).strip().splitlines()
        detail = said[-1] if said else f"exit {check.returncode}"
        checks.append(
            Check(
                "criu check",
                check.returncode == 0,
                detail,
                "" if check.returncode == 0 else "see `criu check` output",
            )
        )
        checks.append(_namespaces(config))
    return checks


def _namespaces(config: Config) -> Check:
    """Whether restores can get namespaces of the job's own here (README), as configured."""
    name = "pid_namespace"
    if not config.backends.criu.pid_namespace:
        return Check(name, True, "off: restores need every PID of the image free on the node (exit 82)")
    from mom_checkpoint.processes import namespaces

    problem = namespaces.available()
    try:
        namespaces.nsenter()
    except Error as exc:
        problem = problem or exc.message
    if problem is None:
        return Check(name, True, "every restore in a fresh PID and mount namespace of the job's own")
    return Check(
        name,
        False,
        f"this node cannot make them ({problem}): restores fall back to the node's namespaces, "
        "said in the log (restart.no_namespace)",
        "run as root on a kernel with PID namespaces, with util-linux's nsenter; or set "
        "backends.criu.pid_namespace = false",
    )


def _privileges(config: Config) -> list[Check]:
    """Which run_as modes this node supports, whether the configured one is among them, and what
    root mode leaves open where the safer one would work."""
    node = this_node()
    setting = getattr(config.backends, config.backend).run_as
    mode = config.run_as
    name = f"run_as = {setting}" + (f" ({mode} here)" if setting == "auto" else "")
    if mode == "root":
        no_root = "root lacks CAP_SYS_RESOURCE here and cannot dump other users' jobs"
        fix = "" if node.root else f'{no_root}: set run_as = "job-user"'
        detail = node.describe()
        if node.job_user and config.backend == "criu":
            detail += (
                "; in root mode root's CRIU recreates a job's deleted files and binds its sockets by "
                'their paths while it restores (docs/SECURITY.md): run_as = "auto" takes job-user here'
            )
        return [Check(name, node.root, detail, fix)]
    fix = (
        ""
        if node.job_user
        else 'needs kernel >= 5.9, CAP_CHECKPOINT_RESTORE and setpriv (util-linux): set run_as = "root"'
    )
    return [Check(name, node.job_user, node.describe(), fix)]


def _spool(config: Config) -> Check:
    path = Path(config.spool_dir)
    fix = f"install -d -m 0711 -o root -g root {path}"
    try:
        st = path.lstat()
    except FileNotFoundError:
        return Check("spool", False, f"{path} does not exist", fix)
    if not stat.S_ISDIR(st.st_mode):
        return Check("spool", False, f"{path} is not a folder (a symlink?)", fix)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != 0 or mode & 0o066:
        return Check(
            "spool",
            False,
            f"{path} is uid {st.st_uid} mode {mode:o}: must be root's, at most 0711",
            f"chown root:root {path}; chmod 0711 {path}",
        )
    vfs = os.statvfs(path)
    free = vfs.f_bavail * vfs.f_frsize
    ok = free >= MIN_FREE_BYTES
    return Check(
        "spool",
        ok,
        f"{path} root's, mode {mode:o}, {free / 2**30:.1f} GiB free",
        "" if ok else "free space in the spool",
    )


def _vault(config: Config) -> Check:
    """The vault: there (mounted), not on the spool's file system, root's 0700, and root can write
    files there that are root's (an NFS export with root_squash makes them nobody's), with space."""
    path = Path(config.vault_dir)
    create = f"mount the shared file system, then: install -d -m 0700 -o root -g root {path}"
    try:
        st = path.lstat()
    except OSError as exc:
        return Check("vault", False, f"{path}: {exc.strerror} (not mounted?)", create)
    kind = _fs_type(path)
    if not stat.S_ISDIR(st.st_mode):
        return Check("vault", False, f"{path} is not a folder (a symlink?)", create)
    with contextlib.suppress(OSError):
        if os.stat(config.spool_dir).st_dev == st.st_dev:
            return Check(
                "vault",
                False,
                f"{path} is on the same file system as the spool ({kind}): it would die with the node",
                "set vault_dir to a folder on a file system all nodes mount (Lustre, GPFS, NFS...)",
            )
    probe = path / f".doctor.{os.uname().nodename}.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        owner = os.fstat(fd).st_uid
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        squash = " (root_squash?)" if exc.errno in (errno.EACCES, errno.EPERM) else ""
        return Check(
            "vault", False, f"{path} ({kind}): root cannot write there: {exc.strerror}{squash}", _SQUASH_FIX
        )
    if owner != 0:
        detail = f"{path} ({kind}): files root makes there belong to uid {owner} (root_squash)"
        return Check("vault", False, detail, _SQUASH_FIX)
    if st.st_uid != 0:
        detail = f"{path} ({kind}) belongs to uid {st.st_uid}, not root (made under root_squash?)"
        return Check("vault", False, detail, f"chown root:root {path}; " + _SQUASH_FIX)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return Check("vault", False, f"{path} has mode {mode:o}: must be 0700", f"chmod 0700 {path}")
    vfs = os.statvfs(path)
    free = vfs.f_bavail * vfs.f_frsize
    ok = free >= MIN_FREE_BYTES
    detail = f"{path} ({kind}) root's, mode {mode:o}, {free / 2**30:.1f} GiB free"
    return Check("vault", ok, detail, "" if ok else "free space in the vault")


def _vault_layout(config: Config) -> Check:
    """The nodes of one vault upgrade together: a full copy (the vault's first layout) written after
    the vault went to chunks comes from a node whose mom-checkpoint is older (it cannot restore the
    others' chunked generations either)."""
    from mom_checkpoint.image.verification import read_trusted_manifest
    from mom_checkpoint.vault.store import Vault

    since, stale = Vault(config.vault_dir).full_copies_since_chunks()
    if since is None:
        return Check("vault layout", True, "no chunks yet (the first vault-sync of this version makes them)")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(since))
    if not stale:
        return Check("vault layout", True, f"chunks since {when}; no node writes full copies")
    hosts = set()
    for path in stale[:200]:
        with contextlib.suppress(Exception):
            hosts.add(read_trusted_manifest(path).host.name)
    named = ", ".join(sorted(shown(h, 64) for h in hosts)[:10]) or "unknown nodes"
    return Check(
        "vault layout",
        False,
        f"{len(stale)} full copies written since the vault went to chunks ({when}), by {named}: their "
        f"mom-checkpoint is older, and cannot restore the chunked generations",
        "upgrade mom-checkpoint on those nodes (every node of one vault runs the same version)",
    )


_SQUASH_FIX = (
    "export the vault to the compute nodes with no_root_squash (NFS: '/srv/checkpoints "
    "node*(rw,sync,no_root_squash)' in /etc/exports), or give the nodes' root its own uid there"
)


def _fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    best, kind = "", "unknown file system"
    target = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if " - " not in line or len(fields) < 5:
                continue
            mount = fields[4].replace("\\040", " ")
            if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, line.split(" - ", 1)[1].split()[0]
    return kind


def _log_file(config: Config) -> Check:
    if config.log_file == "syslog":
        return Check("log", True, "syslog")
    stream = open_log_file(config.log_file)
    if stream is None:
        return Check(
            "log",
            False,
            f"{config.log_file} cannot be written",
            'create its folder or set log_file = "syslog"',
        )
    stream.close()
    return Check("log", True, f"{config.log_file} writable")


def _roots(roots: list[str], key: str, where: str, mode: int | None = None) -> list[Check]:
    checks = []
    for root in roots:
        try:
            st = os.lstat(root)
        except OSError:
            fix = f"set {key} to pbs_mom's checkpoint folder ({where})"
            checks.append(Check("checkpoint root", False, f"{root} does not exist", fix))
            continue
        if mode is not None and (st.st_uid != 0 or stat.S_IMODE(st.st_mode) != mode):
            detail = (
                f"{root} is uid {st.st_uid} mode {stat.S_IMODE(st.st_mode):o}: pbs_mom wants root's {mode:o}"
            )
            checks.append(
                Check("checkpoint root", False, detail, f"chown root {root}; chmod {mode:o} {root}")
            )
            continue
        checks.append(Check("checkpoint root", stat.S_ISDIR(st.st_mode), f"{root} exists"))
    return checks


def _mom_config(path: str, text: str, programs_dir: Path) -> list[Check]:
    settings = _mom_settings(text)
    checks = []
    for key, program in MOM_LINES.items():
        wanted = programs_dir / program
        value = settings.get(key)
        line = f"{key} {value}" if value else f"{key} missing"
        if value is None:
            checks.append(Check(key, False, f"{path}: {line}", f"add '{key} {wanted}' and restart pbs_mom"))
            continue
        same = os.path.exists(value) and os.path.realpath(value) == os.path.realpath(wanted)
        if not same and _runs(value, program):
            checks.append(Check(key, True, f"{path}: {line} (a site's wrapper that runs {program})"))
            continue
        fix = (
            ""
            if same
            else f"set '{key} {wanted}' (the installed {program}), or have the site's wrapper there run it; "
            f"then restart pbs_mom"
        )
        checks.append(Check(key, same, f"{path}: {line}", fix))
    return checks


def _runs(path: str, program: str) -> bool:
    """Whether an executable script names ``program``: a site's wrapper around it (kept as it is)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    except OSError:
        return False
    return os.access(path, os.X_OK) and head.startswith(b"#!") and program.encode() in head


def _moms_checkpoint_folder(config: Config, mom_config: str) -> Check:
    """The folder pbs_mom passes as CHECKPOINT_DIR's parent: its -C option when it runs with one, else
    <torque home>/checkpoint (the home is the folder above mom_priv). It must lie inside a root."""
    folder, source = _pbs_mom_option_c()
    if folder is None:
        folder, source = str(Path(mom_config).resolve().parent.parent / "checkpoint"), "the default"
    inside = [r for r in config.torque_checkpoint_roots if _within(folder, r)]
    detail = f"pbs_mom checkpoints into {folder} ({source})"
    fix = "" if inside else f"add {folder} to torque_checkpoint_roots: every checkpoint is refused until then"
    return Check("pbs_mom checkpoint folder", bool(inside), detail, fix)


def _pbs_mom_option_c() -> tuple[str | None, str]:
    """A running pbs_mom's -C DIR (``pbs_mom -C /var/spool/torque/mom_checkpoint``), if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or os.path.basename(argv[0].decode(errors="replace")) != "pbs_mom":
            continue
        words = [w.decode(errors="replace") for w in argv[1:] if w]
        for i, word in enumerate(words):
            if word == "-C" and i + 1 < len(words):
                return words[i + 1].rstrip("/") or "/", f"pbs_mom -C, pid {entry.name}"
            if word.startswith("-C") and len(word) > 2:
                return word[2:].rstrip("/") or "/", f"pbs_mom -C, pid {entry.name}"
    return None, ""


def _within(folder: str, root: str) -> bool:
    folder, root = os.path.normpath(folder), os.path.normpath(root)
    return folder == root or folder.startswith(root.rstrip("/") + "/")


def _torque_clients(config: Config) -> list[Check]:
    """qstat and qchkpt (tick) and qalter (mom-restart) as those programs will find them: under
    pbs_mom, cron or systemd, PATH has only the standard folders."""
    checks = []
    for key, who in (("qstat", "tick"), ("qchkpt", "tick"), ("qalter", "mom-restart's marks")):
        name = getattr(config, key)
        try:
            found = find_program(name, key, use_path=False)
        except ProgramMissing:
            try:
                elsewhere = find_program(name, key)
            except ProgramMissing:
                fix = f"install TORQUE's clients on the node, or set {key} to the path of {name}"
            else:
                fix = f'set {key} = "{elsewhere}" (found on your PATH only: {who} would not find it)'
            checks.append(Check(key, False, f"{name} not found where {who} looks", fix))
            continue
        checks.append(Check(key, True, found))
    return checks


def _mom_settings(text: str) -> Mapping[str, str]:
    settings = {}
    for line in text.splitlines():
        words = line.split(None, 1)
        if len(words) == 2 and words[0].startswith("$"):
            settings[words[0]] = words[1].strip()
    return settings


def _pbs_actions(text: str) -> dict[str, tuple[str, list[str]]]:
    """OpenPBS's `$action NAME TIMEOUT !PROGRAM ARGS...` lines: {NAME: (TIMEOUT, [PROGRAM, ARGS...])}."""
    actions = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 4 and words[0] == "$action" and words[3].startswith("!"):
            actions[words[1]] = (words[2], [words[3][1:], *words[4:]])
    return actions


def _openpbs(
    path: str, text: str, actions: dict[str, tuple[str, list[str]]], programs_dir: Path, config: Config
) -> list[Check]:
    program = programs_dir / "mom-checkpoint"
    checks = []
    needed = _action_timeout_needed(config)  # one number for every line doctor suggests and checks
    programs = [program]
    for name in PBS_ACTIONS:
        wanted = f"$action {name} {needed} !{program} --pbs {name} {' '.join(PBS_WORDS)}"
        if name not in actions:
            checks.append(
                Check(f"$action {name}", False, f"{path}: missing", f"add '{wanted}'; restart pbs_mom")
            )
            continue
        timeout, words = actions[name]
        line = f"$action {name} {timeout} !{' '.join(words)}"
        same = os.path.exists(words[0]) and os.path.realpath(words[0]) == os.path.realpath(program)
        if same and words[1:] == ["--pbs", name, *PBS_WORDS]:
            checks.append(Check(f"$action {name}", True, f"{path}: runs {words[0]}"))
        elif not same and _runs(words[0], program.name) and tuple(words[-len(PBS_WORDS) :]) == PBS_WORDS:
            # a site's wrapper: it gets the job's values last and passes them on (how, is the site's)
            detail = f"{path}: {line} (a site's wrapper that runs {program.name} --pbs {name})"
            checks.append(Check(f"$action {name}", True, detail))
            programs.append(Path(words[0]))
        else:
            words_last = " ".join(PBS_WORDS)
            fix = f"set '{wanted}'; restart pbs_mom (a site's wrapper: end its line with {words_last})"
            checks.append(Check(f"$action {name}", False, f"{path}: {line}", fix))
            continue
        if name != "restart":
            checks.append(_action_timeout(name, timeout, config))
    checks += [_script_permissions(p) for p in dict.fromkeys(programs)]
    transmogrify = _mom_settings(text).get("$restart_transmogrify", "false").lower() in ("true", "1", "yes")
    checks.append(
        Check(
            "$restart_transmogrify",
            transmogrify,
            f"{path}: {'true' if transmogrify else 'not true'}",
            ""
            if transmogrify
            else "add '$restart_transmogrify true': without it pbs_mom tracks a restarted task by its old "
            "session and declares the restored job gone",
        )
    )
    return checks


def _action_timeout(name: str, timeout: str, config: Config) -> Check:
    """pbs_mom SIGKILLs only the script when its $action timeout expires, leaving a running checkpointer:
    the tool's own timeout_s, plus time to hash and publish, must end first."""
    needed = _action_timeout_needed(config)
    ok = timeout.isdigit() and int(timeout) >= needed
    fix = "" if ok else f"raise the $action {name} timeout to at least {needed} s, or lower timeout_s"
    return Check(f"$action {name} timeout", ok, f"{timeout} s, timeout_s = {config.timeout_s:g} s", fix)


def _action_timeout_needed(config: Config) -> int:
    """The shortest $action timeout that lets the tool end first: timeout_s and a margin, in seconds."""
    return math.ceil(config.timeout_s + PBS_TIMEOUT_MARGIN_S)


def _script_permissions(program: Path) -> Check:
    """pbs_mom runs an $action script only if it is root's, gid <= 10, owner-executable, not
    world-writable."""
    problems = []
    for path in dict.fromkeys([str(program), os.path.realpath(program)]):
        try:
            st = os.stat(path)
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
            continue
        if st.st_uid != 0 or st.st_gid > 10:
            problems.append(f"{path} is uid {st.st_uid} gid {st.st_gid}")
        if not st.st_mode & stat.S_IXUSR or st.st_mode & stat.S_IWOTH:
            problems.append(f"{path} has mode {stat.S_IMODE(st.st_mode):o}")
    fix = f"chown root:root {program}; chmod 0755 {program}" if problems else ""
    return Check("$action script", not problems, "; ".join(problems) or f"{program}: root's, 0755-like", fix)
