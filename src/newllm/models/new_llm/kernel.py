"""Training fast path as two Triton kernels: the prototype cell's whole window, forward and backward, one launch each.

scan.py's hand-written scan still launches ~40 small kernels per token (or replays them from a CUDA
graph); the GPU then waits on launch and dependency latency, not on arithmetic. Here the loop over
T runs inside the kernel. The function is scan.py's `NewLLMScan` for the prototype cell (Linear →
ReLU layers without `residual` or `ffn_norm`, a linear candidate, a clamp, one context scale);
per token, with m_l and m_c the dropout masks (already divided by 1 - p):

    a_1 = P_t + (c ⊙ m_c) W_cᵀ,  a_l = h_{l-1} W_lᵀ + b_l,  h_l = relu(a_l) ⊙ m_l,  h = h_L
    [Δ, g_f, g_i] = h W_gᵀ + b_g,  f = σ(g_f),  i = σ(g_i)
    x = f ⊙ c + i ⊙ Δ,  x̂ = (x - μ) / σ_x,  c' = clamp(γ ⊙ x̂ + β, ±K)

Design:
    Outside the kernels, as in scan.py: P = e W_eᵀ + b_1 for all T positions at once (one matmul), the
    dropout masks (drawn in the same order and shapes as scan.py, so a seed gives both paths the
    same masks), the vocabulary head, and the weight gradients (one matmul per weight over all
    T·B rows, from the activations the forward stored).

    A step is a few phases, each a set of output tiles of BLOCK_B rows (16: the smallest M of `tl.dot`)
    by BLOCK_N columns:
        layer 1, layers 2..L, the [Δ, g_f, g_i] projection: each tile a loop over BLOCK_K-wide
            slices of the input rows and of the weight;
        the context LayerNorm: one tile per row block, three passes over C-tiles (mean, variance,
            normalise), recomputing x from the stored projection, so no row needs to be whole in
            registers.
    Two launches run the same kernels and differ only in who takes which tile and how a phase ends:
        window launch (fast path "kernel"): each program owns one row block for the whole window
            and walks t = 0..T-1 itself, every tile of its rows in turn; a phase ends with
            `tl.debug_barrier()` (a CTA-wide barrier, which also orders the program's global-memory
            writes before its reads), since a program reads back only its own rows.
        loop launch (fast path "kernel_loop"): one program per SM (`loop_programs`), all walking
            the window together; each phase's tiles are dealt round-robin over them, and a phase
            ends with a grid barrier (`_grid_barrier`), since the next phase reads what every
            program wrote. The window launch's program reads all ≈4 MB of weights every step; here
            each program reads its columns' share, so the weights stream through every SM at once.
    Only one tile of activations and one of weights is in registers at a time. The activations of a
    step go to the buffers the backward needs anyway (a_l, h_l, the projection, x̂, 1/σ, the
    contexts), where the next phase reads them back from L1/L2; the weights (≈1M values at
    full size) do not fit on chip and are streamed from L2 each step. Because nothing is whole in
    registers, no width is too large; the limit is int32 indexing (every buffer below 2^31 values).

    Backward: stored activations, not recomputation. Recomputing would run the serial forward
    chain a second time inside the backward's own serial chain; storing costs memory that scan.py
    already spends (a_l and h_l: 2·L·T·B·H values). Walking t = T-1..0, each program carries
    dL/dc for its rows in a (B, C) buffer and writes dL/da_l, dL/d[Δ, g_f, g_i] and dL/dc' (after
    the clamp) per step; the transposed matmuls reuse the forward's tile loop.

    Dtype: fp32 throughout, as scan.py runs the recurrence under bf16 autocast too. The dots use
    TF32 when torch's float32 matmul precision allows it (`torch.set_float32_matmul_precision`),
    as cuBLAS does for the eager path, and IEEE fp32 otherwise.

Timed: the window launch is slower than the graphed scan (docs/performance.md, "Fused kernel"), its pace set
by one program reading every weight each step; the loop launch is what that section proposes instead.

On CPU the same kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before triton is
imported): that is how the tests check them without a GPU. The interpreter runs one program at
a time, so it cannot catch a missing barrier, and runs a loop launch as one program, for which every grid
barrier is already met; the CUDA tests, with many programs, check the barriers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.nn import functional as F

from newllm.models.new_llm.scan import ScanOptions, dropout_masks

BLOCK_B = 16  # batch rows per program: tl.dot needs M ≥ 16
BLOCK_N = 64  # output columns per tile
BLOCK_K = 32  # input columns per dot
INDEX_LIMIT = 2**31  # offsets are int32


@triton.jit
def _dot_rows(acc, x_ptr, x_row, scale_ptr, HAS_SCALE: tl.constexpr, rows, row_ok, K, w_ptr, w_k, w_n, n, n_ok,
              BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """acc + Σ_k X[rows, k] (⊙ S[rows, k]) · W[k, n]: X's rows x_row apart, W's (k, n) at k·w_k + n·w_n."""
    cols = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        k_ok = k < K
        x_offsets = rows[:, None] * x_row + k[None, :]
        x_mask = row_ok[:, None] & k_ok[None, :]
        x = tl.load(x_ptr + x_offsets, mask=x_mask, other=0.0)
        if HAS_SCALE:
            x = x * tl.load(scale_ptr + x_offsets, mask=x_mask, other=0.0)
        acc = tl.dot(x, _load_w(w_ptr, w_k, w_n, k, k_ok, n, n_ok), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _load_w(w_ptr, w_k, w_n, k, k_ok, n, n_ok):
    """The (k, n) tile of W at k·w_k + n·w_n, in float32 whatever W is stored in (a bf16 decode head is summed in
    float32 like the rest; for float32 weights the cast is nothing)."""
    tile = tl.load(w_ptr + k[:, None] * w_k + n[None, :] * w_n, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
    return tile.to(tl.float32)


@triton.jit
def _first_layer_tile(token_part_t, contexts_t, context_masks_t, HAS_CONTEXT_MASKS: tl.constexpr, context_weight,
                      stride_cw, rows, row_ok, n, n_ok, H, C, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """P_t + (c ⊙ m_c) W_cᵀ on one (rows, n) tile: the first layer before any activation."""
    acc = tl.load(token_part_t + rows[:, None] * H + n[None, :], mask=row_ok[:, None] & n_ok[None, :], other=0.0)
    return _dot_rows(acc, contexts_t, C, context_masks_t, HAS_CONTEXT_MASKS, rows, row_ok, C, context_weight, 1,
                     stride_cw, n, n_ok, BLOCK_K, PRECISION)  # fmt: skip


@triton.jit
def _context_grad_tile(d_first_t, H, context_weight, stride_cw, context_masks_t, HAS_CONTEXT_MASKS: tl.constexpr, d_kept,
                       d_context, rows, row_ok, j, j_ok, C, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """dL/dc = f ⊙ dx (d_kept) + (dL/d(first layer) W_c) ⊙ m_c on one (rows, j) tile, into d_context: the first layer
    read c ⊙ m_c."""
    tile = row_ok[:, None] & j_ok[None, :]
    offsets = rows[:, None] * C + j[None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
    acc = _dot_rows(acc, d_first_t, H, d_first_t, False, rows, row_ok, H, context_weight, stride_cw, 1, j, j_ok,
                    BLOCK_K, PRECISION)  # fmt: skip
    if HAS_CONTEXT_MASKS:
        acc = acc * tl.load(context_masks_t + offsets, mask=tile, other=0.0)
    acc += tl.load(d_kept + offsets, mask=tile, other=0.0)
    tl.store(d_context + offsets, acc, mask=tile)


@triton.jit
def _project_tile(hidden_t, proj_weight, proj_bias, proj_t, rows, row_ok, part, j, j_ok, H, C, BLOCK_B: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Part `part` (0: Δ, 1: g_f, 2: g_i) of h W_gᵀ + b_g on one (rows, j) tile of context columns: rows part·C + j of
    W_g."""
    bias = tl.load(proj_bias + part * C + j, mask=j_ok, other=0.0)
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32) + bias[None, :]
    acc = _dot_rows(acc, hidden_t, H, hidden_t, False, rows, row_ok, H, proj_weight + part * C * H, 1, H, j, j_ok,
                    BLOCK_K, PRECISION)  # fmt: skip
    tl.store(proj_t + rows[:, None] * 3 * C + part * C + j[None, :], acc, mask=row_ok[:, None] & j_ok[None, :])


