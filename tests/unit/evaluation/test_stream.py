"""evaluate_stream: carried state == one forward over the stream; a sliding window scores each token once, in context."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from newllm.data.batching import StreamWindows
from newllm.evaluation.perplexity import evaluate_perplexity
from newllm.evaluation.stream import (
    CARRIED_STATE,
    RECURRENT_WINDOW,
    SLIDING_WINDOW,
    evaluate_stream,
    lane_spans,
    plan_stream,
    sliding_windows,
)
from newllm.models.registry import MODEL_NAMES

from tests.tiny_models import build_tiny_models

VOCAB = 300
POSITIONS = 16  # TinyGPT2's n_positions here: short, so that a 90-token stream needs many windows
RECURRENT = ("new_llm", "lstm")

pytestmark = pytest.mark.usefixtures("one_thread")


class UniformLM(nn.Module):
    """Zero logits everywhere, and no config: a model `evaluate_stream` knows nothing about."""

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, VOCAB), loss=None)


@pytest.fixture(scope="module")
def tiny_models():
    models = build_tiny_models(VOCAB, POSITIONS, end_of_text=0, pad=0)
    # At their initialisation (std 0.02) tiny New-LLMs barely read their context: a reset state moves the
    # NLL by about 1e-5, the tolerance below. Redrawn wider, context moves it by 1e-4 (LSTM) to 1e-2.
    torch.manual_seed(0)
    with torch.no_grad():
        for model in models.values():
            for param in model.parameters():
                if param.dim() > 1:
                    param.normal_(0.0, 0.3)
    return models


def random_stream(n_tokens: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n_tokens,), generator=torch.Generator().manual_seed(seed))


def forward_nll(model, ids: torch.Tensor) -> float:
    """NLL of ids[1:] from one forward over ids, from the model's initial state."""
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0]  # (T, V)
    return F.cross_entropy(logits[:-1].float(), ids[1:], reduction="sum").item()


# ---------------------------------------------------------------- recurrent models: carried state


@pytest.mark.parametrize("window", [2, 7, 32, 500])
@pytest.mark.parametrize("name", RECURRENT)
def test_carried_state_equals_one_forward_over_the_stream(tiny_models, name, window):
    model = tiny_models[name]
    stream = random_stream(90, seed=1)
    expected = forward_nll(model, stream)
    model.train()  # evaluation must switch dropout off itself, and then give the mode back
    result = evaluate_stream(model, stream, window=window)
    assert model.training
    assert result.tokens == 89
    assert result.nll == pytest.approx(expected, rel=1e-5)
    if window < 89:
        # The test can tell: resetting the state at every window lands well outside the tolerance.
        reset = evaluate_perplexity(model, StreamWindows(stream, window, drop_last=False), pad_id=0)
        assert reset.tokens == 89
        assert abs(reset.nll - expected) > 1e-4 * expected


@pytest.mark.parametrize("name", RECURRENT)
def test_each_lane_starts_from_a_reset_state(tiny_models, name):
    model = tiny_models[name]
    stream = random_stream(90, seed=2)
    # 89 targets in 4 lanes of 23 / 22 / 22 / 22; lane i is one forward over its inputs and its last target.
    expected = sum(forward_nll(model, stream[start : stop + 1]) for start, stop in lane_spans(90, 4))
    result = evaluate_stream(model, stream, window=5, lanes=4)
    assert result.tokens == 89
    assert result.nll == pytest.approx(expected, rel=1e-5)
    # ... and not what one lane gives: three more resets are visible beyond the tolerance.
    assert result.nll != pytest.approx(forward_nll(model, stream), rel=1e-5)


def test_lanes_overlap_by_one_token_and_cover_every_target_once():
    assert lane_spans(11, 3) == [(0, 4), (4, 7), (7, 10)]
    for n_tokens in (2, 3, 10, 57):
        for lanes in range(1, n_tokens):
            spans = lane_spans(n_tokens, lanes)
            assert len(spans) == lanes
            targets = [t for start, stop in spans for t in range(start + 1, stop + 1)]
            assert targets == list(range(1, n_tokens))
            sizes = [stop - start for start, stop in spans]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


