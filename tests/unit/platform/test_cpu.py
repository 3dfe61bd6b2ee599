"""cpu: the node's CPU as /proc/cpuinfo shows it, and what a restore on it would lack."""

from __future__ import annotations

import os

import msgspec
import pytest

from mom_checkpoint.platform import cpu
from mom_checkpoint.platform.errors import CpuIncompatible
from mom_checkpoint.platform.status import ExitStatus

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
flags\t\t: fpu sse2 avx2 fma hypervisor constant_tsc avx512f

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Another CPU the node does not have
flags\t\t: fpu amx_tile
"""

ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


def test_the_first_processor_is_the_nodes_cpu() -> None:
    here = cpu.here(X86)
    assert here.model == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    assert here.flags == sorted(["fpu", "sse2", "avx2", "fma", "hypervisor", "constant_tsc", "avx512f"])
    assert here.machine == os.uname().machine
    arm = cpu.here(ARM)
    assert "sve" in arm.flags and arm.model == "0xd0c"


def test_this_nodes_own_cpu_is_read_and_lacks_nothing_of_itself() -> None:
    here = cpu.here()
    assert here.flags and here.flags == sorted(set(here.flags))
    assert cpu.lacking(here, here) == []
    cpu.check(here, checkpointed_on="node01", node=here)


def test_only_instruction_sets_are_compared_on_x86() -> None:
    recorded = cpu.CpuInfo("x86_64", "big", ["avx512f", "fma", "hypervisor", "constant_tsc", "sse2"])
    node = cpu.CpuInfo("x86_64", "small", ["sse2", "avx2"])
    # a hypervisor's or the kernel's own flags say nothing of what the application can execute
    assert cpu.lacking(recorded, node) == ["avx512f", "fma"]
    assert cpu.lacking(node, recorded) == ["avx2"]


def test_every_feature_counts_elsewhere_and_another_architecture_lacks_everything() -> None:
    recorded = cpu.CpuInfo("aarch64", "0xd0c", ["asimd", "fp", "sve"])
    assert cpu.lacking(recorded, cpu.CpuInfo("aarch64", "0xd08", ["asimd", "fp"])) == ["sve"]
    assert cpu.lacking(recorded, cpu.CpuInfo("x86_64", "x", ["sse2"])) == ["the aarch64 architecture"]


def test_the_refusal_is_one_line_with_what_is_lacking_and_exit_85() -> None:
    recorded = cpu.CpuInfo("x86_64", "Xeon\n\x1b[31mforged", ["avx512f", "avx512bw", "sse2"])
    with pytest.raises(CpuIncompatible) as refused:
        cpu.check(recorded, checkpointed_on="node07", node=cpu.CpuInfo("x86_64", "old", ["sse2"]))
    message = refused.value.message
    assert refused.value.exit_status == ExitStatus.CPU_INCOMPATIBLE and int(ExitStatus.CPU_INCOMPATIBLE) == 85
    assert message.startswith("this node's CPU lacks avx512bw, avx512f, which the CPU the job was")
    assert "node07" in message and "\n" not in message and "\x1b" not in message
    many = msgspec.structs.replace(recorded, flags=sorted(cpu.X86_INSTRUCTIONS))
    with pytest.raises(CpuIncompatible, match=r"and \d+ more"):
        cpu.check(many, checkpointed_on="node07", node=cpu.CpuInfo("x86_64", "old", []))


def test_a_generation_without_a_record_of_its_cpu_is_not_checked() -> None:
    cpu.check(None, checkpointed_on="node07", node=cpu.CpuInfo("x86_64", "old", []))
