"""The New-LLM cell: one token in, one fixed-size context vector carried to the next token.

    x_t = [e(token_t); c_{t-1}]                          c_0 = 0
    h_t = (Linear → ReLU → Dropout)^L (x_t)
    logits_t = W_out h_t                                 (in modeling.py)
    Δ, f, i = W_Δ h_t, σ(W_f h_t), σ(W_i h_t)
    c_t = clamp(LayerNorm(f ⊙ c_{t-1} + i ⊙ Δ), -10, 10)

No attention and no positional embedding: position is only what the context has absorbed.
`step` is the reference, written exactly as above; `scan` computes the same function over a
whole sequence faster (see its docstring), and scan.py faster still for training. The research
options of `NewLLMConfig` (residuals, pre-norms, context dropout, multi-scale context) change the
FFN and the normalisation; all default to the prototype's cell.

With `block="mlp"` the stack is a Transformer's MLP sublayers without the attention:

    h_0 = W_in [e; c] + b = W_tok e + W_ctx c + b       (the context enters additively)
    h_l = h_{l-1} + Dropout(W_2 GELU(W_1 LN(h_{l-1})))   W_1: d → k·d, W_2: k·d → d, l = 1..L

and `final_norm` puts a LayerNorm on h_L before the head and the context update read it
(`update_input="stream"`: the update reads h_L itself, the head alone reads the norm); `final_norm_type`
makes it an RMSNorm (scale only) or a `CenterNorm` (centre only).
`candidate="tanh"` bounds Δ by tanh, and `context_clamp=0` drops the clamp.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from newllm.models.new_llm.configuration import NewLLMConfig


class MLPBlock(nn.Module):
    """h + Dropout(W_2 GELU(W_1 LN(h))): a pre-norm Transformer MLP sublayer."""

    def __init__(self, width: int, ratio: int, dropout: float, layer_norm_eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=layer_norm_eps)
        self.up = nn.Linear(width, ratio * width)
        self.down = nn.Linear(ratio * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.dropout(self.down(F.gelu(self.up(self.norm(hidden)))))


def center_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """γ ⊙ (x - mean(x)) + β over the last dim."""
    return (x - x.mean(-1, keepdim=True)) * weight + bias


class CenterNorm(nn.Module):
    """A LayerNorm without the division by σ: each row is centred but keeps its scale."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return center_norm(x, self.weight, self.bias)


def make_final_norm(kind: str, width: int, eps: float) -> nn.Module:
    """The final norm `kind` names: LayerNorm (centre and scale), RMSNorm (scale only) or CenterNorm (centre only)."""
    if kind == "rms":
        return nn.RMSNorm(width, eps=eps)
    if kind == "center":
        return CenterNorm(width)
    return nn.LayerNorm(width, eps=eps)


