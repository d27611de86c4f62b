"""Training fast path for the MLP-block cell: its recurrence with a hand-written backward pass (BPTT).

scan.py does this for the prototype's Linear → ReLU stack; this file does it for `block="mlp"`, the
cell of configs/study.toml, which otherwise trains through autograd on `scan.cell_step`. Autograd
computes every weight gradient at every position (2L + 2 small matmuls per token, each accumulated
into the gradient); here the backward loop computes only what flows back through time, stores the
per-position gradients of each layer's output, and sums every weight gradient with one matmul over
all T·B rows after the loop. The function is `NewLLMCell.step` applied along T (tests compare outputs
and gradients with the reference), with the dropout masks drawn as `scan.autograd_scan` draws them.

Per token, with m_l and m_c the dropout masks (already divided by 1 - p):
    h_0 = P_t + (c ⊙ m_c) W_cᵀ                                  (P_t = W_tok e_t + b, before the loop)
    x̂_l = LN(h_{l-1}),  u_l = γ_l ⊙ x̂_l + β_l,  a_l = u_l W_{1,l}ᵀ + b_{1,l}
    h_l = h_{l-1} + (GELU(a_l) W_{2,l}ᵀ + b_{2,l}) ⊙ m_l           l = 1..L
    y = γ_F ⊙ LN(h_L) + β_F  (final_norm; else y = h_L)          what the head reads
    [Δ, g_f, g_i] = y W_gᵀ + b_g,  Δ ← tanh(Δ) (candidate "tanh"),  f = σ(g_f),  i = σ(g_i)
    x = f ⊙ c + i ⊙ Δ,  c' = clamp(γ_c ⊙ LN(x) + β_c, ±K)       (no clamp when K = 0)

What the backward needs is saved per position: x̂_l and 1/σ_l, a_l, the final norm's x̂ and 1/σ, the
projection, the context norm's x̂ and 1/σ, and the contexts. u_l and GELU(a_l), which only the weight
gradients read, are recomputed from them in one batched op after the loop.

`compile_steps` and `cuda_graphs` work as in scan.py: the two step functions through torch.compile,
and the whole scan, forward and backward, captured as CUDA graphs per input shape.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch.nn import functional as F

from newllm.models.new_llm.scan import StepFunctions, dropout_masks, layer_norm_backward, layer_norm_stats, run_scan

PARAMS_PER_BLOCK = 6  # γ, β of the pre-norm, then W_1, b_1, W_2, b_2


class MLPOptions(NamedTuple):
    """The non-tensor settings of one scan (constants to torch.compile, part of a CUDA graph's key)."""

    eps: float  # every LayerNorm's epsilon
    clamp: float  # the context is clamped to ±clamp; 0: no clamp
    tanh: bool  # Δ through tanh
    final_norm: bool  # a LayerNorm on h_L before the head and the projection


def _gelu_grad(a: torch.Tensor) -> torch.Tensor:
    """d GELU(a) / da for the exact GELU a·Φ(a): Φ(a) + a·φ(a)."""
    return 0.5 * (1.0 + torch.erf(a * (1.0 / math.sqrt(2.0)))) + a * torch.exp(-0.5 * a * a) * (1.0 / math.sqrt(2.0 * math.pi))


def _blocks(params):
    """The flat (γ, β, W_1, b_1, W_2, b_2) × L list → one tuple per block."""
    return [params[i : i + PARAMS_PER_BLOCK] for i in range(0, len(params), PARAMS_PER_BLOCK)]


def forward_step(token_part, context, masks, context_mask, context_weight, blocks, final, proj_weight, proj_bias,
                 norm_weight, norm_bias, options: MLPOptions):  # fmt: skip
    """One token: (B, D) token part of h_0, (B, C) context → y (B, D), next context, and what backward needs."""
    read = context if context_mask is None else context * context_mask
    hidden = torch.addmm(token_part, read, context_weight.t())
    x_hats, rstds, pre_acts = [], [], []
    for layer, (gamma, beta, up_weight, up_bias, down_weight, down_bias) in enumerate(blocks):
        x_hat, rstd = layer_norm_stats(hidden, options.eps)
        pre = torch.addmm(up_bias, torch.addcmul(beta, x_hat, gamma), up_weight.t())
        out = torch.addmm(down_bias, F.gelu(pre), down_weight.t())
        hidden = hidden + (out if masks is None else out * masks[layer])
        x_hats.append(x_hat)
        rstds.append(rstd)
        pre_acts.append(pre)
    final_hat = final_rstd = None
    if options.final_norm:
        final_hat, final_rstd = layer_norm_stats(hidden, options.eps)
        hidden = torch.addcmul(final[1], final_hat, final[0])
    proj = torch.addmm(proj_bias, hidden, proj_weight.t())  # (B, 3C): Δ, g_f, g_i
    size_c = context.shape[1]
    delta, gates = proj.split([size_c, 2 * size_c], dim=1)
    if options.tanh:
        delta = torch.tanh(delta)
    forget, inp = torch.sigmoid(gates).chunk(2, dim=1)
    mixed = torch.addcmul(inp * delta, forget, context)
    context_hat, context_rstd = layer_norm_stats(mixed, options.eps)
    new_context = torch.addcmul(norm_bias, context_hat, norm_weight)
    if options.clamp > 0:
        new_context = new_context.clamp(-options.clamp, options.clamp)
    return hidden, new_context, x_hats, rstds, pre_acts, final_hat, final_rstd, context_hat, context_rstd, proj


def backward_step(d_context, grad_hidden, prev, out, context_hat, context_rstd, proj, final_hat, final_rstd, x_hats,
                  rstds, pre_acts, masks, context_mask, context_weight, blocks, final, proj_weight, norm_weight,
                  options: MLPOptions):  # fmt: skip
    """The chain rule through one `forward_step`, given dL/d(next context) and dL/dy from the head.

    Returns dL/d(previous context), dL/dh_0 (the token part's gradient), and what the weight gradients
    are summed from after the loop: dL/d(context norm output), dL/d(projection), dL/dy, and per block
    dL/d(block output before dropout), dL/da and dL/du.
    """
    size_c = prev.shape[1]
    d_out = d_context if options.clamp == 0 else d_context * (out.abs() < options.clamp)  # clamp: gradient inside ±K
    d_mixed = layer_norm_backward(d_out * norm_weight, context_hat, context_rstd)
    delta, gates = proj.split([size_c, 2 * size_c], dim=1)
    if options.tanh:
        delta = torch.tanh(delta)
    gate = torch.sigmoid(gates)
    forget, inp = gate.chunk(2, dim=1)
    d_delta = d_mixed * inp
    if options.tanh:
        d_delta = d_delta * (1 - delta * delta)
    d_gate = torch.cat([d_mixed * prev, d_mixed * delta], dim=1) * gate * (1 - gate)
    d_proj = torch.cat([d_delta, d_gate], dim=1)
    d_prev = d_mixed * forget
    d_y = torch.addmm(grad_hidden, d_proj, proj_weight)
    d_hidden = layer_norm_backward(d_y * final[0], final_hat, final_rstd) if options.final_norm else d_y
    d_outs, d_pre_acts, d_normed = [None] * len(blocks), [None] * len(blocks), [None] * len(blocks)
    for layer in reversed(range(len(blocks))):
        gamma, _, up_weight, _, down_weight, _ = blocks[layer]
        d_block = d_hidden if masks is None else d_hidden * masks[layer]
        d_pre = (d_block @ down_weight) * _gelu_grad(pre_acts[layer])
        d_norm_out = d_pre @ up_weight
        d_hidden = d_hidden + layer_norm_backward(d_norm_out * gamma, x_hats[layer], rstds[layer])  # residual + branch
        d_outs[layer], d_pre_acts[layer], d_normed[layer] = d_block, d_pre, d_norm_out
    if context_mask is None:
        d_prev = torch.addmm(d_prev, d_hidden, context_weight)
    else:  # h_0 read c ⊙ m_c
        d_prev = d_prev + (d_hidden @ context_weight) * context_mask
    return d_prev, d_hidden, d_out, d_proj, d_y, d_outs, d_pre_acts, d_normed


EAGER_STEPS = StepFunctions(forward_step, backward_step)


@functools.cache
def compiled_steps() -> StepFunctions:
    """`forward_step` and `backward_step` through torch.compile (compiled on first call, once per shape)."""
    return StepFunctions(torch.compile(forward_step, dynamic=False), torch.compile(backward_step, dynamic=False))


def _time_major(per_step: list[list[torch.Tensor]]) -> torch.Tensor:
    """[step][block] tensors of (B, ·) → one (L, T, B, ·) tensor."""
    return torch.stack([torch.stack(block) for block in zip(*per_step)])


class MLPScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, steps, options, token_part, context, masks, context_masks, context_weight, proj_weight, proj_bias,
                norm_weight, norm_bias, *params):  # fmt: skip
        # token_part (T, B, D): W_tok e + b for every position; context (B, C); masks (T, L, B, D) or None;
        # context_masks (T, B, C) or None; params: (γ, β, W_1, b_1, W_2, b_2) per block, then γ, β of the final norm
        n_blocks = len(params) // PARAMS_PER_BLOCK
        blocks, final = _blocks(params[: PARAMS_PER_BLOCK * n_blocks]), params[PARAMS_PER_BLOCK * n_blocks :]
        contexts, hiddens, per_block, final_stats, context_stats, projs = [context], [], [], [], [], []
        for t in range(token_part.shape[0]):
            hidden, context, x_hats, rstds, pre_acts, final_hat, final_rstd, context_hat, context_rstd, proj = (
                steps.forward(token_part[t], context, None if masks is None else masks[t],
                              None if context_masks is None else context_masks[t], context_weight, blocks, final,
                              proj_weight, proj_bias, norm_weight, norm_bias, options)  # fmt: skip
            )
            contexts.append(context)
            hiddens.append(hidden)
            per_block.append((x_hats, rstds, pre_acts))
            final_stats.append((final_hat, final_rstd))
            context_stats.append((context_hat, context_rstd))
            projs.append(proj)
        hidden_seq = torch.stack(hiddens)  # (T, B, D)
        x_hats, rstds, pre_acts = (_time_major(part) for part in zip(*per_block))  # (L, T, B, ·)
        final_hats, final_rstds = (torch.stack(part) if options.final_norm else None for part in zip(*final_stats))
        context_hats, context_rstds = (torch.stack(part) for part in zip(*context_stats))
        # hidden_seq is an output: through save_for_backward, not a ctx attribute (scan.py says why)
        ctx.save_for_backward(hidden_seq, context_weight, proj_weight, norm_weight, *params)
        ctx.saved = (torch.stack(contexts), x_hats, rstds, pre_acts, final_hats, final_rstds, context_hats,
                     context_rstds, torch.stack(projs), masks, context_masks)  # fmt: skip
        ctx.steps, ctx.options, ctx.n_blocks = steps, options, n_blocks
        return hidden_seq, context

    @staticmethod
    def backward(ctx, grad_hidden, grad_context):
        hidden_seq, context_weight, proj_weight, norm_weight, *params = ctx.saved_tensors
        n_blocks, options = ctx.n_blocks, ctx.options
        blocks, final = _blocks(params[: PARAMS_PER_BLOCK * n_blocks]), params[PARAMS_PER_BLOCK * n_blocks :]
        (contexts, x_hats, rstds, pre_acts, final_hats, final_rstds, context_hats, context_rstds, projs, masks,
         context_masks) = ctx.saved  # fmt: skip
        grad_hidden = torch.zeros_like(hidden_seq) if grad_hidden is None else grad_hidden
        d_context = torch.zeros_like(contexts[-1]) if grad_context is None else grad_context
        collected = []
        for t in reversed(range(hidden_seq.shape[0])):
            d_context, *grads = ctx.steps.backward(
                d_context, grad_hidden[t], contexts[t], contexts[t + 1], context_hats[t], context_rstds[t], projs[t],
                None if final_hats is None else final_hats[t], None if final_rstds is None else final_rstds[t],
                list(x_hats[:, t]), list(rstds[:, t]), list(pre_acts[:, t]), None if masks is None else masks[t],
                None if context_masks is None else context_masks[t], context_weight, blocks, final, proj_weight,
                norm_weight, options,
            )  # fmt: skip
            collected.append(grads)
        # Gradients were collected last step first; put them back in time order.
        d_first, d_out, d_proj, d_y, d_block, d_pre, d_normed = zip(*collected[::-1])
        d_first, d_out, d_proj, d_y = (torch.stack(part) for part in (d_first, d_out, d_proj, d_y))  # (T, B, ·)
        d_block, d_pre, d_normed = (_time_major(part) for part in (d_block, d_pre, d_normed))  # (L, T, B, ·)
        # Weight gradients: one matmul (or sum) over all T·B rows each.
        flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
        rows = lambda x: x.sum((0, 1))  # noqa: E731
        d_params = []
        for layer, (gamma, beta, *_rest) in enumerate(blocks):
            normed = torch.addcmul(beta, x_hats[layer], gamma)  # u_l, recomputed
            d_params += [rows(d_normed[layer] * x_hats[layer]), rows(d_normed[layer]),
                         flat(d_pre[layer]).t() @ flat(normed), rows(d_pre[layer]),
                         flat(d_block[layer]).t() @ flat(F.gelu(pre_acts[layer])), rows(d_block[layer])]  # fmt: skip
        if options.final_norm:
            d_params += [rows(d_y * final_hats), rows(d_y)]
        reads = contexts[:-1] if context_masks is None else contexts[:-1] * context_masks  # what h_0 read
        return (None, None, d_first, d_context, None, None, flat(d_first).t() @ flat(reads),
                flat(d_proj).t() @ flat(hidden_seq), rows(d_proj), rows(d_out * context_hats), rows(d_out),
                *d_params)  # fmt: skip


