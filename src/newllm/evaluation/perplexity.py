"""Perplexity of any causal LM over windows: summed next-token NLL, then token, word and byte units.

Every metric is derived from one sum so that the units agree: token_ppl = exp(nll / tokens),
word_ppl = exp(nll / words), bits_per_byte = nll / ln 2 / bytes. Word and byte counts belong to the
text (`TextSplit.n_words`, `n_bytes`), not to the tokenizer, which is what makes models with
different tokenizers comparable.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from newllm.data.batching import IGNORE_INDEX, collate


def _exp(x: float) -> float:
    # A barely trained model over a short text can exceed float range; inf is the honest answer.
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class PerplexityResult:
    """Summed next-token NLL (nats) over the scored tokens, and over the response tokens when masked."""

    nll: float
    tokens: int
    response_nll: float | None = None
    response_tokens: int | None = None

    @property
    def loss(self) -> float:
        """Mean NLL per token in nats."""
        return self.nll / self.tokens

    @property
    def token_ppl(self) -> float:
        return _exp(self.loss)

    def word_ppl(self, words: int) -> float:
        """Perplexity per word of the original text (e.g. `TextSplit.n_words`)."""
        if words <= 0:
            raise ValueError(f"words must be positive, got {words}")
        return _exp(self.nll / words)

    def bits_per_byte(self, n_bytes: int) -> float:
        """Bits per UTF-8 byte of the original text (e.g. `TextSplit.n_bytes`)."""
        if n_bytes <= 0:
            raise ValueError(f"n_bytes must be positive, got {n_bytes}")
        return self.nll / math.log(2) / n_bytes

    @property
    def response_ppl(self) -> float | None:
        if not self.response_tokens:
            return None
        return _exp(self.response_nll / self.response_tokens)


def compute_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype the matmuls run in: `dtype` on CUDA (by autocast), float32 elsewhere or when None."""
    # CPU runs stay in float32, as precision="auto" chooses there; only the GPU runs are timed for the report.
    return dtype if device.type == "cuda" and dtype is not None else torch.float32


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `compute_dtype(device, dtype)`, or nothing when that is float32."""
    used = compute_dtype(device, dtype)
    return contextlib.nullcontext() if used == torch.float32 else torch.autocast(device.type, dtype=used)


def _is_right_padded(attention_mask: torch.Tensor) -> bool:
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


@torch.no_grad()
def evaluate_perplexity(
    model,
    dataset,
    pad_id: int,
    batch_size: int = 32,
    device="cpu",
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> PerplexityResult:
    """Sum the next-token NLL of `model` (moved to `device`) over every window of `dataset`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        # Decided per batch, so any dataset works: DialogWindows items carry a response_mask, StreamWindows' don't.
        collate_fn=lambda items: collate(items, pad_id, keep_response_mask="response_mask" in items[0]),
    )
    was_training = model.training
    model.to(device).eval()
    # Accumulated in float64 on the device: no sync per batch, and no rounding over millions of tokens.
    nll = torch.zeros((), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.long, device=device)
    response_nll = torch.zeros((), dtype=torch.float64, device=device)
    response_tokens = torch.zeros((), dtype=torch.long, device=device)
    has_response_mask = False
    try:
        for batch in tqdm(loader, desc="perplexity", disable=not progress, leave=False):
            batch = {key: value.to(device) for key, value in batch.items()}
            # Pads on the right come after every scored token, and the models are causal, so they can
            # reach no scored logit; dropping the mask then keeps the LSTM on its fused (cuDNN) path.
            mask = batch["attention_mask"]
            mask = None if _is_right_padded(mask) else mask
            with autocast_context(device, dtype):
                logits = model(input_ids=batch["input_ids"], attention_mask=mask).logits  # (B, T, V)
            # The logits at t predict the label at t + 1; ignored labels (-100) contribute exactly 0.
            targets = batch["labels"][:, 1:]  # (B, T-1)
            token_nll = F.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
            )  # (B, T-1)
            scored = targets != IGNORE_INDEX
            nll += token_nll.sum(dtype=torch.float64)
            tokens += scored.sum()
            if "response_mask" in batch:
                has_response_mask = True
                # response_mask[j] marks token j as a response token, so it goes with the target, not the logit.
                response = scored & batch["response_mask"][:, 1:].bool()
                response_nll += token_nll[response].sum(dtype=torch.float64)
                response_tokens += response.sum()
    finally:
        model.train(was_training)
    if tokens.item() == 0:
        raise ValueError("the dataset has no tokens to score")
    return PerplexityResult(
        nll=nll.item(),
        tokens=int(tokens.item()),
        response_nll=response_nll.item() if has_response_mask else None,
        response_tokens=int(response_tokens.item()) if has_response_mask else None,
    )
