"""Fast greedy decoding: the context vector is the whole state, so one token is one fixed piece of work.

`generate()` works for New-LLM (modeling.py), but per token it runs the model's Python, the cache
plumbing and the logits processors. `GreedyDecoder` keeps the token, the context and the output in
fixed buffers and, on CUDA, captures one step (embedding → cell → head → argmax → write back) as
a CUDA graph: each new token is then a single replay, whatever the length of the context behind it.
On CPU the same step runs eagerly, so tests can compare it with `generate()`.
"""

from __future__ import annotations

import contextlib

import torch

from newllm.models.new_llm.scan import capture_stream


class GreedyDecoder:
    """Greedy continuation of `batch_size` sequences by up to `max_new_tokens` tokens."""

    def __init__(self, model, batch_size: int, max_new_tokens: int, dtype: torch.dtype = torch.float32):
        for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if model.training:
            raise ValueError("GreedyDecoder needs the model in eval mode (call model.eval()): dropout would change the tokens")
        self.model = model
        self.dtype = dtype
        device = model.device
        cell = model.model.cell
        self.token = torch.zeros(batch_size, dtype=torch.long, device=device)  # the last token, fed next
        self.context = cell.initial_context(batch_size, device, model.dtype)
        self.tokens = torch.zeros(batch_size, max_new_tokens, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # on the device: a replay needs no sync
        self.graph = None
        if device.type == "cuda":
            self._capture()

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        # No weight-cast cache: a graph must not replay casts whose outputs were freed after capture.
        return torch.autocast(self.model.device.type, dtype=self.dtype, cache_enabled=False)

    @torch.no_grad()
    def _step(self) -> None:
        with self._autocast():
            logits, context = self.model.step(self.token, self.context)
        next_token = logits.argmax(-1)
        self.context.copy_(context)
        self.token.copy_(next_token)
        self.tokens.index_copy_(1, self.position, next_token[:, None])
        self.position += 1

    def _capture(self) -> None:
        stream = capture_stream(self.token.device.index)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the main stream, as torch.cuda.graphs recommends
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.position.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Read a (B, P) prompt in chunks: (context after it, its greedy next token)."""
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"the prompt must be (batch, length ≥ 1) token ids, got shape {tuple(input_ids.shape)}")
        context = None
        with self._autocast():
            for start in range(0, input_ids.shape[1], chunk):
                hidden, context = self.model.model(input_ids[:, start : start + chunk], context=context)
            first = self.model.output_logits(hidden[:, -1]).argmax(-1)
        return context, first

    @torch.no_grad()
    def decode(self, context: torch.Tensor, token: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """(B, new_tokens) greedy tokens after `token` (B,), starting from `context` (B, C)."""
        if not 1 <= new_tokens <= self.tokens.shape[1]:
            raise ValueError(f"new_tokens must be in 1..{self.tokens.shape[1]}, got {new_tokens}")
        if context.shape != self.context.shape or token.shape != self.token.shape:
            raise ValueError(
                f"this decoder was built for batch {self.token.shape[0]}: got context {tuple(context.shape)}, "
                f"token {tuple(token.shape)}"
            )
        self.context.copy_(context)
        self.token.copy_(token)
        self.position.zero_()
        for _ in range(new_tokens):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        return self.tokens[:, :new_tokens].clone()

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Prompt and continuation, (B, P + new_tokens): the greedy `generate()` without stopping at end-of-text."""
        context, first = self.prefill(input_ids)
        if new_tokens == 1:
            return torch.cat([input_ids, first[:, None]], dim=1)
        rest = self.decode(context, first, new_tokens - 1)
        return torch.cat([input_ids, first[:, None], rest], dim=1)
