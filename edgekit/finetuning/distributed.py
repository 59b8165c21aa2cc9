"""Data-parallel training under torchrun: torch.distributed DDP, gloo on CPU, nccl on CUDA.

    torchrun --nproc-per-node 2 -m edgekit finetune ... --strategy full

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them (a plain
`edgekit finetune`) everything here is a no-op with world size 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run directory and reports progress."""
        return self.rank == 0


def from_environment() -> Distributed:
    """The process's place in a torchrun job (world size 1 outside one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return Distributed()
    return Distributed(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def init(context: Distributed, device: torch.device) -> torch.device:
    """Join the process group (nccl for CUDA, gloo for CPU); returns this rank's device."""
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=context.rank, world_size=context.world_size)
    return device


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Distributed) -> None:
    if context.enabled:
        import torch.distributed as dist

        dist.barrier()


def sum_across_ranks(values: list[float], context: Distributed, device: torch.device) -> list[float]:
    """Element-wise sums over every rank (for loss/correct/count totals, so metrics cover all the data)."""
    if not context.enabled:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_buffers(module: torch.nn.Module, context: Distributed) -> None:
    """Make BatchNorm running statistics rank 0's on every rank: each rank updates them on its own batches
    after DDP's per-forward broadcast, so without this the ranks would end with different buffers."""
    if not context.enabled:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)
