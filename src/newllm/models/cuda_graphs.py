"""CUDA graphs as the decoders and the captured training scan take them: one side stream per GPU, one step captured."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch


@functools.cache
def capture_stream(device_index: int) -> torch.cuda.Stream:
    """The side stream of every warm-up and capture on one GPU. PyTorch gives each new stream its own
    cuBLAS workspace (33 MiB on an H200) and keeps it for the life of the process, so a fresh stream
    per capture grew memory by that much each time (measured: one GreedyDecoder, 33 MiB)."""
    return torch.cuda.Stream(device_index)


def capture_step(step: Callable[[], None], restart: Callable[[], None], device_index: int,
                 warmup: int = 3) -> torch.cuda.CUDAGraph:  # fmt: skip
    """One call of `step` (which reads and writes only fixed buffers) as a CUDA graph. It runs `warmup` times on
    the capture stream first, as torch.cuda.graphs recommends; `restart` puts the buffers back before each
    warm-up and before the capture, so that the graph starts from what a replay will find."""
    stream = capture_stream(device_index)
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            restart()
            step()
    torch.cuda.current_stream().wait_stream(stream)
    restart()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def replay_autocast(device_type: str, dtype: torch.dtype):
    """Autocast to `dtype` for a step a CUDA graph captures (none for float32), without the weight-cast cache: a
    graph must not replay casts whose outputs were freed after capture."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype, cache_enabled=False)
