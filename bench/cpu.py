"""What this CPU can do, read from /proc/cpuinfo: the instruction sets that decide int8 presets and training precision.

One reading serves every decision (the quantization preset, bf16 or fp32 training) and every record (reports,
quantization.json, training.json), so what a run chose and why are always written beside each other.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from typing import Any

# The flags that change what edgeqa picks, in /proc/cpuinfo's spelling (x86 "flags", ARM "Features").
X86_FLAGS = (
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
)
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme")


@dataclass(frozen=True)
class CPU:
    model: str
    arch: str  # platform.machine(): x86_64, aarch64, ...
    flags: frozenset[str]

    @property
    def isa(self) -> str:
        """The best int8 matrix instruction class present, most capable first."""
        f = self.flags
        if self.arch in ("aarch64", "arm64"):
            return "arm64_i8mm" if "i8mm" in f else "arm64_dotprod" if "asimddp" in f else "arm64"
        for isa in ("amx_int8", "avx512_vnni", "avx_vnni"):
            if isa in f:
                return isa
        if "avx512bw" in f:  # ONNX Runtime's AVX-512 int8 kernels need BW (byte and word lanes)
            return "avx512"
        return "avx2" if "avx2" in f else "other"

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix products in hardware (AMX, AVX512-BF16, ARM BF16), not emulated through fp32."""
        return bool({"amx_bf16", "avx512_bf16", "bf16"} & self.flags)

    def to_dict(self) -> dict[str, Any]:
        known = X86_FLAGS if self.arch not in ("aarch64", "arm64") else ARM_FLAGS
        return {"cpu": self.model, "arch": self.arch, "isa": self.isa, "flags": [f for f in known if f in self.flags]}


def parse_cpuinfo(text: str, arch: str) -> CPU:
    """The first processor's model and flags from the text of /proc/cpuinfo (x86 or ARM layout)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return CPU(model or platform.processor() or arch, arch, frozenset(flags))


@functools.cache
def this_cpu() -> CPU:
    """This machine's CPU. EDGEQA_CPU_FLAGS (space-separated) replaces the flags read, to ask what edgeqa would pick
    on another machine class; the record then says the flags were given, not read."""
    arch = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = parse_cpuinfo(f.read(), arch)
    except OSError:
        cpu = CPU(platform.processor() or arch, arch, frozenset())
    given = os.environ.get("EDGEQA_CPU_FLAGS")
    if given is not None:
        cpu = CPU(f"{cpu.model} (flags given by EDGEQA_CPU_FLAGS)", arch, frozenset(given.split()))
    return cpu