# ---------------------------------------------------------------- GPT-2: sliding window


def context_start(p: int, n_tokens: int, window: int, stride: int) -> int:
    """Where token p's context starts: in the first window k·stride … k·stride + window - 1 that reaches p."""
    k = 0
    while min(k * stride + window, n_tokens) <= p:
        k += 1
    return k * stride


@pytest.mark.parametrize("n_tokens", [2, 5, 16, 17, 60])
@pytest.mark.parametrize("window, stride", [(6, 1), (6, 3), (6, 5), (16, 8)])
def test_sliding_windows_score_each_token_once_with_bounded_context(n_tokens, window, stride):
    spans = sliding_windows(n_tokens, window, stride)
    scored = [p for _, end, first in spans for p in range(first, end)]
    assert scored == list(range(1, n_tokens))
    for begin, end, first in spans:
        assert end - begin <= window and first > begin
        for p in range(first, end):
            assert begin == context_start(p, n_tokens, window, stride)
            # the whole stream before p if it is short, else at least window - stride tokens; never a full window
            assert min(p, window - stride) <= p - begin <= window - 1


def test_a_smaller_stride_gives_more_guaranteed_context():
    def least_context(stride):
        spans = sliding_windows(100, 16, stride)
        return min(p - begin for begin, end, first in spans for p in range(first, end) if p >= 16)

    assert [least_context(s) for s in (15, 8, 4, 1)] == [1, 8, 12, 15]


def test_stride_window_minus_one_is_the_windowed_evaluation(tiny_models):
    model = tiny_models["tinygpt2"]
    stream = random_stream(90, seed=3)  # 89 targets: five windows of 16 and a shorter last one
    windowed = evaluate_perplexity(model, StreamWindows(stream, block_size=15, drop_last=False), pad_id=0, batch_size=4)
    sliding = evaluate_stream(model, stream, window=16, stride=15, batch_size=4)
    assert sliding.tokens == windowed.tokens == 89
    assert sliding.nll == pytest.approx(windowed.nll, rel=1e-5)


@pytest.mark.parametrize("stride", [3, 8])
def test_sliding_window_scores_each_token_on_its_exact_context(tiny_models, stride):
    model = tiny_models["tinygpt2"]
    stream = random_stream(60, seed=4)
    # Token by token: a forward over exactly the context p should see, its last logit scoring token p.
    model.eval()
    expected = 0.0
    with torch.no_grad():
        for p in range(1, len(stream)):
            context = stream[context_start(p, len(stream), POSITIONS, stride) : p]
            logits = model(input_ids=context[None]).logits[0, -1]  # (V,)
            expected += F.cross_entropy(logits, stream[p]).item()
    model.train()
    result = evaluate_stream(model, stream, stride=stride, batch_size=3)  # window defaults to n_positions
    assert model.training
    assert result.tokens == 59
    assert result.nll == pytest.approx(expected, rel=1e-5)


def test_any_model_with_a_window_is_slid_over_the_stream():
    result = evaluate_stream(UniformLM(), random_stream(50), window=8, stride=3, progress=True)
    assert result.tokens == 49
    assert result.token_ppl == pytest.approx(VOCAB, rel=1e-5)


# ---------------------------------------------------------------- every model: counts, plans, bad input


def test_every_model_scores_every_token_but_the_first(tiny_models):
    stream = random_stream(70, seed=5)
    windowed = evaluate_perplexity(tiny_models["new_llm"], StreamWindows(stream, 8, drop_last=False), pad_id=0)
    for name in MODEL_NAMES:
        for kwargs in ({}, {"lanes": 3, "window": 4}, {"stride": 1}):
            if name == "mamba2":  # neither a `state` nor positions: the window is the caller's (its training window)
                kwargs = {"window": 8, **kwargs}
            result = evaluate_stream(tiny_models[name], stream, **kwargs, progress=True)
            assert result.tokens == windowed.tokens == 69, (name, kwargs)
            assert math.isfinite(result.nll) and result.nll > 0