@triton.jit
def _head_input_grad(grad_hidden_t, d_proj_t, proj_weight, rows, row_ok, n, n_ok, H, C, BLOCK_K: tl.constexpr,
                     PRECISION: tl.constexpr):  # fmt: skip
    """dL/dh on one (rows, n) tile: the head's gradient plus d[Δ, g_f, g_i] W_g."""
    offsets = rows[:, None] * H + n[None, :]
    acc = tl.load(grad_hidden_t + offsets, mask=row_ok[:, None] & n_ok[None, :], other=0.0)
    return _dot_rows(acc, d_proj_t, 3 * C, d_proj_t, False, rows, row_ok, 3 * C, proj_weight, H, 1, n, n_ok, BLOCK_K,
                     PRECISION)  # fmt: skip


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _mix(proj_t, contexts_t, rows, j, tile, C, TANH: tl.constexpr):
    """x = σ(g_f) ⊙ c + σ(g_i) ⊙ Δ (Δ through tanh with TANH) on one (rows, j) tile, from the stored projection;
    0 outside the tile."""
    at = rows[:, None] * 3 * C + j[None, :]
    delta = tl.load(proj_t + at, mask=tile, other=0.0)
    if TANH:
        delta = _tanh(delta)
    forget = tl.sigmoid(tl.load(proj_t + at + C, mask=tile, other=0.0))
    inp = tl.sigmoid(tl.load(proj_t + at + 2 * C, mask=tile, other=0.0))
    context = tl.load(contexts_t + rows[:, None] * C + j[None, :], mask=tile, other=0.0)
    return tl.where(tile, forget * context + inp * delta, 0.0)


