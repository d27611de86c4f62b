"""The research options of NewLLMConfig: each one builds, computes what it says, and round-trips."""

import math

import pytest
import torch

from newllm.models.new_llm import NewLLMConfig, NewLLMForCausalLM
from newllm.models.new_llm.configuration import OptionError
from newllm.models.new_llm.cell import CenterNorm
from newllm.models.new_llm.parallel import ParallelNewLLMCell, chunked_linear_scan
from newllm.models.new_llm.scan_mlp import mlp_scan
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
    "mlp block": dict(block="mlp", mlp_ratio=2),
    "final norm": dict(final_norm=True),
    "tanh candidate, no clamp": dict(candidate="tanh", context_clamp=0.0),
    # the levers together: one width, tied head, final norm, MLP blocks, tanh candidate, forget bias
    "mlp cell": dict(block="mlp", mlp_ratio=3, embedding_size=48, context_size=48, tie_embeddings=True,
                     final_norm=True, candidate="tanh", context_clamp=0.0, forget_bias=1.0, embedding_dropout=0.1),
    "parallel, mlp": dict(cell="parallel", block="mlp", final_norm=True, candidate="tanh"),
    "update reads the stream": dict(block="mlp", embedding_size=48, tie_embeddings=True, final_norm=True,
                                    candidate="tanh", update_input="stream"),
    "rms final norm": dict(block="mlp", final_norm=True, final_norm_type="rms", candidate="tanh"),
    "centring final norm": dict(block="mlp", final_norm=True, final_norm_type="center"),
    "rms final norm, update reads the stream": dict(final_norm=True, final_norm_type="rms", update_input="stream"),
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


@pytest.mark.parametrize("name", ["residual + norm", "multi-scale", "parallel", "parallel, everything", "mlp block",
                                  "final norm", "tanh candidate, no clamp", "mlp cell", "parallel, mlp",
                                  "update reads the stream", "rms final norm", "centring final norm",
                                  "rms final norm, update reads the stream"])
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


def test_default_config_is_the_prototype_cell_with_its_state_dict():
    model = build()
    keys = set(model.state_dict())
    assert not any("norms" in k or "lm_head_bias" in k for k in keys)
    assert {"lm_head.weight", "model.cell.context_norm.weight", "model.cell.context_proj.bias"} <= keys
    assert model.model.cell.has_handwritten_backward


@pytest.mark.parametrize("name, fused", [("forget/input bias", True), ("embedding dropout", True), ("tied", True),
                                         ("residual + norm", True), ("context dropout", True),
                                         ("multi-scale", False), ("mlp block", False), ("final norm", False),
                                         ("tanh candidate, no clamp", False)])  # fmt: skip
def test_fused_scan_covers_exactly_the_options_it_implements(name, fused):
    assert build(**OPTIONS[name]).model.cell.has_handwritten_backward is fused


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
    cell = ParallelNewLLMCell(NewLLMConfig(embedding_size=6, context_size=4, hidden_size=8, num_hidden_layers=2, dropout=0.0))
    cell.eval()
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
        (dict(cell="attention"), "cell: must be 'prototype' or 'parallel', got 'attention'"),
        (dict(embedding_dropout=1.0), r"embedding_dropout: must be in \[0, 1\), got 1.0"),
        (dict(tie_embeddings=True), "tie_embeddings: needs embedding_size == hidden_size"),
        (dict(context_scales=3), r"context_scales: must divide context_size \(\d+\), got 3"),
        (dict(block="conv"), "block: must be 'linear' or 'mlp', got 'conv'"),
        (dict(candidate="relu"), "candidate: must be 'linear' or 'tanh', got 'relu'"),
        (dict(mlp_ratio=0), "mlp_ratio: must be at least 1, got 0"),
        (dict(context_clamp=-1.0), r"context_clamp: must be at least 0 \(0: no clamp\), got -1.0"),
        (dict(block="mlp", residual=True), "the mlp block has both built in"),
        (dict(update_input="stream"), "needs final_norm and the prototype cell"),
        (dict(update_input="stream", final_norm=True, cell="parallel"), "needs final_norm and the prototype cell"),
        (dict(update_input="hidden"), "update_input: must be 'output' or 'stream', got 'hidden'"),
        (dict(final_norm=True, final_norm_type="batch"),
         "final_norm_type: must be 'layer', 'rms' or 'center', got 'batch'"),
        (dict(final_norm_type="rms"), "final_norm_type: 'rms' is the final norm's type: needs final_norm"),
    ],
)
def test_contradictory_options_are_refused(bad, message):
    with pytest.raises(OptionError, match=message) as raised:
        tiny_new_llm_config(**bad)
    assert raised.value.argument in bad  # named, so that an experiment's error names its setting
    assert str(raised.value) == f"NewLLMConfig.{raised.value.argument}: {raised.value.reason}"
    assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)


