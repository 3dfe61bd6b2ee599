"""A restore on a node whose CPU lacks what the checkpointed one had is refused with one line and exit
85, before anything of the job is touched (issue 28 #5): by root's record of the CPU in the manifest,
and by CRIU's own check of the image's cpuinfo.img (the FPU state's layout)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from mom_checkpoint.platform import cpu
from tests.criu_forge import decode, encode
from tests.helpers import (
    Job,
    Site,
    digest_of,
    numbers,
    qhold_and_lose,
    restart_args,
    start_restart,
    verify_generation,
)

pytestmark = pytest.mark.usefixtures("criu")


def _reseal(generation: Path, manifest: dict[str, Any]) -> None:
    """Root rewrites its manifest (root's, 0600, as the hook left it)."""
    (generation / "manifest.json").write_text(json.dumps(manifest))


def _with_flags(manifest: dict[str, Any], flags: list[str]) -> dict[str, Any]:
    host = manifest["host"]
    return {**manifest, "host": {**host, "cpu": {**host["cpu"], "flags": flags}}}


def _refused(site: Site, args: list[object]) -> str:
    restart = start_restart(args, site.config)
    assert restart.wait(timeout=90) == 85
    assert restart.stderr is not None
    stderr = restart.stderr.read().decode()
    assert stderr.startswith("mom-restart: ") and stderr.count("\n") == 1, stderr
    return stderr


def _restarts(site: Site, job: Job, args: list[object], printed: str) -> None:
    """pbs_mom's next restart (the output re-created empty) brings the job back to its end."""
    job.output.write_text("")
    restart = start_restart(restart_args(job, args), site.config)
    assert restart.wait(timeout=90) == 0, restart.stderr.read() if restart.stderr else ""
    assert numbers(job.output.read_text()) == list(range(1, 41)) and len(numbers(printed)) < 40


def test_a_node_whose_cpu_lacks_a_feature_of_the_checkpointed_one_refuses_the_restore(
    user_mode: Site,
) -> None:
    site = user_mode
    job = site.start_job("901.head", app_env={"COUNTER_LIMIT": "40"})
    job.wait_count(3)
    args, printed = qhold_and_lose(site, job, empty_output=True)
    [generation] = site.generations("901.head")
    manifest = verify_generation(generation)
    node = cpu.here()
    assert manifest["host"]["cpu"] == {"machine": node.machine, "model": node.model, "flags": node.flags}
    assert "image/cpuinfo.img" in {f["path"] for f in manifest["files"]}  # CRIU's record of it too
    assert "--cpu-cap=fpu,ins" in manifest["backend"]["command"]

    # the job was checkpointed on a CPU with two instruction sets this node's lacks
    absent = sorted(cpu.X86_INSTRUCTIONS - set(node.flags))[:2]
    assert absent, "this node's CPU has every instruction set the check knows"
    _reseal(generation, _with_flags(manifest, sorted([*node.flags, *absent])))
    starts = len([e for e in site.log_events() if e["event"] == "restart.start"])
    stderr = _refused(site, restart_args(job, args))
    assert (
        f"this node's CPU lacks {', '.join(absent)}, which the CPU the job was checkpointed on had" in stderr
    )
    assert node.model in stderr and manifest["host"]["name"] in stderr
    # nothing of the job was touched: no restorer ran, no process; what it printed before the hold
    # is back in its output (as after any failed restart), and its checkpoint is kept
    assert len([e for e in site.log_events() if e["event"] == "restart.start"]) == starts
    assert not job.processes() and job.output.read_text() == printed
    assert site.generations("901.head") == [generation]

    # flags that are not instructions (a hypervisor's, a mitigation's) do not matter
    _reseal(generation, _with_flags(manifest, [*node.flags, "hypervisor2"]))
    _restarts(site, job, args, printed)


def _with_xsave_size(image: bytes, add: int) -> bytes:
    """CRIU's cpuinfo.img (two magic words, the entry's size, a cpuinfo_entry) with the x86 entry's
    xsave_size (field 9) changed: the FPU state of a CPU with other xsave features."""
    (size,) = struct.unpack_from("<I", image, 8)
    [(number, _, entry)] = decode(image[12 : 12 + size])
    assert number == 1 and isinstance(entry, bytes)  # the one x86 entry
    changed = [(n, w, v + add if n == 9 and isinstance(v, int) else v) for n, w, v in decode(entry)]
    assert changed != decode(entry), "no xsave_size in the image"
    outer = encode([(1, 2, encode(changed))])
    return image[:8] + struct.pack("<I", len(outer)) + outer


def test_criu_refuses_an_image_whose_fpu_state_this_cpu_cannot_hold(user_mode: Site) -> None:
    """What root's record cannot name (the size of the FPU state the image's registers were saved
    in), CRIU's own check of cpuinfo.img catches before any task is restored: the same exit and one
    line, and nothing of the job ran."""
    site = user_mode
    job = site.start_job("902.head", app_env={"COUNTER_LIMIT": "40"})
    job.wait_count(3)
    args, printed = qhold_and_lose(site, job, empty_output=True)
    [generation] = site.generations("902.head")
    manifest = verify_generation(generation)
    image = generation / "image" / "cpuinfo.img"
    original = image.read_bytes()
    forged = _with_xsave_size(original, 64)
    image.write_bytes(forged)  # the job user's file (their CRIU wrote it), re-sealed by root below
    files = [
        {**f, "size": len(forged), "digest": digest_of(forged)} if f["path"] == "image/cpuinfo.img" else f
        for f in manifest["files"]
    ]
    _reseal(generation, {**manifest, "files": files, "total_bytes": sum(f["size"] for f in files)})

    stderr = _refused(site, restart_args(job, args))
    assert "CRIU's check of the CPU it was taken on says CPU xsave size mismatch" in stderr
    assert not job.processes() and job.output.read_text() == printed
    [failed] = [e for e in site.log_events() if e["event"] == "restart.restore_failed"]
    assert "xsave size mismatch" in failed["error"]

    image.write_bytes(original)
    _reseal(generation, manifest)
    _restarts(site, job, args, printed)
