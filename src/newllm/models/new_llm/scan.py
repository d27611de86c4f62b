"""Training fast path: the New-LLM recurrence with a hand-written backward pass (BPTT).

Autograd records ~20 nodes per token and replays them one by one; for a small cell that
bookkeeping, not arithmetic, is the cost (CPU and GPU alike). Here the forward loop runs without
autograd, saves what the backward needs, and the backward walks the sequence in reverse with
the chain rule written out. Weight gradients are summed over all positions with one matmul per
weight after the loop. The function is `NewLLMCell.step` applied along T (tests compare outputs
and gradients with the reference); only the dropout masks are drawn differently.

Per token, with m_l the dropout masks (already divided by 1 - p):
    a_1 = P_t + c W_cᵀ,  a_l = h_{l-1} W_lᵀ + b_l,  h_l = relu(a_l) ⊙ m_l,  h = h_L
    [Δ, g_f, g_i] = h W_gᵀ + b_g,  f = σ(g_f),  i = σ(g_i)
    x = f ⊙ c + i ⊙ Δ,  x̂ = (x - μ) / σ_x,  c' = clamp(γ ⊙ x̂ + β, ±K)
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class NewLLMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, token_part, context, context_weight, dropout_p, eps, clamp, norm_weight, norm_bias,
                proj_weight, proj_bias, *layer_params):
        # token_part (T, B, H): the token half of layer 1 with its bias; context (B, C)
        weights, biases = layer_params[0::2], layer_params[1::2]  # layers 2..L
        steps, size_c = token_part.shape[0], context.shape[1]
        keep = 1.0 - dropout_p
        contexts, pre_acts, masks, normed, rstds, projs, hiddens = [], [], [], [], [], [], []
        for t in range(steps):
            contexts.append(context)
            pre = torch.addmm(token_part[t], context, context_weight.t())
            layer_pre, layer_masks = [pre], []
            hidden = F.relu(pre)
            for weight, bias in zip((None, *weights), (None, *biases)):
                if weight is not None:
                    pre = torch.addmm(bias, hidden, weight.t())
                    layer_pre.append(pre)
                    hidden = F.relu(pre)
                if dropout_p > 0:
                    mask = torch.empty_like(hidden).bernoulli_(keep).div_(keep)
                    hidden = hidden * mask
                    layer_masks.append(mask)
            proj = torch.addmm(proj_bias, hidden, proj_weight.t())  # (B, 3C): Δ, f, i
            delta, gates = proj.split([size_c, 2 * size_c], dim=1)
            forget, inp = torch.sigmoid(gates).chunk(2, dim=1)
            mixed = torch.addcmul(inp * delta, forget, context)
            var, mean = torch.var_mean(mixed, dim=1, unbiased=False, keepdim=True)
            rstd = torch.rsqrt(var + eps)
            x_hat = (mixed - mean) * rstd
            context = torch.addcmul(norm_bias, x_hat, norm_weight).clamp_(-clamp, clamp)
            pre_acts.append(layer_pre)
            masks.append(layer_masks)
            normed.append(x_hat)
            rstds.append(rstd)
            projs.append(proj)
            hiddens.append(hidden)
        hidden_seq = torch.stack(hiddens)  # (T, B, H)
        contexts.append(context)
        ctx.save_for_backward(context_weight, norm_weight, norm_bias, proj_weight, *weights)
        ctx.saved = (contexts, pre_acts, masks, normed, rstds, projs, hidden_seq)
        ctx.config = (dropout_p, clamp, len(weights))
        return hidden_seq, context

    @staticmethod
    def backward(ctx, grad_hidden, grad_context):
        context_weight, norm_weight, norm_bias, proj_weight, *weights = ctx.saved_tensors
        contexts, pre_acts, masks, normed, rstds, projs, hidden_seq = ctx.saved
        dropout_p, clamp, n_rest = ctx.config
        steps, size_c = hidden_seq.shape[0], contexts[0].shape[1]
        grad_hidden = torch.zeros_like(hidden_seq) if grad_hidden is None else grad_hidden
        d_context = torch.zeros_like(contexts[-1]) if grad_context is None else grad_context.clone()
        d_pre = [torch.empty_like(hidden_seq) for _ in range(n_rest + 1)]  # per layer, (T, B, H)
        d_proj = torch.empty(steps, *projs[0].shape, dtype=hidden_seq.dtype, device=hidden_seq.device)
        d_norm_weight = torch.zeros_like(norm_weight)
        d_norm_bias = torch.zeros_like(norm_bias)
        for t in reversed(range(steps)):
            prev, x_hat, rstd, proj = contexts[t], normed[t], rstds[t], projs[t]
            # clamp: gradient only where the output was inside ±K
            out = contexts[t + 1]
            d_out = d_context * (out.abs() < clamp)
            d_norm_weight += (d_out * x_hat).sum(0)
            d_norm_bias += d_out.sum(0)
            # LayerNorm: dx = rstd · (dx̂ - mean(dx̂) - x̂ · mean(dx̂ ⊙ x̂))
            d_xhat = d_out * norm_weight
            d_mixed = rstd * (d_xhat - d_xhat.mean(1, keepdim=True) - x_hat * (d_xhat * x_hat).mean(1, keepdim=True))
            delta, gates = proj.split([size_c, 2 * size_c], dim=1)
            gate = torch.sigmoid(gates)
            forget, inp = gate.chunk(2, dim=1)
            d_gate = torch.cat([d_mixed * prev, d_mixed * delta], dim=1) * gate * (1 - gate)
            d_proj[t] = torch.cat([d_mixed * inp, d_gate], dim=1)
            d_context = d_mixed * forget
            d_hidden = torch.addmm(grad_hidden[t], d_proj[t], proj_weight)
            for layer in reversed(range(n_rest + 1)):
                if dropout_p > 0:
                    d_hidden = d_hidden * masks[t][layer]
                d_act = d_hidden * (pre_acts[t][layer] > 0)
                d_pre[layer][t] = d_act
                if layer > 0:
                    d_hidden = d_act @ weights[layer - 1]
            d_context = torch.addmm(d_context, d_pre[0][t], context_weight)
        # Weight gradients: one matmul over all T·B rows each.
        flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
        layer_inputs = [_layer_outputs(pre_acts, masks, layer, dropout_p) for layer in range(n_rest)]
        d_context_weight = flat(d_pre[0]).t() @ flat(torch.stack(contexts[:-1]))
        d_proj_weight = flat(d_proj).t() @ flat(hidden_seq)
        d_layers = []
        for layer in range(1, n_rest + 1):
            d_layers += [flat(d_pre[layer]).t() @ flat(layer_inputs[layer - 1]), d_pre[layer].sum((0, 1))]
        return (d_pre[0], d_context, d_context_weight, None, None, None, d_norm_weight, d_norm_bias,
                d_proj_weight, d_proj.sum((0, 1)), *d_layers)


def _layer_outputs(pre_acts, masks, layer: int, dropout_p: float) -> torch.Tensor:
    """h_layer for every step, (T, B, H): recomputed from the saved pre-activations and masks."""
    outputs = [F.relu(pre[layer]) for pre in pre_acts]
    if dropout_p > 0:
        outputs = [out * mask[layer] for out, mask in zip(outputs, masks)]
    return torch.stack(outputs)


def fused_scan(cell, token_embeddings: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`cell.scan` without a mask, through `NewLLMScan`: (B, T, E), (B, C) → hidden (B, T, H), last context."""
    first = cell.layers[0]
    token_weight, context_weight = first.weight.split([cell.embedding_size, cell.context_size], dim=1)
    rest = [p for layer in cell.layers[1:] for p in (layer.weight, layer.bias)]
    dropout_p = cell.dropout.p if cell.training else 0.0
    # The recurrence runs in the parameters' dtype (fp32) even under bf16 autocast: it is bound by launches, not by
    # arithmetic, and the hand-written backward needs one dtype. The casts are ordinary autograd
    # ops, so the gradients come back in the caller's dtype.
    with torch.autocast(token_embeddings.device.type, enabled=False):
        dtype = first.weight.dtype  # the parameters' dtype (fp32 under autocast)
        token_part = F.linear(token_embeddings.to(dtype), token_weight, first.bias)
        token_part = token_part.transpose(0, 1).contiguous()  # (T, B, H)
        hidden, context = NewLLMScan.apply(
            token_part,
            context.to(dtype),
            context_weight,
            dropout_p,
            cell.context_norm.eps,
            cell.context_clamp,
            cell.context_norm.weight,
            cell.context_norm.bias,
            cell.context_proj.weight,
            cell.context_proj.bias,
            *rest,
        )
    return hidden.transpose(0, 1), context
