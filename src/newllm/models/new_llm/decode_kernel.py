"""Greedy decoding of New-LLM in a few kernels per token: eight for the prototype cell instead of about 45.

`GreedyDecoder` replays one CUDA graph per token, but the graph still holds the ~45 small kernels of
`model.step` (performance.md: 0.066 ms per token on an H200, about 20 times what reading the weights
costs), and the GPU waits on each one's launch and completion. Here a step is:

    1. h_1 = relu(P[token] + c W_cᵀ)      P = E W_eᵀ + b_1 for every token id, computed once: the token
                                          half of layer 1 is a row lookup, not a matmul
    2. h_l = relu(h_{l-1} W_lᵀ + b_l)     one kernel per layer 2..L
    3. [Δ, g_f, g_i] = h_L W_gᵀ + b_g
    4. c' = clamp(γ ⊙ LN(σ(g_f) ⊙ c + σ(g_i) ⊙ Δ) + β, ±K)     one program per 16 rows (the row is whole)
    5. logits = h_L W_outᵀ + b_out, each program keeping only its tile's (max, argmax) per row
    6. the token: the best of those per row (the first on a tie, as torch.argmax), written to the
       output, and c' copied into the context
    7. position += 1

Each matmul kernel spreads its output columns over many programs, so the weights (30 MB in float32 at
full size) stream through every SM instead of one. The issue asked for one kernel per token: that needs a
grid-wide barrier between the dependent phases, which Triton offers only as a spin on a global
counter that deadlocks unless every program is resident at once (and always in the CPU interpreter,
which runs programs one after another), so the phases stay separate launches inside the graph.

The MLP-block cell (the study's) takes three kernels per block instead of step 2: the block's LayerNorm
(16 whole rows per program), W_1 with GELU, and W_2 with the residual add; then its final norm, and
the context update with tanh and without a clamp where the cell says so.

Float32 only, eval mode only (no dropout), one context scale; the prototype cell without residual or
ffn_norm. Tested in Triton's CPU interpreter against `model.step`; timed in docs/performance.md (faster than the
graphed `model.step` at batch 1; slower at 32 with training's tiles, the finer tiles below untimed).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from newllm.models.new_llm.kernel import BLOCK_B, BLOCK_N, _context_update, _dot_rows, _precision
from newllm.models.new_llm.kernel_mlp import SQRT_HALF, _norm_rows

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
            w = tl.load(w_ptr + k[:, None] * w_k + n[None, :] * w_n, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
    else:
        acc = _dot_rows(acc, x_ptr, x_row, x_ptr, False, rows, row_ok, K, w_ptr, w_k, w_n, n, n_ok, BLOCK_K, PRECISION)
    return acc


@triton.jit
def _first_layer_kernel(token, table, context, context_weight, stride_cw, out, B, H, C, RELU: tl.constexpr,
                        ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        PRECISION: tl.constexpr):  # fmt: skip
    """h_1 = P[token] + c W_cᵀ on a (rows, n) tile, relu'd with RELU (the prototype's layer; the MLP cell's
    residual stream starts without one)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < H
    tile = row_ok[:, None] & n_ok[None, :]
    ids = tl.load(token + rows, mask=row_ok, other=0)
    acc = tl.load(table + ids[:, None] * H + n[None, :], mask=tile, other=0.0)
    acc = _times_w(acc, context, C, rows, row_ok, C, context_weight, 1, stride_cw, n, n_ok, ONE_ROW, BLOCK_K,
                   PRECISION)  # fmt: skip
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(out + rows[:, None] * H + n[None, :], acc, mask=tile)


