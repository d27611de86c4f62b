"""Training fast path: the New-LLM recurrence with a hand-written backward pass (BPTT).

Autograd records ~20 nodes per token and replays them one by one; for a small cell that
bookkeeping, not arithmetic, is the cost (CPU and GPU alike). Here the forward loop runs without
autograd, saves what the backward needs, and the backward walks the sequence in reverse with
the chain rule written out. Weight gradients are summed over all positions with one matmul per
weight after the loop. The function is `NewLLMCell.step` applied along T (tests compare outputs
and gradients with the reference); only the dropout masks are drawn differently (all at once).

Per token, with m_l and m_c the dropout masks (already divided by 1 - p):
    a_1 = P_t + (c ⊙ m_c) W_cᵀ,  a_l = h_{l-1} W_lᵀ + b_l,  h_l = relu(a_l) ⊙ m_l,  h = h_L
    [Δ, g_f, g_i] = h W_gᵀ + b_g,  f = σ(g_f),  i = σ(g_i)
    x = f ⊙ c + i ⊙ Δ,  x̂ = (x - μ) / σ_x,  c' = clamp(γ ⊙ x̂ + β, ±K)
(m_c, context dropout, hides part of the context from the FFN only; the gated update reads all of c.)
With the research options, for layers l ≥ 2: `ffn_norm` reads LN_l(h_{l-1}) instead of h_{l-1},
and `residual` makes h_l = h_{l-1} + relu(a_l) ⊙ m_l.

On CUDA the loop is bound by kernel launches (~40 small kernels per token), so two switches on the
cell trade set-up time for speed (`NewLLMForCausalLM.set_fast_path`):
    compile_steps: `forward_step` and `backward_step` go through `torch.compile`, which fuses each
        step's element-wise work into a few kernels;
    cuda_graphs: the whole scan, forward and backward, is captured once per input shape
        (`CapturedScan`) and then replayed, with no Python or launch cost per token.

The MLP-block cell has a hand-written backward of its own (scan_mlp.py, through `run_scan` below).
Cells neither covers (a tanh candidate, a final norm or no clamp on the Linear stack, a final norm
other than a LayerNorm, a multi-scale context) train through autograd on `cell_step`, a pure function
of the parameters: `compile_steps` fuses each step with torch.compile (AOTAutograd compiles its
backward too), and `cuda_graphs` captures the whole scan, backward included, the same way
(`autograd_scan`).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch.nn import functional as F

from newllm.models.cuda_graphs import capture_stream
from newllm.models.new_llm.cell import center_norm

# captures kept per cell: training and validation see one or two shapes each (a short last batch), or, with
# step 2's batches grouped by length and padded in steps of 32 (pipeline/stage.py), about ten. A capture's
# memory grows with its window, so the short ones cost little.
MAX_GRAPHS = 16


class ScanOptions(NamedTuple):
    """The non-tensor settings of one scan (part of a CUDA graph's key)."""

    eps: float  # the LayerNorms' epsilon
    clamp: float  # the context is clamped to ±clamp
    residual: bool  # layers 2..L add their output to their input
    ffn_norm: bool  # LayerNorm (with its own γ, β) before each of layers 2..L


def layer_norm_stats(x, eps: float):
    """(x̂, 1/σ) over the last dim, the two things LayerNorm's backward needs."""
    var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    return (x - mean) * rstd, rstd


def layer_norm_backward(d_xhat, x_hat, rstd):
    """dL/dx from dL/dx̂: rstd · (dx̂ - mean(dx̂) - x̂ · mean(dx̂ ⊙ x̂))."""
    return rstd * (d_xhat - d_xhat.mean(1, keepdim=True) - x_hat * (d_xhat * x_hat).mean(1, keepdim=True))


def forward_step(token_part, context, masks, context_mask, context_weight, weights, biases, ffn_norms, proj_weight,
                 proj_bias, norm_weight, norm_bias, options: ScanOptions):
    """One token: (B, H) token part of layer 1, (B, C) context → hidden, next context, and what backward needs."""
    read = context if context_mask is None else context * context_mask
    pre = torch.addmm(token_part, read, context_weight.t())
    pre_acts, inputs, input_hats, input_rstds = [pre], [], [], []
    hidden = F.relu(pre)
    if masks is not None:
        hidden = hidden * masks[0]
    for layer, (weight, bias) in enumerate(zip(weights, biases), start=1):
        x = hidden
        if options.ffn_norm:
            x_hat, rstd = layer_norm_stats(hidden, options.eps)
            gamma, beta = ffn_norms[2 * layer - 2], ffn_norms[2 * layer - 1]
            x = torch.addcmul(beta, x_hat, gamma)
            input_hats.append(x_hat)
            input_rstds.append(rstd)
        inputs.append(x)
        pre = torch.addmm(bias, x, weight.t())
        pre_acts.append(pre)
        out = F.relu(pre)
        if masks is not None:
            out = out * masks[layer]
        hidden = hidden + out if options.residual else out
    proj = torch.addmm(proj_bias, hidden, proj_weight.t())  # (B, 3C): Δ, f, i
    size_c = context.shape[1]
    delta, gates = proj.split([size_c, 2 * size_c], dim=1)
    forget, inp = torch.sigmoid(gates).chunk(2, dim=1)
    mixed = torch.addcmul(inp * delta, forget, context)
    x_hat, rstd = layer_norm_stats(mixed, options.eps)
    new_context = torch.addcmul(norm_bias, x_hat, norm_weight).clamp(-options.clamp, options.clamp)
    return hidden, new_context, pre_acts, inputs, input_hats, input_rstds, x_hat, rstd, proj


def backward_step(d_context, grad_hidden, prev, out, x_hat, rstd, proj, pre_acts, input_hats, input_rstds, masks,
                  context_mask, norm_weight, proj_weight, context_weight, weights, ffn_norms, options: ScanOptions):
    """The chain rule through one `forward_step`, given dL/d(next context) and dL/d(hidden) from the head.

    Returns dL/d(previous context), dL/d(context LayerNorm output), dL/d(proj), dL/d(pre-activation)
    per layer and dL/d(LayerNorm output) per normalised layer; the weight gradients are summed from
    these over all positions after the loop.
    """
    size_c = prev.shape[1]
    d_out = d_context * (out.abs() < options.clamp)  # clamp: gradient only inside ±K
    d_mixed = layer_norm_backward(d_out * norm_weight, x_hat, rstd)
    delta, gates = proj.split([size_c, 2 * size_c], dim=1)
    gate = torch.sigmoid(gates)
    forget, inp = gate.chunk(2, dim=1)
    d_gate = torch.cat([d_mixed * prev, d_mixed * delta], dim=1) * gate * (1 - gate)
    d_proj = torch.cat([d_mixed * inp, d_gate], dim=1)
    d_prev = d_mixed * forget
    d_hidden = torch.addmm(grad_hidden, d_proj, proj_weight)  # dL/dh_L
    d_pre_acts = [None] * len(pre_acts)
    d_norm_outs = [None] * len(input_hats)
    for layer in reversed(range(len(pre_acts))):
        d_act = d_hidden if masks is None else d_hidden * masks[layer]
        d_act = d_act * (pre_acts[layer] > 0)
        d_pre_acts[layer] = d_act
        if layer == 0:
            break
        d_input = d_act @ weights[layer - 1]  # dL/d(this layer's input x)
        if options.ffn_norm:
            d_norm_outs[layer - 1] = d_input
            gamma = ffn_norms[2 * layer - 2]
            d_input = layer_norm_backward(d_input * gamma, input_hats[layer - 1], input_rstds[layer - 1])
        d_hidden = d_input + d_hidden if options.residual else d_input  # dL/dh_{layer}
    if context_mask is None:
        d_prev = torch.addmm(d_prev, d_pre_acts[0], context_weight)
    else:  # layer 1 read c ⊙ m_c
        d_prev = d_prev + (d_pre_acts[0] @ context_weight) * context_mask
    return d_prev, d_out, d_proj, d_pre_acts, d_norm_outs


class StepFunctions(NamedTuple):
    forward: callable
    backward: callable


EAGER_STEPS = StepFunctions(forward_step, backward_step)


@functools.cache
def compiled_steps() -> StepFunctions:
    """`forward_step` and `backward_step` through torch.compile (compiled on first call, once per shape)."""
    return StepFunctions(torch.compile(forward_step, dynamic=False), torch.compile(backward_step, dynamic=False))


def _stack(per_step: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """[step][layer] tensors → one (T, B, ·) tensor per layer."""
    return [torch.stack(layer) for layer in zip(*per_step)]


class NewLLMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, steps, options, n_layers, token_part, context, masks, context_masks, context_weight, norm_weight,
                norm_bias, proj_weight, proj_bias, *params):
        # token_part (T, B, H): the token half of layer 1 with its bias; context (B, C); masks (T, L, B, H) or None;
        # context_masks (T, B, C) or None; params: W, b of layers 2..L, then γ, β of their pre-norms (ffn_norm)
        layer_params, ffn_norms = params[: 2 * (n_layers - 1)], params[2 * (n_layers - 1) :]
        weights, biases = layer_params[0::2], layer_params[1::2]
        contexts, record = [context], []
        hiddens, normed, rstds, projs = [], [], [], []
        for t in range(token_part.shape[0]):
            hidden, context, *layers, x_hat, rstd, proj = steps.forward(
                token_part[t], context, None if masks is None else masks[t],
                None if context_masks is None else context_masks[t], context_weight, weights, biases, ffn_norms,
                proj_weight, proj_bias, norm_weight, norm_bias, options,
            )  # fmt: skip
            contexts.append(context)
            record.append(layers)  # pre-activations, layer inputs, their x̂ and 1/σ
            hiddens.append(hidden)
            normed.append(x_hat)
            rstds.append(rstd)
            projs.append(proj)
        hidden_seq = torch.stack(hiddens)  # (T, B, H)
        pre_acts, inputs, input_hats, input_rstds = (_stack(part) for part in zip(*record))
        # hidden_seq is an output: only save_for_backward may hold it. A plain ctx attribute would make a reference
        # cycle (output -> its grad_fn, this ctx -> output) that only Python's cycle collector frees, so every
        # step's activations would stay alive until a full collection
        ctx.save_for_backward(hidden_seq, context_weight, norm_weight, proj_weight, *weights, *ffn_norms)
        ctx.saved = (torch.stack(contexts), pre_acts, inputs, input_hats, input_rstds, masks, context_masks,
                     torch.stack(normed), torch.stack(rstds), torch.stack(projs))  # fmt: skip
        ctx.steps, ctx.options, ctx.n_layers = steps, options, n_layers
        return hidden_seq, context

    @staticmethod
    def backward(ctx, grad_hidden, grad_context):
        hidden_seq, context_weight, norm_weight, proj_weight, *per_layer = ctx.saved_tensors  # then layers 2.., FFN norms
        weights, ffn_norms = per_layer[: ctx.n_layers - 1], per_layer[ctx.n_layers - 1 :]
        contexts, pre_acts, inputs, input_hats, input_rstds, masks, context_masks, normed, rstds, projs = ctx.saved
        grad_hidden = torch.zeros_like(hidden_seq) if grad_hidden is None else grad_hidden
        d_context = torch.zeros_like(contexts[-1]) if grad_context is None else grad_context
        d_outs, d_projs, d_pre_acts, d_norm_outs = [], [], [], []
        for t in reversed(range(hidden_seq.shape[0])):
            d_context, d_out, d_proj, d_pre, d_norm = ctx.steps.backward(
                d_context, grad_hidden[t], contexts[t], contexts[t + 1], normed[t], rstds[t], projs[t],
                [layer[t] for layer in pre_acts], [layer[t] for layer in input_hats],
                [layer[t] for layer in input_rstds], None if masks is None else masks[t],
                None if context_masks is None else context_masks[t], norm_weight, proj_weight, context_weight, weights,
                ffn_norms, ctx.options,
            )  # fmt: skip
            d_outs.append(d_out)
            d_projs.append(d_proj)
            d_pre_acts.append(d_pre)
            d_norm_outs.append(d_norm)
        # Gradients were collected last step first; put them back in time order, (T, B, ·).
        d_out = torch.stack(d_outs[::-1])
        d_proj = torch.stack(d_projs[::-1])
        d_pre = _stack(d_pre_acts[::-1])
        d_norm = _stack(d_norm_outs[::-1]) if ctx.options.ffn_norm else []
        # Weight gradients: one matmul over all T·B rows each.
        flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
        d_layers = []
        for layer in range(1, ctx.n_layers):
            d_layers += [flat(d_pre[layer]).t() @ flat(inputs[layer - 1]), d_pre[layer].sum((0, 1))]
        d_ffn_norms = []
        for d_norm_out, x_hat in zip(d_norm, input_hats):
            d_ffn_norms += [(d_norm_out * x_hat).sum((0, 1)), d_norm_out.sum((0, 1))]
        reads = contexts[:-1] if context_masks is None else contexts[:-1] * context_masks  # what layer 1 read
        return (None, None, None, d_pre[0], d_context, None, None, flat(d_pre[0]).t() @ flat(reads),
                (d_out * normed).sum((0, 1)), d_out.sum((0, 1)), flat(d_proj).t() @ flat(hidden_seq),
                d_proj.sum((0, 1)), *d_layers, *d_ffn_norms)  # fmt: skip


def _scan(token_part, context, context_weight, norm_weight, norm_bias, proj_weight, proj_bias, *params,
          steps: StepFunctions, options: ScanOptions, n_layers: int, dropout_p: float, context_dropout_p: float = 0.0):
    """Draw the dropout masks for all positions at once, then run `NewLLMScan` (the unit a CUDA graph captures)."""
    steps_t, batch, hidden = token_part.shape
    masks = dropout_masks(token_part, (steps_t, n_layers, batch, hidden), dropout_p)
    context_masks = dropout_masks(token_part, (steps_t, batch, context.shape[1]), context_dropout_p)
    return NewLLMScan.apply(steps, options, n_layers, token_part, context, masks, context_masks, context_weight,
                            norm_weight, norm_bias, proj_weight, proj_bias, *params)  # fmt: skip


def dropout_masks(like: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor | None:
    """Inverted-dropout masks (0 or 1/(1-p)) of `shape`, on `like`'s device and dtype; None when p is 0."""
    if p == 0:
        return None
    keep = 1.0 - p
    return like.new_empty(shape).bernoulli_(keep).div_(keep)


class CapturedScan:
    """`scan` for one set of input shapes, captured as a forward and a backward CUDA graph.

    What `torch.cuda.make_graphed_callables` does, for one callable, with three differences that a
    training loop needs: warm-up and capture run on one private stream in thread-local capture mode
    (another thread's CUDA call, e.g. torch.compile's, cannot spoil the capture); the parameters are
    captured through detached aliases (no autograd node of the surrounding step is touched); and the
    outputs and gradients are handed out as copies, so a replay never overwrites a tensor the caller
    still holds (gradient accumulation, a saved activation).
    """

    def __init__(self, scan, tensors: tuple[torch.Tensor, ...], copied: int):
        # The first `copied` tensors are data (copied in before each replay); the rest are read in place.
        # Under no_grad (validation) only the forward is captured: there is no backward to replay.
        self.copied = copied
        backward = torch.is_grad_enabled()
        self.inputs = tuple(
            (t.detach().clone() if i < copied else t.detach()).requires_grad_(t.requires_grad)
            for i, t in enumerate(tensors)
        )
        self.stream = capture_stream(tensors[0].device.index)
        self.stream.wait_stream(torch.cuda.current_stream())
        wanted = [t for t in self.inputs if t.requires_grad]
        with torch.cuda.stream(self.stream):
            for _ in range(2):  # kernel selection, compilation, workspaces: all before the capture
                outputs = scan(*self.inputs)
                if backward:
                    torch.autograd.grad(outputs, wanted, [torch.ones_like(o) for o in outputs], allow_unused=True)
        pool = torch.cuda.graph_pool_handle()
        self.forward_graph, self.backward_graph = torch.cuda.CUDAGraph(), None
        with torch.cuda.graph(self.forward_graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"):
            self.outputs = scan(*self.inputs)
        if backward:
            self.grad_outputs = tuple(torch.zeros_like(o) for o in self.outputs)
            self.backward_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.backward_graph, pool=pool, stream=self.stream, capture_error_mode="thread_local"):
                grads = iter(torch.autograd.grad(self.outputs, wanted, self.grad_outputs, allow_unused=True))
            self.grads = tuple(next(grads) if t.requires_grad else None for t in self.inputs)
        torch.cuda.current_stream().wait_stream(self.stream)

    def __call__(self, *tensors: torch.Tensor):
        return _ReplayScan.apply(self, *tensors)


class _ReplayScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, captured, *tensors):
        for static, tensor in zip(captured.inputs[: captured.copied], tensors):
            static.copy_(tensor)
        captured.forward_graph.replay()
        ctx.captured = captured
        return tuple(o.detach().clone() for o in captured.outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        captured = ctx.captured
        for static, grad in zip(captured.grad_outputs, grad_outputs):
            if grad is None:
                static.zero_()
            else:
                static.copy_(grad)
        captured.backward_graph.replay()
        return (None, *(None if g is None else g.detach().clone() for g in captured.grads))


def _graphed(cell, scan, tensors: tuple[torch.Tensor, ...], options: tuple) -> CapturedScan:
    """The `CapturedScan` of these shapes and parameters, captured on first use and cached on the cell."""
    key = (options, torch.is_grad_enabled(), *((t.shape, t.dtype, t.device, t.requires_grad, t.data_ptr()) for t in tensors[2:]),
           *((t.shape, t.dtype, t.requires_grad) for t in tensors[:2]))  # fmt: skip
    graphs = cell.__dict__.setdefault("_scan_graphs", OrderedDict())  # not a submodule, not in the state dict
    if key not in graphs:
        if len(graphs) >= MAX_GRAPHS:
            graphs.popitem(last=False)
        graphs[key] = CapturedScan(scan, tensors, copied=2)
    graphs.move_to_end(key)
    return graphs[key]


def fused_scan(cell, token_embeddings: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`cell.scan` without a mask, through `NewLLMScan`: (B, T, E), (B, C) → hidden (B, T, H), last context.

    Under no_grad (validation during training) the same forward runs, compiled and graphed as set,
    and no backward is captured."""
    params = [p for layer in cell.layers[1:] for p in (layer.weight, layer.bias)]
    if cell.norms is not None:
        params += [p for norm in cell.norms for p in (norm.weight, norm.bias)]
    dropout_p = cell.dropout.p if cell.training else 0.0
    context_dropout_p = cell.context_dropout.p if cell.training else 0.0
    steps = compiled_steps() if cell.compile_steps and token_embeddings.is_cuda else EAGER_STEPS
    options = ScanOptions(cell.context_norm.eps, cell.context_clamp, cell.residual, cell.norms is not None)
    scan = functools.partial(_scan, steps=steps, options=options, n_layers=len(cell.layers), dropout_p=dropout_p,
                             context_dropout_p=context_dropout_p)
    rest = (cell.context_norm.weight, cell.context_norm.bias, cell.context_proj.weight, cell.context_proj.bias, *params)
    return run_scan(cell, scan, token_embeddings, context, rest, (options, dropout_p, context_dropout_p, steps is not EAGER_STEPS))


def run_scan(cell, scan, token_embeddings: torch.Tensor, context: torch.Tensor, rest: tuple, key: tuple):
    """What the hand-written scans (this file's and scan_mlp.py's) share around `scan`: (B, T, E), (B, C) → (B, T, H), (B, C).

    The token half of the first layer for all positions at once, then `scan(token_part, context,
    context_weight, *rest)`, captured as CUDA graphs per input shape (and `key`) with `cell.cuda_graphs`
    on CUDA. The recurrence runs in the parameters' dtype (fp32) even under bf16 autocast: it is bound
    by launches, not by arithmetic, and a hand-written backward needs one dtype. The casts are
    ordinary autograd ops, so the gradients come back in the caller's dtype."""
    first = cell.layers[0]
    token_weight, context_weight = first.weight.split([cell.embedding_size, cell.context_size], dim=1)
    with torch.autocast(token_embeddings.device.type, enabled=False):
        dtype = first.weight.dtype  # the parameters' dtype (fp32 under autocast)
        token_part = F.linear(token_embeddings.to(dtype), token_weight, first.bias)
        token_part = token_part.transpose(0, 1).contiguous()  # (T, B, H)
        tensors = (token_part, context.to(dtype), context_weight, *rest)
        if cell.cuda_graphs and token_embeddings.is_cuda:
            scan = _graphed(cell, scan, tensors, key)
        hidden, context = scan(*tensors)
    return hidden.transpose(0, 1), context


class CellShape(NamedTuple):
    """The non-tensor settings of `cell_step` (constants to torch.compile, part of a CUDA graph's key)."""

    mlp: bool  # MLP blocks (True) or Linear → ReLU layers
    layers: int  # L: blocks, or Linear layers
    residual: bool  # linear layers 2..L add their output to their input
    ffn_norm: bool  # LayerNorm before linear layers 2..L
    final_norm: str | None  # its type (NewLLMConfig.final_norm_type), None without one
    tanh: bool  # Δ through tanh
    clamp: float  # 0: no clamp
    eps: float
    # dropout on (training with p > 0): the masks come as arguments; kept here so that a CUDA graph
    # captured with masks is never replayed without them
    dropout: bool
    context_dropout: bool


def cell_step(token_part, context, masks, context_mask, context_weight, p: dict, shape: CellShape):
    """`NewLLMCell.step` as a pure function of its parameters `p` (names as in `cell.named_parameters()`),
    with the dropout masks given: (B, H) token part of the first layer, (B, C) → hidden (B, H), next context.
    Autograd differentiates it; torch.compile fuses it (`autograd_scan`)."""
    read = context if context_mask is None else context * context_mask
    hidden = torch.addmm(token_part, read, context_weight.t())
    size = hidden.shape[-1:]
    if shape.mlp:
        for layer in range(shape.layers):
            b = f"blocks.{layer}."
            x = F.layer_norm(hidden, size, p[b + "norm.weight"], p[b + "norm.bias"], shape.eps)
            out = F.linear(F.gelu(F.linear(x, p[b + "up.weight"], p[b + "up.bias"])), p[b + "down.weight"], p[b + "down.bias"])
            hidden = hidden + (out if masks is None else out * masks[layer])
    else:
        hidden = F.relu(hidden) if masks is None else F.relu(hidden) * masks[0]
        for layer in range(1, shape.layers):
            x = hidden
            if shape.ffn_norm:
                x = F.layer_norm(x, size, p[f"norms.{layer - 1}.weight"], p[f"norms.{layer - 1}.bias"], shape.eps)
            out = F.relu(F.linear(x, p[f"layers.{layer}.weight"], p[f"layers.{layer}.bias"]))
            out = out if masks is None else out * masks[layer]
            hidden = hidden + out if shape.residual else out
    if shape.final_norm == "layer":
        hidden = F.layer_norm(hidden, size, p["final_norm.weight"], p["final_norm.bias"], shape.eps)
    elif shape.final_norm == "rms":
        hidden = F.rms_norm(hidden, size, p["final_norm.weight"], shape.eps)
    elif shape.final_norm == "center":
        hidden = center_norm(hidden, p["final_norm.weight"], p["final_norm.bias"])
    delta, gates = F.linear(hidden, p["context_proj.weight"], p["context_proj.bias"]).split(
        [context.shape[1], 2 * context.shape[1]], dim=1
    )
    if shape.tanh:
        delta = torch.tanh(delta)
    forget, inp = torch.sigmoid(gates).chunk(2, dim=1)
    mixed = torch.addcmul(inp * delta, forget, context)
    new_context = F.layer_norm(mixed, context.shape[1:], p["context_norm.weight"], p["context_norm.bias"], shape.eps)
    if shape.clamp > 0:
        new_context = new_context.clamp(-shape.clamp, shape.clamp)
    return hidden, new_context


@functools.cache
def compiled_cell_step():
    return torch.compile(cell_step, dynamic=False)


def _autograd_scan(token_embeddings, context, *params, names, shape: CellShape, dropout_p: float,
                   context_dropout_p: float, compiled: bool):
    """Draw every position's dropout masks at once, then `cell_step` along T under autograd."""
    p = dict(zip(names, params))
    size_e = token_embeddings.shape[-1]
    token_weight, context_weight = p["layers.0.weight"].split([size_e, context.shape[1]], dim=1)
    token_part = F.linear(token_embeddings, token_weight, p["layers.0.bias"]).transpose(0, 1)  # (T, B, H)
    steps_t, batch, width = token_part.shape
    masks = dropout_masks(token_part, (steps_t, shape.layers, batch, width), dropout_p)
    context_masks = dropout_masks(token_part, (steps_t, batch, context.shape[1]), context_dropout_p)
    step = compiled_cell_step() if compiled else cell_step
    hiddens = []
    for t in range(steps_t):
        hidden, context = step(token_part[t], context, None if masks is None else masks[t],
                               None if context_masks is None else context_masks[t], context_weight, p, shape)  # fmt: skip
        hiddens.append(hidden)
    return torch.stack(hiddens, dim=1), context


def _cell_scan(token_embeddings, context, *params, cell, names):
    """`cell.scan` with its parameters passed in as tensors, so that a capture can differentiate them."""
    return torch.func.functional_call(cell, dict(zip(names, params)), (token_embeddings, context))


def autograd_scan(cell, token_embeddings: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training scan of cells the hand-written backward does not cover: (B, T, E), (B, C) → (B, T, H), (B, C).

    `cell_step` along T under autograd (the reference `cell.scan` for a multi-scale context), its
    steps through torch.compile with `compile_steps` and the whole scan, backward included, captured
    as CUDA graphs per input shape with `cuda_graphs` (on CUDA). Runs in the parameters' dtype with
    autocast off, as `fused_scan` does: a capture cannot hold autocast's weight-cast cache, and the
    loop is bound by launches, not by arithmetic."""
    names, params = zip(*cell.named_parameters())
    on_cuda = token_embeddings.is_cuda
    if cell.context_scales > 1 or cell.update_from_stream:  # options cell_step leaves to the reference scan
        scan, key = functools.partial(_cell_scan, cell=cell, names=names), ("reference", cell.training)
    else:
        final_norm = cell.final_norm_type if cell.final_norm is not None else None
        shape = CellShape(cell.blocks is not None, len(cell.blocks if cell.blocks is not None else cell.layers),
                          cell.residual, cell.norms is not None, final_norm, cell.candidate == "tanh",
                          float(cell.context_clamp), cell.context_norm.eps, cell.dropout.p > 0 and cell.training,
                          cell.context_dropout.p > 0 and cell.training)  # fmt: skip
        compiled = cell.compile_steps and on_cuda
        scan = functools.partial(_autograd_scan, names=names, shape=shape,
                                 dropout_p=cell.dropout.p if cell.training else 0.0,
                                 context_dropout_p=cell.context_dropout.p if cell.training else 0.0, compiled=compiled)  # fmt: skip
        key = (shape, compiled)
    with torch.autocast(token_embeddings.device.type, enabled=False):
        dtype = params[0].dtype
        tensors = (token_embeddings.to(dtype), context.to(dtype), *params)
        if cell.cuda_graphs and on_cuda:
            scan = _graphed(cell, scan, tensors, key)
        return scan(*tensors)
