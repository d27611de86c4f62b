"""Perplexity of a whole token stream with context across window boundaries.

`evaluate_perplexity` over `StreamWindows` restarts every window from nothing: a recurrent model's
state is reset and GPT-2 sees only the window. Here the same tokens are scored with the context each
model can actually use:

- recurrent models (forward takes `state=` and returns `.state`: New-LLM, the LSTM) carry their
  state from one window to the next, over the whole stream (`word_language_model`'s evaluation);
- the others (GPT-2) slide a window along the stream with a stride, the Hugging Face "perplexity of
  fixed-length models" recipe; by default the window is as long as the model's training windows
  (`usable_positions`), so each token sees up to that many tokens minus one before it.

Both score every token of the stream except the first, exactly once: `len(stream) - 1` tokens, the
same as `StreamWindows` over that stream (and `encode_text` starts a stream with end-of-text, so that
is every token of the text). The reset and the stateful NLL sums then share their token, word and
byte counts, and differ only in the context each token is predicted from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from newllm.data.batching import IGNORE_INDEX
from newllm.evaluation.perplexity import PerplexityResult, autocast_context
from newllm.models.registry import carries_state, max_positions, usable_positions

CARRIED_STATE = "carried_state"
SLIDING_WINDOW = "sliding_window"
# Tokens per forward of a recurrent model when none is asked for: the NLL does not depend on it
# (tested), only memory ((lanes, window, V) logits) and the per-forward overhead do.
RECURRENT_WINDOW = 512


@dataclass(frozen=True)
class StreamPlan:
    """How a model's stream is scored: method, tokens per forward, and the stride or the lanes it uses."""

    method: str  # CARRIED_STATE or SLIDING_WINDOW
    window: int  # tokens per forward; for the sliding window also the most context a token gets, plus one
    stride: int | None = None  # sliding window: tokens newly scored per window
    lanes: int | None = None  # carried state: parallel parts of the stream


def is_recurrent(model) -> bool:
    """True for the recurrent families (their forward takes a `state` and returns the state to carry on with)."""
    return carries_state(model)


def plan_stream(
    model, window: int | None = None, stride: int | None = None, lanes: int = 1, trained_window: int | None = None
) -> StreamPlan:
    """The method and resolved settings `evaluate_stream` uses for `model`; ValueError if they do not fit.

    Recurrent models: `window` tokens per forward (default RECURRENT_WINDOW), `lanes` parallel parts;
    `stride` is not used. Others: a window of `window` tokens, `stride` tokens scored per window (default
    half the window); `lanes` is not used. The default window is `trained_window`, the longest window the
    model was trained on, else `n_positions`: position embeddings past the training window never got a
    gradient, and a 512-token window on a model trained on 128 scored 2.5x worse than no context at all.
    """
    if window is not None and window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    if is_recurrent(model):
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        return StreamPlan(CARRIED_STATE, window=window or RECURRENT_WINDOW, lanes=lanes)
    positions = max_positions(model)
    if window is None:
        if positions is None and trained_window is None:
            raise ValueError(
                f"{type(model).__name__} takes no `state` and its config has no n_positions: pass `window`"
            )
        if positions is None:  # a recurrent model whose cache is transformers' own (Mamba-2): its training window
            window = trained_window
        else:
            usable = usable_positions(model)  # the checkpoint's trained_positions where it records them
            window = usable if trained_window is None else min(trained_window, usable)
    if positions is not None and window > positions:
        raise ValueError(f"window {window} is longer than the model's {positions} positions")
    stride = window // 2 if stride is None else stride
    # A window's first token has no logit predicting it, so at most window - 1 tokens are new per window.
    if not 1 <= stride <= window - 1:
        raise ValueError(f"stride must be between 1 and window - 1 = {window - 1}, got {stride}")
    return StreamPlan(SLIDING_WINDOW, window=window, stride=stride)