@triton.jit
def _linear_kernel(x, weight, bias, out, residual, B, N, K, ACTIVATION: tl.constexpr, RESIDUAL: tl.constexpr,
                   ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """out = act(x Wᵀ + b) (+ residual) on a (rows, n) tile; W is (N, K), row-major. ACTIVATION: 0 none, 1 relu,
    2 GELU (exact, as F.gelu)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    tile = row_ok[:, None] & n_ok[None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_N), tl.float32) + tl.load(bias + n, mask=n_ok, other=0.0)[None, :]
    acc = _times_w(acc, x, K, rows, row_ok, K, weight, 1, K, n, n_ok, ONE_ROW, BLOCK_K, PRECISION)
    if ACTIVATION == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACTIVATION == 2:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * SQRT_HALF))
    offsets = rows[:, None] * N + n[None, :]
    if RESIDUAL:
        acc += tl.load(residual + offsets, mask=tile, other=0.0)
    tl.store(out + offsets, acc, mask=tile)


@triton.jit
def _norm_kernel(src, gamma, beta, x_hat, out, rstd, B, D, eps, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """out = γ ⊙ LN(src) + β for 16 whole rows (kernel_mlp.py's row norm)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    _norm_rows(src, gamma, beta, x_hat, out, rstd, rows, rows < B, D, eps, BLOCK_B, BLOCK_N)


@triton.jit
def _context_kernel(proj, contexts, norm_weight, norm_bias, x_hat, rstd, B, C, eps, clamp, TANH: tl.constexpr,
                    HAS_CLAMP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """c' = γ ⊙ LN(σ(g_f) ⊙ c + σ(g_i) ⊙ Δ) + β (Δ through tanh with TANH, clamped to ±K with HAS_CLAMP) for 16
    whole rows: kernel.py's context update, from contexts[0] into contexts[1]."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    _context_update(proj, contexts, 0, norm_weight, norm_bias, x_hat, rstd, rows, rows < B, B, C, eps, clamp, TANH,
                    HAS_CLAMP, BLOCK_B, BLOCK_N)  # fmt: skip


@triton.jit
def _head_kernel(hidden, weight, bias, best, best_id, logits, B, V, H, TILES, WRITE_LOGITS: tl.constexpr,
                 ONE_ROW: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """One tile of logits = h Wᵀ + b (W is (V, H)): per row, its largest logit and where (the first on a tie)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    tile_id = tl.program_id(1)
    v = tile_id * BLOCK_V + tl.arange(0, BLOCK_V)
    v_ok = v < V
    acc = tl.zeros((BLOCK_B, BLOCK_V), tl.float32) + tl.load(bias + v, mask=v_ok, other=0.0)[None, :]
    acc = _times_w(acc, hidden, H, rows, row_ok, H, weight, 1, H, v, v_ok, ONE_ROW, BLOCK_K, PRECISION)
    if WRITE_LOGITS:
        tl.store(logits + rows[:, None] * V + v[None, :], acc, mask=row_ok[:, None] & v_ok[None, :])
    acc = tl.where(v_ok[None, :], acc, float("-inf"))
    tl.store(best + rows * TILES + tile_id, tl.max(acc, axis=1), mask=row_ok)
    tl.store(best_id + rows * TILES + tile_id, tile_id * BLOCK_V + tl.argmax(acc, axis=1), mask=row_ok)


@triton.jit
def _pick_kernel(best, best_id, token, tokens, position, next_context, context, B, C, TILES, MAX_NEW,
                 BLOCK_B: tl.constexpr, BLOCK_TILES: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """Each row's token: the tile with the largest logit (the first on a tie); written to `token` and to
    tokens[:, position]; and c' copied into the context for the next step."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    tiles = tl.arange(0, BLOCK_TILES)
    found = tl.load(best + rows[:, None] * TILES + tiles[None, :], mask=row_ok[:, None] & (tiles < TILES)[None, :],
                    other=float("-inf"))  # fmt: skip
    winner = tl.argmax(found, axis=1)
    picked = tl.load(best_id + rows * TILES + winner, mask=row_ok, other=0)
    tl.store(token + rows, picked, mask=row_ok)
    tl.store(tokens + rows * MAX_NEW + tl.load(position), picked, mask=row_ok)
    cols = tl.arange(0, BLOCK_N)
    for j0 in range(0, C, BLOCK_N):
        j = j0 + cols
        tile = row_ok[:, None] & (j < C)[None, :]
        offsets = rows[:, None] * C + j[None, :]
        tl.store(context + offsets, tl.load(next_context + offsets, mask=tile, other=0.0), mask=tile)


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

    def __init__(self, model, batch_size: int):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(reason)
        cell = model.model.cell
        first = cell.layers[0]
        token_weight, self.context_weight = first.weight.detach().split([cell.embedding_size, cell.context_size], 1)
        with torch.no_grad():  # the token half of layer 1 for every id: (V, H), a lookup per step
            self.table = (model.model.embed_tokens.weight @ token_weight.t() + first.bias).contiguous()
        self.layers = [(layer.weight.detach(), layer.bias.detach()) for layer in cell.layers[1:]]
        self.blocks = [tuple(p.detach() for p in (b.norm.weight, b.norm.bias, b.up.weight, b.up.bias, b.down.weight,
                                                  b.down.bias)) for b in cell.blocks or []]  # fmt: skip
        final = cell.final_norm
        self.final = None if final is None else (final.weight.detach(), final.bias.detach())
        self.proj = (cell.context_proj.weight.detach(), cell.context_proj.bias.detach())
        self.norm = (cell.context_norm.weight.detach(), cell.context_norm.bias.detach(), cell.context_norm.eps)
        self.clamp = float(cell.context_clamp)
        self.tanh = cell.candidate == "tanh"
        if model.lm_head is None:  # tied: the embedding matrix and a bias of its own
            self.head = (model.model.embed_tokens.weight.detach(), model.lm_head_bias.detach())
        else:
            self.head = (model.lm_head.weight.detach(), model.lm_head.bias.detach())
        vocab, hidden, size_c = self.table.shape[0], self.table.shape[1], cell.context_size
        self.batch_size, self.vocab, self.hidden, self.size_c = batch_size, vocab, hidden, size_c
        new = self.table.new_empty
        self.hiddens = [new(batch_size, hidden), new(batch_size, hidden)]  # ping-pong between layers
        # the MLP cell's: a block's normed input (and the final norm's output), its LN by-products, its GELU(u)
        self.normed, self.x_hat, self.rstd = new(batch_size, hidden), new(batch_size, hidden), new(batch_size)
        self.act = new(batch_size, self.blocks[0][2].shape[0]) if self.blocks else None
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
        c' into `self.context` (position is advanced by the caller). `logits` (B, V), if given, receives the
        logits (tests)."""
        context = self.context
        rows = triton.cdiv(self.batch_size, BLOCK_B)  # the row-wise kernels' (norms, update, pick): 16 whole rows each
        hidden, size_c, batch = self.hidden, self.size_c, self.batch_size
        eps = self.norm[2]
        x = self.hiddens[0]
        grid, blocks = self._matmul(hidden, size_c)
        _first_layer_kernel[grid](token, self.table, context, self.context_weight, self.context_weight.stride(0), x,
                                  batch, hidden, size_c, not self.blocks, **blocks)  # fmt: skip
        for i, (weight, bias) in enumerate(self.layers):  # the prototype's layers 2..L
            out = self.hiddens[(i + 1) % 2]
            grid, blocks = self._matmul(hidden, hidden)
            _linear_kernel[grid](x, weight, bias, out, x, batch, hidden, hidden, 1, False, **blocks)
            x = out
        for i, (norm_w, norm_b, up_w, up_b, down_w, down_b) in enumerate(self.blocks):  # h + W_2 GELU(W_1 LN(h))
            inner = up_w.shape[0]
            _norm_kernel[(rows,)](x, norm_w, norm_b, self.x_hat, self.normed, self.rstd, batch, hidden, eps,
                                  BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N)  # fmt: skip
            grid, blocks = self._matmul(inner, hidden)
            _linear_kernel[grid](self.normed, up_w, up_b, self.act, x, batch, inner, hidden, 2, False, **blocks)
            out = self.hiddens[(i + 1) % 2]
            grid, blocks = self._matmul(hidden, inner)
            _linear_kernel[grid](self.act, down_w, down_b, out, x, batch, hidden, inner, 0, True, **blocks)
            x = out
        if self.final is not None:  # the head and the context update read the final norm's output
            _norm_kernel[(rows,)](x, *self.final, self.x_hat, self.normed, self.rstd, batch, hidden, eps,
                                  BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N)  # fmt: skip
            x = self.normed
        weight, bias = self.proj
        grid, blocks = self._matmul(3 * size_c, hidden)
        _linear_kernel[grid](x, weight, bias, self.projected, x, batch, 3 * size_c, hidden, 0, False, **blocks)
        gamma, beta, _ = self.norm
        _context_kernel[(rows,)](self.projected, self.contexts, gamma, beta, self.context_hat, self.context_rstd, batch,
                                 size_c, eps, self.clamp, self.tanh, self.clamp > 0, BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N)  # fmt: skip
        weight, bias = self.head
        (head_rows, _), blocks = self._matmul(self.vocab, hidden)
        blocks.pop("BLOCK_N")
        _head_kernel[(head_rows, self.tiles)](
            x, weight, bias, self.best, self.best_id, x if logits is None else logits, batch, self.vocab, hidden,
            self.tiles, logits is not None, BLOCK_V=self.block_v, **blocks,
        )  # fmt: skip
        _pick_kernel[(rows,)](
            self.best, self.best_id, token, tokens, position, self.contexts[1], context, batch, size_c, self.tiles,
            tokens.shape[1], BLOCK_B=BLOCK_B, BLOCK_TILES=triton.next_power_of_2(self.tiles), BLOCK_N=BLOCK_N,
        )  # fmt: skip
