"""evaluate_perplexity: one NLL sum, any model, no leak from padding, response tokens aligned with their targets."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from newllm.data.batching import DialogWindows, StreamWindows, count_targets
from newllm.evaluation.perplexity import PerplexityResult, evaluate_perplexity
from newllm.models.registry import MODEL_NAMES

from tests.tiny_models import build_tiny_models

VOCAB = 300
PAD = 0


pytestmark = pytest.mark.usefixtures("one_thread")


class UniformLM(nn.Module):
    """Zero logits everywhere: every token has probability 1/V, whatever came before."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab_size), loss=None)


class BigramLM(nn.Module):
    """Logits depend on the current token only, so the NLL of a target is easy to compute by hand."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        return SimpleNamespace(logits=self.table(input_ids), loss=None)


@pytest.fixture(scope="module")
def tiny_models():
    return build_tiny_models(VOCAB, 128, end_of_text=0, pad=0)


def random_stream(n_tokens: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n_tokens,), generator=torch.Generator().manual_seed(seed))


def random_dialogues(lengths, seed: int = 0):
    """(ids, response_mask) pairs of the given lengths; about half the tokens are responses."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, VOCAB, (n,), generator=generator).tolist(),
            torch.randint(0, 2, (n,), generator=generator).tolist(),
        )
        for n in lengths
    ]


def manual_nll(model, dataset) -> float:
    """Cross-entropy window by window, one unpadded window at a time."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(len(dataset)):
            ids = dataset[i]["input_ids"]
            logits = model(input_ids=ids[None]).logits[0]  # (T, V)
            total += F.cross_entropy(logits[:-1].float(), ids[1:], reduction="sum").item()
    return total


def test_result_units_follow_their_formulas():
    result = PerplexityResult(nll=10 * math.log(4), tokens=10, response_nll=3 * math.log(2), response_tokens=3)
    assert result.loss == pytest.approx(math.log(4))
    assert result.token_ppl == pytest.approx(4)
    assert result.word_ppl(5) == pytest.approx(16)  # the same NLL spread over half as many units
    assert result.bits_per_byte(20) == pytest.approx(1.0)  # 20 bits over 20 bytes
    assert result.response_ppl == pytest.approx(2)
    assert PerplexityResult(nll=1.0, tokens=1).response_ppl is None
    assert PerplexityResult(nll=1e6, tokens=1).token_ppl == math.inf
    with pytest.raises(ValueError):
        result.word_ppl(0)
    with pytest.raises(ValueError):
        result.bits_per_byte(0)


def test_uniform_model_perplexity_is_vocab_size():
    dataset = StreamWindows(random_stream(101), block_size=10, drop_last=False)
    result = evaluate_perplexity(UniformLM(VOCAB), dataset, pad_id=PAD, batch_size=4)
    assert result.tokens == 100  # every token after the first, once
    assert result.token_ppl == pytest.approx(VOCAB, rel=1e-4)
    assert result.nll == pytest.approx(100 * math.log(VOCAB), rel=1e-6)
    words, n_bytes = 40, 500
    assert result.word_ppl(words) == pytest.approx(VOCAB ** (100 / words), rel=1e-4)
    assert result.bits_per_byte(n_bytes) == pytest.approx(100 * math.log2(VOCAB) / n_bytes, rel=1e-6)
    assert result.response_nll is None and result.response_tokens is None


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_nll_equals_window_by_window_cross_entropy(tiny_models, name):
    model = tiny_models[name]
    # 16 + 1 tokens per window and a shorter last one, so batches are padded.
    dataset = StreamWindows(random_stream(150, seed=1), block_size=16, drop_last=False)
    model.train()  # evaluation must switch dropout off itself, and then give the mode back
    result = evaluate_perplexity(model, dataset, pad_id=PAD, batch_size=4)
    assert model.training
    assert result.tokens == 149
    assert result.nll == pytest.approx(manual_nll(model, dataset), rel=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_does_not_leak_across_batch_sizes(tiny_models, name):
    # Dialogues of very different lengths: with 7 per batch most rows are padded, with 1 none is.
    dataset = DialogWindows(random_dialogues([5, 30, 12, 2, 25, 9, 17, 3, 40]), block_size=24)
    one = evaluate_perplexity(tiny_models[name], dataset, pad_id=PAD, batch_size=1)
    seven = evaluate_perplexity(tiny_models[name], dataset, pad_id=PAD, batch_size=7)
    assert one.tokens == seven.tokens == count_targets(dataset)
    assert seven.nll == pytest.approx(one.nll, rel=1e-5)
    assert seven.response_tokens == one.response_tokens
    assert seven.response_nll == pytest.approx(one.response_nll, rel=1e-5)


def test_response_nll_scores_targets_whose_mask_is_one():
    torch.manual_seed(0)
    model = BigramLM(VOCAB)
    # The masks are lopsided, so reading the mask at the logit instead of the target changes the sum.
    # A mask on token 0 counts for nothing: no logit predicts the first token of a window.
    items = [
        ([5, 1, 7, 8, 3, 2, 9, 3], [1, 0, 0, 0, 0, 0, 1, 1]),
        ([4, 6, 2, 11], [0, 1, 0, 0]),
        ([12, 13, 14], [0, 0, 1]),
    ]
    dataset = [
        {"input_ids": torch.tensor(ids), "labels": torch.tensor(ids), "response_mask": torch.tensor(mask)}
        for ids, mask in items
    ]
    log_probs = torch.log_softmax(model.table.weight.detach(), dim=-1)  # (V, V): row = current token
    expected_response = sum(
        -log_probs[ids[j - 1], ids[j]].item() for ids, mask in items for j in range(1, len(ids)) if mask[j]
    )
    expected_all = sum(-log_probs[ids[j - 1], ids[j]].item() for ids, _ in items for j in range(1, len(ids)))

    result = evaluate_perplexity(model, dataset, pad_id=PAD, batch_size=3)
    assert result.response_tokens == 4
    assert result.response_nll == pytest.approx(expected_response, rel=1e-6)
    assert result.tokens == 7 + 3 + 2
    assert result.nll == pytest.approx(expected_all, rel=1e-6)
    assert result.response_ppl == pytest.approx(math.exp(expected_response / 4), rel=1e-6)


def test_progress_bar_and_empty_dataset():
    dataset = StreamWindows(random_stream(30), block_size=8, drop_last=False)
    assert evaluate_perplexity(UniformLM(VOCAB), dataset, pad_id=PAD, progress=True).tokens == 29
    with pytest.raises(ValueError):
        evaluate_perplexity(UniformLM(VOCAB), [], pad_id=PAD)
    with pytest.raises(ValueError):
        evaluate_perplexity(UniformLM(VOCAB), dataset, pad_id=PAD, batch_size=0)
