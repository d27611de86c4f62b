"""New-LLM as a Hugging Face causal LM: `from_pretrained`, `save_pretrained` and `generate()` for free.

The generation cache is the context vector (`RecurrentCache` with one (B, C) tensor): generating
token n costs the same time and memory as token 1, and the prompt is read once.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel

from newllm.models.new_llm.cell import NewLLMCell, init_gate_biases
from newllm.models.new_llm.parallel import ParallelNewLLMCell
from newllm.models.new_llm.configuration import NewLLMConfig
from newllm.models.new_llm.scan import autograd_scan, fused_scan
from newllm.models.new_llm.scan_mlp import mlp_scan
from newllm.models.recurrent import RecurrentGenerationMixin, needs_state_mask


FAST_PATHS = ("eager", "compiled", "graphed", "compiled+graphed", "kernel", "kernel_loop", "auto")


def triton_refusal(device: torch.device) -> str | None:
    """Why Triton kernels cannot run on `device` in this process, or None when they can.

    Checked before any kernel module is imported: importing one compiles nothing but fixes, once per
    process, whether its kernels run on the GPU or in Triton's CPU interpreter (TRITON_INTERPRET=1,
    what the CPU tests set)."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not (device.type == "cuda" or (interpreted and device.type == "cpu")):
        return "needs a CUDA device (or TRITON_INTERPRET=1 for Triton's CPU interpreter)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return None


def kernel_refusal(cell, embeddings: torch.Tensor) -> str | None:
    """Why the training kernels (kernel.py, kernel_mlp.py) cannot run this scan, or None when they can."""
    reason = triton_refusal(embeddings.device)
    if reason is not None:
        return reason
    from newllm.models.new_llm import kernel

    return kernel.unsupported_reason(cell, embeddings.shape[0], embeddings.shape[1])


class NewLLMPreTrainedModel(PreTrainedModel):
    config_class = NewLLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if getattr(module, "is_context_projection", False):
            # Hugging Face skips modules without parameters of their own (the cell), so the gate
            # biases are set where the projection itself is initialised.
            init_gate_biases(module.bias, module.out_features // 3, self.config.forget_bias, self.config.input_bias,
                             self.config.context_scales)  # fmt: skip
        elif isinstance(module, NewLLMForCausalLM) and module.lm_head is None:
            module.lm_head_bias.zero_()


