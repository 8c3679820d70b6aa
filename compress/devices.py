"""Where training runs: the processes of a data-parallel run (torchrun / accelerate launch), the device each
one trains on, and the numeric precision chosen for it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from edgeqa.bench.cpu import CPU, this_cpu
from edgeqa.bench.engines import default_threads


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the process group that torchrun / accelerate describe in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if world > 1 and not torch.distributed.is_initialized():
        import datetime

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
        # Rank 0 may spend a while on the teacher cache while the others wait.
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=3))
    rank = torch.distributed.get_rank() if world > 1 else 0
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device == "cpu":
        torch.set_num_threads(max(1, default_threads() // local_world))
    return Dist(rank, world, local_rank, device)


def barrier(dist: Dist) -> None:
    """Wait for every process (a no-op in a single process)."""
    if dist.world > 1:
        torch.distributed.barrier()


@dataclass(frozen=True)
class Precision:
    """What `train.precision` asked for, what was chosen, and why: kept in training.json beside the result."""

    asked: str
    bf16: bool
    reason: str

    @property
    def chosen(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "chosen": self.chosen, "reason": self.reason}


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX, x86 AVX512-BF16, ARM BF16; best first


def choose_precision(precision: str, device: str, cpu: CPU, cuda_bf16: bool = False) -> Precision:
    """bf16 autocast for "auto" only where bf16 matrix products run in hardware: CUDA devices that support it, CPUs
    with AMX or AVX512-BF16 (or ARM BF16). Elsewhere, AVX-512 CPUs included, bf16 is emulated through fp32 and
    slower than fp32 itself, so "auto" stays in fp32. A pure function of its arguments, so it is tested as one."""
    if precision != "auto":
        return Precision(precision, precision == "bf16", f"given: {precision}")
    if device.startswith("cuda"):
        return Precision("auto", cuda_bf16, "auto: CUDA bf16" if cuda_bf16 else "auto: no bf16 on this GPU")
    native = [f for f in NATIVE_BF16_FLAGS if f in cpu.flags]
    if cpu.native_bf16 and native:
        return Precision("auto", True, f"auto: CPU has {native[0]}")
    return Precision("auto", False, f"auto: no native bf16 on this CPU (isa {cpu.isa})")


def cuda_native_bf16() -> bool:
    """Whether the current CUDA device runs bf16 in hardware (compute capability 8.0 or later, or ROCm).

    torch's `is_bf16_supported()` also answers True where bf16 tensors merely work, emulated through fp32 (T4,
    V100): slower than fp32 itself, the trap "auto" exists to avoid, so only native support is asked for."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def precision_for(precision: str, device: str) -> Precision:
    """`choose_precision` on this machine: its CPU's flags (bench.cpu) and, on CUDA, the device's native bf16."""
    cuda_bf16 = device.startswith("cuda") and cuda_native_bf16()
    return choose_precision(precision, device, this_cpu(), cuda_bf16)
