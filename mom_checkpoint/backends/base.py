"""The interface every checkpointer backend implements, and what they share."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import msgspec
from msgspec import field
from msgspec.structs import replace

from mom_checkpoint.platform.config import Config, RunAs
from mom_checkpoint.platform.environment import Completed, Environment, child_environ, last_line
from mom_checkpoint.platform.errors import CheckpointerFailed, CheckpointerMissing, TimedOut
from mom_checkpoint.platform.programs import find_program
from mom_checkpoint.processes import namespaces
from mom_checkpoint.processes.identity import JobUser

if TYPE_CHECKING:  # a restore's: the hook's calls do not import them
    from mom_checkpoint.backends.logpipe import LogPipe
    from mom_checkpoint.image.hashing import ImageFile
    from mom_checkpoint.image.staging import StagedImage

_EVERY_FILE = re.compile(r".+")
# pbs_mom runs hooks with PATH=/bin:/usr/bin: look in the sbin folders ourselves.


class DumpRequest(msgspec.Struct, frozen=True):
    exec_pid: int  # as the job sees it (in its own PID namespace, when it runs in one)
    image_dir: Path
    abort: bool  # end the job after a successful dump (TORQUE SIGNAL 15)
    user: JobUser
    timeout_s: float
    on_start: Callable[[int], None] | None = None  # told the checkpointer's pid as soon as it runs
    external_files: tuple[str, ...] = ()  # files kept with the generation: dumped by these names only
    image_fd: int | None = None  # the image folder, open in this process, when it is handed over so
    log_fd: int | None = None  # the write end of the checkpointer's log pipe (backends.logpipe)
    # a job restored into namespaces of its own is dumped from inside them: these, entered through
    # its exec process as the node sees it
    namespaces: namespaces.Namespaces | None = None
    host_pid: int = 0

    @property
    def output_dir(self) -> Path:
        """How the checkpointer names its image folder: through the descriptor it inherits when it
        runs as the job's user (no path of the spool is theirs to reach), else by its path."""
        return Path(f"/proc/self/fd/{self.image_fd}") if self.image_fd is not None else self.image_dir


class DumpResult(msgspec.Struct, frozen=True):
    command: list[str]
    completed: Completed
    ended_job: bool  # the checkpointer itself ended the job after dumping it
    frozen_s: float | None = None
    stats: dict[str, int] = field(default_factory=dict)


class InheritedFile(msgspec.Struct, frozen=True):
    """An output file opened by the restart program and handed to the restored application."""

    fd: int  # open in this process
    path: str  # the path recorded in the image, or the file's external name there (file[...])


class RestoreRequest(msgspec.Struct, frozen=True):
    image: StagedImage
    pids: list[int]  # the processes in the image (the root first)
    user: JobUser
    cwd: str | None  # the seed's "resume -cwd DIR"
    workdir: Path  # the restorer's own folder, for its log
    inherited: list[InheritedFile]
    timeout_s: float
    # the image's root process was a session leader (an OpenPBS task started with pbsdsh -o): CRIU
    # gives it back its own session, which the restart process's session does not take along
    root_session_leader: bool = False
    holder: namespaces.Holder | None = None  # restore into its fresh namespaces (processes.namespaces)
    workdir_fd: int | None = None  # the restorer's folder, open in this process, when handed over so
    log_fd: int | None = None  # the write end of the restorer's log pipe (backends.logpipe)

    @property
    def image_dir(self) -> Path:
        return self.image.image_dir

    @property
    def restorer_workdir(self) -> str:
        """How the restorer names its folder: through the descriptor it inherits when it runs as the
        job's user (the restart's work folder is root's 0700: no path of it is theirs)."""
        return f"/proc/self/fd/{self.workdir_fd}" if self.workdir_fd is not None else str(self.workdir)


