"""CRIU: ``criu dump -t PID -D DIR --shell-job [--leave-running]``; the real checkpointer of these nodes."""

from __future__ import annotations

import re
from pathlib import Path

from mom_checkpoint.backends.base import Backend, DumpRequest, Restored, RestoreRequest
from mom_checkpoint.environment import Completed
from mom_checkpoint.errors import CheckpointerFailed, CheckpointerMissing, PidInUse, TimedOut

DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
PIDFILE = "restored.pid"
_PID_TAKEN = re.compile(r"Can't fork for (\d+): File exists")
_STAT = re.compile(r"^([A-Za-z][A-Za-z ]+?):\s+(\d+)(?:\s+us)?(?:\s+\(0x[0-9a-f]+\))?\s*$")


class CriuBackend(Backend):
    name = "criu"
    dump_capabilities = ("checkpoint_restore", "sys_ptrace")
    restore_capabilities = ("checkpoint_restore", "sys_ptrace", "setpcap")

    def dump_binary(self) -> str:
        return self.config.backends.criu.binary

    def dump_command(self, binary: str, request: DumpRequest) -> list[str]:
        criu = self.config.backends.criu
        argv = [
            binary, "dump",
            "-t", str(request.exec_pid),
            "-D", str(request.image_dir),
            "--shell-job",
            "--display-stats",
            "--log-file", DUMP_LOG,
            "--ghost-limit", str(criu.ghost_limit),
        ]  # fmt: skip
        if not request.abort:
            argv.append("--leave-running")
        if self.run_as == "job-user":
            argv.append("--unprivileged")
        return argv + list(criu.extra_args)

    def restore_binary(self) -> str:
        return self.config.backends.criu.binary

    def restore_command(self, binary: str, request: RestoreRequest) -> list[str]:
        argv = [
            binary, "restore",
            "-D", str(request.image_dir),
            "--shell-job",
            "--restore-detached",
            "--restore-sibling",
            "--work-dir", str(request.workdir),  # logs, pid file and stats-restore: never into the image
            "--pidfile", str(request.workdir / PIDFILE),
            "--log-file", str(request.workdir / RESTORE_LOG),
        ]  # fmt: skip
        if self.run_as == "job-user":
            argv.append("--unprivileged")
        for inherited in request.inherited:
            argv += ["--inherit-fd", f"fd[{inherited.fd}]:{inherited.path.lstrip('/')}"]
        return argv + list(self.config.backends.criu.extra_args)

    def restore(self, binary: str, request: RestoreRequest) -> Restored:
        """criu restore -d -S: CRIU returns once the tree runs, its root a child of this process."""
        command = self.restore_command(binary, request)
        argv = self.as_configured_user(command, request.user, self.restore_capabilities)
        try:
            completed = self.env.runner.run(
                argv,
                timeout_s=request.timeout_s,
                cwd=request.cwd,
                pass_fds=[f.fd for f in request.inherited],
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise CheckpointerMissing(f"cannot run {argv[0]}: {exc.strerror}") from None
        if completed.timed_out:
            raise TimedOut(f"criu restore did not finish within timeout_s={request.timeout_s:g}s: killed it")
        log = _read(request.workdir / RESTORE_LOG)
        if completed.returncode != 0:
            busy = _PID_TAKEN.search(log)
            if busy:
                raise PidInUse(int(busy.group(1)))
            errors = [line.strip() for line in log.splitlines() if line.startswith("Error")]
            detail = errors[0] if errors else (completed.stderr.strip().splitlines() or [""])[-1]
            raise CheckpointerFailed(f"criu restore failed (exit {completed.returncode}): {detail}")
        try:
            pid = int(_read(request.workdir / PIDFILE).strip())
        except ValueError:
            raise CheckpointerFailed("criu restore succeeded but wrote no pid file") from None
        return Restored(pid, command)

    def ends_job_on_abort(self) -> bool:
        return True  # without --leave-running CRIU kills the dumped tree after a good dump

    def version(self, binary: str) -> str:
        completed = self.env.runner.run([binary, "--version"], timeout_s=30)
        match = re.search(r"Version:\s*(\S+)", completed.stdout)
        return match.group(1) if match else "unknown"

    def failure_detail(self, request: DumpRequest, completed: Completed) -> str:
        """CRIU writes its reasons to the log file: quote the first error."""
        try:
            log = (request.image_dir / DUMP_LOG).read_text(errors="replace")
        except OSError:
            log = ""
        errors = [line.strip() for line in log.splitlines() if line.startswith("Error")]
        if errors:
            return errors[0]
        return super().failure_detail(request, completed)

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


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