def test_parallel_variant_has_about_the_prototype_cells_parameter_count():
    prototype = sum(p.numel() for p in NewLLMForCausalLM(NewLLMConfig(vocab_size=8192)).parameters())
    parallel = sum(p.numel() for p in NewLLMForCausalLM(NewLLMConfig(vocab_size=8192, cell="parallel")).parameters())
    assert abs(parallel - prototype) / prototype < 0.05


def test_mlp_block_stack_is_additive_input_then_pre_norm_residual_mlps():
    """h_0 = W_tok e + W_ctx c + b; h_l = h_{l-1} + W_2 GELU(W_1 LN(h_{l-1})) + b_2; then the final LayerNorm."""
    cell = build(block="mlp", mlp_ratio=3, final_norm=True).model.cell.eval()
    assert len(cell.blocks) == 2 and cell.blocks[0].up.out_features == 3 * 48
    embedding, context = torch.randn(5, 24), torch.randn(5, 16)
    first = cell.layers[0]
    hidden = embedding @ first.weight[:, :24].t() + context @ first.weight[:, 24:].t() + first.bias
    for block in cell.blocks:
        normed = torch.nn.functional.layer_norm(hidden, (48,), block.norm.weight, block.norm.bias)
        hidden = hidden + block.down(torch.nn.functional.gelu(block.up(normed)))
    expected = torch.nn.functional.layer_norm(hidden, (48,), cell.final_norm.weight, cell.final_norm.bias)
    with torch.no_grad():
        torch.testing.assert_close(cell.feed_forward(embedding, context), expected)


def test_stream_update_reads_h_L_before_the_final_norm_and_the_head_reads_the_norm():
    """update_input="stream": the same h_L as the default cell, the head still reads LN(h_L), the context update
    reads h_L itself; the hand-written backward and the kernels refuse it (they implement the default)."""
    options = OPTIONS["update reads the stream"]
    cell = build(**options).model.cell.eval()
    default = build(**{**options, "update_input": "output"}).model.cell.eval()
    default.load_state_dict(cell.state_dict())  # the same weights: only what the update reads differs
    embedding, context = torch.randn(4, 48), torch.randn(4, 16)
    with torch.no_grad():
        hidden, updated = cell.step(embedding, context)
        default_hidden, default_updated = default.step(embedding, context)
        first = cell.layers[0](torch.cat([embedding, context], dim=-1))
        stream = cell.stream(first)
        torch.testing.assert_close(hidden, default_hidden)  # what the head reads is unchanged
        torch.testing.assert_close(updated, default.update_context(stream, context))
        assert not torch.allclose(updated, default_updated, atol=1e-3)
    assert not cell.has_mlp_backward and default.has_mlp_backward  # kernels: test_new_llm_kernel_mlp.py


@pytest.mark.parametrize("kind, module, parameters", [("layer", torch.nn.LayerNorm, {"weight", "bias"}),
                                                      ("rms", torch.nn.RMSNorm, {"weight"}),
                                                      ("center", CenterNorm, {"weight", "bias"})])  # fmt: skip
def test_final_norm_type_builds_its_norm_and_only_a_layer_norm_takes_the_hand_written_paths(kind, module, parameters):
    cell = build(block="mlp", final_norm=True, final_norm_type=kind).model.cell
    assert type(cell.final_norm) is module
    assert {n for n, _ in cell.final_norm.named_parameters()} == parameters
    assert cell.has_mlp_backward is (kind == "layer")  # the kernels' refusals: test_new_llm_kernel_mlp.py
    if kind != "layer":  # scan_mlp.py computes a LayerNorm: it refuses rather than compute another function
        with pytest.raises(ValueError, match=r"a LayerNorm final norm or none.*\(cell.has_mlp_backward\)"):
            mlp_scan(cell, torch.randn(2, 3, 24), torch.zeros(2, 16))


