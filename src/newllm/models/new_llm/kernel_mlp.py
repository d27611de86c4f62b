"""Training fast path for the MLP-block cell as two Triton kernels: the whole window, forward and backward, one launch each.

The same design as kernel.py (read its docstring first), with its two launches: a phase is a set of output
tiles of BLOCK_B rows (row-wise work, the LayerNorms and the context update, one tile a row block), taken
by a program's own row block in the window launch (`kernel`, phases ended by `tl.debug_barrier()`) or
dealt over one program per SM in the loop launch (`kernel_loop`, phases ended by a grid barrier: 3 a
block and 4 more a step forward, 4 a block and 4 more backward); weights stream from L2, activations
go to the buffers the backward needs. The function is `scan.cell_step`
for `block = "mlp"` with one context scale; per token, with m_l and m_c the dropout masks:

    h_0 = P_t + (c ⊙ m_c) W_cᵀ                                  P = e W_eᵀ + b_in, outside the kernel
    x_l = γ_l ⊙ LN(h_{l-1}) + β_l,  u_l = x_l W_upᵀ + b_up,  h_l = h_{l-1} + (GELU(u_l) W_downᵀ + b_down) ⊙ m_l
    h = γ_f ⊙ LN(h_L) + β_f         (with `final_norm`; else h = h_L)
    [Δ, g_f, g_i] = h W_gᵀ + b_g,  Δ ← tanh(Δ) with `candidate = "tanh"`
    c' = γ ⊙ LN(σ(g_f) ⊙ c + σ(g_i) ⊙ Δ) + β,  clamped to ±K where K > 0

GELU is the exact (erf) form, as F.gelu's default. Every LayerNorm works on rows that are not whole in
registers: a pass for the mean, one for the variance, one to normalise (scan.py's two-pass variance).

Stored for the backward (the forward's own by-products, nothing recomputed): the residual stream h_l,
each block's x̂_l, x_l and 1/σ, u_l and GELU(u_l) (4·d wide), the final norm's x̂ and the head input,
the projection, the context norm's x̂ and 1/σ, and the contexts. At the study's size (d = 384, 3
blocks) and batch 256 × 128 that is about 2 GB in float32. The backward walks t = T-1..0 carrying
dL/dc (B, C) and dL/dh (B, d) for its rows; the weight gradients are one matmul each over all T·B
rows, outside the kernel.

Tested in Triton's CPU interpreter against `cell_step` under autograd (a loop launch as one program there). The
window launch was timed 6.9 times slower than the hand-written backward, the loop launch 2.2 times slower than the
graphed scan (docs/performance.md, "One program per SM").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.nn import functional as F

from newllm.models.new_llm.kernel import (
    COVERED,
    INDEX_LIMIT,
    loop_programs,
    _context_grad_phase,
    _counter,
    _dot_rows,
    _first_layer_tile,
    _head_input_grad,
    _launch,
    _phase_end,
    _phase_tiles,
    _precision,
    _project_phase,
    _tile_at,
    _update_backward_phase,
    _update_phase,
)
from newllm.models.new_llm.scan import dropout_masks

# Triton reads a module-level constant inside @jit only when it is a tl.constexpr (compiled; the interpreter
# takes either)
SQRT_HALF = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _copy_rows(src, dst, rows, row_ok, D, BLOCK_N: tl.constexpr):
    """dst[rows] = src[rows], rows of D values."""
    cols = tl.arange(0, BLOCK_N)
    for n0 in range(0, D, BLOCK_N):
        n = n0 + cols
        tile = row_ok[:, None] & (n < D)[None, :]
        offsets = rows[:, None] * D + n[None, :]
        tl.store(dst + offsets, tl.load(src + offsets, mask=tile, other=0.0), mask=tile)


@triton.jit
def _row_stats(src, row_stride, rows, row_ok, D, eps, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Mean and 1/σ over the D columns of `rows` of src (rows row_stride apart): two passes, no cancellation."""
    cols = tl.arange(0, BLOCK_N)
    total = tl.zeros((BLOCK_B,), tl.float32)
    for n0 in range(0, D, BLOCK_N):
        n = n0 + cols
        tile = row_ok[:, None] & (n < D)[None, :]
        total += tl.sum(tl.load(src + rows[:, None] * row_stride + n[None, :], mask=tile, other=0.0), axis=1)
    mean = total / D
    spread = tl.zeros((BLOCK_B,), tl.float32)
    for n0 in range(0, D, BLOCK_N):
        n = n0 + cols
        tile = row_ok[:, None] & (n < D)[None, :]
        x = tl.load(src + rows[:, None] * row_stride + n[None, :], mask=tile, other=0.0)
        centred = tl.where(tile, x - mean[:, None], 0.0)
        spread += tl.sum(centred * centred, axis=1)
    return mean, 1.0 / tl.sqrt_rn(spread / D + eps)


