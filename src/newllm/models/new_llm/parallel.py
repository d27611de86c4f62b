"""The parallel-trainable New-LLM cell: the context update reads only the current token.

    Δ, f, i = W_Δ e_t, σ(W_f e_t), σ(W_i e_t)            (token only, no h_t, no c_{t-1})
    c_t = f ⊙ c_{t-1} + i ⊙ Δ                             c_0 = 0
    h_t = (Linear → ReLU → Dropout)^L ([e_t; LN(c_t)])
    logits_t = W_out h_t

The same principles as the prototype cell (no attention, no positions, one fixed-size state), but the
recurrence is linear in the context with coefficients that every position knows in advance, so a
whole window is one parallel scan (minGRU, Feng et al. 2024, is the same idea) and the FFN then
runs over all positions at once. The price: the update cannot depend on what the context already
holds. LayerNorm is applied where the FFN reads the context, not inside the recurrence, which must
stay linear.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from newllm.models.new_llm.cell import BaseCell
from newllm.models.new_llm.configuration import NewLLMConfig


def chunked_linear_scan(
    log_forget: torch.Tensor, update: torch.Tensor, context: torch.Tensor, chunk: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """c_t = exp(log_forget_t) ⊙ c_{t-1} + update_t for every t: (B, T, C) twice, (B, C) → (B, T, C), last (B, C).

    Within a chunk of K positions the answer is one batched product with the K × K decay matrix
    exp(L_t - L_s) for s ≤ t (L the running sum of log f): its exponents are ≤ 0, so nothing
    overflows however long the memory. Chunks are chained by their last context, T / K sequential
    steps in all; every position inside a chunk is computed in parallel.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    steps = log_forget.shape[1]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=log_forget.device).tril()
    outputs = []
    for start in range(0, steps, chunk):
        log_f = log_forget[:, start : start + chunk]  # (B, K, C)
        k = log_f.shape[1]
        running = log_f.cumsum(dim=1)  # L_t: log of f_1 ⋯ f_t within the chunk
        exponent = running[:, :, None] - running[:, None, :]  # (B, K, K, C): [t, s] = L_t - L_s
        decay = exponent.masked_fill(~causal[:k, :k, None], float("-inf")).exp()  # 0 where s > t
        out = torch.einsum("btsc,bsc->btc", decay, update[:, start : start + chunk])
        out = out + running.exp() * context[:, None]
        outputs.append(out)
        context = out[:, -1]
    return torch.cat(outputs, dim=1), context


class ParallelNewLLMCell(BaseCell):
    has_handwritten_backward = False  # no sequential loop for scan.py to speed up

    def __init__(self, config: NewLLMConfig, chunk: int = 16):
        # The [Δ, f, i] projection reads the token embedding (E), not the FFN output.
        super().__init__(config, gate_input_size=config.embedding_size)
        self.chunk = chunk  # positions per block of the parallel scan: speed only, not the function

    def _gates(self, token_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log f, i ⊙ Δ) in float32: the scan multiplies many factors, bf16 would lose them."""
        delta, forget, inp = self.context_proj(token_embedding).float().chunk(3, dim=-1)
        if self.candidate == "tanh":
            delta = torch.tanh(delta)
        return F.logsigmoid(forget), torch.sigmoid(inp) * delta

    def _read(self, token_embedding: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        normed = self.normalize_context(context)
        return self.feed_forward(token_embedding, normed.to(token_embedding.dtype))

    def step(self, token_embedding: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference step: (B, E), (B, C) → hidden (B, H), next context (B, C)."""
        log_f, update = self._gates(token_embedding)
        context = log_f.exp() * context + update
        return self._read(token_embedding, context), context

    def scan(
        self, token_embeddings: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`step` along T in parallel: (B, T, E), (B, C) → hidden (B, T, H), last context; mask 0 carries c unchanged."""
        log_f, update = self._gates(token_embeddings)  # (B, T, C) each
        if mask is not None:  # a padded position: f = 1, no update
            keep = mask[..., None].to(log_f.dtype)
            log_f, update = log_f * keep, update * keep
        with torch.autocast(token_embeddings.device.type, enabled=False):
            contexts, last = chunked_linear_scan(log_f, update, context.float(), self.chunk)
        return self._read(token_embeddings, contexts), last