class NewLLMModel(NewLLMPreTrainedModel):
    """Embedding + cell: token ids → hidden states (B, T, H) and the final context."""

    def __init__(self, config: NewLLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.cell = ParallelNewLLMCell(config) if config.cell == "parallel" else NewLLMCell(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        context: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embedding_dropout(self.embed_tokens(input_ids))  # (B, T, E)
        if context is None:
            context = self.cell.initial_context(input_ids.shape[0], embeddings.device, embeddings.dtype)
        if not needs_state_mask(attention_mask):
            attention_mask = None  # no left padding: skip the per-step select
        cell = self.cell
        if attention_mask is None and isinstance(cell, NewLLMCell) and (torch.is_grad_enabled() or cell.fast_validation):
            # Training: the same function with a hand-written backward (scan.py, scan_mlp.py), several times faster.
            # Its validation too, once `set_fast_path` chose a CUDA fast path; other no_grad calls
            # (evaluation, generation) keep the reference loop, which runs under autocast.
            if cell.kernel:
                reason = kernel_refusal(cell, embeddings)
                if reason is None:
                    from newllm.models.new_llm.kernel import kernel_scan

                    return kernel_scan(cell, embeddings, context)
                if embeddings.is_cuda and not cell.cuda_graphs:  # "kernel" on a GPU says why; "auto" falls
                    # back to the compiled, graphed scan below without a word; on CPU every path runs eagerly
                    mode = "kernel_loop" if cell.kernel_loop else "kernel"
                    warnings.warn(f"fast path {mode!r} not taken: {reason}; running the eager scan", stacklevel=2)
            if cell.handwritten_backward and cell.has_handwritten_backward:
                return fused_scan(cell, embeddings, context)
            if cell.handwritten_backward and cell.has_mlp_backward:
                return mlp_scan(cell, embeddings, context)
            if (cell.cuda_graphs or cell.compile_steps) and embeddings.is_cuda:
                # a cell the hand-written backward does not cover: autograd, compiled and captured as set
                return autograd_scan(cell, embeddings, context)
        return cell.scan(embeddings, context, attention_mask)


class NewLLMForCausalLM(RecurrentGenerationMixin, NewLLMPreTrainedModel, GenerationMixin):
    """New-LLM with its language-model head; `labels=input_ids` (shifted inside, -100 ignored)."""

    def __init__(self, config: NewLLMConfig):
        super().__init__(config)
        self.model = NewLLMModel(config)
        if config.tie_embeddings:
            # The head is the embedding matrix (E == H) plus a bias of its own; no second weight is stored.
            self.lm_head = None
            self.lm_head_bias = nn.Parameter(torch.zeros(config.vocab_size))
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) → (..., V) through the head, or through the token embedding when tied."""
        if self.lm_head is None:
            return F.linear(hidden, self.model.embed_tokens.weight, self.lm_head_bias)
        return self.lm_head(hidden)

    def window(self, input_ids, states, attention_mask):
        context = states[0] if states is not None else None
        hidden, context = self.model(input_ids, context=context, attention_mask=attention_mask)
        # The vocabulary projection needs no recurrence: one matmul over all positions.
        return self.output_logits(hidden), (context,)  # (B, T, V)

    def set_fast_path(self, mode: str) -> NewLLMForCausalLM:
        """How training runs the recurrence on CUDA: "eager", "compiled", "graphed", "compiled+graphed", "kernel",
        "kernel_loop" or "auto".

        "compiled" fuses each step's kernels with torch.compile; "graphed" captures the whole scan,
        forward and backward, as CUDA graphs per input shape (scan.py). "kernel" runs the whole
        window in one Triton launch forward and one backward (kernel.py, kernel_mlp.py) where that applies
        (CUDA, triton installed, the prototype cell without residual or ffn_norm or the MLP-block cell with a
        LayerNorm final norm or none, one context scale, float32 parameters) and
        otherwise, with a warning on CUDA, the eager hand-written scan. "kernel_loop" runs the same kernels as one
        program per SM walking the window together, every phase's tiles spread over all of them and a grid-wide
        barrier between phases (kernel.py, kernel_mlp.py). "auto" takes the kernels where they
        apply and "compiled+graphed" where they do not, silently. A mode ending in "/autograd"
        ("compiled+graphed/autograd") trains the cell through autograd instead of its hand-written backward
        (scan.py, scan_mlp.py), to compare the two. The function is the same in every mode; on CPU every mode
        runs eagerly.
        """
        autograd = mode.endswith("/autograd")
        mode = mode.removesuffix("/autograd")
        if mode not in FAST_PATHS:
            raise ValueError(f"unknown fast path {mode!r}; choose from {', '.join(FAST_PATHS)} (each may end in /autograd)")
        cell = self.model.cell
        cell.handwritten_backward = not autograd
        cell.compile_steps = "compiled" in mode or mode == "auto"
        cell.cuda_graphs = "graphed" in mode or mode == "auto"
        cell.kernel = mode in ("kernel", "kernel_loop", "auto")
        cell.kernel_loop = mode == "kernel_loop"
        cell.__dict__.pop("_scan_graphs", None)  # captures of the previous mode hold GPU memory
        return self

    @torch.no_grad()
    def step(
        self, input_ids: torch.LongTensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per sequence through the reference cell: (B,), (B, C) → logits (B, V), next context."""
        embedding = self.model.embed_tokens(input_ids)  # (B, E)
        if context is None:
            context = self.model.cell.initial_context(input_ids.shape[0], embedding.device, embedding.dtype)
        hidden, context = self.model.cell.step(embedding, context)
        return self.output_logits(hidden), context