def _scan(token_part, context, context_weight, proj_weight, proj_bias, norm_weight, norm_bias, *params,
          steps: StepFunctions, options: MLPOptions, dropout_p: float, context_dropout_p: float):  # fmt: skip
    """Draw the dropout masks for all positions at once, as `scan.autograd_scan` does, then run `MLPScan`."""
    steps_t, batch, width = token_part.shape
    n_blocks = len(params) // PARAMS_PER_BLOCK
    masks = dropout_masks(token_part, (steps_t, n_blocks, batch, width), dropout_p)
    context_masks = dropout_masks(token_part, (steps_t, batch, context.shape[1]), context_dropout_p)
    return MLPScan.apply(steps, options, token_part, context, masks, context_masks, context_weight, proj_weight,
                         proj_bias, norm_weight, norm_bias, *params)  # fmt: skip


def mlp_scan(cell, token_embeddings: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`cell.scan` of an MLP-block cell without a mask, through `MLPScan`: (B, T, E), (B, C) → y (B, T, D), last context."""
    if not cell.has_mlp_backward:  # it would compute another function (or fail on a missing parameter)
        raise ValueError("mlp_scan covers MLP-block cells with one context scale, a LayerNorm final norm or none, "
                         "the update reading the head's input (cell.has_mlp_backward)")  # fmt: skip
    params = [p for block in cell.blocks for p in (block.norm.weight, block.norm.bias, block.up.weight, block.up.bias,
                                                   block.down.weight, block.down.bias)]  # fmt: skip
    if cell.final_norm is not None:
        params += [cell.final_norm.weight, cell.final_norm.bias]
    options = MLPOptions(cell.context_norm.eps, float(cell.context_clamp), cell.candidate == "tanh",
                         cell.final_norm is not None)  # fmt: skip
    steps = compiled_steps() if cell.compile_steps and token_embeddings.is_cuda else EAGER_STEPS
    dropout_p = cell.dropout.p if cell.training else 0.0
    context_dropout_p = cell.context_dropout.p if cell.training else 0.0
    scan = functools.partial(_scan, steps=steps, options=options, dropout_p=dropout_p,
                             context_dropout_p=context_dropout_p)  # fmt: skip
    rest = (cell.context_proj.weight, cell.context_proj.bias, cell.context_norm.weight, cell.context_norm.bias, *params)
    key = ("mlp", options, dropout_p, context_dropout_p, steps is not EAGER_STEPS)
    return run_scan(cell, scan, token_embeddings, context, rest, key)
