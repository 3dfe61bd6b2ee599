"""BLCR: ``cr_checkpoint [--signal N] --tree PID --file FILE``, as TORQUE's BLCR sample script calls it."""

from __future__ import annotations

from mom_checkpoint.backends.base import Backend, DumpRequest

ABORT_SIGNAL = 15


class BlcrBackend(Backend):
    name = "blcr"

    def dump_binary(self) -> str:
        return self.config.backends.blcr.cr_checkpoint

    def dump_command(self, binary: str, request: DumpRequest) -> list[str]:
        argv = [binary]
        if request.abort:
            argv += ["--signal", str(ABORT_SIGNAL)]
        context = request.image_dir / f"context.{request.exec_pid}"
        return [*argv, "--tree", str(request.exec_pid), "--file", str(context)]

    def ends_job_on_abort(self) -> bool:
        return True  # --signal is sent to the tree after the context file is written
