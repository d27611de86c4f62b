"""Greedy decoding of New-LLM in one kernel launch for all the new tokens: a persistent kernel.

decode_kernel.py's step is four launches a token for the prototype cell (more for the MLP-block cell), replayed
from a CUDA graph, and at batch 1 most of its 0.022 ms a token is those launches waiting on one another, not
the 12 MB of weights they read (performance.md). Here one launch runs every token. Its programs, at most one
per SM so that all of them are resident at once, walk the step's phases together:

    A. h_1 = act(P[token] + c W_cᵀ)                 column tiles of every phase spread over the programs
    B. each hidden layer (or MLP block: W_1, then W_2 with the residual)
    C. [Δ, g_f, g_i] = h_L W_gᵀ + b_g and the head's tiles, each keeping its (max, argmax) per row
    D. per row block: c' (the context update) and the next token, written to `token` and tokens[:, t]

with a grid-wide barrier after each phase, since each reads what all programs wrote in the one before. The
phases are decode_kernel.py's tile functions, so a step computes what a `DecodeKernels.step` computes; compiled
into this kernel, Triton may spread a row's sums over the threads in another order, so on a GPU the context can
differ in its last bits (tokens equal; tests/unit/models/test_new_llm_decode_loop.py).

Opt-in: timed on an H100, a barrier costs about what the launch it replaces did, so the loop gains little over
the stepped kernels at batch 1 and loses at larger batches (performance.md, "Every token in one launch").

**The barrier** is a counter in global memory that only grows: at its k-th barrier every program adds one
(release, at GPU scope, after all its threads stored their part) and waits until the counter reaches k × the
number of programs (acquire), then reads what the others wrote. It deadlocks unless every program is resident
at once, so the launch is cooperative (`launch_cooperative_grid`): CUDA refuses a grid that cannot be resident
instead of starting one that would hang. The CPU interpreter runs programs one after another, so there the
kernel runs as one program, for which every barrier is already met (tests/unit/models/test_new_llm_decode_loop.py
checks the arithmetic that way; only the CUDA tests, with many programs, check the barrier).

Same scope as decode_kernel.py (float32 cell, eval mode, one context scale, an optional bf16 head at batch 1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from newllm.models.new_llm.decode_kernel import (
    DecodeKernels,
    _first_tile,
    _linear_tile,
    _proj_head_tile,
    _update_pick_at,
)
from newllm.models.new_llm.kernel import _grid_barrier

# Column tiles of the layers at batch 1: narrower than the stepped kernels' 16 columns, so that a 512-wide layer is
# 128 tiles, about one per SM, and each program reads 8 KB of a layer's weights instead of 32. The context projection
# keeps 16 (48 tiles for C = 256, beside the head's 256 in the same phase).
LOOP_ROW_N = 4


@triton.jit
def _linear_phase(x, weight, bias, out, residual, gamma, beta, eps, B, N, K, ACTIVATION: tl.constexpr,
                  RESIDUAL: tl.constexpr, NORM: tl.constexpr, ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """decode_kernel.py's `_linear_tile` on every (row block, column tile) of this program's share: every
    num_programs-th tile, starting at its own id."""
    col_tiles = tl.cdiv(N, BLOCK_N)
    for tile in range(tl.program_id(0), tl.cdiv(B, BLOCK_B) * col_tiles, tl.num_programs(0)):
        rows = (tile // col_tiles) * BLOCK_B + tl.arange(0, BLOCK_B)
        n = (tile % col_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        _linear_tile(x, weight, bias, out, residual, gamma, beta, eps, rows, rows < B, n, n < N, N, K, ACTIVATION,
                     RESIDUAL, NORM, ONE_ROW, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip


@triton.jit
def _decode_loop_kernel(
    token, contexts, tokens, new_tokens, MAX_NEW, arrived,  # the state, the output, the barrier's counter
    table, context_weight, stride_cw,  # layer 1: P = E W_eᵀ + b_1 (V, H) and W_c
    layer_w, layer_b, NUM_LAYERS,  # the prototype's layers 2..L, stacked: (L-1, H, H), (L-1, H)
    norm_w, norm_b, block_eps, up_w, up_b, down_w, down_b, NUM_BLOCKS, INNER,  # the MLP blocks, stacked
    hiddens, act,  # scratch: two (B, H) for h, ping-pong; (B, INNER) for an MLP block's GELU(u)
    final_w, final_b, final_eps, proj_w, proj_b, projected, head_w, head_b, best, best_id,
    ctx_norm_w, ctx_norm_b, ctx_eps, clamp, x_hat, rstd,
    B, H, C, V, PROJ_TILES, TILES,
    RELU_FIRST: tl.constexpr, FINAL_NORM: tl.constexpr, TANH: tl.constexpr, HAS_CLAMP: tl.constexpr,
    ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_K_C: tl.constexpr, BLOCK_K_H: tl.constexpr, BLOCK_K_I: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_TILES: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """`new_tokens` greedy steps from `token` and contexts[0]: each step's token into tokens[:, t] (row stride
    MAX_NEW) and `token`, the context after the last into contexts[0]."""
    me = tl.program_id(0)
    programs = tl.num_programs(0)
    row_blocks = tl.cdiv(B, BLOCK_B)
    span = tl.arange(0, BLOCK_B)
    h_tiles = tl.cdiv(H, BLOCK_N)
    passed = 0  # barriers this program has passed: the k-th waits for k × programs arrivals
    for t in range(0, new_tokens):
        x = hiddens
        y = hiddens + B * H
        for tile in range(me, row_blocks * h_tiles, programs):  # A
            rows = (tile // h_tiles) * BLOCK_B + span
            n = (tile % h_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
            _first_tile(token, table, contexts, context_weight, stride_cw, x, rows, rows < B, n, n < H, H, C,
                        RELU_FIRST, ONE_ROW, BLOCK_K_C, PRECISION)  # fmt: skip
        passed += 1
        _grid_barrier(arrived, passed * programs)
        for layer in range(0, NUM_LAYERS):  # B, the prototype's layers
            _linear_phase(x, layer_w + layer * H * H, layer_b + layer * H, y, x, layer_b, layer_b, 0.0, B, H, H, 1,
                          False, False, ONE_ROW, BLOCK_B, BLOCK_N, BLOCK_K_H, PRECISION)  # fmt: skip
            passed += 1
            _grid_barrier(arrived, passed * programs)
            x, y = y, x
        for block in range(0, NUM_BLOCKS):  # B, the MLP blocks: h + W_2 GELU(W_1 LN(h))
            _linear_phase(x, up_w + block * INNER * H, up_b + block * INNER, act, x, norm_w + block * H,
                          norm_b + block * H, block_eps, B, INNER, H, 2, False, True, ONE_ROW, BLOCK_B, BLOCK_N,
                          BLOCK_K_H, PRECISION)  # fmt: skip
            passed += 1
            _grid_barrier(arrived, passed * programs)
            _linear_phase(act, down_w + block * H * INNER, down_b + block * H, y, x, down_b, down_b, 0.0, B, H, INNER,
                          0, True, False, ONE_ROW, BLOCK_B, BLOCK_N, BLOCK_K_I, PRECISION)  # fmt: skip
            passed += 1
            _grid_barrier(arrived, passed * programs)
            x, y = y, x
        columns = PROJ_TILES + TILES
        for tile in range(me, row_blocks * columns, programs):  # C
            rows = (tile // columns) * BLOCK_B + span
            _proj_head_tile(x, final_w, final_b, final_eps, proj_w, proj_b, projected, head_w, head_b, best, best_id,
                            x, rows, rows < B, tile % columns, 3 * C, V, H, PROJ_TILES, TILES, FINAL_NORM, False,
                            ONE_ROW, BLOCK_B, BLOCK_P, BLOCK_V, BLOCK_K_H, PRECISION)  # fmt: skip
        passed += 1
        _grid_barrier(arrived, passed * programs)
        for block in range(me, row_blocks, programs):  # D
            rows = block * BLOCK_B + span
            _update_pick_at(projected, contexts, ctx_norm_w, ctx_norm_b, x_hat, rstd, best, best_id, token, tokens, t,
                            rows, rows < B, B, C, ctx_eps, clamp, TILES, MAX_NEW, TANH, HAS_CLAMP, BLOCK_B,
                            BLOCK_TILES, BLOCK_C)  # fmt: skip
        passed += 1
        _grid_barrier(arrived, passed * programs)


class DecodeLoop:
    """All of a greedy continuation in one launch, on the weights and buffers of a `DecodeKernels`."""

    def __init__(self, kernels: DecodeKernels, programs: int | None = None):
        """programs: how many programs the launch runs; by default one per SM, at most the widest phase's tiles
        (on CPU, in Triton's interpreter, one)."""
        self.kernels = kernels
        k = kernels
        device = k.table.device
        hidden, size_c = k.hidden, k.size_c
        self.one_row = k.one_row

        def blocks(width):  # the stepped kernels' tiles for a matmul over `width` inputs (`DecodeKernels._matmul`)
            return k._matmul(1, width)[1]

        stepped = blocks(hidden)
        self.block_b = stepped["BLOCK_B"]
        self.block_n = LOOP_ROW_N if self.one_row else stepped["BLOCK_N"]
        empty = k.table.new_zeros(1)
        # the layers as one tensor each, indexed by layer in the kernel (a launch takes a fixed list of arguments)
        if k.layers:
            self.layer_w = torch.stack([w for w, _ in k.layers]).contiguous()
            self.layer_b = torch.stack([b for _, b in k.layers]).contiguous()
        else:
            self.layer_w = self.layer_b = empty
        self.inner = k.blocks[0][3].shape[0] if k.blocks else 1
        if k.blocks:
            eps = {b[2] for b in k.blocks}
            if len(eps) != 1:
                raise ValueError(f"the decode loop takes one LayerNorm eps for every MLP block, got {sorted(eps)}")
            self.block_eps = eps.pop()
            self.blocks = [torch.stack([b[i] for b in k.blocks]).contiguous() for i in (0, 1, 3, 4, 5, 6)]
        else:
            self.block_eps = 0.0
            self.blocks = [empty] * 6
        self.block_p = stepped["BLOCK_N"]  # the context projection's columns a tile, as the stepped kernels'
        self.proj_tiles = triton.cdiv(3 * size_c, self.block_p)
        self.tiles = k.tiles  # the head's tiles, as DecodeKernels cut them (its best/best_id buffers)
        row_blocks = triton.cdiv(k.batch_size, self.block_b)
        widest = row_blocks * max(triton.cdiv(max(hidden, self.inner), self.block_n), self.proj_tiles + self.tiles)
        if programs is None:
            if device.type == "cuda":
                programs = torch.cuda.get_device_properties(device).multi_processor_count
            else:
                programs = 1
        self.programs = max(1, min(programs, widest))
        if device.type != "cuda" and self.programs != 1:
            raise ValueError("off CUDA the decode loop runs as one program: the interpreter runs programs one after "
                             "another, so a second would wait forever at the first barrier")  # fmt: skip
        # phases a token, each ended by a barrier: layer 1, each further layer or MLP half-block, head, update
        self.barriers_per_token = 1 + (len(k.layers) if not k.blocks else 2 * len(k.blocks)) + 2
        self.arrived = torch.zeros(1, dtype=torch.int32, device=device)
        self.hiddens = k.table.new_empty(2, k.batch_size, hidden)  # h, ping-pong between layers
        self.block_k = {name: blocks(width)["BLOCK_K"] for name, width in
                        (("BLOCK_K_C", size_c), ("BLOCK_K_H", hidden), ("BLOCK_K_I", self.inner))}  # fmt: skip

    def run(self, token: torch.Tensor, tokens: torch.Tensor, new_tokens: int) -> None:
        """`new_tokens` greedy steps from `token` (B,) and `self.kernels.context`: the tokens into
        tokens[:, :new_tokens], the last into `token`, the context after them into `self.kernels.context`."""
        k = self.kernels
        if not 1 <= new_tokens <= tokens.shape[1]:
            raise ValueError(f"new_tokens must be in 1..{tokens.shape[1]}, got {new_tokens}")
        arrivals = self.programs * self.barriers_per_token * new_tokens
        if arrivals >= 2**31:  # the int32 counter would wrap and the barriers stop meaning anything
            most = (2**31 - 1) // (self.programs * self.barriers_per_token)
            raise ValueError(f"one launch decodes at most {most:,} tokens with {self.programs} programs; got "
                             f"{new_tokens:,}: decode in pieces")  # fmt: skip
        final = k.final is not None
        gamma, beta, eps = k.final if final else (*k.proj, 0.0)
        norm_w, norm_b, norm_eps = k.norm
        self.arrived.zero_()
        launch = dict(launch_cooperative_grid=True) if k.table.device.type == "cuda" else {}
        _decode_loop_kernel[(self.programs,)](
            token, k.contexts, tokens, new_tokens, tokens.shape[1], self.arrived,
            k.table, k.context_weight, k.context_weight.stride(0),
            self.layer_w, self.layer_b, len(k.layers),
            self.blocks[0], self.blocks[1], self.block_eps, *self.blocks[2:], len(k.blocks), self.inner,
            self.hiddens, k.act if k.act is not None else self.hiddens,
            gamma, beta, eps, *k.proj, k.projected, *k.head, k.best, k.best_id,
            norm_w, norm_b, norm_eps, k.clamp, k.context_hat, k.context_rstd,
            k.batch_size, k.hidden, k.size_c, k.vocab, self.proj_tiles, self.tiles,
            RELU_FIRST=not k.blocks, FINAL_NORM=final, TANH=k.tanh, HAS_CLAMP=k.clamp > 0, ONE_ROW=self.one_row,
            BLOCK_B=self.block_b, BLOCK_N=self.block_n, BLOCK_P=self.block_p, BLOCK_V=k.block_v,
            PRECISION=k.precision,
            BLOCK_TILES=triton.next_power_of_2(self.tiles), BLOCK_C=64, num_warps=8 if self.one_row else 4,
            **self.block_k, **launch,
        )  # fmt: skip