@triton.jit
def _context_update(proj_t, contexts, t, norm_weight, norm_bias, x_hat_t, rstd_t, rows, row_ok, B, C, eps, clamp,
                    TANH: tl.constexpr, HAS_CLAMP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """c_{t+1} = γ ⊙ (x - μ)/σ_x + β (clamped to ±K with HAS_CLAMP) from the step's stored projection: mean, then
    variance (two passes: no cancellation), then normalise; writes x̂ and 1/σ for the backward."""
    cols = tl.arange(0, BLOCK_N)
    contexts_t = contexts + t * B * C
    total = tl.zeros((BLOCK_B,), tl.float32)
    for j0 in range(0, C, BLOCK_N):
        j = j0 + cols
        tile = row_ok[:, None] & (j < C)[None, :]
        total += tl.sum(_mix(proj_t, contexts_t, rows, j, tile, C, TANH), axis=1)
    mean = total / C
    spread = tl.zeros((BLOCK_B,), tl.float32)
    for j0 in range(0, C, BLOCK_N):
        j = j0 + cols
        tile = row_ok[:, None] & (j < C)[None, :]
        centred = tl.where(tile, _mix(proj_t, contexts_t, rows, j, tile, C, TANH) - mean[:, None], 0.0)
        spread += tl.sum(centred * centred, axis=1)
    inv = 1.0 / tl.sqrt_rn(spread / C + eps)
    tl.store(rstd_t + rows, inv, mask=row_ok)
    for j0 in range(0, C, BLOCK_N):
        j = j0 + cols
        j_ok = j < C
        tile = row_ok[:, None] & j_ok[None, :]
        normed = (_mix(proj_t, contexts_t, rows, j, tile, C, TANH) - mean[:, None]) * inv[:, None]
        gamma = tl.load(norm_weight + j, mask=j_ok, other=0.0)
        beta = tl.load(norm_bias + j, mask=j_ok, other=0.0)
        out = normed * gamma[None, :] + beta[None, :]
        if HAS_CLAMP:
            out = tl.minimum(tl.maximum(out, -clamp), clamp)
        offsets = rows[:, None] * C + j[None, :]
        tl.store(x_hat_t + offsets, normed, mask=tile)
        tl.store(contexts_t + B * C + offsets, out, mask=tile)


@triton.jit
def _clamped_grad(d_context, contexts_t, offsets, tile, B, C, clamp, HAS_CLAMP: tl.constexpr):
    """dL/dc' on one tile, passed only where the clamp did not bind (|c'| < K)."""
    grad = tl.load(d_context + offsets, mask=tile, other=0.0)
    if HAS_CLAMP:
        out = tl.load(contexts_t + B * C + offsets, mask=tile, other=0.0)
        grad = tl.where(tl.abs(out) < clamp, grad, 0.0)
    return grad


@triton.jit
def _context_update_backward(d_context, d_kept, contexts, t, proj, norm_weight, x_hat_t, rstd_t, d_proj, d_out_t, rows,
                             row_ok, B, C, clamp, TANH: tl.constexpr, HAS_CLAMP: tl.constexpr,
                             BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """Through the clamp and LayerNorm, dx = (1/σ)(dx̂ - mean(dx̂) - x̂ mean(dx̂ ⊙ x̂)) with dx̂ = γ ⊙ dc, then through
    x = f ⊙ c + i ⊙ Δ: writes dL/d[Δ, g_f, g_i] (Δ's through tanh's derivative with TANH), dL/dc' after the clamp
    (for γ and β), and f ⊙ dx (the direct part of dL/dc) to d_kept."""
    cols = tl.arange(0, BLOCK_N)
    contexts_t = contexts + t * B * C
    # Pass 1: the two row means.
    sum_d = tl.zeros((BLOCK_B,), tl.float32)
    sum_dx = tl.zeros((BLOCK_B,), tl.float32)
    for j0 in range(0, C, BLOCK_N):
        j = j0 + cols
        j_ok = j < C
        tile = row_ok[:, None] & j_ok[None, :]
        offsets = rows[:, None] * C + j[None, :]
        grad = _clamped_grad(d_context, contexts_t, offsets, tile, B, C, clamp, HAS_CLAMP)
        tl.store(d_out_t + offsets, grad, mask=tile)
        d_norm = grad * tl.load(norm_weight + j, mask=j_ok, other=0.0)[None, :]
        sum_d += tl.sum(d_norm, axis=1)
        sum_dx += tl.sum(d_norm * tl.load(x_hat_t + offsets, mask=tile, other=0.0), axis=1)
    mean_d = sum_d / C
    mean_dx = sum_dx / C
    inv = tl.load(rstd_t + rows, mask=row_ok, other=0.0)
    # Pass 2: dx, then the projection and the direct part of dL/dc (the clamp recomputed: another thread wrote d_out).
    for j0 in range(0, C, BLOCK_N):
        j = j0 + cols
        j_ok = j < C
        tile = row_ok[:, None] & j_ok[None, :]
        offsets = rows[:, None] * C + j[None, :]
        grad = _clamped_grad(d_context, contexts_t, offsets, tile, B, C, clamp, HAS_CLAMP)
        d_norm = grad * tl.load(norm_weight + j, mask=j_ok, other=0.0)[None, :]
        normed = tl.load(x_hat_t + offsets, mask=tile, other=0.0)
        d_mixed = inv[:, None] * (d_norm - mean_d[:, None] - normed * mean_dx[:, None])
        at = t * B * 3 * C + rows[:, None] * 3 * C + j[None, :]
        delta = tl.load(proj + at, mask=tile, other=0.0)
        forget = tl.sigmoid(tl.load(proj + at + C, mask=tile, other=0.0))
        inp = tl.sigmoid(tl.load(proj + at + 2 * C, mask=tile, other=0.0))
        previous = tl.load(contexts_t + offsets, mask=tile, other=0.0)
        d_delta = d_mixed * inp
        if TANH:
            delta = _tanh(delta)
            d_delta = d_delta * (1.0 - delta * delta)
        tl.store(d_proj + at, d_delta, mask=tile)
        tl.store(d_proj + at + C, d_mixed * previous * forget * (1.0 - forget), mask=tile)
        tl.store(d_proj + at + 2 * C, d_mixed * delta * inp * (1.0 - inp), mask=tile)
        tl.store(d_kept + offsets, d_mixed * forget, mask=tile)


@triton.jit
def _grid_barrier(arrived, target):
    """Wait until `target` arrivals on the counter `arrived`, this program's included.

    The counter only grows: at its k-th barrier every program adds one (release, at GPU scope, after all its threads
    stored their part of the phase) and waits until it reads k × the number of programs (acquire), then reads what
    the others wrote. It deadlocks unless every program is resident at once, so such launches are cooperative
    (`launch_cooperative_grid`): CUDA refuses a grid that cannot be resident instead of starting one that would hang.
    """
    tl.debug_barrier()  # every thread of this program has stored its part of the phase
    tl.atomic_add(arrived, 1, sem="release", scope="gpu")
    while tl.atomic_add(arrived, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()  # no thread reads the next phase's inputs before the wait is over


@triton.jit
def _phase_tiles(tiles_per_row_block, row_blocks, GRID: tl.constexpr):
    """(first, stop, step) of this program's tiles in a phase, tiles numbered row block by row block: in a window
    launch its own row block's, in order; in a loop launch (GRID) every num_programs-th of all of them."""
    me = tl.program_id(0)
    if GRID:
        return me, row_blocks * tiles_per_row_block, tl.num_programs(0)
    else:
        return me * tiles_per_row_block, (me + 1) * tiles_per_row_block, 1


@triton.jit
def _tile_at(tile, tiles_per_row_block, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """The rows and columns of tile number `tile`, tiles numbered row block by row block."""
    rows = (tile // tiles_per_row_block) * BLOCK_B + tl.arange(0, BLOCK_B)
    columns = (tile % tiles_per_row_block) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, columns


@triton.jit
def _phase_end(arrived, passed, GRID: tl.constexpr):
    """After a phase: in a window launch a CTA barrier (a program reads back only its own rows), in a loop launch the
    grid barrier (the next phase reads what every program wrote)."""
    if GRID:
        _grid_barrier(arrived, passed * tl.num_programs(0))
    else:
        tl.debug_barrier()


@triton.jit
def _activate(acc, pre_t, hid_t, masks_t, offsets, tile, HAS_MASKS: tl.constexpr):
    """Store a_l, then h_l = relu(a_l) ⊙ m_l, on one tile."""
    tl.store(pre_t + offsets, acc, mask=tile)
    h = tl.maximum(acc, 0.0)
    if HAS_MASKS:
        h = h * tl.load(masks_t + offsets, mask=tile, other=0.0)
    tl.store(hid_t + offsets, h, mask=tile)


@triton.jit
def _relu_grad(acc, pre_t, masks_t, offsets, tile, HAS_MASKS: tl.constexpr):
    """dL/da_l = dL/dh_l ⊙ m_l ⊙ [a_l > 0] on one tile."""
    if HAS_MASKS:
        acc = acc * tl.load(masks_t + offsets, mask=tile, other=0.0)
    return tl.where(tl.load(pre_t + offsets, mask=tile, other=0.0) > 0, acc, 0.0)


@triton.jit
def _project_phase(hidden_t, proj_weight, proj_bias, proj_t, B, H, C, GRID: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """[Δ, g_f, g_i] = h W_gᵀ + b_g for one step: this program's tiles, BLOCK_N context columns of one of the parts."""
    c_tiles = tl.cdiv(C, BLOCK_N)
    first, stop, step = _phase_tiles(3 * c_tiles, tl.cdiv(B, BLOCK_B), GRID)
    for tile in range(first, stop, step):
        rows = (tile // (3 * c_tiles)) * BLOCK_B + tl.arange(0, BLOCK_B)
        j = (tile % c_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        _project_tile(hidden_t, proj_weight, proj_bias, proj_t, rows, rows < B, (tile % (3 * c_tiles)) // c_tiles, j,
                      j < C, H, C, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip


@triton.jit
def _update_phase(proj_t, contexts, t, norm_weight, norm_bias, x_hat_t, rstd_t, B, C, eps, clamp, TANH: tl.constexpr,
                  HAS_CLAMP: tl.constexpr, GRID: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """`_context_update` on this program's row blocks (whole rows: one tile a row block)."""
    first, stop, step = _phase_tiles(1, tl.cdiv(B, BLOCK_B), GRID)
    for block in range(first, stop, step):
        rows = block * BLOCK_B + tl.arange(0, BLOCK_B)
        _context_update(proj_t, contexts, t, norm_weight, norm_bias, x_hat_t, rstd_t, rows, rows < B, B, C, eps, clamp,
                        TANH, HAS_CLAMP, BLOCK_B, BLOCK_N)  # fmt: skip


@triton.jit
def _update_backward_phase(d_context, d_kept, contexts, t, proj, norm_weight, x_hat_t, rstd_t, d_proj, d_out_t, B, C,
                           clamp, TANH: tl.constexpr, HAS_CLAMP: tl.constexpr, GRID: tl.constexpr,
                           BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """`_context_update_backward` on this program's row blocks (whole rows: one tile a row block)."""
    first, stop, step = _phase_tiles(1, tl.cdiv(B, BLOCK_B), GRID)
    for block in range(first, stop, step):
        rows = block * BLOCK_B + tl.arange(0, BLOCK_B)
        _context_update_backward(d_context, d_kept, contexts, t, proj, norm_weight, x_hat_t, rstd_t, d_proj, d_out_t,
                                 rows, rows < B, B, C, clamp, TANH, HAS_CLAMP, BLOCK_B, BLOCK_N)  # fmt: skip


@triton.jit
def _context_grad_phase(d_first_t, H, context_weight, stride_cw, context_masks_t, HAS_CONTEXT_MASKS: tl.constexpr,
                        d_kept, d_context, B, C, GRID: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """`_context_grad_tile` on this program's tiles of C columns."""
    c_tiles = tl.cdiv(C, BLOCK_N)
    first, stop, step = _phase_tiles(c_tiles, tl.cdiv(B, BLOCK_B), GRID)
    for tile in range(first, stop, step):
        rows, j = _tile_at(tile, c_tiles, BLOCK_B, BLOCK_N)
        _context_grad_tile(d_first_t, H, context_weight, stride_cw, context_masks_t, HAS_CONTEXT_MASKS, d_kept,
                           d_context, rows, rows < B, j, j < C, C, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip


@triton.jit
def _forward_kernel(
    token_part, contexts, masks, context_masks,  # (T, B, H), (T+1, B, C) with c_0 filled in, (T, L, B, H), (T, B, C)
    context_weight, stride_cw, weights, biases,  # W_c (H, C) rows stride_cw apart; W_l, b_l of layers 2..L stacked
    proj_weight, proj_bias, norm_weight, norm_bias,  # W_g (3C, H), b_g (3C,), γ, β (C,)
    # written: a_l and h_l (L, T, B, H); [Δ, g_f, g_i] (T, B, 3C); x̂ (T, B, C); 1/σ (T, B)
    pre, hid, proj, x_hat, rstd,
    arrived,  # the grid barrier's counter (GRID)
    B, T, H, C, L, eps, clamp,
    HAS_MASKS: tl.constexpr, HAS_CONTEXT_MASKS: tl.constexpr, GRID: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    row_blocks = tl.cdiv(B, BLOCK_B)
    h_tiles = tl.cdiv(H, BLOCK_N)
    passed = 0  # phases ended so far: the k-th grid barrier waits for k × num_programs arrivals
    for t in range(T):
        # Layer 1: a_1 = P_t + (c ⊙ m_c) W_cᵀ
        first, stop, step = _phase_tiles(h_tiles, row_blocks, GRID)
        for tile in range(first, stop, step):
            rows, n = _tile_at(tile, h_tiles, BLOCK_B, BLOCK_N)
            row_ok, n_ok = rows < B, n < H
            acc = _first_layer_tile(token_part + t * B * H, contexts + t * B * C, context_masks + t * B * C,
                                    HAS_CONTEXT_MASKS, context_weight, stride_cw, rows, row_ok, n, n_ok, H, C, BLOCK_K,
                                    PRECISION)  # fmt: skip
            _activate(acc, pre + t * B * H, hid + t * B * H, masks + t * L * B * H, rows[:, None] * H + n[None, :],
                      row_ok[:, None] & n_ok[None, :], HAS_MASKS)  # fmt: skip
        passed += 1
        _phase_end(arrived, passed, GRID)
        # Layers 2..L: a_l = h_{l-1} W_lᵀ + b_l
        for layer in range(1, L):
            here = (layer * T + t) * B * H
            below = ((layer - 1) * T + t) * B * H
            first, stop, step = _phase_tiles(h_tiles, row_blocks, GRID)
            for tile in range(first, stop, step):
                rows, n = _tile_at(tile, h_tiles, BLOCK_B, BLOCK_N)
                row_ok, n_ok = rows < B, n < H
                bias = tl.load(biases + (layer - 1) * H + n, mask=n_ok, other=0.0)
                acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32) + bias[None, :]
                acc = _dot_rows(acc, hid + below, H, hid, False, rows, row_ok, H, weights + (layer - 1) * H * H, 1, H,
                                n, n_ok, BLOCK_K, PRECISION)  # fmt: skip
                _activate(acc, pre + here, hid + here, masks + (t * L + layer) * B * H, rows[:, None] * H + n[None, :],
                          row_ok[:, None] & n_ok[None, :], HAS_MASKS)  # fmt: skip
            passed += 1
            _phase_end(arrived, passed, GRID)
        # [Δ, g_f, g_i] = h_L W_gᵀ + b_g
        _project_phase(hid + ((L - 1) * T + t) * B * H, proj_weight, proj_bias, proj + t * B * 3 * C, B, H, C, GRID,
                       BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
        passed += 1
        _phase_end(arrived, passed, GRID)
        # c' = clamp(γ ⊙ (x - μ)/σ_x + β, ±K)
        _update_phase(proj + t * B * 3 * C, contexts, t, norm_weight, norm_bias, x_hat + t * B * C, rstd + t * B, B, C,
                      eps, clamp, False, True, GRID, BLOCK_B, BLOCK_N)  # fmt: skip
        passed += 1
        _phase_end(arrived, passed, GRID)


@triton.jit
def _backward_kernel(
    # dL/dh_L (T, B, H); dL/dc carried (B, C): in dL/dc_T, out dL/dc_0; a (B, C) scratch for f ⊙ dL/dx
    grad_hidden, d_context, d_kept,
    contexts, masks, context_masks, context_weight, stride_cw, weights, proj_weight, norm_weight,
    pre, proj, x_hat, rstd,  # what the forward stored
    # written: dL/da_l (L, T, B, H); dL/d[Δ, g_f, g_i] (T, B, 3C); dL/dc' before the clamp (T, B, C)
    d_pre, d_proj, d_out,
    arrived,  # the grid barrier's counter (GRID)
    B, T, H, C, L, clamp,
    HAS_MASKS: tl.constexpr, HAS_CONTEXT_MASKS: tl.constexpr, GRID: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    row_blocks = tl.cdiv(B, BLOCK_B)
    h_tiles = tl.cdiv(H, BLOCK_N)
    passed = 0
    for reverse in range(T):
        t = T - 1 - reverse
        # Through the clamp, the LayerNorm and the gated mix
        _update_backward_phase(d_context, d_kept, contexts, t, proj, norm_weight, x_hat + t * B * C, rstd + t * B, d_proj,
                               d_out + t * B * C, B, C, clamp, False, True, GRID, BLOCK_B, BLOCK_N)  # fmt: skip
        passed += 1
        _phase_end(arrived, passed, GRID)
        # dL/dh_L = grad_hidden_t + d[Δ, g_f, g_i] W_g, then dL/da_L = dL/dh_L ⊙ m_L ⊙ [a_L > 0]
        top = ((L - 1) * T + t) * B * H
        first, stop, step = _phase_tiles(h_tiles, row_blocks, GRID)
        for tile in range(first, stop, step):
            rows, n = _tile_at(tile, h_tiles, BLOCK_B, BLOCK_N)
            row_ok, n_ok = rows < B, n < H
            offsets, in_tile = rows[:, None] * H + n[None, :], row_ok[:, None] & n_ok[None, :]
            acc = _head_input_grad(grad_hidden + t * B * H, d_proj + t * B * 3 * C, proj_weight, rows, row_ok, n, n_ok,
                                   H, C, BLOCK_K, PRECISION)  # fmt: skip
            acc = _relu_grad(acc, pre + top, masks + (t * L + L - 1) * B * H, offsets, in_tile, HAS_MASKS)
            tl.store(d_pre + top + offsets, acc, mask=in_tile)
        passed += 1
        _phase_end(arrived, passed, GRID)
        # Layers L..2: dL/da_{l-1} = (dL/da_l W_l) ⊙ m_{l-1} ⊙ [a_{l-1} > 0]
        for down in range(L - 1):
            layer = L - 1 - down
            here = (layer * T + t) * B * H
            below = ((layer - 1) * T + t) * B * H
            first, stop, step = _phase_tiles(h_tiles, row_blocks, GRID)
            for tile in range(first, stop, step):
                rows, n = _tile_at(tile, h_tiles, BLOCK_B, BLOCK_N)
                row_ok, n_ok = rows < B, n < H
                offsets, in_tile = rows[:, None] * H + n[None, :], row_ok[:, None] & n_ok[None, :]
                acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
                acc = _dot_rows(acc, d_pre + here, H, d_pre, False, rows, row_ok, H, weights + (layer - 1) * H * H, H,
                                1, n, n_ok, BLOCK_K, PRECISION)  # fmt: skip
                acc = _relu_grad(acc, pre + below, masks + (t * L + layer - 1) * B * H, offsets, in_tile, HAS_MASKS)
                tl.store(d_pre + below + offsets, acc, mask=in_tile)
            passed += 1
            _phase_end(arrived, passed, GRID)
        # dL/dc = f ⊙ dx (from the first phase) + (dL/da_1 W_c) ⊙ m_c
        _context_grad_phase(d_pre + t * B * H, H, context_weight, stride_cw, context_masks + t * B * C,
                            HAS_CONTEXT_MASKS, d_kept, d_context, B, C, GRID, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
        passed += 1
        _phase_end(arrived, passed, GRID)


def _precision() -> str:
    """TF32 dots where torch lets cuBLAS use them (float32 matmul precision "high" or "medium"), else IEEE fp32."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


COVERED = ("the kernels cover the prototype cell (Linear → ReLU layers without residual or ffn_norm, a linear "
           "candidate, a clamp, one context scale) and the MLP-block cell with one context scale, "
           "its update reading the head's input")


def unsupported_reason(cell, batch: int, steps: int) -> str | None:
    """Why these kernels (or kernel_mlp.py's, for an MLP-block cell) cannot run this cell on a (batch, steps)
    window, or None when they can."""
    if cell.blocks is not None:
        # imported here: kernel_mlp.py builds on this module's tile helpers
        from newllm.models.new_llm.kernel_mlp import mlp_unsupported_reason

        return mlp_unsupported_reason(cell, batch, steps)
    if not cell.has_handwritten_backward or cell.residual or cell.norms is not None:
        return COVERED
    dtypes = {p.dtype for p in cell.parameters()}
    if dtypes != {torch.float32}:
        return f"the kernel runs in float32; the cell's parameters are {', '.join(sorted(map(str, dtypes)))}"
    hidden, size_c, layers = cell.layers[0].out_features, cell.context_size, len(cell.layers)
    largest = max(layers * steps * batch * hidden, steps * batch * 3 * size_c, (steps + 1) * batch * size_c)
    if largest >= INDEX_LIMIT:
        return f"a buffer of {largest:,} values (batch {batch}, window {steps}) overflows the kernel's int32 offsets"
    return None


def loop_programs(device: torch.device, batch: int, hidden: int) -> int:
    """How many programs a loop launch runs: as many as a hidden layer has tiles at the widest column tile (64, 32 or
    16) that gives at least three quarters of the SMs a tile, at most one per SM. Off CUDA one: Triton's interpreter
    runs programs one after another, so a second would wait forever at the first barrier."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(batch, BLOCK_B)
    return min(sms, row_blocks * triton.cdiv(hidden, _column_tile(row_blocks, hidden, 0.75 * sms)))


def _column_tile(row_blocks: int, hidden: int, wanted: float) -> int:
    """The widest column tile, of 64, 32 and 16, that cuts a hidden layer into at least `wanted` tiles (else 16)."""
    return next((n for n in (64, 32) if row_blocks * triton.cdiv(hidden, n) >= wanted), 16)


def _launch(device: torch.device, programs: int, batch: int, hidden: int, phases: int, steps: int):
    """(grid, launch options) of a window launch (programs 0) or a loop launch of `programs` programs.

    A loop launch takes the widest column tile that still gives every program a tile of a hidden layer
    (`_column_tile`, the rule `loop_programs` counted its programs by), and is cooperative on CUDA (its grid
    barrier needs every program resident)."""
    if programs == 0:
        return (triton.cdiv(batch, BLOCK_B),), dict(GRID=False, BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    if device.type != "cuda" and programs != 1:
        raise ValueError("off CUDA the loop launch runs as one program: the interpreter runs programs one after "
                         "another, so a second would wait forever at the first barrier")  # fmt: skip
    arrivals = programs * phases * steps  # `phases` barriers a step (the more of forward and backward)
    if arrivals >= 2**31:
        raise ValueError(f"a window of {steps:,} steps with {programs} programs overflows the barrier's int32 counter")
    block_n = _column_tile(triton.cdiv(batch, BLOCK_B), hidden, programs)
    meta = dict(GRID=True, BLOCK_B=BLOCK_B, BLOCK_N=block_n, BLOCK_K=BLOCK_K)
    if device.type == "cuda":
        meta["launch_cooperative_grid"] = True
    return (programs,), meta


def _counter(like: torch.Tensor, programs: int) -> torch.Tensor:
    """A fresh grid-barrier counter for a loop launch; a window launch never reads it, so it gets `like` (no
    allocation or fill kernel on its path)."""
    return torch.zeros(1, dtype=torch.int32, device=like.device) if programs else like


class NewLLMKernelScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, options, programs, token_part, context, masks, context_masks, context_weight, norm_weight,
                norm_bias, proj_weight, proj_bias, *params):  # fmt: skip
        # programs: 0 for the window launch (a program per BLOCK_B rows), else the loop launch's programs (`_launch`).
        # The rest as scan.NewLLMScan's: token_part (T, B, H) with layer 1's bias; context (B, C); masks
        # (T, L, B, H) or None; context_masks (T, B, C) or None; context_weight (H, C), a view of layer 1's weight;
        # params: W, b of layers 2..L.
        steps, batch, hidden = token_part.shape
        size_c, layers = context.shape[1], len(params) // 2 + 1
        weights = torch.stack(params[0::2]) if params else token_part.new_zeros(1)  # (L-1, H, H)
        biases = torch.stack(params[1::2]) if params else token_part.new_zeros(1)  # (L-1, H)
        contexts = token_part.new_empty(steps + 1, batch, size_c)
        contexts[0] = context
        pre = token_part.new_empty(layers, steps, batch, hidden)  # a_l
        hid = torch.empty_like(pre)  # h_l = relu(a_l) ⊙ m_l
        proj = token_part.new_empty(steps, batch, 3 * size_c)  # [Δ, g_f, g_i]
        x_hat = token_part.new_empty(steps, batch, size_c)
        rstd = token_part.new_empty(steps, batch)
        masks_or_any = token_part if masks is None else masks.contiguous()
        context_masks_or_any = token_part if context_masks is None else context_masks.contiguous()
        precision = _precision()
        grid, meta = _launch(token_part.device, programs, batch, hidden, layers + 2, steps)
        _forward_kernel[grid](
            token_part.contiguous(), contexts, masks_or_any, context_masks_or_any, context_weight,
            context_weight.stride(0), weights, biases, proj_weight.contiguous(), proj_bias, norm_weight, norm_bias,
            pre, hid, proj, x_hat, rstd, _counter(token_part, programs), batch, steps, hidden, size_c, layers, options.eps,
            options.clamp, HAS_MASKS=masks is not None, HAS_CONTEXT_MASKS=context_masks is not None, PRECISION=precision,
            **meta,
        )  # fmt: skip
        ctx.save_for_backward(contexts, pre, hid, proj, x_hat, rstd, masks_or_any, context_masks_or_any, weights,
                              context_weight, proj_weight, norm_weight)  # fmt: skip
        ctx.flags = (masks is not None, context_masks is not None, precision, options.clamp, programs)
        return hid[-1], contexts[-1].clone()  # hidden (T, B, H), last context (B, C)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hidden, grad_context):
        contexts, pre, hid, proj, x_hat, rstd, masks, context_masks, weights, context_weight = ctx.saved_tensors[:10]
        proj_weight, norm_weight = ctx.saved_tensors[10:]
        has_masks, has_context_masks, precision, clamp, programs = ctx.flags
        layers, steps, batch, hidden = pre.shape
        size_c = contexts.shape[2]
        grad_hidden = torch.zeros_like(hid[-1]) if grad_hidden is None else grad_hidden.contiguous()
        d_context = torch.zeros_like(contexts[-1]) if grad_context is None else grad_context.clone().contiguous()
        d_pre, d_proj, d_out = torch.empty_like(pre), torch.empty_like(proj), torch.empty_like(x_hat)
        grid, meta = _launch(pre.device, programs, batch, hidden, layers + 2, steps)
        _backward_kernel[grid](
            grad_hidden, d_context, torch.empty_like(d_context), contexts, masks, context_masks, context_weight,
            context_weight.stride(0), weights, proj_weight, norm_weight, pre, proj, x_hat, rstd, d_pre, d_proj, d_out,
            _counter(pre, programs), batch, steps, hidden, size_c, layers, clamp, HAS_MASKS=has_masks,
            HAS_CONTEXT_MASKS=has_context_masks, PRECISION=precision, **meta,
        )  # fmt: skip
        # Weight gradients: one matmul over all T·B rows each, from the stored activations (as scan.py).
        flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
        reads = contexts[:-1] * context_masks if has_context_masks else contexts[:-1]  # what layer 1 read
        d_layers = []
        for layer in range(1, layers):
            d_layers += [flat(d_pre[layer]).t() @ flat(hid[layer - 1]), d_pre[layer].sum((0, 1))]
        return (None, None, d_pre[0], d_context, None, None, flat(d_pre[0]).t() @ flat(reads), (d_out * x_hat).sum((0, 1)),
                d_out.sum((0, 1)), flat(d_proj).t() @ flat(hid[-1]), d_proj.sum((0, 1)), *d_layers)  # fmt: skip


def kernel_scan(cell, token_embeddings: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`scan.fused_scan` through the kernels: (B, T, E), (B, C) → hidden (B, T, H), last context.

    The caller checks `unsupported_reason` first; the masks are drawn as scan.py draws them (same
    shapes, same order), so one seed gives both paths the same masks. With `cell.kernel_loop` the window runs as
    the loop launch (one program per SM, a grid barrier between phases), else as the window launch."""
    reason = unsupported_reason(cell, token_embeddings.shape[0], token_embeddings.shape[1])
    if reason is not None:
        raise ValueError(reason)
    if cell.blocks is not None:
        from newllm.models.new_llm.kernel_mlp import mlp_kernel_scan

        return mlp_kernel_scan(cell, token_embeddings, context)
    first = cell.layers[0]
    token_weight, context_weight = first.weight.split([cell.embedding_size, cell.context_size], dim=1)
    params = [p for layer in cell.layers[1:] for p in (layer.weight, layer.bias)]
    dropout_p = cell.dropout.p if cell.training else 0.0
    context_dropout_p = cell.context_dropout.p if cell.training else 0.0
    options = ScanOptions(cell.context_norm.eps, cell.context_clamp, False, False)
    # fp32 under bf16 autocast too, as fused_scan; the casts are autograd ops, so gradients come back in the
    # caller's dtype
    with torch.autocast(token_embeddings.device.type, enabled=False):
        token_part = F.linear(token_embeddings.float(), token_weight, first.bias)
        token_part = token_part.transpose(0, 1).contiguous()  # (T, B, H)
        steps, batch, hidden = token_part.shape
        programs = loop_programs(token_part.device, batch, hidden) if cell.kernel_loop else 0
        masks = dropout_masks(token_part, (steps, len(cell.layers), batch, hidden), dropout_p)
        context_masks = dropout_masks(token_part, (steps, batch, cell.context_size), context_dropout_p)
        hidden, context = NewLLMKernelScan.apply(
            options, programs, token_part, context.float(), masks, context_masks, context_weight, cell.context_norm.weight,
            cell.context_norm.bias, cell.context_proj.weight, cell.context_proj.bias, *params,
        )  # fmt: skip
    return hidden.transpose(0, 1), context
