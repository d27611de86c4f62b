"""What New-LLM and the LSTM share: a fixed-size recurrent state used as the `generate()` cache.

transformers keeps renaming its cache argument (`past_key_values`, then `cache`; `ModelOutput`
renames those fields on construction), so the recurrent models do not lean on the library's cache
plumbing: they call their state `state` (RWKV's name, which beam search reorders through
`_reorder_cache` in every 5.x), return it in `RecurrentLMOutput` and pass it on themselves
(`prepare_inputs_for_generation` / `_update_model_kwargs_for_generation`). That is the whole
version shim; everything else in `GenerationMixin` (greedy, sampling, beams, stopping) is reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from transformers.utils import ModelOutput


class RecurrentCache:
    """A fixed-size state per sequence plus the number of tokens it has absorbed; it never grows."""

    def __init__(self, states: tuple[torch.Tensor, ...], seen_tokens: int = 0):
        self.states = tuple(states)  # each (B, ...), batch first
        self.seen_tokens = seen_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder(self, beam_idx: torch.LongTensor) -> RecurrentCache:
        """Pick rows for beam search (dim 0 is the batch)."""
        states = tuple(s.index_select(0, beam_idx.to(s.device)) for s in self.states)
        return RecurrentCache(states, self.seen_tokens)

    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states)


@dataclass
class RecurrentLMOutput(ModelOutput):
    """Causal-LM output whose cache is the recurrent state."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    state: RecurrentCache | None = None


def needs_state_mask(attention_mask: torch.Tensor | None) -> bool:
    """True when some row has padding before a real token (left padding).

    Right padding comes after every scored position, so a causal model may run straight through it
    (the state it returns then includes the pad steps: generation pads on the left).
    """
    if attention_mask is None:
        return False
    return bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any())


def shifted_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; labels are the inputs (shifted here), -100 is ignored."""
    # The labels move, not the logits: the logits at t predict the label at t + 1 and the last position predicts
    # nothing (-100). Slicing the (B, T, V) logits instead would copy them, and scatter their gradient back, in every
    # training step: on an H100 at 256 x 64, the output layer and loss took nearly TinyGPT2's whole step.
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)


class RecurrentGenerationMixin:
    """The causal-LM contract of a recurrent model, with its `RecurrentCache` wired into
    `transformers.GenerationMixin`; mix in before it. A model supplies only `window`: how its logits and
    next state follow from a window of tokens and the state before it."""

    def window(
        self, input_ids: torch.LongTensor, states: tuple[torch.Tensor, ...] | None, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(B, T) ids, the state tensors (batch first; None: the initial state) → logits (B, T, V), next state."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        state: RecurrentCache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> RecurrentLMOutput:
        """`labels=input_ids` (shifted inside, -100 ignored); `state` continues from an earlier call's cache."""
        logits, states = self.window(input_ids, state.states if state is not None else None, attention_mask)
        loss = shifted_lm_loss(logits, labels) if labels is not None else None
        cache = None
        if use_cache if use_cache is not None else self.config.use_cache:
            seen = state.seen_tokens if state is not None else 0
            cache = RecurrentCache(states, seen + input_ids.shape[1])
        return RecurrentLMOutput(loss=loss, logits=logits, state=cache)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The state is not a key/value cache: generate() must not create a DynamicCache for us.
        return False

    def prepare_inputs_for_generation(
        self, input_ids, state=None, attention_mask=None, use_cache=True, **kwargs
    ):
        if state is not None:
            # Only unseen tokens are fed: the prompt is never re-read.
            input_ids = input_ids[:, state.seen_tokens :]
            attention_mask = None if attention_mask is None else attention_mask[:, -input_ids.shape[1] :]
        return {
            "input_ids": input_ids,
            "state": state,
            "attention_mask": attention_mask,
            "use_cache": use_cache,
        }

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["state"] = outputs.state
        return model_kwargs

    def _reorder_cache(self, state: RecurrentCache, beam_idx: torch.LongTensor) -> RecurrentCache:
        return state.reorder(beam_idx)