def test_plans_name_the_method_and_resolve_the_defaults(tiny_models):
    assert plan_stream(tiny_models["new_llm"]).__dict__ == {
        "method": CARRIED_STATE, "window": RECURRENT_WINDOW, "stride": None, "lanes": 1,
    }
    assert plan_stream(tiny_models["lstm"], window=64, stride=5, lanes=8).__dict__ == {
        "method": CARRIED_STATE, "window": 64, "stride": None, "lanes": 8,
    }
    assert plan_stream(tiny_models["tinygpt2"], lanes=8).__dict__ == {
        "method": SLIDING_WINDOW, "window": POSITIONS, "stride": POSITIONS // 2, "lanes": None,
    }
    assert plan_stream(tiny_models["tinygpt2"], window=10, stride=9).stride == 9
    assert plan_stream(tiny_models["mamba2"], trained_window=16).__dict__ == {
        "method": SLIDING_WINDOW, "window": 16, "stride": 8, "lanes": None,
    }
    with pytest.raises(ValueError, match="pass `window`"):
        plan_stream(tiny_models["mamba2"])


def test_the_default_window_of_a_positional_model_stops_at_its_training_window(tiny_models):
    # positions past the training window never got a gradient: a window reaching them is worse than none
    assert plan_stream(tiny_models["tinygpt2"], trained_window=16).__dict__ == {
        "method": SLIDING_WINDOW, "window": 16, "stride": 8, "lanes": None,
    }
    assert plan_stream(tiny_models["tinygpt2"], trained_window=10 * POSITIONS).window == POSITIONS
    assert plan_stream(tiny_models["tinygpt2"], window=POSITIONS, trained_window=16).window == POSITIONS
    assert plan_stream(tiny_models["new_llm"], trained_window=16).window == RECURRENT_WINDOW



def test_a_checkpoint_that_records_its_trained_positions_slides_that_window(tiny_models, monkeypatch):
    monkeypatch.setattr(tiny_models["tinygpt2"].config, "trained_positions", 12, raising=False)
    assert plan_stream(tiny_models["tinygpt2"]).window == 12
    assert plan_stream(tiny_models["tinygpt2"], trained_window=8).window == 8


@pytest.mark.parametrize(
    "name, stream, kwargs, message",
    [
        ("new_llm", torch.tensor([], dtype=torch.long), {}, "nothing to score"),
        ("tinygpt2", torch.tensor([7]), {}, "nothing to score"),
        ("new_llm", torch.zeros(2, 10, dtype=torch.long), {}, "1-D integer"),
        ("lstm", torch.zeros(10), {}, "1-D integer"),
        ("new_llm", random_stream(10), {"window": 1}, "window must be >= 2"),
        ("tinygpt2", random_stream(10), {"window": 1}, "window must be >= 2"),
        ("lstm", random_stream(10), {"lanes": 0}, "lanes must be >= 1"),
        ("lstm", random_stream(10), {"lanes": 10}, "lanes must be between 1 and 9"),
        ("tinygpt2", random_stream(10), {"stride": 0}, "stride must be between 1 and window - 1"),
        ("tinygpt2", random_stream(10), {"stride": POSITIONS}, "stride must be between 1 and window - 1"),
        ("tinygpt2", random_stream(10), {"window": POSITIONS + 1}, "longer than the model's 16 positions"),
        ("new_llm", random_stream(10), {"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_bad_input_is_a_clear_value_error(tiny_models, name, stream, kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate_stream(tiny_models[name], stream, **kwargs)


def test_a_model_without_state_or_positions_needs_a_window():
    with pytest.raises(ValueError, match="pass `window`"):
        evaluate_stream(UniformLM(), random_stream(10))
