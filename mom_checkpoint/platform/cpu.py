"""The node's CPU as a checkpoint needs it: its architecture, model and feature flags, recorded by root
with each generation (the manifest) and compared before a restore on any node.

An application picks its code paths from the CPU it started on (glibc's ifuncs, numpy's and BLAS's
dispatch, a binary built with -march=native) and goes on using them after a restore. Restored on a
node whose CPU lacks one of those instructions, it dies of SIGILL at some later moment. So a restore
is refused, before anything of the job is touched, on a node whose CPU lacks an instruction-set
feature the checkpointing node had: on x86, the features CRIU's own instruction check compares
(``--cpu-cap=ins``) and those it does not list yet (FMA, the newer AVX-512 and AMX sets); on other
architectures every feature the kernel reports to user space (their hwcaps are all instructions).
"""

from __future__ import annotations

import os

import msgspec

from mom_checkpoint.platform.errors import CpuIncompatible, shown

CPUINFO = "/proc/cpuinfo"
FIRST_CPU_BYTES = 16384  # the first processor's block: a node's CPUs are all alike, and on a large
# node reading all of /proc/cpuinfo asks each CPU for its frequency

# x86 instruction-set features by their /proc/cpuinfo names: CRIU's x86_ins_capability_mask
# (criu/arch/x86/cpu.c; "pni" is SSE3, "monitor" MWAIT), then those it does not list
# fmt: off
X86_INSTRUCTIONS = frozenset({
    "fpu", "tsc", "cx8", "sep", "cmov", "clflush", "mmx", "fxsr", "sse", "sse2", "syscall", "mmxext",
    "rdtscp", "3dnowext", "3dnow", "rep_good", "nopl", "pni", "pclmulqdq", "monitor", "ssse3", "cx16",
    "sse4_1", "sse4_2", "movbe", "popcnt", "aes", "xsave", "osxsave", "avx", "f16c", "rdrand", "abm",
    "sse4a", "misalignsse", "3dnowprefetch", "xop", "fma4", "tbm", "fsgsbase", "bmi1", "hle", "avx2",
    "bmi2", "erms", "rtm", "mpx", "avx512f", "avx512dq", "rdseed", "adx", "clflushopt", "avx512pf",
    "avx512er", "avx512cd", "sha_ni", "avx512bw", "avx512vl", "xsaveopt", "xsavec", "xgetbv1",
    "avx512vbmi", "avx512_vbmi2", "gfni", "vaes", "vpclmulqdq", "avx512_vnni", "avx512_bitalg", "tme",
    "avx512_vpopcntdq", "rdpid", "clzero", "avx512_4vnniw", "avx512_4fmaps",
    # not in CRIU's list
    "fma", "avx512ifma", "avx_vnni", "avx512_bf16", "avx512_fp16", "avx512_vp2intersect", "amx_bf16",
    "amx_tile", "amx_int8", "avx_ifma", "avx_vnni_int8", "avx_ne_convert", "amx_fp16", "movdiri",
    "movdir64b", "serialize",
})
# fmt: on
X86 = frozenset({"x86_64", "i386", "i486", "i586", "i686"})  # uname -m of the CPUs those flags are of


class CpuInfo(msgspec.Struct, frozen=True):
    """What root recorded of the checkpointing node's CPU (``host.cpu`` in the manifest)."""

    machine: str  # uname -m
    model: str  # "model name" (x86) or "CPU part" and the like; for people only
    flags: list[str]  # as /proc/cpuinfo lists them (x86 "flags", others "Features"), sorted


def here(text: str | None = None) -> CpuInfo:
    """This node's CPU, from the first processor's block of /proc/cpuinfo (or ``text``, for tests)."""
    if text is None:
        text = _first_block()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block has ended
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.get("flags", fields.get("features", ""))
    model = fields.get("model name") or fields.get("cpu model") or fields.get("cpu part") or "unknown"
    return CpuInfo(os.uname().machine, model, sorted(set(flags.split())))


def lacking(recorded: CpuInfo, node: CpuInfo) -> list[str]:
    """What the recorded CPU had that the node's lacks: its architecture, or the instruction-set
    features (sorted); empty when a restore on the node can run the checkpointed code."""
    if recorded.machine != node.machine:
        return [f"the {recorded.machine} architecture"]
    needed = set(recorded.flags)
    if recorded.machine in X86:
        needed &= X86_INSTRUCTIONS
    return sorted(needed - set(node.flags))


def check(recorded: CpuInfo | None, *, checkpointed_on: str, node: CpuInfo | None = None) -> None:
    """Refuse, in one line naming what is lacking, a restore on a node whose CPU cannot run what was
    checkpointed (``recorded``: root's record of that CPU; None for generations older than it)."""
    if recorded is None:
        return
    missing = lacking(recorded, node or here())
    if missing:
        named = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        raise CpuIncompatible(
            f"this node's CPU lacks {named}, which the CPU the job was checkpointed on had "
            f"({shown(recorded.model, 80)} on {shown(checkpointed_on, 80)}): the restored application "
            f"could die of an illegal instruction; restart it on a node with that CPU or a newer one"
        )


def _first_block() -> str:
    fd = os.open(CPUINFO, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        size = 0
        while size < FIRST_CPU_BYTES:
            chunk = os.read(fd, FIRST_CPU_BYTES - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if b"\n\n" in chunk:
                break
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")
