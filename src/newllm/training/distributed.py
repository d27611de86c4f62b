"""Which process this is under `torchrun` / `accelerate launch`: rank, world size, main process, barrier.

Read from torch.distributed once the Trainer has set up the process group, and from the launcher's
environment (RANK, WORLD_SIZE) before that, so a single plain process is rank 0 of 1 and needs nothing.
No accelerate state is touched: creating it here would fix the backend before the Trainer chooses it.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 when not launched distributed)."""
    return dist.get_rank() if _initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes training together (1 when not launched distributed)."""
    return dist.get_world_size() if _initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process writes the run's shared files (tokenizer, checkpoints, plots, results)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group (one process, or before the Trainer starts one)."""
    if _initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank: for a decision every rank must take alike (stopping training)."""
    if not _initialized():
        return flag
    on_gpu = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
    value = torch.tensor([int(flag)], device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
