"""Fast greedy decoding: the context vector is the whole state, so one token is one fixed piece of work.

The shared decoding path (evaluation/decoding.py) runs the model's forward, the cache plumbing and
the logits processors per token. For greedy runs of a fixed length `GreedyDecoder` is its New-LLM
backend: it keeps the token, the context and the output in fixed buffers and, on CUDA, captures one
step (embedding → cell → head → argmax → write back) as a CUDA graph, so each new token is a single
replay whatever the length of the context behind it. The prompt is read by the shared path; the
decoder starts from the `RecurrentCache` it leaves. On CPU the same step runs eagerly, so tests can
compare it with `generate()`.
"""

from __future__ import annotations

import torch

from newllm.models.cuda_graphs import capture_step, replay_autocast
from newllm.models.new_llm.modeling import triton_refusal
from newllm.models.recurrent import RecurrentCache

# Where `kernels=None` takes the decode kernels: the batch sizes at which they were timed faster than the graphed
# step for both cells they cover (docs/performance.md, H100, float32: 2.2 and 1.5 times at batch 1; 1.1 and 1.3
# times slower at batch 32). Other batch sizes keep the graph until a timing says otherwise.
KERNEL_BATCH_SIZES = (1,)


def kernels_by_default(model, batch_size: int, dtype: torch.dtype, device: torch.device | None = None) -> bool:
    """`GreedyDecoder(kernels=None)`'s choice: the decode kernels on CUDA at a batch size where they were timed faster
    (`KERNEL_BATCH_SIZES`), in float32, for a cell they cover, with triton installed; the graphed step otherwise.
    `device` defaults to the model's (a test can ask about CUDA with a CPU model)."""
    device = model.device if device is None else device
    if device.type != "cuda" or batch_size not in KERNEL_BATCH_SIZES or dtype != torch.float32:
        return False
    if triton_refusal(device) is not None:
        return False
    from newllm.models.new_llm.decode_kernel import unsupported_reason

    return unsupported_reason(model) is None


class GreedyDecoder:
    """Greedy continuation of `batch_size` sequences by up to `max_new_tokens` tokens."""

    def __init__(self, model, batch_size: int, max_new_tokens: int, dtype: torch.dtype = torch.float32,
                 kernels: bool | None = None, head_dtype: torch.dtype = torch.float32, persistent: bool = False):  # fmt: skip
        for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if model.training:
            raise ValueError("GreedyDecoder needs the model in eval mode (call model.eval()): dropout would change the tokens")
        self.model = model
        self.dtype = dtype
        self.batch_size = batch_size
        device = model.device
        cell = model.model.cell
        self.token = torch.zeros(batch_size, dtype=torch.long, device=device)  # the last token, fed next
        self.context = cell.initial_context(batch_size, device, model.dtype)
        self.tokens = torch.zeros(batch_size, max_new_tokens, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # on the device: a replay needs no sync
        # kernels: the step as decode_kernel.py's few Triton kernels (four for the prototype cell) instead of model.step's
        # ~45 (float32 only); None: where they were timed faster (`kernels_by_default`: CUDA, batch 1)
        # head_dtype: the kernels' copy of the output head (DecodeKernels: bf16 at batch 1 reads half the bytes)
        # persistent: every new token of a `decode` in one launch of decode_loop.py's kernel (CUDA), no graph replay
        self.kernels = self.loop = None
        if persistent and not kernels:
            raise ValueError("persistent is the decode kernels' loop: pass kernels=True too")
        if head_dtype != torch.float32 and not kernels:
            raise ValueError("head_dtype is the decode kernels' (kernels=True); the graphed step reads the model's head")
        if kernels is None:
            kernels = kernels_by_default(model, batch_size, dtype, device)
        if kernels:
            if dtype != torch.float32:
                raise ValueError("the decode kernels run in float32; decode with dtype=torch.float32")
            reason = triton_refusal(device)
            if reason is not None:
                raise ValueError(f"decode kernels: {reason}")
            from newllm.models.new_llm.decode_kernel import DecodeKernels

            self.kernels = DecodeKernels(model, batch_size, head_dtype=head_dtype)
            self.context = self.kernels.context  # the step reads and writes the kernels' own context buffer
            if persistent:
                from newllm.models.new_llm.decode_loop import DecodeLoop

                self.loop = DecodeLoop(self.kernels)
        self.graph = None
        if device.type == "cuda" and self.loop is None:
            self.graph = capture_step(self._step, self.position.zero_, device.index)

    @torch.no_grad()
    def _step(self) -> None:
        if self.kernels is not None:
            self.kernels.step(self.token, self.tokens, self.position)  # advances the position too
            return
        with replay_autocast(self.model.device.type, self.dtype):
            logits, context = self.model.step(self.token, self.context)
        next_token = logits.argmax(-1)
        self.context.copy_(context)
        self.token.copy_(next_token)
        self.tokens.index_copy_(1, self.position, next_token[:, None])
        self.position += 1

    @torch.no_grad()
    def decode(self, state: RecurrentCache, token: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, RecurrentCache]:
        """(B, new_tokens) greedy tokens after `token` (B,) from the cache `state`, and the cache after them.

        `token` and all but the last new token are fed, as `generate()` feeds what it picks.
        """
        if not 1 <= new_tokens <= self.tokens.shape[1]:
            raise ValueError(f"new_tokens must be in 1..{self.tokens.shape[1]}, got {new_tokens}")
        (context,) = state.states
        if context.shape != self.context.shape or token.shape != self.token.shape:
            raise ValueError(
                f"this decoder was built for batch {self.batch_size}: got context {tuple(context.shape)}, "
                f"token {tuple(token.shape)}"
            )
        self.context.copy_(context)
        self.token.copy_(token)
        self.position.zero_()
        if self.loop is not None:  # every token in one launch (it counts them itself, not in self.position)
            self.loop.run(self.token, self.tokens, new_tokens)
        elif self.graph is not None:
            for _ in range(new_tokens):
                self.graph.replay()
        else:
            for _ in range(new_tokens):
                self._step()
        after = RecurrentCache((self.context.clone(),), state.seen_tokens + new_tokens)
        return self.tokens[:, :new_tokens].clone(), after