def test_rms_final_norm_scales_without_centring_and_centre_norm_centres_without_scaling():
    """What the head reads, with γ = 1 and β = 0 as initialised: RMSNorm gives rows of RMS 1 that keep their offset;
    CenterNorm gives rows of mean 0 that keep their spread."""
    stream = 3 * torch.randn(6, 48) + 5  # rows with a clear offset and a spread far from 1
    rms_cell = build(**OPTIONS["rms final norm"]).model.cell
    centre_cell = build(**OPTIONS["centring final norm"]).model.cell
    assert (rms_cell.final_norm.weight == 1).all() and (centre_cell.final_norm.weight == 1).all()
    assert (centre_cell.final_norm.bias == 0).all()
    with torch.no_grad():
        scaled, centred = rms_cell.head_input(stream), centre_cell.head_input(stream)
    torch.testing.assert_close(scaled.pow(2).mean(-1).sqrt(), torch.ones(6))
    assert (scaled.mean(-1) > 0.5).all()  # about 5 / √(5² + 3²): not centred
    torch.testing.assert_close(centred.mean(-1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(centred.std(-1), stream.std(-1))
    assert (centred.std(-1) > 2).all()  # not scaled to 1


def test_tanh_candidate_is_bounded_and_no_clamp_lets_the_context_past_ten():
    cell = build(candidate="tanh", context_clamp=0.0).model.cell
    size = cell.context_size
    hidden, context = torch.randn(3, 48), torch.randn(3, size)
    with torch.no_grad():
        cell.context_norm.weight.fill_(50.0)  # LN output ±50 · x̂: a clamp at 10 would bind
        delta, forget, inp = cell.context_proj(hidden).chunk(3, dim=-1)
        mixed = torch.sigmoid(forget) * context + torch.sigmoid(inp) * torch.tanh(delta)
        expected = torch.nn.functional.layer_norm(mixed, (size,), cell.context_norm.weight, cell.context_norm.bias)
        updated = cell.update_context(hidden, context)
    torch.testing.assert_close(updated, expected)
    assert updated.abs().max() > 10
    clamped = build(candidate="tanh").model.cell
    with torch.no_grad():
        clamped.context_norm.weight.fill_(50.0)
        assert clamped.update_context(hidden, context).abs().max() <= 10


def test_weight_decay_reaches_the_matrices_and_spares_biases_and_norms():
    """The Trainer's own rule (AdamW groups): every ≥ 2-D weight decays, the tied embedding included;
    biases and LayerNorm gains and shifts do not."""
    from transformers import Trainer

    model = build(**OPTIONS["mlp cell"])
    decayed = set(Trainer.get_decay_parameter_names(None, model))
    names = dict(model.named_parameters())
    matrices = {n for n, p in names.items() if p.ndim >= 2}
    assert decayed == matrices
    assert "model.embed_tokens.weight" in decayed
    assert {"model.cell.context_norm.weight", "model.cell.final_norm.weight", "model.cell.blocks.0.norm.weight",
            "lm_head_bias", "model.cell.context_proj.bias"}.isdisjoint(decayed)  # fmt: skip


def test_mlp_cell_at_one_width_of_384_fits_the_prototype_budget():
    """configs/study/new_llm.toml's cell: d = 384 for embedding, context and blocks, 3 blocks of ratio 4, tied head."""
    prototype = sum(p.numel() for p in NewLLMForCausalLM(NewLLMConfig(vocab_size=8192)).parameters())
    config = NewLLMConfig(vocab_size=8192, block="mlp", embedding_size=384, context_size=384, hidden_size=384,
                          num_hidden_layers=3, mlp_ratio=4, tie_embeddings=True, final_norm=True)  # fmt: skip
    with torch.device("meta"):
        mlp = sum(p.numel() for p in NewLLMForCausalLM(config).parameters())
    assert abs(mlp - prototype) / prototype < 0.01