class Restored(msgspec.Struct):
    """The restored application: a child of this process (in its own PID namespace, whose holder
    ``holder`` is, when the restore made one)."""

    pid: int
    command: list[str]
    handle: subprocess.Popen[bytes] | None = None  # kept so the child is never reaped behind our back
    stopped: bool = False  # restored stopped: nothing of it has run yet (CRIU --leave-stopped)
    holder: namespaces.Holder | None = None  # PID 1 of the job's namespace: ends it when closed

    def pid_inside(self, pid: int) -> int:
        """A restored task's PID as the job sees it (the image's PIDs)."""
        return namespaces.inside(pid).pid if self.holder is not None else pid

    def end_namespace(self) -> None:
        if self.holder is not None:
            self.holder.close()


class Backend(ABC):
    name: ClassVar[str]
    # capabilities the checkpointer keeps when it runs as the job's user (CRIU.md)
    dump_capabilities: ClassVar[tuple[str, ...]] = ()
    restore_capabilities: ClassVar[tuple[str, ...]] = ()
    # its restore returns the job stopped (Restored.stopped): nothing of it has run until it is let go
    restores_stopped: ClassVar[bool] = False
    # the image files it only ever appends to while it dumps: hashed as they grow (hashing.Follower)
    appended: ClassVar[re.Pattern[str] | None] = None

    def __init__(self, config: Config, env: Environment) -> None:
        self.config = config
        self.env = env

    @property
    def run_as(self) -> RunAs:
        return self.config.run_as

    @abstractmethod
    def dump_binary(self) -> str:
        """The configured name or path of the dump program."""

    @abstractmethod
    def dump_command(self, binary: str, request: DumpRequest) -> list[str]:
        """The checkpointer's exact command line."""

    @abstractmethod
    def restore_binary(self) -> str:
        """The configured name or path of the restore program."""

    @abstractmethod
    def restore_command(self, binary: str, request: RestoreRequest) -> list[str]:
        """The restorer's exact command line."""

    def as_configured_user(self, command: list[str], user: JobUser, capabilities: Sequence[str]) -> list[str]:
        """The command as it runs: prefixed to drop to the job's user in job-user mode."""
        return as_user(command, user, capabilities) if self.run_as == "job-user" else command

    def find_restore_binary(self) -> str:
        return find_program(self.restore_binary(), f"backends.{self.name}", missing=CheckpointerMissing)

    def stage_image(
        self,
        generation: Path,
        files: Sequence[ImageFile],
        work: Path,
        user: JobUser,
        *,
        deadline: float | None = None,
    ) -> StagedImage:
        """The image the restorer will read, checked for what can be checked before it runs (the psnc
        and blcr images are opaque; see docs/SECURITY.md). As root: the generation in place. As the
        job's user, whose restorer cannot reach the spool by path: root's copy of every file, read
        through a descriptor the restorer inherits (it becomes the job and keeps it: a read-only
        folder of root's, removed with the restart's work folder)."""
        from mom_checkpoint.image.staging import StagedImage, stage

        if self.run_as == "job-user":
            return stage(generation, files, work, _EVERY_FILE, link=False, deadline=deadline)
        return StagedImage(generation)

    def restore(self, binary: str, request: RestoreRequest) -> Restored:
        """Start the restorer as a child that becomes the application (resume, cr_restart)."""
        command = self.restore_command(binary, request)
        argv = self.as_configured_user(command, request.user, self.restore_capabilities)
        try:
            image_fds = [request.image.fd] if request.image.fd is not None else []
            handle = subprocess.Popen(
                argv,
                cwd=request.cwd,
                env=child_environ(),
                pass_fds=[f.fd for f in request.inherited] + image_fds,
            )
        except OSError as exc:
            raise CheckpointerMissing(f"cannot run {argv[0]}: {exc.strerror}") from None
        return Restored(handle.pid, command, handle)

    def ends_job_on_abort(self) -> bool:
        return False

    def restore_log(self, request: RestoreRequest) -> str:
        """What the restorer logged (its end), for a failed restore to be kept; "" when it logs nothing."""
        return ""

    def version(self, binary: str) -> str:
        return "unknown"

    def failure_detail(self, request: DumpRequest, completed: Completed, log: str) -> str:
        """Why the checkpointer failed, in one line: from its log (``log``: what root read of it, when
        it logs through a pipe) or its output."""
        return last_line(completed.stderr) or last_line(completed.stdout)

    def log_pipe(self, user: JobUser) -> LogPipe | None:
        """A pipe for the checkpointer's log (backends.logpipe), when it writes one; None: it does not."""
        return None

    def parse_stats(self, completed: Completed) -> tuple[float | None, dict[str, int]]:
        return None, {}

    def find_binary(self) -> str:
        """Where the dump program is; CheckpointerMissing (69) before anything is written."""
        return find_program(self.dump_binary(), f"backends.{self.name}", missing=CheckpointerMissing)

    def checkpoint(self, binary: str, request: DumpRequest) -> DumpResult:
        """Run the checkpointer. As the job's user it gets its image folder as an inherited descriptor
        (named ``/proc/self/fd/N``): the folders above it are root's 0700, so no process of the user
        but this checkpointer (which holds capabilities they lack: they can neither trace it nor read
        its descriptors) ever reaches the image, during the dump or after (docs/SECURITY.md)."""
        handed: list[int] = []
        log = self.log_pipe(request.user)
        if log is not None:
            request = replace(request, log_fd=log.write_fd)
            handed.append(log.write_fd)
        if self.run_as == "job-user":
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            image_fd = os.open(request.image_dir, flags)
            request = replace(request, image_fd=image_fd)
            handed.append(image_fd)
        logged = ""
        try:
            command = self.dump_command(binary, request)
            argv = self.as_configured_user(command, request.user, self.dump_capabilities)
            with _inside(request, argv, handed) as (argv, passed, starting):
                try:
                    completed = self.env.runner.run(
                        argv,
                        timeout_s=request.timeout_s,
                        on_start=request.on_start,
                        pass_fds=passed,
                        starting=starting,
                    )
                except (FileNotFoundError, PermissionError) as exc:
                    raise CheckpointerMissing(f"cannot run {argv[0]}: {exc.strerror}") from None
        finally:
            if log is not None:
                logged = log.close()  # its write end is closed with it
                handed.remove(log.write_fd)
            for fd in handed:
                os.close(fd)
        if completed.timed_out:
            raise TimedOut(
                f"{self.name} did not finish within timeout_s={self.config.timeout_s:g}s: killed it, "
                f"the job keeps running"
            )
        if completed.returncode != 0:
            detail = self.failure_detail(request, completed, logged)
            raise CheckpointerFailed(
                f"{self.name} failed (exit {completed.returncode})" + (f": {detail}" if detail else "")
            )
        frozen_s, stats = self.parse_stats(completed)
        return DumpResult(
            command=command,
            completed=completed,
            ended_job=request.abort and self.ends_job_on_abort(),
            frozen_s=frozen_s,
            stats=stats,
        )


