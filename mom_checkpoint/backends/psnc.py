"""PSNC's SGI Altix checkpointer, the seed's: ``chkpnt -q -p PID -od DIR``."""

from __future__ import annotations

from mom_checkpoint.backends.base import Backend, DumpRequest


class PsncBackend(Backend):
    name = "psnc"

    def dump_binary(self) -> str:
        return self.config.backends.psnc.chkpnt

    def dump_command(self, binary: str, request: DumpRequest) -> list[str]:
        return [binary, "-q", "-p", str(request.exec_pid), "-od", str(request.image_dir)]
