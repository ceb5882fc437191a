"""torchrun support: process-group setup from the environment, rank-0 helpers and gradient-carrying all-gather."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a torchrun job (world_size 1 = a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that validates, checkpoints and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when running under torchrun with more than one process."""
        return self.world_size > 1


def init_from_env(device_preference: str = "auto") -> tuple[DistContext, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on GPU, gloo on CPU); return the context and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_preference in ("auto", "cuda") or device_preference.startswith("cuda:")
    if use_cuda:
        device = (
            torch.device(device_preference)
            if device_preference.startswith("cuda:") and world == 1
            else torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        )
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local), device


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process in rank order; gradients flow back to each process's own part."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over processes (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's boolean, on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_main_process() -> bool:
    """True on rank 0 (and in a plain single process)."""
    return int(os.environ.get("RANK", "0")) == 0