@triton.jit
def _norm_rows(src, gamma, beta, x_hat, out, rstd, rows, row_ok, D, eps,
               BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """LayerNorm over the D columns of `rows` of src (rows D apart): writes x̂, γ ⊙ x̂ + β and 1/σ per row."""
    cols = tl.arange(0, BLOCK_N)
    mean, inv = _row_stats(src, D, rows, row_ok, D, eps, BLOCK_B, BLOCK_N)
    tl.store(rstd + rows, inv, mask=row_ok)
    for n0 in range(0, D, BLOCK_N):
        n = n0 + cols
        n_ok = n < D
        tile = row_ok[:, None] & n_ok[None, :]
        offsets = rows[:, None] * D + n[None, :]
        normed = (tl.load(src + offsets, mask=tile, other=0.0) - mean[:, None]) * inv[:, None]
        g = tl.load(gamma + n, mask=n_ok, other=0.0)
        b = tl.load(beta + n, mask=n_ok, other=0.0)
        tl.store(x_hat + offsets, normed, mask=tile)
        tl.store(out + offsets, normed * g[None, :] + b[None, :], mask=tile)


@triton.jit
def _norm_rows_backward(d_out, x_hat, gamma, rstd, d_in, rows, row_ok, D, ACCUMULATE: tl.constexpr,
                        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """dL/dx of a LayerNorm from dL/d(γ ⊙ x̂ + β): (1/σ)(dx̂ - mean(dx̂) - x̂ mean(dx̂ ⊙ x̂)) with dx̂ = γ ⊙ dL/dout,
    written to d_in or, with ACCUMULATE, added to it (the residual stream's gradient)."""
    cols = tl.arange(0, BLOCK_N)
    sum_d = tl.zeros((BLOCK_B,), tl.float32)
    sum_dx = tl.zeros((BLOCK_B,), tl.float32)
    for n0 in range(0, D, BLOCK_N):
        n = n0 + cols
        n_ok = n < D
        tile = row_ok[:, None] & n_ok[None, :]
        offsets = rows[:, None] * D + n[None, :]
        d_norm = tl.load(d_out + offsets, mask=tile, other=0.0) * tl.load(gamma + n, mask=n_ok, other=0.0)[None, :]
        sum_d += tl.sum(d_norm, axis=1)
        sum_dx += tl.sum(d_norm * tl.load(x_hat + offsets, mask=tile, other=0.0), axis=1)
    mean_d = sum_d / D
    mean_dx = sum_dx / D
    inv = tl.load(rstd + rows, mask=row_ok, other=0.0)
    for n0 in range(0, D, BLOCK_N):
        n = n0 + cols
        n_ok = n < D
        tile = row_ok[:, None] & n_ok[None, :]
        offsets = rows[:, None] * D + n[None, :]
        d_norm = tl.load(d_out + offsets, mask=tile, other=0.0) * tl.load(gamma + n, mask=n_ok, other=0.0)[None, :]
        normed = tl.load(x_hat + offsets, mask=tile, other=0.0)
        grad = inv[:, None] * (d_norm - mean_d[:, None] - normed * mean_dx[:, None])
        if ACCUMULATE:
            grad += tl.load(d_in + offsets, mask=tile, other=0.0)
        tl.store(d_in + offsets, grad, mask=tile)


@triton.jit
def _mlp_forward_kernel(
    token_part, contexts, masks, context_masks,  # (T, B, D), (T+1, B, C) with c_0 filled in, (T, L, B, D), (T, B, C)
    context_weight, stride_cw,  # W_c (D, C), rows stride_cw apart
    norm_w, norm_b, up_w, up_b, down_w, down_b,  # per block, stacked: (L, D) ×2, (L, K, D), (L, K), (L, D, K), (L, D)
    final_w, final_b, proj_weight, proj_bias, context_norm_w, context_norm_b,  # (D,) ×2, (3C, D), (3C,), (C,) ×2
    # written: h_l (L+1, T, B, D); x̂_l and x_l (L, T, B, D); 1/σ_l (L, T, B); u_l and GELU(u_l) (L, T, B, K);
    # the final norm's x̂ (T, B, D) and 1/σ (T, B); the head input h (T, B, D); [Δ, g_f, g_i] (T, B, 3C);
    # the context norm's x̂ (T, B, C) and 1/σ (T, B)
    res, x_hat, x_in, rstd, up, act, final_hat, final_rstd, hidden, proj, context_hat, context_rstd,
    arrived,  # the grid barrier's counter (GRID)
    B, T, D, K, C, L, eps, clamp,
    HAS_MASKS: tl.constexpr, HAS_CONTEXT_MASKS: tl.constexpr, FINAL_NORM: tl.constexpr, TANH: tl.constexpr,
    HAS_CLAMP: tl.constexpr, GRID: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # Phases as kernel.py's: tiles of BLOCK_B rows × BLOCK_N columns (row-wise work: one tile a row block), taken by
    # a program's own row block (window launch) or dealt over all programs (loop launch, GRID)
    row_blocks = tl.cdiv(B, BLOCK_B)
    span = tl.arange(0, BLOCK_B)
    d_tiles = tl.cdiv(D, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_N)
    passed = 0
    for t in range(T):
        # h_0 = P_t + (c ⊙ m_c) W_cᵀ
        first, stop, step = _phase_tiles(d_tiles, row_blocks, GRID)
        for tile in range(first, stop, step):
            rows, n = _tile_at(tile, d_tiles, BLOCK_B, BLOCK_N)
            row_ok, n_ok = rows < B, n < D
            acc = _first_layer_tile(token_part + t * B * D, contexts + t * B * C, context_masks + t * B * C,
                                    HAS_CONTEXT_MASKS, context_weight, stride_cw, rows, row_ok, n, n_ok, D, C, BLOCK_K,
                                    PRECISION)  # fmt: skip
            tl.store(res + t * B * D + rows[:, None] * D + n[None, :], acc, mask=row_ok[:, None] & n_ok[None, :])
        passed += 1
        _phase_end(arrived, passed, GRID)
        for layer in range(L):
            here = (layer * T + t) * B  # row offset of (layer, t) in the (L, T, B, ·) buffers
            below = res + (layer * T + t) * B * D  # h_{l-1}
            first, stop, step = _phase_tiles(1, row_blocks, GRID)
            for block in range(first, stop, step):
                rows = block * BLOCK_B + span
                _norm_rows(below, norm_w + layer * D, norm_b + layer * D, x_hat + here * D, x_in + here * D,
                           rstd + here, rows, rows < B, D, eps, BLOCK_B, BLOCK_N)  # fmt: skip
            passed += 1
            _phase_end(arrived, passed, GRID)
            # u = x W_upᵀ + b_up and GELU(u): K = ratio · D columns
            first, stop, step = _phase_tiles(k_tiles, row_blocks, GRID)
            for tile in range(first, stop, step):
                rows, k = _tile_at(tile, k_tiles, BLOCK_B, BLOCK_N)
                row_ok, k_ok = rows < B, k < K
                in_tile = row_ok[:, None] & k_ok[None, :]
                offsets = here * K + rows[:, None] * K + k[None, :]
                bias = tl.load(up_b + layer * K + k, mask=k_ok, other=0.0)
                acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32) + bias[None, :]
                acc = _dot_rows(acc, x_in + here * D, D, x_in, False, rows, row_ok, D, up_w + layer * K * D, 1, D, k,
                                k_ok, BLOCK_K, PRECISION)  # fmt: skip
                tl.store(up + offsets, acc, mask=in_tile)
                tl.store(act + offsets, 0.5 * acc * (1.0 + tl.math.erf(acc * SQRT_HALF)), mask=in_tile)
            passed += 1
            _phase_end(arrived, passed, GRID)
            # h_l = h_{l-1} + (GELU(u) W_downᵀ + b_down) ⊙ m_l
            first, stop, step = _phase_tiles(d_tiles, row_blocks, GRID)
            for tile in range(first, stop, step):
                rows, n = _tile_at(tile, d_tiles, BLOCK_B, BLOCK_N)
                row_ok, n_ok = rows < B, n < D
                in_tile = row_ok[:, None] & n_ok[None, :]
                offsets = rows[:, None] * D + n[None, :]
                bias = tl.load(down_b + layer * D + n, mask=n_ok, other=0.0)
                acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32) + bias[None, :]
                acc = _dot_rows(acc, act + here * K, K, act, False, rows, row_ok, K, down_w + layer * D * K, 1, K, n,
                                n_ok, BLOCK_K, PRECISION)  # fmt: skip
                if HAS_MASKS:
                    acc = acc * tl.load(masks + (t * L + layer) * B * D + offsets, mask=in_tile, other=0.0)
                acc += tl.load(below + offsets, mask=in_tile, other=0.0)
                tl.store(res + ((layer + 1) * T + t) * B * D + offsets, acc, mask=in_tile)
            passed += 1
            _phase_end(arrived, passed, GRID)
        # the head input: the final norm of h_L, or h_L itself
        top = res + (L * T + t) * B * D
        first, stop, step = _phase_tiles(1, row_blocks, GRID)
        for block in range(first, stop, step):
            rows = block * BLOCK_B + span
            if FINAL_NORM:
                _norm_rows(top, final_w, final_b, final_hat + t * B * D, hidden + t * B * D, final_rstd + t * B, rows,
                           rows < B, D, eps, BLOCK_B, BLOCK_N)  # fmt: skip
            else:
                _copy_rows(top, hidden + t * B * D, rows, rows < B, D, BLOCK_N)
        passed += 1
        _phase_end(arrived, passed, GRID)
        # [Δ, g_f, g_i] = h W_gᵀ + b_g
        _project_phase(hidden + t * B * D, proj_weight, proj_bias, proj + t * B * 3 * C, B, D, C, GRID, BLOCK_B,
                       BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
        passed += 1
        _phase_end(arrived, passed, GRID)
        # c' = γ ⊙ (x - μ)/σ_x + β, clamped where K > 0
        _update_phase(proj + t * B * 3 * C, contexts, t, context_norm_w, context_norm_b, context_hat + t * B * C,
                      context_rstd + t * B, B, C, eps, clamp, TANH, HAS_CLAMP, GRID, BLOCK_B, BLOCK_N)  # fmt: skip
        passed += 1
        _phase_end(arrived, passed, GRID)


@triton.jit
def _mlp_backward_kernel(
    # dL/dh (T, B, D), the head input's gradient; dL/dc carried (B, C): in dL/dc_T, out dL/dc_0;
    # scratch: f ⊙ dL/dx (B, C) and dL/dh_l carried down the blocks (B, D)
    grad_hidden, d_context, d_kept, d_res,
    contexts, masks, context_masks, context_weight, stride_cw, norm_w, up_w, down_w, final_w, proj_weight,
    context_norm_w,
    x_hat, rstd, up, final_hat, final_rstd, proj, context_hat, context_rstd,  # what the forward stored
    # written: dL/dh (T, B, D) with the projection's share; dL/dh_0 (T, B, D); per block dL/d(down's output) after
    # the mask (L, T, B, D), dL/du (L, T, B, K) and dL/dx_l (L, T, B, D); dL/d[Δ, g_f, g_i] (T, B, 3C); dL/dc' before
    # the clamp (T, B, C)
    d_hidden, d_first, d_down, d_up, d_x, d_proj, d_out,
    arrived,  # the grid barrier's counter (GRID)
    B, T, D, K, C, L, clamp,
    HAS_MASKS: tl.constexpr, HAS_CONTEXT_MASKS: tl.constexpr, FINAL_NORM: tl.constexpr, TANH: tl.constexpr,
    HAS_CLAMP: tl.constexpr, GRID: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    row_blocks = tl.cdiv(B, BLOCK_B)
    span = tl.arange(0, BLOCK_B)
    d_tiles = tl.cdiv(D, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_N)
    passed = 0
    for reverse in range(T):
        t = T - 1 - reverse
        # Through the clamp, the context norm and the gated mix (Δ's gradient through tanh's derivative)
        _update_backward_phase(d_context, d_kept, contexts, t, proj, context_norm_w, context_hat + t * B * C,
                               context_rstd + t * B, d_proj, d_out + t * B * C, B, C, clamp, TANH, HAS_CLAMP, GRID,
                               BLOCK_B, BLOCK_N)  # fmt: skip
        passed += 1
        _phase_end(arrived, passed, GRID)
        # dL/dh = grad_hidden_t + d[Δ, g_f, g_i] W_g
        first, stop, step = _phase_tiles(d_tiles, row_blocks, GRID)
        for tile in range(first, stop, step):
            rows, n = _tile_at(tile, d_tiles, BLOCK_B, BLOCK_N)
            row_ok, n_ok = rows < B, n < D
            acc = _head_input_grad(grad_hidden + t * B * D, d_proj + t * B * 3 * C, proj_weight, rows, row_ok, n, n_ok,
                                   D, C, BLOCK_K, PRECISION)  # fmt: skip
            tl.store(d_hidden + t * B * D + rows[:, None] * D + n[None, :], acc, mask=row_ok[:, None] & n_ok[None, :])
        passed += 1
        _phase_end(arrived, passed, GRID)
        # dL/dh_L: through the final norm, or dL/dh itself
        first, stop, step = _phase_tiles(1, row_blocks, GRID)
        for block in range(first, stop, step):
            rows = block * BLOCK_B + span
            if FINAL_NORM:
                _norm_rows_backward(d_hidden + t * B * D, final_hat + t * B * D, final_w, final_rstd + t * B, d_res,
                                    rows, rows < B, D, False, BLOCK_B, BLOCK_N)  # fmt: skip
            else:
                _copy_rows(d_hidden + t * B * D, d_res, rows, rows < B, D, BLOCK_N)
        passed += 1
        _phase_end(arrived, passed, GRID)
        for down in range(L):
            layer = L - 1 - down
            here = (layer * T + t) * B
            # the down projection's output gradient: dL/dh_l ⊙ m_l
            first, stop, step = _phase_tiles(d_tiles, row_blocks, GRID)
            for tile in range(first, stop, step):
                rows, n = _tile_at(tile, d_tiles, BLOCK_B, BLOCK_N)
                in_tile = (rows < B)[:, None] & (n < D)[None, :]
                offsets = rows[:, None] * D + n[None, :]
                grad = tl.load(d_res + offsets, mask=in_tile, other=0.0)
                if HAS_MASKS:
                    grad = grad * tl.load(masks + (t * L + layer) * B * D + offsets, mask=in_tile, other=0.0)
                tl.store(d_down + here * D + offsets, grad, mask=in_tile)
            passed += 1
            _phase_end(arrived, passed, GRID)
            # dL/du = (dL/d(down) W_down) ⊙ GELU'(u)
            first, stop, step = _phase_tiles(k_tiles, row_blocks, GRID)
            for tile in range(first, stop, step):
                rows, k = _tile_at(tile, k_tiles, BLOCK_B, BLOCK_N)
                row_ok, k_ok = rows < B, k < K
                in_tile = row_ok[:, None] & k_ok[None, :]
                offsets = here * K + rows[:, None] * K + k[None, :]
                acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
                acc = _dot_rows(acc, d_down + here * D, D, d_down, False, rows, row_ok, D, down_w + layer * D * K, K, 1,
                                k, k_ok, BLOCK_K, PRECISION)  # fmt: skip
                u = tl.load(up + offsets, mask=in_tile, other=0.0)
                slope = 0.5 * (1.0 + tl.math.erf(u * SQRT_HALF)) + u * INV_SQRT_2PI * tl.exp(-0.5 * u * u)
                tl.store(d_up + offsets, acc * slope, mask=in_tile)
            passed += 1
            _phase_end(arrived, passed, GRID)
            # dL/dx_l = dL/du W_up
            first, stop, step = _phase_tiles(d_tiles, row_blocks, GRID)
            for tile in range(first, stop, step):
                rows, n = _tile_at(tile, d_tiles, BLOCK_B, BLOCK_N)
                row_ok, n_ok = rows < B, n < D
                acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
                acc = _dot_rows(acc, d_up + here * K, K, d_up, False, rows, row_ok, K, up_w + layer * K * D, D, 1, n,
                                n_ok, BLOCK_K, PRECISION)  # fmt: skip
                tl.store(d_x + here * D + rows[:, None] * D + n[None, :], acc, mask=row_ok[:, None] & n_ok[None, :])
            passed += 1
            _phase_end(arrived, passed, GRID)
            # dL/dh_{l-1} = dL/dh_l + the block norm's backward of dL/dx_l
            first, stop, step = _phase_tiles(1, row_blocks, GRID)
            for block in range(first, stop, step):
                rows = block * BLOCK_B + span
                _norm_rows_backward(d_x + here * D, x_hat + here * D, norm_w + layer * D, rstd + here, d_res, rows,
                                    rows < B, D, True, BLOCK_B, BLOCK_N)  # fmt: skip
            passed += 1
            _phase_end(arrived, passed, GRID)
        # dL/dh_0 (the token part's gradient, kept for the weight gradients), and dL/dc = f ⊙ dx + (dL/dh_0 W_c) ⊙ m_c
        # from the same carried rows: both only read d_res, written before the last barrier, so they share a phase
        first, stop, step = _phase_tiles(1, row_blocks, GRID)
        for block in range(first, stop, step):
            rows = block * BLOCK_B + span
            _copy_rows(d_res, d_first + t * B * D, rows, rows < B, D, BLOCK_N)
        _context_grad_phase(d_res, D, context_weight, stride_cw, context_masks + t * B * C, HAS_CONTEXT_MASKS, d_kept,
                            d_context, B, C, GRID, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
        passed += 1
        _phase_end(arrived, passed, GRID)


def mlp_phases(layers: int) -> int:
    """Phases a step, each ended by a barrier: 3 per block + 4 forward, 4 per block + 4 backward."""
    return 4 * layers + 4


def mlp_unsupported_reason(cell, batch: int, steps: int) -> str | None:
    """Why these kernels cannot run this MLP-block cell on a (batch, steps) window, or None when they can."""
    if cell.blocks is None or cell.context_scales != 1 or not hasattr(cell, "context_clamp") or cell.update_from_stream:
        return COVERED
    if cell.final_norm_type != "layer":
        return f"the kernels compute the final norm as a LayerNorm, not final_norm_type {cell.final_norm_type!r}"
    dtypes = {p.dtype for p in cell.parameters()}
    if dtypes != {torch.float32}:
        return f"the kernel runs in float32; the cell's parameters are {', '.join(sorted(map(str, dtypes)))}"
    width, inner, layers = cell.layers[0].out_features, cell.blocks[0].up.out_features, len(cell.blocks)
    size_c = cell.context_size
    largest = max((layers + 1) * steps * batch * width, layers * steps * batch * inner, steps * batch * 3 * size_c)
    if largest >= INDEX_LIMIT:
        return f"a buffer of {largest:,} values (batch {batch}, window {steps}) overflows the kernel's int32 offsets"
    return None


class MLPKernelScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, options, programs, token_part, context, masks, context_masks, context_weight, context_norm_w,
                context_norm_b, proj_weight, proj_bias, final_w, final_b, *blocks):  # fmt: skip
        # programs: 0 for the window launch, else the loop launch's programs (kernel.py's `_launch`); token_part (T, B, D) with the input layer's bias; context (B, C); masks (T, L, B, D) or None; context_masks
        # (T, B, C) or None; context_weight (D, C), a view of the input layer's weight; final_w, final_b None without
        # a final norm; blocks: norm.weight, norm.bias, up.weight, up.bias, down.weight, down.bias of each block.
        eps, clamp, tanh = options
        steps, batch, width = token_part.shape
        size_c, layers, inner = context.shape[1], len(blocks) // 6, blocks[2].shape[0]
        norm_w, norm_b, up_w, up_b, down_w, down_b = (torch.stack(blocks[i::6]).contiguous() for i in range(6))
        final_norm = final_w is not None
        new = token_part.new_empty
        contexts = new(steps + 1, batch, size_c)
        contexts[0] = context
        res = new(layers + 1, steps, batch, width)
        x_hat, x_in = new(layers, steps, batch, width), new(layers, steps, batch, width)
        rstd = new(layers, steps, batch)
        up, act = new(layers, steps, batch, inner), new(layers, steps, batch, inner)
        final_hat, final_rstd = new(steps, batch, width), new(steps, batch)
        hidden = new(steps, batch, width)
        proj = new(steps, batch, 3 * size_c)
        context_hat, context_rstd = new(steps, batch, size_c), new(steps, batch)
        masks_or_any = token_part if masks is None else masks.contiguous()
        context_masks_or_any = token_part if context_masks is None else context_masks.contiguous()
        final_w_or_any = final_w if final_norm else context_norm_w
        final_b_or_any = final_b if final_norm else context_norm_b
        precision = _precision()
        grid, meta = _launch(token_part.device, programs, batch, width, mlp_phases(layers), steps)
        _mlp_forward_kernel[grid](
            token_part.contiguous(), contexts, masks_or_any, context_masks_or_any, context_weight,
            context_weight.stride(0), norm_w, norm_b, up_w, up_b, down_w, down_b, final_w_or_any, final_b_or_any,
            proj_weight.contiguous(), proj_bias, context_norm_w, context_norm_b, res, x_hat, x_in, rstd, up, act,
            final_hat, final_rstd, hidden, proj, context_hat, context_rstd, _counter(token_part, programs),
            batch, steps, width, inner, size_c, layers, eps, clamp,
            HAS_MASKS=masks is not None, HAS_CONTEXT_MASKS=context_masks is not None, FINAL_NORM=final_norm, TANH=tanh,
            HAS_CLAMP=clamp > 0, PRECISION=precision, **meta,
        )  # fmt: skip
        ctx.save_for_backward(contexts, masks_or_any, context_masks_or_any, context_weight, norm_w, up_w, down_w,
                              final_w_or_any, proj_weight, context_norm_w, x_hat, x_in, rstd, up, act, final_hat,
                              final_rstd, hidden, proj, context_hat, context_rstd)  # fmt: skip
        ctx.flags = (masks is not None, context_masks is not None, final_norm, tanh, clamp, precision, programs)
        return hidden, contexts[-1].clone()  # hidden (T, B, D), last context (B, C)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hidden, grad_context):
        (contexts, masks, context_masks, context_weight, norm_w, up_w, down_w, final_w, proj_weight, context_norm_w,
         x_hat, x_in, rstd, up, act, final_hat, final_rstd, hidden, proj, context_hat, context_rstd) = ctx.saved_tensors  # fmt: skip
        has_masks, has_context_masks, final_norm, tanh, clamp, precision, programs = ctx.flags
        layers, steps, batch, width = x_hat.shape
        size_c, inner = contexts.shape[2], up.shape[-1]
        grad_hidden = torch.zeros_like(hidden) if grad_hidden is None else grad_hidden.contiguous()
        d_context = torch.zeros_like(contexts[-1]) if grad_context is None else grad_context.clone().contiguous()
        d_hidden, d_first = torch.empty_like(hidden), torch.empty_like(hidden)
        d_down, d_up, d_x = torch.empty_like(x_hat), torch.empty_like(up), torch.empty_like(x_hat)
        d_proj, d_out = torch.empty_like(proj), torch.empty_like(context_hat)
        grid, meta = _launch(contexts.device, programs, batch, width, mlp_phases(layers), steps)
        _mlp_backward_kernel[grid](
            grad_hidden, d_context, torch.empty_like(d_context), hidden.new_empty(batch, width), contexts, masks,
            context_masks, context_weight, context_weight.stride(0), norm_w, up_w, down_w, final_w, proj_weight,
            context_norm_w, x_hat, rstd, up, final_hat, final_rstd, proj, context_hat, context_rstd,
            d_hidden, d_first, d_down, d_up, d_x, d_proj, d_out, _counter(contexts, programs),
            batch, steps, width, inner, size_c, layers, clamp,
            HAS_MASKS=has_masks, HAS_CONTEXT_MASKS=has_context_masks, FINAL_NORM=final_norm, TANH=tanh,
            HAS_CLAMP=clamp > 0, PRECISION=precision, **meta,
        )  # fmt: skip

        # Weight gradients: one matmul (or sum) over all T·B rows each, from the stored activations.
        def flat(x):
            return x.reshape(-1, x.shape[-1])

        reads = contexts[:-1] * context_masks if has_context_masks else contexts[:-1]  # what h_0 read
        blocks = []
        for layer in range(layers):
            blocks += [(d_x[layer] * x_hat[layer]).sum((0, 1)), d_x[layer].sum((0, 1)),
                       flat(d_up[layer]).t() @ flat(x_in[layer]), d_up[layer].sum((0, 1)),
                       flat(d_down[layer]).t() @ flat(act[layer]), d_down[layer].sum((0, 1))]  # fmt: skip
        final = ((d_hidden * final_hat).sum((0, 1)), d_hidden.sum((0, 1))) if final_norm else (None, None)
        return (None, None, d_first, d_context, None, None, flat(d_first).t() @ flat(reads), (d_out * context_hat).sum((0, 1)),
                d_out.sum((0, 1)), flat(d_proj).t() @ flat(hidden), d_proj.sum((0, 1)), *final, *blocks)  # fmt: skip


def mlp_kernel_scan(cell, token_embeddings: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`scan_mlp.mlp_scan` through the kernels: (B, T, E), (B, C) → hidden (B, T, D), last context. The masks
    are drawn as scan_mlp.py and scan.autograd_scan draw them, so one seed gives every path the same masks."""
    reason = mlp_unsupported_reason(cell, token_embeddings.shape[0], token_embeddings.shape[1])
    if reason is not None:
        raise ValueError(reason)
    first = cell.layers[0]
    token_weight, context_weight = first.weight.split([cell.embedding_size, cell.context_size], dim=1)
    blocks = [p for block in cell.blocks for p in (block.norm.weight, block.norm.bias, block.up.weight, block.up.bias,
                                                   block.down.weight, block.down.bias)]  # fmt: skip
    final_w, final_b = (cell.final_norm.weight, cell.final_norm.bias) if cell.final_norm is not None else (None, None)
    dropout_p = cell.dropout.p if cell.training else 0.0
    context_dropout_p = cell.context_dropout.p if cell.training else 0.0
    options = (cell.context_norm.eps, float(cell.context_clamp), cell.candidate == "tanh")
    with torch.autocast(token_embeddings.device.type, enabled=False):
        token_part = F.linear(token_embeddings.float(), token_weight, first.bias)
        token_part = token_part.transpose(0, 1).contiguous()  # (T, B, D)
        steps, batch, width = token_part.shape
        masks = dropout_masks(token_part, (steps, len(cell.blocks), batch, width), dropout_p)
        context_masks = dropout_masks(token_part, (steps, batch, cell.context_size), context_dropout_p)
        programs = loop_programs(token_part.device, batch, width) if cell.kernel_loop else 0
        hidden, context = MLPKernelScan.apply(
            options, programs, token_part, context.float(), masks, context_masks, context_weight, cell.context_norm.weight,
            cell.context_norm.bias, cell.context_proj.weight, cell.context_proj.bias, final_w, final_b, *blocks,
        )  # fmt: skip
    return hidden.transpose(0, 1), context
