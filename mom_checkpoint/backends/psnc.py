"""PSNC's SGI Altix checkpointer (the seed's): ``chkpnt -q -p PID -od DIR``, ``resume -drp -cwd D -od D``."""

from __future__ import annotations

import os

from mom_checkpoint.backends.base import Backend, DumpRequest, RestoreRequest


class PsncBackend(Backend):
    name = "psnc"

    def dump_binary(self) -> str:
        return self.config.backends.psnc.chkpnt

    def dump_command(self, binary: str, request: DumpRequest) -> list[str]:
        return [binary, "-q", "-p", str(request.exec_pid), "-od", str(request.output_dir)]

    def restore_binary(self) -> str:
        return self.config.backends.psnc.resume

    def restore_command(self, binary: str, request: RestoreRequest) -> list[str]:
        cwd = request.cwd or os.getcwd()
        return [binary, "-drp", "-cwd", cwd, "-od", request.image.restorer_path]
