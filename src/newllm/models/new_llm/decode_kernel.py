"""Greedy decoding of New-LLM in a few kernels per token: four for the prototype cell instead of about 45.

`GreedyDecoder` replays one CUDA graph per token, but the graph still holds the ~45 small kernels of
`model.step` (performance.md: 0.066 ms per token on an H200, about 20 times what reading the weights
costs), and the GPU waits on each one's launch and completion. Here a step is:

    1. h_1 = relu(P[token] + c W_cᵀ)      P = E W_eᵀ + b_1 for every token id, computed once: the token
                                          half of layer 1 is a row lookup, not a matmul
    2. h_l = relu(h_{l-1} W_lᵀ + b_l)     one kernel per layer 2..L
    3. in one launch, the two matmuls that read h_L and not each other:
       [Δ, g_f, g_i] = h_L W_gᵀ + b_g, and
       logits = h_L W_outᵀ + b_out, each program keeping only its tile's (max, argmax) per row
    4. the row-wise end, for whole rows (by default at the end of step 3's launch, below):
       c' = clamp(γ ⊙ LN(σ(g_f) ⊙ c + σ(g_i) ⊙ Δ) + β, ±K), copied into the context;
       the token: the best tile per row (the first on a tie, as torch.argmax), written to the output;
       position += 1 (in the kernel when one program runs, batch ≤ 16; after it otherwise)

By default (`tail=True`) step 4 runs at the end of step 3's launch, one launch fewer a token: the
program of each row block that finishes step 3 last (a counter, see `_proj_head_kernel`) runs it, so
no program ever waits on another. Triton's CPU interpreter runs programs one after another and so
cannot show a race between them; on CUDA, where they run at once, the tests pass (docs/performance.md). `tail=False`
keeps step 4 a launch of its own (benchmarks/decode_launches.py times and checks both).

Each matmul kernel spreads its output columns over many programs, so the weights (30 MB in float32 at
full size) stream through every SM instead of one. One kernel per token would need a grid-wide barrier
between the dependent phases, which Triton offers only as a spin on a global counter that deadlocks
unless every program is resident at once (and always in the CPU interpreter, which runs programs one
after another), so the dependent phases stay separate launches inside the graph, and the independent
ones share a launch.

The MLP-block cell (the study's) takes two kernels per block instead of step 2: W_1 with GELU, reading
the block's LayerNorm of h as it loads h (each program computes its rows' mean and variance first), and
W_2 with the residual add; step 3 reads h_L through the final norm the same way, and step 4 takes tanh
and no clamp where the cell says so.

Float32 only, eval mode only (no dropout), one context scale; the prototype cell without residual or
ffn_norm. Tested against `model.step`, in Triton's CPU interpreter and on CUDA. docs/performance.md times
it beside the graphed `model.step`: faster at batch 1, slower at 32."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from newllm.models.new_llm.kernel import BLOCK_B, BLOCK_N, _context_update, _dot_rows, _load_w, _precision
from newllm.models.new_llm.kernel_mlp import SQRT_HALF, _row_stats

BLOCK_V = 128  # vocabulary columns per program of the head
# One row (batch 1) is a matrix-vector product: tl.dot would pad it to 16 rows and walk K in 32-column steps, one
# dependent load after another (16 for a 512-wide layer). Instead each program reads its columns' whole rows of W
# at once (up to ROW_K of K a load) and sums products, and the columns are cut finer so that more programs share
# the weights: 32 programs a 512-wide layer instead of 8, 256 for an 8,192-token head instead of 64.
ROW_N, ROW_V, ROW_K = 16, 32, 512
# Several rows (batch 32) keep tl.dot, but with narrower, deeper tiles than training's 64 × 32: a 512-wide layer at
# batch 32 is then 64 programs of 4 dependent loads instead of 16 programs of 16. (tl.dot needs K ≥ 16; a
# narrower layer keeps training's 32 and masks the rest.)
ROWS_N, ROWS_K = 16, 128


@triton.jit
def _times_w(acc, x_ptr, x_row, rows, row_ok, K, w_ptr, w_k, w_n, n, n_ok, ONE_ROW: tl.constexpr,
             BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """acc + X[rows] · W[:, n] (W's (k, n) at k·w_k + n·w_n): through tl.dot, or for ONE_ROW as products summed."""
    if ONE_ROW:
        cols = tl.arange(0, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + cols
            k_ok = k < K
            x = tl.load(x_ptr + rows[:, None] * x_row + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = _load_w(w_ptr, w_k, w_n, k, k_ok, n, n_ok)
            acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
    else:
        acc = _dot_rows(acc, x_ptr, x_row, x_ptr, False, rows, row_ok, K, w_ptr, w_k, w_n, n, n_ok, BLOCK_K, PRECISION)
    return acc


@triton.jit
def _times_normed_w(acc, x_ptr, x_row, rows, row_ok, K, gamma, beta, eps, w_ptr, w_k, w_n, n, n_ok, NORM: tl.constexpr,
                    ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """acc + X'[rows] · W[:, n] with X' = LN(X) = γ ⊙ (X - μ)/σ + β over X's K columns where NORM, else X (`_times_w`).
    The norm is applied as X is loaded, its statistics computed first by every program for its own rows
    (`_row_stats`: K values a row), so the norm needs no launch of its own."""
    if NORM:
        mean, inv = _row_stats(x_ptr, x_row, rows, row_ok, K, eps, BLOCK_B, BLOCK_K)
        cols = tl.arange(0, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + cols
            k_ok = k < K
            tile = row_ok[:, None] & k_ok[None, :]
            x = tl.load(x_ptr + rows[:, None] * x_row + k[None, :], mask=tile, other=0.0)
            g = tl.load(gamma + k, mask=k_ok, other=0.0)
            b = tl.load(beta + k, mask=k_ok, other=0.0)
            x = tl.where(tile, (x - mean[:, None]) * inv[:, None] * g[None, :] + b[None, :], 0.0)
            w = _load_w(w_ptr, w_k, w_n, k, k_ok, n, n_ok)
            if ONE_ROW:
                acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
            else:
                acc = tl.dot(x, w, acc, input_precision=PRECISION)
    else:
        acc = _times_w(acc, x_ptr, x_row, rows, row_ok, K, w_ptr, w_k, w_n, n, n_ok, ONE_ROW, BLOCK_K, PRECISION)
    return acc


@triton.jit
def _first_tile(token, table, context, context_weight, stride_cw, out, rows, row_ok, n, n_ok, H, C, RELU: tl.constexpr,
                ONE_ROW: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """h_1 = P[token] + c W_cᵀ on a (rows, n) tile, relu'd with RELU (the prototype's layer; the MLP cell's
    residual stream starts without one)."""
    tile = row_ok[:, None] & n_ok[None, :]
    ids = tl.load(token + rows, mask=row_ok, other=0)
    acc = tl.load(table + ids[:, None] * H + n[None, :], mask=tile, other=0.0)
    acc = _times_w(acc, context, C, rows, row_ok, C, context_weight, 1, stride_cw, n, n_ok, ONE_ROW, BLOCK_K,
                   PRECISION)  # fmt: skip
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(out + rows[:, None] * H + n[None, :], acc, mask=tile)


@triton.jit
def _first_layer_kernel(token, table, context, context_weight, stride_cw, out, B, H, C, RELU: tl.constexpr,
                        ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        PRECISION: tl.constexpr):  # fmt: skip
    """`_first_tile` on the (row block, column tile) of this program."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _first_tile(token, table, context, context_weight, stride_cw, out, rows, rows < B, n, n < H, H, C, RELU, ONE_ROW,
                BLOCK_K, PRECISION)  # fmt: skip


@triton.jit
def _linear_tile(x, weight, bias, out, residual, gamma, beta, eps, rows, row_ok, n, n_ok, N, K, ACTIVATION: tl.constexpr,
                 RESIDUAL: tl.constexpr, NORM: tl.constexpr, ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """out = act(x Wᵀ + b) (+ residual) on a (rows, n) tile; W is (N, K), row-major. ACTIVATION: 0 none, 1 relu,
    2 GELU (exact, as F.gelu). NORM: LN(x) = γ ⊙ (x - μ)/σ + β in place of x (the MLP block's W_1)."""
    tile = row_ok[:, None] & n_ok[None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32) + tl.load(bias + n, mask=n_ok, other=0.0)[None, :]
    acc = _times_normed_w(acc, x, K, rows, row_ok, K, gamma, beta, eps, weight, 1, K, n, n_ok, NORM, ONE_ROW, BLOCK_B,
                          BLOCK_K, PRECISION)  # fmt: skip
    if ACTIVATION == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACTIVATION == 2:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * SQRT_HALF))
    offsets = rows[:, None] * N + n[None, :]
    if RESIDUAL:
        acc += tl.load(residual + offsets, mask=tile, other=0.0)
    tl.store(out + offsets, acc, mask=tile)


@triton.jit
def _linear_kernel(x, weight, bias, out, residual, gamma, beta, eps, B, N, K, ACTIVATION: tl.constexpr,
                   RESIDUAL: tl.constexpr, NORM: tl.constexpr, ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """`_linear_tile` on the (row block, column tile) of this program."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _linear_tile(x, weight, bias, out, residual, gamma, beta, eps, rows, rows < B, n, n < N, N, K, ACTIVATION,
                 RESIDUAL, NORM, ONE_ROW, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip


@triton.jit
def _head_tile(hidden, gamma, beta, eps, weight, bias, best, best_id, logits, rows, row_ok, tile_id, V, H, TILES,
               NORM: tl.constexpr, WRITE_LOGITS: tl.constexpr, ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """One tile of logits = h Wᵀ + b (W is (V, H); h through the final norm with NORM): per row, its largest logit
    and where (the first on a tie)."""
    v = tile_id * BLOCK_V + tl.arange(0, BLOCK_V)
    v_ok = v < V
    acc = tl.zeros((BLOCK_B, BLOCK_V), tl.float32) + tl.load(bias + v, mask=v_ok, other=0.0)[None, :]
    acc = _times_normed_w(acc, hidden, H, rows, row_ok, H, gamma, beta, eps, weight, 1, H, v, v_ok, NORM, ONE_ROW,
                          BLOCK_B, BLOCK_K, PRECISION)  # fmt: skip
    if WRITE_LOGITS:
        tl.store(logits + rows[:, None] * V + v[None, :], acc, mask=row_ok[:, None] & v_ok[None, :])
    acc = tl.where(v_ok[None, :], acc, float("-inf"))
    tl.store(best + rows * TILES + tile_id, tl.max(acc, axis=1), mask=row_ok)
    tl.store(best_id + rows * TILES + tile_id, tile_id * BLOCK_V + tl.argmax(acc, axis=1), mask=row_ok)


@triton.jit
def _proj_head_tile(hidden, gamma, beta, eps, proj_weight, proj_bias, projected, weight, bias, best, best_id, logits,
                    rows, row_ok, column, P, V, H, PROJ_TILES, TILES, NORM: tl.constexpr, WRITE_LOGITS: tl.constexpr,
                    ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Column tile `column` of the two matmuls that read h_L: below PROJ_TILES, [Δ, g_f, g_i] = h W_gᵀ + b_g (P
    columns) into `projected`; above, a head tile (`_head_tile`)."""
    if column < PROJ_TILES:
        n = column * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < P
        acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32) + tl.load(proj_bias + n, mask=n_ok, other=0.0)[None, :]
        acc = _times_normed_w(acc, hidden, H, rows, row_ok, H, gamma, beta, eps, proj_weight, 1, H, n, n_ok, NORM,
                              ONE_ROW, BLOCK_B, BLOCK_K, PRECISION)  # fmt: skip
        tl.store(projected + rows[:, None] * P + n[None, :], acc, mask=row_ok[:, None] & n_ok[None, :])
    else:
        _head_tile(hidden, gamma, beta, eps, weight, bias, best, best_id, logits, rows, row_ok, column - PROJ_TILES, V,
                   H, TILES, NORM, WRITE_LOGITS, ONE_ROW, BLOCK_B, BLOCK_V, BLOCK_K, PRECISION)  # fmt: skip


@triton.jit
def _proj_head_kernel(hidden, gamma, beta, eps, proj_weight, proj_bias, projected, weight, bias, best, best_id, logits,
                      B, P, V, H, PROJ_TILES, TILES, counter, contexts, norm_weight, norm_bias, x_hat, rstd, token,
                      tokens, position, C, norm_eps, clamp, MAX_NEW, NORM: tl.constexpr, WRITE_LOGITS: tl.constexpr,
                      ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                      BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, TAIL: tl.constexpr, TANH: tl.constexpr,
                      HAS_CLAMP: tl.constexpr, ADVANCE: tl.constexpr, BLOCK_TILES: tl.constexpr,
                      BLOCK_C: tl.constexpr):  # fmt: skip
    """Both matmuls that read h_L (through the final norm with NORM), in one launch: the first PROJ_TILES column
    programs compute [Δ, g_f, g_i] = h W_gᵀ + b_g (P columns), the rest one head tile each (`_head_tile`). Neither
    needs the other, so one launch saves the GPU a dependent kernel per token.

    With TAIL, the step's row-wise end (`_update_pick`) runs here too, in whichever program of a row block finishes
    last: each program counts itself done on its row block's counter (an atomic, acquire-release at GPU scope, after
    its stores), and the one that sees every other program counted reads their outputs, resets the counter for the
    next step and ends the step. Only that program waits for nothing, so no program need be resident with another
    (unlike a grid-wide barrier), and the update costs no launch of its own."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    column = tl.program_id(1)
    _proj_head_tile(hidden, gamma, beta, eps, proj_weight, proj_bias, projected, weight, bias, best, best_id, logits,
                    rows, row_ok, column, P, V, H, PROJ_TILES, TILES, NORM, WRITE_LOGITS, ONE_ROW, BLOCK_B, BLOCK_N,
                    BLOCK_V, BLOCK_K, PRECISION)  # fmt: skip
    if TAIL:
        tl.debug_barrier()  # every thread of this program has stored its outputs before the program counts itself
        done = tl.atomic_add(counter + tl.program_id(0), 1, sem="acq_rel", scope="gpu")
        if done == tl.num_programs(1) - 1:
            tl.store(counter + tl.program_id(0), 0)
            _update_pick(projected, contexts, norm_weight, norm_bias, x_hat, rstd, best, best_id, token, tokens,
                         position, rows, row_ok, B, C, norm_eps, clamp, TILES, MAX_NEW, TANH, HAS_CLAMP, ADVANCE,
                         BLOCK_B, BLOCK_TILES, BLOCK_C)  # fmt: skip


@triton.jit
def _update_pick(proj, contexts, norm_weight, norm_bias, x_hat, rstd, best, best_id, token, tokens, position, rows,
                 row_ok, B, C, eps, clamp, TILES, MAX_NEW, TANH: tl.constexpr, HAS_CLAMP: tl.constexpr,
                 ADVANCE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_TILES: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """The step's row-wise end for whole rows: the context update into contexts[1], c' = γ ⊙ LN(σ(g_f) ⊙ c + σ(g_i)
    ⊙ Δ) + β (Δ through tanh with TANH, clamped to ±K with HAS_CLAMP: kernel.py's), then c' copied into contexts[0]
    for the next step; each row's token, the tile with the largest logit (the first on a tie), written to `token` and
    to tokens[:, position]; and with ADVANCE (one program, so nothing else reads it) position + 1."""
    at = tl.load(position)
    _update_pick_at(proj, contexts, norm_weight, norm_bias, x_hat, rstd, best, best_id, token, tokens, at, rows, row_ok,
                    B, C, eps, clamp, TILES, MAX_NEW, TANH, HAS_CLAMP, BLOCK_B, BLOCK_TILES, BLOCK_N)  # fmt: skip
    if ADVANCE:
        tl.debug_barrier()  # every thread has read the position before one writes it
        tl.store(position, at + 1)


@triton.jit
def _update_pick_at(proj, contexts, norm_weight, norm_bias, x_hat, rstd, best, best_id, token, tokens, at, rows,
                    row_ok, B, C, eps, clamp, TILES, MAX_NEW, TANH: tl.constexpr, HAS_CLAMP: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_TILES: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """`_update_pick` with the position given as a value (`at`), which it neither reads nor advances."""
    _context_update(proj, contexts, 0, norm_weight, norm_bias, x_hat, rstd, rows, row_ok, B, C, eps, clamp, TANH,
                    HAS_CLAMP, BLOCK_B, BLOCK_N)  # fmt: skip
    tiles = tl.arange(0, BLOCK_TILES)
    found = tl.load(best + rows[:, None] * TILES + tiles[None, :], mask=row_ok[:, None] & (tiles < TILES)[None, :],
                    other=float("-inf"))  # fmt: skip
    winner = tl.argmax(found, axis=1)
    picked = tl.load(best_id + rows * TILES + winner, mask=row_ok, other=0)
    tl.store(token + rows, picked, mask=row_ok)
    tl.store(tokens + rows * MAX_NEW + at, picked, mask=row_ok)
    tl.debug_barrier()  # c' of these rows is written by every thread of the program before any copies it back
    cols = tl.arange(0, BLOCK_N)
    for j0 in range(0, C, BLOCK_N):
        j = j0 + cols
        tile = row_ok[:, None] & (j < C)[None, :]
        offsets = rows[:, None] * C + j[None, :]
        tl.store(contexts + offsets, tl.load(contexts + B * C + offsets, mask=tile, other=0.0), mask=tile)


@triton.jit
def _update_pick_kernel(proj, best, best_id, contexts, norm_weight, norm_bias, x_hat, rstd, token, tokens, position,
                        B, C, eps, clamp, TILES, MAX_NEW, TANH: tl.constexpr, HAS_CLAMP: tl.constexpr,
                        ADVANCE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_TILES: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """`_update_pick` for 16 whole rows a program, as a launch of its own (`DecodeKernels(tail=False)`)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    _update_pick(proj, contexts, norm_weight, norm_bias, x_hat, rstd, best, best_id, token, tokens, position, rows,
                 rows < B, B, C, eps, clamp, TILES, MAX_NEW, TANH, HAS_CLAMP, ADVANCE, BLOCK_B, BLOCK_TILES, BLOCK_N)  # fmt: skip


def unsupported_reason(model) -> str | None:
    """Why these kernels cannot decode `model`, or None when they can."""
    cell = model.model.cell
    prototype = getattr(cell, "has_handwritten_backward", False) and not cell.residual and cell.norms is None
    mlp = cell.blocks is not None and cell.context_scales == 1 and hasattr(cell, "context_clamp")
    mlp = mlp and not cell.update_from_stream
    if not (prototype or mlp):
        return ("the decode kernels cover the prototype cell (Linear → ReLU layers without residual or ffn_norm, "
                "a linear candidate, a clamp, one context scale) and the MLP-block cell with one context scale, "
                "its update reading the head's input")  # fmt: skip
    if cell.final_norm_type != "layer":
        return f"the decode kernels compute the final norm as a LayerNorm, not final_norm_type {cell.final_norm_type!r}"
    if {p.dtype for p in model.parameters()} != {torch.float32}:
        return "the decode kernels run in float32"
    if model.training:
        return "the decode kernels need the model in eval mode (no dropout)"
    return None


class DecodeKernels:
    """The kernels of one greedy step of `model` for `batch_size` rows, on the buffers of a `GreedyDecoder`."""

    def __init__(self, model, batch_size: int, tail: bool = True, head_dtype: torch.dtype = torch.float32):
        """tail: the context update and the token's pick at the end of the head's launch (one launch fewer a token,
        see the module's docstring); False gives them a launch of their own. head_dtype=torch.bfloat16 reads a bf16
        copy of the output head (half of the bytes a token reads at full size, summed in float32): a step faster
        where the head's read sets the time, at the cost of bf16's rounding in the logits, so a near-tie can pick
        another token than float32 would. It applies at batch 1 only: at larger batches the head is a tl.dot over
        row blocks, and there the bf16 tiles made the step slower, not faster (0.65 against 0.095 ms a token at
        batch 32 on an H100, docs/performance.md), so those keep the float32 head (`self.head_dtype` says which)."""
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(reason)
        if head_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"head_dtype must be torch.float32 or torch.bfloat16, got {head_dtype}")
        cell = model.model.cell
        first = cell.layers[0]
        token_weight, self.context_weight = first.weight.detach().split([cell.embedding_size, cell.context_size], 1)
        with torch.no_grad():  # the token half of layer 1 for every id: (V, H), a lookup per step
            self.table = (model.model.embed_tokens.weight @ token_weight.t() + first.bias).contiguous()
        self.layers = [(layer.weight.detach(), layer.bias.detach()) for layer in cell.layers[1:]]
        self.blocks = [(b.norm.weight.detach(), b.norm.bias.detach(), b.norm.eps, b.up.weight.detach(),
                        b.up.bias.detach(), b.down.weight.detach(), b.down.bias.detach()) for b in cell.blocks or []]  # fmt: skip
        final = cell.final_norm
        self.final = None if final is None else (final.weight.detach(), final.bias.detach(), final.eps)
        self.proj = (cell.context_proj.weight.detach(), cell.context_proj.bias.detach())
        self.norm = (cell.context_norm.weight.detach(), cell.context_norm.bias.detach(), cell.context_norm.eps)
        self.clamp = float(cell.context_clamp)
        self.tanh = cell.candidate == "tanh"
        if model.lm_head is None:  # tied: the embedding matrix and a bias of its own
            head_weight, head_bias = model.model.embed_tokens.weight.detach(), model.lm_head_bias.detach()
        else:
            head_weight, head_bias = model.lm_head.weight.detach(), model.lm_head.bias.detach()
        head_dtype = head_dtype if batch_size == 1 else torch.float32
        self.head = (head_weight.to(head_dtype).contiguous(), head_bias)  # a copy only where it is bf16
        vocab, hidden, size_c = self.table.shape[0], self.table.shape[1], cell.context_size
        self.batch_size, self.vocab, self.hidden, self.size_c = batch_size, vocab, hidden, size_c
        new = self.table.new_empty
        self.hiddens = [new(batch_size, hidden), new(batch_size, hidden)]  # ping-pong between layers
        # the MLP cell's GELU(u); its norms are applied inside the matmuls that read them
        self.act = new(batch_size, self.blocks[0][3].shape[0]) if self.blocks else None
        self.projected = new(batch_size, 3 * size_c)
        # [c, c']: the decoder's context is the first half (`context`), the step writes c' into the second
        self.contexts = new(2, batch_size, size_c).zero_()
        self.context = self.contexts[0]
        self.context_hat, self.context_rstd = new(batch_size, size_c), new(batch_size)  # what training would keep
        self.one_row = batch_size == 1
        self.block_v = ROW_V if self.one_row else BLOCK_V
        self.tiles = triton.cdiv(vocab, self.block_v)
        self.best = new(batch_size, self.tiles)
        self.best_id = torch.empty(batch_size, self.tiles, dtype=torch.long, device=self.table.device)
        self.precision = _precision()
        self.tail = tail
        # per row block of the head's launch, how many of its programs are done (TAIL); the last one resets it to 0
        (head_rows, _), _ = self._matmul(3 * size_c, hidden)
        self.counter = torch.zeros(head_rows, dtype=torch.int32, device=self.table.device)

    @property
    def head_dtype(self) -> torch.dtype:
        """The dtype the head's weights are read in: bf16 only where asked for at batch 1."""
        return self.head[0].dtype

    def _matmul(self, n: int, k: int) -> tuple[tuple[int, int], dict]:
        """A matmul kernel's grid (row blocks, column tiles) and blocks, for n output columns over k inputs."""
        if self.one_row:
            blocks = dict(ONE_ROW=True, BLOCK_B=1, BLOCK_N=ROW_N, BLOCK_K=min(triton.next_power_of_2(k), ROW_K),
                          num_warps=8)  # fmt: skip
        else:
            depth = min(max(triton.next_power_of_2(k), 32), ROWS_K)
            blocks = dict(ONE_ROW=False, BLOCK_B=BLOCK_B, BLOCK_N=ROWS_N, BLOCK_K=depth)
        rows = triton.cdiv(self.batch_size, blocks["BLOCK_B"])
        return (rows, triton.cdiv(n, blocks["BLOCK_N"])), dict(blocks, PRECISION=self.precision)

    def step(self, token, tokens, position, logits: torch.Tensor | None = None) -> None:
        """Feed `token` (B,) on top of `self.context` (B, C): the next token into `token` and tokens[:, position],
        c' into `self.context`, and position advanced by one. `logits` (B, V), if given, receives the logits
        (tests)."""
        context = self.context
        hidden, size_c, batch = self.hidden, self.size_c, self.batch_size
        x = self.hiddens[0]
        grid, blocks = self._matmul(hidden, size_c)
        _first_layer_kernel[grid](token, self.table, context, self.context_weight, self.context_weight.stride(0), x,
                                  batch, hidden, size_c, not self.blocks, **blocks)  # fmt: skip
        for i, (weight, bias) in enumerate(self.layers):  # the prototype's layers 2..L
            out = self.hiddens[(i + 1) % 2]
            grid, blocks = self._matmul(hidden, hidden)
            _linear_kernel[grid](x, weight, bias, out, x, bias, bias, 0.0, batch, hidden, hidden, 1, False, False,
                                 **blocks)  # fmt: skip
            x = out
        for i, (norm_w, norm_b, eps, up_w, up_b, down_w, down_b) in enumerate(self.blocks):  # h + W_2 GELU(W_1 LN(h))
            inner = up_w.shape[0]
            grid, blocks = self._matmul(inner, hidden)
            _linear_kernel[grid](x, up_w, up_b, self.act, x, norm_w, norm_b, eps, batch, inner, hidden, 2, False, True,
                                 **blocks)  # fmt: skip
            out = self.hiddens[(i + 1) % 2]
            grid, blocks = self._matmul(hidden, inner)
            _linear_kernel[grid](self.act, down_w, down_b, out, x, up_b, up_b, 0.0, batch, hidden, inner, 0, True,
                                 False, **blocks)  # fmt: skip
            x = out
        # the head and the context update read h_L, through the final norm where the cell has one
        final = self.final is not None
        gamma, beta, eps = self.final if final else (*self.proj, 0.0)
        weight, bias = self.proj
        (head_rows, proj_tiles), blocks = self._matmul(3 * size_c, hidden)
        norm_w, norm_b, norm_eps = self.norm
        # the row-wise end: in the head's launch (TAIL), where its row blocks are; else 16 whole rows a program
        end_rows = head_rows if self.tail else triton.cdiv(batch, BLOCK_B)
        advance = end_rows == 1
        end = (self.contexts, norm_w, norm_b, self.context_hat, self.context_rstd, token, tokens, position)
        end_sizes = dict(TANH=self.tanh, HAS_CLAMP=self.clamp > 0, ADVANCE=advance,
                         BLOCK_TILES=triton.next_power_of_2(self.tiles))  # fmt: skip
        _proj_head_kernel[(head_rows, proj_tiles + self.tiles)](
            x, gamma, beta, eps, weight, bias, self.projected, *self.head, self.best, self.best_id,
            x if logits is None else logits, batch, 3 * size_c, self.vocab, hidden, proj_tiles, self.tiles,
            self.counter, *end, size_c, norm_eps, self.clamp, tokens.shape[1], final, logits is not None,
            BLOCK_V=self.block_v, TAIL=self.tail, BLOCK_C=BLOCK_N, **blocks, **end_sizes,
        )  # fmt: skip
        if not self.tail:
            _update_pick_kernel[(end_rows,)](
                self.projected, self.best, self.best_id, *end, batch, size_c, norm_eps, self.clamp, self.tiles,
                tokens.shape[1], BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N, **end_sizes,
            )  # fmt: skip
        if not advance:  # several programs read the position: it moves after all of them
            position += 1
