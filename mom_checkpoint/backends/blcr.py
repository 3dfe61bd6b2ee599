"""BLCR: ``cr_checkpoint [--signal N] --tree PID --file FILE``, as TORQUE's BLCR sample script calls it."""

from __future__ import annotations

from mom_checkpoint.backends.base import Backend, DumpRequest, RestoreRequest

ABORT_SIGNAL = 15


class BlcrBackend(Backend):
    name = "blcr"

    def dump_binary(self) -> str:
        return self.config.backends.blcr.cr_checkpoint

    def dump_command(self, binary: str, request: DumpRequest) -> list[str]:
        argv = [binary]
        if request.abort:
            argv += ["--signal", str(ABORT_SIGNAL)]
        context = request.output_dir / context_name(request.exec_pid)
        return [*argv, "--tree", str(request.exec_pid), "--file", str(context)]

    def ends_job_on_abort(self) -> bool:
        return True  # --signal is sent to the tree after the context file is written

    def restore_binary(self) -> str:
        return self.config.backends.blcr.cr_restart

    def restore_command(self, binary: str, request: RestoreRequest) -> list[str]:
        return [binary, f"{request.image.restorer_path}/{context_name(request.pids[0])}"]


def context_name(pid: int) -> str:
    return f"context.{pid}"
