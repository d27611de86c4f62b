"""The research options of NewLLMConfig (issue 4): each one builds, computes what it says, and round-trips."""

import math

import pytest
import torch

from newllm.models.new_llm import NewLLMConfig, NewLLMForCausalLM
from newllm.models.new_llm.parallel import ParallelNewLLMCell, chunked_linear_scan
from tests.unit.models.conftest import random_ids, tiny_new_llm_config

OPTIONS = {
    "forget/input bias": dict(forget_bias=2.0, input_bias=-1.0),
    "embedding dropout": dict(embedding_dropout=0.2),
    "context dropout": dict(context_dropout=0.2),
    "residual + norm": dict(residual=True, ffn_norm=True),
    "tied": dict(tie_embeddings=True, embedding_size=48),
    "multi-scale": dict(context_scales=4),
    "parallel": dict(cell="parallel"),
    "parallel, everything": dict(cell="parallel", residual=True, ffn_norm=True, context_scales=2, forget_bias=1.0),
}


def build(**overrides):
    torch.manual_seed(0)
    return NewLLMForCausalLM(tiny_new_llm_config(**overrides))


@pytest.mark.parametrize("name", OPTIONS)
def test_option_trains_generates_and_round_trips(name, tmp_path):
    model = build(**OPTIONS[name]).train()
    ids = random_ids(3, 11)
    out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    model.eval()
    generated = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert generated.shape == (3, 16)
    model.save_pretrained(tmp_path)
    loaded = NewLLMForCausalLM.from_pretrained(tmp_path).eval()
    assert {k: getattr(loaded.config, k) for k in OPTIONS[name]} == OPTIONS[name]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("name", ["residual + norm", "multi-scale", "parallel", "parallel, everything"])
def test_training_forward_equals_step_by_step_reference(name):
    """Whatever path training takes (fused scan, autograd scan, parallel scan), it is `cell.step` along T."""
    model = build(**OPTIONS[name]).eval()  # dropout off: the paths must agree exactly
    ids = random_ids(2, 13)
    trained = model(ids, labels=ids).logits  # grad enabled: the training path
    context, logits = None, []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            step_logits, context = model.step(ids[:, t], context)
            logits.append(step_logits)
    torch.testing.assert_close(trained, torch.stack(logits, dim=1), rtol=1e-5, atol=1e-5)


def test_default_config_is_the_seed_cell_with_its_state_dict():
    model = build()
    keys = set(model.state_dict())
    assert not any("norms" in k or "lm_head_bias" in k for k in keys)
    assert {"lm_head.weight", "model.cell.context_norm.weight", "model.cell.context_proj.bias"} <= keys
    assert model.model.cell.fused_scan_ok


@pytest.mark.parametrize("name, fused", [("forget/input bias", True), ("embedding dropout", True), ("tied", True),
                                         ("residual + norm", True), ("context dropout", True),
                                         ("multi-scale", False)])  # fmt: skip
def test_fused_scan_covers_exactly_the_options_it_implements(name, fused):
    assert build(**OPTIONS[name]).model.cell.fused_scan_ok is fused


def test_gate_biases_start_where_configured():
    cell = build(forget_bias=2.0, input_bias=-1.0).model.cell
    size = cell.context_size
    bias = cell.context_proj.bias
    assert torch.all(bias[:size] == 0) and torch.all(bias[size : 2 * size] == 2.0) and torch.all(bias[2 * size :] == -1.0)


def test_multi_scale_blocks_have_their_own_time_scale_and_norm():
    cell = build(context_scales=4).model.cell
    size = cell.context_size
    forget = cell.context_proj.bias[size : 2 * size].detach().view(4, -1)
    expected = torch.tensor([math.log(4.0**k) for k in range(4)])
    torch.testing.assert_close(forget, expected[:, None].expand_as(forget))
    with torch.no_grad():
        context = cell.update_context(torch.randn(5, 48), torch.randn(5, size) * 3)
    blocks = context.view(5, 4, -1)  # affine is (1, 0) at init: each block is normalised on its own
    torch.testing.assert_close(blocks.mean(-1), torch.zeros(5, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(blocks.var(-1, unbiased=False), torch.ones(5, 4), atol=1e-3, rtol=0)


def test_tied_head_is_the_embedding_matrix():
    model = build(**OPTIONS["tied"])
    assert model.lm_head is None and "lm_head.weight" not in model.state_dict()
    hidden = torch.randn(2, 48)
    expected = hidden @ model.model.embed_tokens.weight.t() + model.lm_head_bias
    torch.testing.assert_close(model.output_logits(hidden), expected)


@pytest.mark.parametrize("chunk", [1, 3, 16, 64])
def test_chunked_linear_scan_equals_the_sequential_recurrence(chunk):
    torch.manual_seed(0)
    log_f = torch.nn.functional.logsigmoid(torch.randn(2, 37, 5, dtype=torch.double)).requires_grad_()
    update = torch.randn(2, 37, 5, dtype=torch.double, requires_grad=True)
    context0 = torch.randn(2, 5, dtype=torch.double, requires_grad=True)
    fast, last = chunked_linear_scan(log_f, update, context0, chunk)
    context, outputs = context0, []
    for t in range(37):
        context = log_f[:, t].exp() * context + update[:, t]
        outputs.append(context)
    slow = torch.stack(outputs, dim=1)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(last, slow[:, -1])
    weights = torch.randn_like(slow)
    grads_fast = torch.autograd.grad((fast * weights).sum(), (log_f, update, context0))
    grads_slow = torch.autograd.grad((slow * weights).sum(), (log_f, update, context0))
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b)


def test_chunked_linear_scan_survives_long_memories_and_fast_forgetting():
    log_f = torch.full((1, 64, 3), -60.0)  # f ≈ 1e-26: products underflow, never overflow
    log_f[:, :, 0] = 0.0  # f = 1: a pure running sum
    out, _ = chunked_linear_scan(log_f, torch.ones(1, 64, 3), torch.zeros(1, 3), chunk=16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :, 0], torch.arange(1.0, 65.0))
    torch.testing.assert_close(out[0, :, 1], torch.ones(64))


def test_parallel_cell_carries_the_context_through_left_padding():
    cell = ParallelNewLLMCell(embedding_size=6, context_size=4, hidden_size=8, num_layers=2).eval()
    inputs = torch.randn(1, 5, 6)
    padded = torch.cat([torch.randn(1, 3, 6), inputs], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        hidden, context = cell.scan(inputs, torch.zeros(1, 4))
        hidden_padded, context_padded = cell.scan(padded, torch.zeros(1, 4), mask)
    torch.testing.assert_close(hidden_padded[:, 3:], hidden)
    torch.testing.assert_close(context_padded, context)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(cell="attention"), "cell must be one of seed, parallel"),
        (dict(embedding_dropout=1.0), "embedding_dropout must be in"),
        (dict(tie_embeddings=True), "tie_embeddings needs embedding_size == hidden_size"),
        (dict(context_scales=3), "context_scales must be a positive divisor"),
    ],
)
def test_contradictory_options_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_new_llm_config(**bad)


def test_parallel_variant_has_about_the_seed_parameter_count():
    seed = sum(p.numel() for p in NewLLMForCausalLM(NewLLMConfig(vocab_size=8192)).parameters())
    parallel = sum(p.numel() for p in NewLLMForCausalLM(NewLLMConfig(vocab_size=8192, cell="parallel")).parameters())
    assert abs(parallel - seed) / seed < 0.05