class BaseCell(nn.Module):
    """What the prototype and parallel cells share: the FFN stack on [token; context], the [Δ, f, i]
    projection and the context LayerNorm. They differ in what the projection reads (the FFN output
    h_t, or the token alone) and so in whether the recurrence is sequential.
    """

    def __init__(self, config: NewLLMConfig, gate_input_size: int):
        super().__init__()
        embedding_size, context_size, hidden_size = config.embedding_size, config.context_size, config.hidden_size
        num_layers, eps = config.num_hidden_layers, config.layer_norm_eps
        self.embedding_size = embedding_size
        self.context_size = context_size
        self.context_scales = config.context_scales
        self.dropout = nn.Dropout(config.dropout)
        self.context_dropout = nn.Dropout(config.context_dropout)
        self.residual = config.residual
        if config.block == "mlp":
            # h_0 = W_in [e; c] + b, then L pre-norm MLP blocks on a residual stream
            self.layers = nn.ModuleList([nn.Linear(embedding_size + context_size, hidden_size)])
            self.blocks = nn.ModuleList(MLPBlock(hidden_size, config.mlp_ratio, config.dropout, eps) for _ in range(num_layers))
            self.norms = None
        else:
            widths = [embedding_size + context_size] + [hidden_size] * num_layers
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
            self.blocks = None
            # LayerNorm before each of layers 2..L (absent by default, so the prototype's state dict is unchanged)
            self.norms = (
                nn.ModuleList(nn.LayerNorm(hidden_size, eps=eps) for _ in range(num_layers - 1)) if config.ffn_norm else None
            )
        # A norm on the FFN output, read by the head and (prototype cell) the context update; the hand-written
        # backwards and the kernels compute it as a LayerNorm, so they check the type ("layer" without one)
        self.final_norm_type = config.final_norm_type
        self.final_norm = make_final_norm(config.final_norm_type, hidden_size, eps) if config.final_norm else None
        # W_Δ, W_f, W_i as one matmul: rows [0:C) give Δ, [C:2C) give f, [2C:3C) give i.
        self.context_proj = nn.Linear(gate_input_size, 3 * context_size)
        self.context_proj.is_context_projection = True  # its gate biases have their own init (modeling.py)
        self.context_norm = nn.LayerNorm(context_size, eps=eps)
        self.candidate = config.candidate
        self.update_from_stream = config.update_input == "stream"
        # How the training scan runs on CUDA (scan.py); not part of the function, so not in the config.
        self.compile_steps = False
        self.cuda_graphs = False
        self.kernel = False  # the Triton kernels of kernel.py, where they apply (modeling.kernel_refusal)
        self.kernel_loop = False  # ... as their loop launch: one program per SM, a grid barrier between phases
        # False trains every cell through autograd (scan.autograd_scan), to compare that with the hand-written backward
        self.handwritten_backward = True

    def forward(self, token_embeddings: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None):
        """`scan`: what `torch.func.functional_call` runs when a CUDA graph captures the cell (scan.py)."""
        return self.scan(token_embeddings, context, mask)

    def initial_context(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """c_0 = 0."""
        return torch.zeros(batch_size, self.context_size, device=device, dtype=dtype)

    def first_activation(self, pre: torch.Tensor) -> torch.Tensor:
        """What follows the first Linear on [e; c]: ReLU and dropout, or nothing (the MLP blocks' residual stream)."""
        return pre if self.blocks is not None else self.dropout(F.relu(pre))

    def after_first_layer(self, hidden: torch.Tensor) -> torch.Tensor:
        """Everything after the first layer: layers 2..L (or the MLP blocks), then the final norm."""
        return self.head_input(self.stream(hidden))

    def head_input(self, stream: torch.Tensor) -> torch.Tensor:
        """What the head reads: h_L, through the final norm where there is one."""
        return stream if self.final_norm is None else self.final_norm(stream)

    def stream(self, hidden: torch.Tensor) -> torch.Tensor:
        """h_L: layers 2..L (or the MLP blocks) after the first layer, before the final norm."""
        if self.blocks is not None:
            for block in self.blocks:
                hidden = block(hidden)
        else:
            for i, layer in enumerate(self.layers[1:]):
                x = hidden if self.norms is None else self.norms[i](hidden)
                out = self.dropout(F.relu(layer(x)))
                hidden = hidden + out if self.residual else out
        return hidden

    def feed_forward(self, token_embedding: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """h = FFN([e; c]) for any leading shape: (..., E), (..., C) → (..., H)."""
        return self.head_input(self.stream_of(token_embedding, context))

    def stream_of(self, token_embedding: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """h_L = the stack on [e; c], before the final norm, for any leading shape."""
        hidden = torch.cat([token_embedding, self.context_dropout(context)], dim=-1)
        return self.stream(self.first_activation(self.layers[0](hidden)))

    def normalize_context(self, mixed: torch.Tensor) -> torch.Tensor:
        """The context LayerNorm over the whole context, or over each of `context_scales` blocks (shared affine)."""
        norm, scales = self.context_norm, self.context_scales
        if scales == 1:
            return norm(mixed)
        blocks = mixed.unflatten(-1, (scales, self.context_size // scales))
        normed = F.layer_norm(blocks, blocks.shape[-1:], eps=norm.eps).flatten(-2)
        return normed * norm.weight + norm.bias


def init_gate_biases(bias: torch.Tensor, context_size: int, forget_bias: float, input_bias: float, scales: int):
    """Biases of the [Δ, f, i] projection: f at `forget_bias` (or per scale block at log 4^k), i at `input_bias`."""
    with torch.no_grad():
        forget = bias[context_size : 2 * context_size]
        if scales == 1:
            forget.fill_(forget_bias)
        else:
            # σ(log 4^k) = 4^k / (1 + 4^k): block k keeps its value for about 1 + 4^k tokens
            for k, block in enumerate(forget.chunk(scales)):
                block.fill_(math.log(4.0**k))
        bias[2 * context_size :].fill_(input_bias)


class NewLLMCell(BaseCell):
    """The prototype's cell: the [Δ, f, i] projection reads the FFN output h_t, so the recurrence is sequential."""

    def __init__(self, config: NewLLMConfig):
        super().__init__(config, gate_input_size=config.hidden_size)
        self.context_clamp = config.context_clamp  # 0: no clamp

    @property
    def has_handwritten_backward(self) -> bool:
        """Whether scan.py's hand-written backward covers this cell: the prototype's Linear+ReLU stack (with
        residuals, pre-norms and dropouts), a linear candidate, a clamp, one context scale. MLP-block cells
        have their own (`has_mlp_backward`); the rest train through autograd (compiled and CUDA-graphed on
        the fast path, scan.autograd_scan)."""
        return (
            self.context_scales == 1
            and not self.update_from_stream
            and self.blocks is None
            and self.final_norm is None
            and self.candidate == "linear"
            and self.context_clamp > 0
        )

    @property
    def has_mlp_backward(self) -> bool:
        """Whether scan_mlp.py's hand-written backward covers this cell: MLP blocks and one context scale
        (with or without the final norm, a LayerNorm; either candidate, a clamp or none), the update reading the
        head's input."""
        return (
            self.context_scales == 1
            and self.blocks is not None
            and not self.update_from_stream
            and self.final_norm_type == "layer"
        )

    @property
    def fast_validation(self) -> bool:
        """Whether no_grad forwards (validation during training) take the fast scan too: once `set_fast_path` chose a CUDA fast path."""
        return self.compile_steps or self.cuda_graphs or self.kernel

    def _bound(self, normed: torch.Tensor) -> torch.Tensor:
        return normed.clamp(-self.context_clamp, self.context_clamp) if self.context_clamp > 0 else normed

    def update_context(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """c ← clamp(LN(σ(f)·c + σ(i)·Δ), ±clamp), Δ through tanh with `candidate="tanh"`."""
        delta, forget, inp = self.context_proj(hidden).chunk(3, dim=-1)
        if self.candidate == "tanh":
            delta = torch.tanh(delta)
        mixed = torch.sigmoid(forget) * context + torch.sigmoid(inp) * delta
        return self._bound(self.normalize_context(mixed))

    def step(self, token_embedding: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference step: (B, E), (B, C) → hidden (B, H), next context (B, C)."""
        stream = self.stream_of(token_embedding, context)
        hidden = self.head_input(stream)
        return hidden, self.update_context(stream if self.update_from_stream else hidden, context)

    def scan(
        self,
        token_embeddings: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same function as `step` applied along T: (B, T, E), (B, C) → hidden (B, T, H), last context.

        The token half of the first layer does not depend on the context, so it is one batched
        matmul over all positions before the loop; inside the loop only the context half remains.
        Where `mask` is 0 (left padding) the context is carried unchanged.
        """
        first = self.layers[0]
        token_weight, context_weight = first.weight.split([self.embedding_size, self.context_size], dim=1)
        # (T, B, H), time-major so that each step reads one contiguous slice
        token_part = F.linear(token_embeddings, token_weight, first.bias).transpose(0, 1).contiguous()
        context_weight_t = context_weight.t()
        hiddens = []
        for t in range(token_part.shape[0]):
            read = self.context_dropout(context)
            stream = self.stream(self.first_activation(torch.addmm(token_part[t], read, context_weight_t)))
            hidden = self.head_input(stream)
            new_context = self._fused_update(stream if self.update_from_stream else hidden, context)
            if mask is not None:
                new_context = torch.where(mask[:, t, None].bool(), new_context, context)
            context = new_context
            hiddens.append(hidden)
        return torch.stack(hiddens, dim=1), context

    def _fused_update(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """`update_context` in fewer kernels: one sigmoid for both gates, one addcmul for the mix."""
        delta, gates = self.context_proj(hidden).split([self.context_size, 2 * self.context_size], dim=-1)
        if self.candidate == "tanh":
            delta = torch.tanh(delta)
        forget, inp = torch.sigmoid(gates).chunk(2, dim=-1)
        mixed = torch.addcmul(inp * delta, forget, context)
        return self._bound(self.normalize_context(mixed))
