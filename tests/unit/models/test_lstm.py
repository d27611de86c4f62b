"""LSTM baseline: cached decoding equals the full forward; its state is fixed-size."""

import torch

from newllm.models import LSTMForCausalLM, LSTMLMConfig

from .conftest import VOCAB, random_ids


def _model():
    torch.manual_seed(0)
    cfg = LSTMLMConfig(vocab_size=VOCAB, embedding_size=20, hidden_size=24, num_hidden_layers=2, dropout=0.0)
    return LSTMForCausalLM(cfg).eval()


def test_state_carried_across_calls_equals_one_call():
    model = _model()
    ids = random_ids(3, 10)
    first = model(ids[:, :4], use_cache=True)
    second = model(ids[:, 4:], state=first.state, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), model(ids).logits)
    assert [s.shape for s in second.state.states] == [(3, 2, 24), (3, 2, 24)]


def test_masked_steps_leave_state_unchanged():
    model = _model()
    ids = random_ids(1, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    masked = model(ids, attention_mask=mask, use_cache=True).state
    unmasked = model(ids[:, 2:], use_cache=True).state
    for a, b in zip(masked.states, unmasked.states):
        torch.testing.assert_close(a, b)
