"""CRIU: ``criu dump -t PID -D DIR --shell-job [--leave-running]``; the real checkpointer of these nodes."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from msgspec.structs import replace

from mom_checkpoint.backends.base import Backend, DumpRequest, Restored, RestoreRequest
from mom_checkpoint.platform.environment import Completed
from mom_checkpoint.platform.errors import (
    CheckpointerFailed,
    CheckpointerMissing,
    CpuIncompatible,
    PidInUse,
    Refused,
    TimedOut,
    shown,
)
from mom_checkpoint.platform.files import write_all
from mom_checkpoint.processes import namespaces
from mom_checkpoint.processes.discovery import child_pids
from mom_checkpoint.processes.identity import JobUser, credentials_problem
from mom_checkpoint.processes.termination import kill_tree

if TYPE_CHECKING:  # a restore's (imported where it is used): the hook's dumps do not load them
    from mom_checkpoint.backends.logpipe import LogPipe
    from mom_checkpoint.image.criu_images import CoreCredentials
    from mom_checkpoint.image.hashing import ImageFile
    from mom_checkpoint.image.staging import StagedImage

DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
_PID_TAKEN = re.compile(r"Can't fork for (\d+): File exists")
_CPU_REFUSED = re.compile(r"Error \([^)]*/cpu\.c:\d+\): cpu: (.*)")
CPUINFO = "cpuinfo.img"
# the instruction-set features the job can use and the FPU state's layout (xsave features and size):
# CRIU's defaults, written into the image at dump (cpuinfo.img) and checked against it at restore
CPU_CAP = "--cpu-cap=fpu,ins"
_ERROR = re.compile(r"^\s*(?:\d+: |pie: \d+: )?(Error \(.*)$")
_HARMLESS = ("Can't setup RLIMIT_NOFILE for self",)  # printed by every run here, exit status 0
_STAT = re.compile(r"^([A-Za-z][A-Za-z ]+?):\s+(\d+)(?:\s+us)?(?:\s+\(0x[0-9a-f]+\))?\s*$")


class CriuBackend(Backend):
    name = "criu"
    dump_capabilities = ("checkpoint_restore", "sys_ptrace")
    # CRIU's unprivileged restore needs CAP_CHECKPOINT_RESTORE (PIDs, map_files); CAP_SETPCAP only to
    # trim a bounding set narrower than its own (seen here: root's lacks CAP_SYS_RESOURCE), and only
    # then is it given; CAP_SYS_PTRACE is not needed (docs/SECURITY.md)
    restore_capabilities = ("checkpoint_restore",)
    pages = re.compile(r"pages-\d+\.img")  # the job's memory: linked into the staged image, not copied
    appended = pages  # written by splice(2) at the file's position only (criu/page-xfer.c)
    restores_stopped = True  # --leave-stopped
    _restore_log = ""  # what root read of the last restore's log

    def dump_binary(self) -> str:
        return self.config.backends.criu.binary

    def dump_command(self, binary: str, request: DumpRequest) -> list[str]:
        criu = self.config.backends.criu
        argv = [
            binary, "dump",
            "-t", str(request.exec_pid),
            "-D", str(request.output_dir),
            "--shell-job",
            "--display-stats",
            "--log-file", _log_path(request.log_fd, DUMP_LOG),
            "--ghost-limit", str(criu.ghost_limit),
            CPU_CAP,  # CRIU records the CPU in the image (cpuinfo.img) and checks it at restore
        ]  # fmt: skip
        if not request.abort:
            argv.append("--leave-running")
        if self.run_as == "job-user":
            argv.append("--unprivileged")
        for external in request.external_files:  # kept with the generation, handed back at restore
            argv += ["--external", external]
        return argv + list(criu.extra_args)

    def restore_binary(self) -> str:
        return self.config.backends.criu.binary

    def restore_command(self, binary: str, request: RestoreRequest) -> list[str]:
        argv = [
            binary, "restore",
            "-D", request.image.restorer_path,
            "--shell-job",
            "--restore-detached",
            "--restore-sibling",
            "--work-dir", request.restorer_workdir,  # log and stats-restore: never into the image
            "--log-file", _log_path(request.log_fd, RESTORE_LOG),
            "--leave-stopped",  # nothing runs before the identity gate has seen every task
        ]  # fmt: skip
        if CPUINFO in request.image.contents:  # older images have none, and are not checked
            argv.append(CPU_CAP)
        if self.run_as == "job-user":
            argv.append("--unprivileged")
        for inherited in request.inherited:
            argv += ["--inherit-fd", f"fd[{inherited.fd}]:{inherited.path.lstrip('/')}"]
        return argv + list(self.config.backends.criu.extra_args)

    def restore(self, binary: str, request: RestoreRequest) -> Restored:
        """criu restore -d -S --leave-stopped: CRIU returns once the tree is restored, stopped, its root
        a child of this process (found among this process's children: no pid file is trusted). With
        ``request.holder``, CRIU runs as the second process of a fresh PID namespace (the holder is
        the first), in a mount namespace of its own with that namespace's /proc, and leads a session
        of its own there, which the restored tree joins: so the tree has the PIDs of the image, and
        a later dump from inside sees every task's session (processes.namespaces)."""
        holder = request.holder
        if request.root_session_leader:
            _dies_with_its_parent(request.image, request.pids[0])
        handed = [request.image.fd] if request.image.fd is not None else []
        workdir_fd = None
        if self.run_as == "job-user":  # its folder through a descriptor: no user reaches it by path
            workdir_fd = os.open(request.workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            request = replace(request, workdir_fd=workdir_fd)
            handed.append(workdir_fd)
        log = self.log_pipe(request.user)  # the restorer blob in each restored task gets it too
        request = replace(request, log_fd=log.write_fd)
        try:
            command = self.restore_command(binary, request)
            argv = self.as_configured_user(command, request.user, request.image.capabilities or ())
            if holder is not None:  # root's part: into the mount namespace whose /proc is the job's
                argv = namespaces.in_mounts(holder.mnt_fd, argv)
                handed.append(holder.mnt_fd)
            completed = self.env.runner.run(
                argv,
                timeout_s=request.timeout_s,
                cwd=request.cwd,
                pass_fds=[*(f.fd for f in request.inherited), log.write_fd, *handed],
                new_session=holder is not None,
                starting=holder.spawning() if holder is not None else None,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise CheckpointerMissing(f"cannot run {argv[0]}: {exc.strerror}") from None
        finally:
            self._restore_log = log.close()
            if workdir_fd is not None:
                os.close(workdir_fd)

        children = [child for child in own_children() if holder is None or child != holder.pid]
        if completed.timed_out or completed.returncode != 0:
            kill_trees(children)  # whatever a killed or failed restorer left stopped
        if completed.timed_out:
            raise TimedOut(
                f"criu restore did not finish within timeout_s={self.config.timeout_s:g}s: killed it"
            )
        logged = self._restore_log
        if completed.returncode != 0:
            busy = _PID_TAKEN.search(logged)
            if busy:
                raise PidInUse(int(busy.group(1)))
            if cpu := _CPU_REFUSED.search(logged):
                raise CpuIncompatible(
                    f"this node's CPU cannot restore the checkpoint: CRIU's check of the CPU it was "
                    f"taken on says {shown(cpu.group(1).strip(), 160)}; restart it on a node with that CPU"
                )
            detail = first_error(logged) or (completed.stderr.strip().splitlines() or [""])[-1]
            raise CheckpointerFailed(f"criu restore failed (exit {completed.returncode}): {detail}")
        restored = Restored(children[0] if children else 0, command, stopped=True, holder=holder)
        if len(children) != 1 or restored.pid_inside(children[0]) != request.pids[0]:
            kill_trees(children)
            raise CheckpointerFailed(
                f"criu restore left {children or 'no process'} as this process's children, not the job's "
                f"process {request.pids[0]}: killed them"
            )
        return restored

    def stage_image(
        self,
        generation: Path,
        files: Sequence[ImageFile],
        work: Path,
        user: JobUser,
        *,
        deadline: float | None = None,
    ) -> StagedImage:
        """Root's copy of the image's small files (pages linked), and the credentials in every core
        file of it checked: exactly the owner's, no capability, or the restore is refused before
        CRIU runs (criu_images)."""
        from mom_checkpoint.image import staging

        reader = user.uid if self.run_as == "job-user" else 0
        staged = staging.stage(generation, files, work, self.pages, reader=reader, deadline=deadline)
        try:
            cores = _cores(staged)
            problems = [
                problem
                for core in cores
                if (problem := credentials_problem(f"core-{core.tid}.img", core.credentials, user))
            ]
            if problems:
                raise Refused(
                    f"the image would restore a task that is not {user.name}'s alone: {problems[0]}"
                )
            full = (1 << (_cap_last_cap() + 1)) - 1
            trims = any(core.bounding & full != full for core in cores)
            staged.capabilities = (*self.restore_capabilities, *(("setpcap",) if trims else ()))
            staged.stopped = frozenset(core.tid for core in cores if core.stopped)
        except BaseException:
            staged.close()
            raise
        return staged

    def restore_log(self, request: RestoreRequest) -> str:
        return self._restore_log

    def log_pipe(self, user: JobUser) -> LogPipe:
        """CRIU logs through a pipe of root's (given to the job's user when CRIU runs as them): it
        hands its log descriptor to the code it runs inside the job's processes, which are the
        user's, so a log file would be theirs to write into after the dump (backends.logpipe)."""
        from mom_checkpoint.backends.logpipe import LogPipe

        return LogPipe((user.uid, user.gid) if self.run_as == "job-user" else None)

    def ends_job_on_abort(self) -> bool:
        return True  # without --leave-running CRIU kills the dumped tree after a good dump

    def version(self, binary: str) -> str:
        completed = self.env.runner.run([binary, "--version"], timeout_s=30)
        match = re.search(r"Version:\s*(\S+)", completed.stdout)
        return match.group(1) if match else "unknown"

    def failure_detail(self, request: DumpRequest, completed: Completed, log: str) -> str:
        """CRIU writes its reasons to its log (root's pipe, of which root kept the end): quote the
        first error."""
        return first_error(log) or super().failure_detail(request, completed, log)

    def parse_stats(self, completed: Completed) -> tuple[float | None, dict[str, int]]:
        return parse_display_stats(completed.stdout)


def parse_display_stats(stdout: str) -> tuple[float | None, dict[str, int]]:
    """``--display-stats`` output -> (frozen seconds, {"frozen_time_us": ..., "memory_pages_written": ..}).

    Lines look like "Frozen time: 34813 us" or "Memory pages written: 14522 (0x38ba)".
    """
    stats: dict[str, int] = {}
    for line in stdout.splitlines():
        match = _STAT.match(line.strip())
        if not match:
            continue
        key = match.group(1).strip().lower().replace(" ", "_")
        if line.rstrip().endswith(" us"):
            key += "_us"
        stats[key] = int(match.group(2))
    frozen = stats.get("frozen_time_us")
    return (frozen / 1e6 if frozen is not None else None), stats


def _log_path(fd: int | None, name: str) -> str:
    """CRIU's --log-file: the log pipe's write end it inherits, or (no pipe) a file in its work folder."""
    return f"/proc/self/fd/{fd}" if fd is not None else name


def _dies_with_its_parent(image: StagedImage, pid: int) -> None:
    """The restored root gets SIGKILL when this program (its parent) ends, so a root that keeps its
    own session never outlives the job: a change to root's staged copy only, made after its digests
    were checked."""
    from mom_checkpoint.image.criu_images import with_pdeath_signal

    name = f"core-{pid}.img"
    if image.fd is None or name not in image.contents:
        return
    patched = with_pdeath_signal(image.contents[name], signal.SIGKILL)
    fd = os.open(name, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=image.fd)
    try:
        write_all(fd, patched)
    finally:
        os.close(fd)
    image.contents[name] = patched


def _cores(staged: StagedImage) -> list[CoreCredentials]:
    from mom_checkpoint.image.criu_images import CORE_FILE, OLD_CREDS_FILE, ImageError, read_core

    if any(OLD_CREDS_FILE.fullmatch(name) for name in staged.contents):
        raise Refused("the image holds an old-format creds-*.img file: refusing it")
    cores = []
    for name, data in sorted(staged.contents.items()):
        match = CORE_FILE.fullmatch(name)
        if match is None:
            continue
        try:
            cores.append(read_core(int(match.group(1)), data))
        except ImageError as exc:
            raise Refused(f"{name} cannot be read as a CRIU core image ({exc}): refusing the image") from None
    if not cores:
        raise Refused("the image has no core-*.img file: refusing it")
    return cores


def _cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 40


def first_error(log: str) -> str:
    """CRIU's first real error line, without the pid it is prefixed with (``  4711: Error (...)``)."""
    for line in log.splitlines():
        match = _ERROR.match(line)
        if match and not any(harmless in line for harmless in _HARMLESS):
            return match.group(1).strip()
    return ""


def own_children() -> list[int]:
    """This process's children, from the kernel's own lists."""
    return child_pids(os.getpid())


def kill_trees(roots: list[int]) -> None:
    """SIGKILL these children of ours and everything below them, and reap them."""
    for pid in roots:
        kill_tree(pid)