def lane_spans(n_tokens: int, lanes: int) -> list[tuple[int, int]]:
    """(start, stop) of each lane's inputs; lane i predicts tokens start + 1 … stop of the stream."""
    # n = 11 tokens t0 … t10, 3 lanes: the 10 targets t1 … t10 split 4 / 3 / 3 (sizes differ by at most one):
    #
    #   stream   t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 t10
    #   lane 0   t0 t1 t2 t3 (t4)                      inputs t0 … t3 predict t1 … t4
    #   lane 1               t4 t5 t6 (t7)             inputs t4 … t6 predict t5 … t7
    #   lane 2                        t7 t8 t9 (t10)   inputs t7 … t9 predict t8 … t10
    #
    # Lanes overlap by one token as StreamWindows' windows do: t4, the last target of lane 0, is lane 1's
    # first input, read from a reset state. So no token is lost at a lane start, only the context before it.
    n_targets = n_tokens - 1
    if not 1 <= lanes <= n_targets:
        raise ValueError(f"lanes must be between 1 and {n_targets} (the tokens to score), got {lanes}")
    size, extra = divmod(n_targets, lanes)
    spans, start = [], 0
    for lane in range(lanes):
        stop = start + size + (lane < extra)
        spans.append((start, stop))
        start = stop
    return spans


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first) of each window: inputs begin … end - 1, of which tokens first … end - 1 are scored."""
    # n = 12, window 6, stride 3:
    #
    #   stream     t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 t10 t11
    #   window 0   t0 t1 t2 t3 t4 t5                        scores t1 … t5 (context 1 … 5 tokens)
    #   window 1            t3 t4 t5 t6 t7 t8               scores t6 … t8 (context 3 … 5)
    #   window 2                     t6 t7 t8 t9 t10 t11    scores t9 … t11 (context 3 … 5)
    #
    # Window k starts at k·stride and scores what the windows before it did not reach, so every token
    # after the first is scored once, with between window - stride and window - 1 tokens of context
    # (fewer only for the first window's tokens, which have the whole stream before them). The last
    # window may be shorter. stride = window - 1 gives StreamWindows(block_size=window - 1) exactly.
    spans, first, begin = [], 1, 0
    while first < n_tokens:
        end = min(begin + window, n_tokens)
        spans.append((begin, end, first))
        first, begin = end, begin + stride
    return spans


def _check_stream(stream) -> torch.Tensor:
    stream = torch.as_tensor(stream)
    if stream.dim() != 1 or stream.is_floating_point() or stream.is_complex():
        raise ValueError(f"stream must be a 1-D integer tensor, got {stream.dtype} of shape {tuple(stream.shape)}")
    if len(stream) < 2:
        raise ValueError(f"a stream of {len(stream)} token(s) has nothing to score: the first token is never scored")
    return stream.long()


def _summed_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Float64 sum of the NLL of `targets` (aligned with `logits`, -100 ignored)."""
    # (B, T, V) against (B, T): position j's logits predict targets[:, j] directly, no shift here.
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(dtype=torch.float64)


def _carried_state(model, stream, plan, device, dtype, progress):
    spans = lane_spans(len(stream), plan.lanes)
    length = max(stop - start for start, stop in spans)
    # (lanes, length): row i holds lane i's inputs and, aligned with them, the tokens they predict. A
    # shorter lane is padded at its end, after all it scores, so nothing it feeds reaches a scored logit.
    inputs = torch.zeros(len(spans), length, dtype=torch.long)
    targets = torch.full((len(spans), length), IGNORE_INDEX, dtype=torch.long)
    for row, (start, stop) in enumerate(spans):
        inputs[row, : stop - start] = stream[start:stop]
        targets[row, : stop - start] = stream[start + 1 : stop + 1]
    inputs, targets = inputs.to(device), targets.to(device)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    state = None  # each lane starts from the model's own initial state
    for t in tqdm(range(0, length, plan.window), desc="stream (carried state)", disable=not progress, leave=False):
        with autocast_context(device, dtype):
            out = model(input_ids=inputs[:, t : t + plan.window], state=state, use_cache=True)
        state = out.state
        # The window's first input was the previous window's last target: each token is scored once.
        nll += _summed_nll(out.logits, targets[:, t : t + plan.window])
    return nll, int((targets != IGNORE_INDEX).sum())


def _sliding_window(model, stream, plan, batch_size, device, dtype, progress):
    spans = sliding_windows(len(stream), plan.window, plan.stride)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    batches = range(0, len(spans), batch_size)
    for b in tqdm(batches, desc="stream (sliding window)", disable=not progress, leave=False):
        chunk = spans[b : b + batch_size]
        width = max(end - begin for begin, end, _ in chunk)
        inputs = torch.zeros(len(chunk), width, dtype=torch.long)
        targets = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for row, (begin, end, first) in enumerate(chunk):
            inputs[row, : end - begin] = stream[begin:end]
            # Position j predicts token begin + j + 1; only tokens first … end - 1 are scored here.
            targets[row, first - begin - 1 : end - begin - 1] = stream[first:end]
        # Only the last window can be shorter; its right padding comes after every scored position of a
        # causal model, so no attention mask is needed.
        with autocast_context(device, dtype):
            logits = model(input_ids=inputs.to(device)).logits  # (B, window, V)
        nll += _summed_nll(logits, targets.to(device))
        tokens += int((targets != IGNORE_INDEX).sum())
    return nll, tokens


@torch.no_grad()
def evaluate_stream(
    model,
    stream,
    window: int | None = None,
    stride: int | None = None,
    lanes: int = 1,
    batch_size: int = 32,
    device="cpu",
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> PerplexityResult:
    """Sum the NLL of every token of a 1-D stream but the first, with context across windows (see `plan_stream`).

    Recurrent models: the stream is cut into `lanes` contiguous parts run side by side (`lane_spans`);
    each starts from a reset state and carries it through consecutive windows of `window` tokens to
    its end, so context is lost only at the starts of lanes 1 … lanes - 1, where the first scored token
    sees one token (as every window's first does when the state is reset). With `lanes=1` every token
    is predicted from the whole stream before it, and the sum equals one forward over the whole stream.
    Others: windows of `window` tokens every `stride` tokens (`sliding_windows`), `batch_size` per
    forward. Either way `tokens == len(stream) - 1`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stream = _check_stream(stream)
    plan = plan_stream(model, window, stride, lanes)
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    try:
        if plan.method == CARRIED_STATE:
            nll, tokens = _carried_state(model, stream, plan, device, dtype, progress)
        else:
            nll, tokens = _sliding_window(model, stream, plan, batch_size, device, dtype, progress)
    finally:
        model.train(was_training)
    return PerplexityResult(nll=nll.item(), tokens=tokens)
