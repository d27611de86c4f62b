"""The New-LLM cell: one token in, one fixed-size context vector carried to the next token.

    x_t = [e(token_t); c_{t-1}]                          c_0 = 0
    h_t = (Linear → ReLU → Dropout)^L (x_t)
    logits_t = W_out h_t                                 (in modeling.py)
    Δ, f, i = W_Δ h_t, σ(W_f h_t), σ(W_i h_t)
    c_t = clamp(LayerNorm(f ⊙ c_{t-1} + i ⊙ Δ), -10, 10)

No attention and no positional embedding: position is only what the context has absorbed.
`step` is the reference, written exactly as above; `scan` computes the same function over a
whole sequence faster (see its docstring) and is what training uses.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class NewLLMCell(nn.Module):
    def __init__(
        self,
        embedding_size: int,
        context_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float = 0.0,
        context_clamp: float = 10.0,
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.embedding_size = embedding_size
        self.context_size = context_size
        self.context_clamp = context_clamp
        widths = [embedding_size + context_size] + [hidden_size] * num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(dropout)
        # W_Δ, W_f, W_i as one matmul: rows [0:C) give Δ, [C:2C) give f, [2C:3C) give i.
        self.context_proj = nn.Linear(hidden_size, 3 * context_size)
        self.context_norm = nn.LayerNorm(context_size, eps=layer_norm_eps)
        # How the training scan runs on CUDA (scan.py); not part of the function, so not in the config.
        self.compile_steps = False
        self.cuda_graphs = False

    def initial_context(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.context_size, device=device, dtype=dtype)

    def update_context(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """c ← clamp(LN(σ(f)·c + σ(i)·Δ), ±clamp)."""
        delta, forget, inp = self.context_proj(hidden).chunk(3, dim=-1)
        mixed = torch.sigmoid(forget) * context + torch.sigmoid(inp) * delta
        return self.context_norm(mixed).clamp(-self.context_clamp, self.context_clamp)

    def step(self, token_embedding: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference step: (B, E), (B, C) → hidden (B, H), next context (B, C)."""
        hidden = torch.cat([token_embedding, context], dim=-1)
        for layer in self.layers:
            hidden = self.dropout(F.relu(layer(hidden)))
        return hidden, self.update_context(hidden, context)

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
            hidden = self.dropout(F.relu(torch.addmm(token_part[t], context, context_weight_t)))
            for layer in self.layers[1:]:
                hidden = self.dropout(F.relu(layer(hidden)))
            new_context = self._fused_update(hidden, context)
            if mask is not None:
                new_context = torch.where(mask[:, t, None].bool(), new_context, context)
            context = new_context
            hiddens.append(hidden)
        return torch.stack(hiddens, dim=1), context

    def _fused_update(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """`update_context` in fewer kernels: one sigmoid for both gates, one addcmul for the mix."""
        delta, gates = self.context_proj(hidden).split([self.context_size, 2 * self.context_size], dim=-1)
        forget, inp = torch.sigmoid(gates).chunk(2, dim=-1)
        mixed = torch.addcmul(inp * delta, forget, context)
        return self.context_norm(mixed).clamp(-self.context_clamp, self.context_clamp)