@contextlib.contextmanager
def _inside(
    request: DumpRequest, argv: list[str], handed: list[int]
) -> Iterator[tuple[list[str], list[int], contextlib.AbstractContextManager[None] | None]]:
    """The checkpointer's command line, descriptors and start: as they are, or, for a job in
    namespaces of its own, born in its PID namespace (root joins it for the start only) and entering
    its mount namespace first (nsenter, through a descriptor root opened and checked)."""
    if request.namespaces is None:
        yield argv, handed, None
        return
    with namespaces.entered(request.host_pid, request.namespaces) as (pid_fd, mnt_fd):
        yield namespaces.in_mounts(mnt_fd, argv), [*handed, mnt_fd], namespaces.children_in(pid_fd)


def as_user(command: Sequence[str], user: JobUser, capabilities: Sequence[str]) -> list[str]:
    """Prefix a command so that it runs as the job's user (uid, gid and groups exactly as given, from
    the system's user database) with only the named capabilities."""
    setpriv = find_program("setpriv", "setpriv (util-linux)")
    groups = f"--groups={','.join(map(str, user.groups))}" if user.groups else "--clear-groups"
    argv = [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", groups]
    if capabilities:
        caps = ",".join(f"+{cap}" for cap in capabilities)
        argv += [f"--inh-caps={caps}", f"--ambient-caps={caps}"]
    return [*argv, "--", *command]
