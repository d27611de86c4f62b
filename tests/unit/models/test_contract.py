"""Every model obeys one contract, so training and evaluation never branch on the model type."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from newllm.models import (
    BaselineShape,
    build_model,
    count_parameters,
    gpt2_config_for_budget,
    matched_configs,
    usable_positions,
)
from newllm.models.registry import lstm_config_for_budget, lstm_parameter_count
from newllm.models.gpt2 import gpt2_parameter_count

from .conftest import VOCAB, random_ids, tiny_new_llm_config


def test_finite_loss_and_gradient_for_every_parameter(any_model):
    name, model = any_model
    model.train()
    ids = random_ids(2, 10)
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 10, VOCAB)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"{name}: no gradient reaches {missing}"


def test_loss_ignores_minus_100_and_shifts_inside(any_model):
    name, model = any_model
    ids = random_ids(1, 8)
    labels = ids.clone()
    labels[0, 5:] = -100
    logits = model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits[0, :4], ids[0, 1:5])
    torch.testing.assert_close(model(ids, labels=labels).loss, expected, rtol=1e-5, atol=1e-5)


def test_untrained_loss_is_near_uniform(any_model):
    _, model = any_model
    ids = random_ids(4, 16)
    assert abs(model(ids, labels=ids).loss.item() - math.log(VOCAB)) < 0.5


def test_baselines_within_five_percent_of_new_llm(tiny_configs):
    counts = {name: count_parameters(build_model(name, cfg)) for name, cfg in tiny_configs.items()}
    for name in ("tinygpt2", "lstm"):
        assert abs(counts[name] - counts["new_llm"]) <= 0.05 * counts["new_llm"], counts


@pytest.mark.parametrize(
    "sizes",
    [dict(vocab_size=8192), dict(vocab_size=1000), dict(vocab_size=2048, embedding_size=64, context_size=64, hidden_size=128)],
)
def test_matching_holds_at_preset_sizes(sizes):
    from newllm.models import NewLLMConfig

    configs = matched_configs(NewLLMConfig(**sizes, eos_token_id=0), shape=BaselineShape(gpt2_positions=512))
    counts = {name: count_parameters(build_model(name, cfg)) for name, cfg in configs.items()}
    for name in ("tinygpt2", "lstm"):
        assert abs(counts[name] - counts["new_llm"]) <= 0.05 * counts["new_llm"], counts


def test_parameter_formulas_match_real_models():
    gpt2 = gpt2_config_for_budget(200_000, VOCAB, 64, n_layer=2, tolerance=0.5)
    assert count_parameters(build_model("tinygpt2", gpt2)) == gpt2_parameter_count(VOCAB, 64, gpt2.n_embd, gpt2.n_layer)
    lstm = lstm_config_for_budget(200_000, VOCAB, num_layers=3, tolerance=0.5)
    real = count_parameters(build_model("lstm", lstm))
    assert real == lstm_parameter_count(VOCAB, lstm.embedding_size, lstm.hidden_size, 3)


def test_impossible_budget_fails_loudly():
    with pytest.raises(ValueError, match="no GPT-2 within"):
        gpt2_config_for_budget(1_000, vocab_size=8192, n_positions=512)
    with pytest.raises(ValueError, match="LSTM within"):
        lstm_config_for_budget(1_000, vocab_size=8192)


def test_gpt2_positions_cover_requested_context():
    configs = matched_configs(tiny_new_llm_config(), shape=BaselineShape(gpt2_positions=96))
    assert configs["tinygpt2"].n_positions == 96


def test_usable_positions_are_the_trained_ones_and_survive_a_save(tiny_configs, tmp_path):
    gpt2 = build_model("tinygpt2", tiny_configs["tinygpt2"])
    assert usable_positions(gpt2) == gpt2.config.n_positions  # nothing recorded: every position
    gpt2.config.trained_positions = 16
    gpt2.save_pretrained(tmp_path)
    assert usable_positions(AutoModelForCausalLM.from_pretrained(tmp_path)) == 16
    gpt2.config.trained_positions = 10 * gpt2.config.n_positions  # never more than the table holds
    assert usable_positions(gpt2) == gpt2.config.n_positions
    for name in ("new_llm", "lstm"):  # no positions at all
        assert usable_positions(build_model(name, tiny_configs[name])) is None


def test_unknown_model_name_is_an_error():
    with pytest.raises(ValueError, match="unknown model"):
        matched_configs(tiny_new_llm_config(), names=("new_llm", "mamba"))


def test_save_load_round_trip_gives_identical_logits(any_model, tmp_path):
    _, model = any_model
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    ids = random_ids(2, 9)
    assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_greedy_generate_equals_full_forward_argmax(any_model):
    _, model = any_model
    prompt = random_ids(2, 5)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    logits = model(out).logits
    assert torch.equal(logits[:, 4:-1].argmax(-1), out[:, 5:])


def test_left_padding_does_not_change_generation(any_model):
    _, model = any_model
    short = random_ids(1, 4, seed=3)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)], 1)
    a = model.generate(padded, attention_mask=mask, max_new_tokens=5, do_sample=False)[:, 7:]
    b = model.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=5, do_sample=False)[:, 4:]
    assert torch.equal(a, b)


def test_right_padding_does_not_change_scored_logits(any_model):
    _, model = any_model
    ids = random_ids(2, 9)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding, as the collator makes it
    padded = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(padded[1, :6], model(ids[1:, :6]).logits[0], rtol=1e-5, atol=1e-5)


def test_each_registry_entry_is_what_its_models_are(tiny_configs):
    """The registry's facts about a family hold for the model it builds: checkpoint type, dropout
    fields present in its config, and whether its forward carries a state."""
    import inspect

    from newllm.models.registry import MODELS, carries_state

    for name, entry in MODELS.items():
        model = entry.build(tiny_configs[name])
        assert model.config.model_type == entry.model_type
        assert all(hasattr(model.config, field) for field in entry.dropout_fields), name
        takes_state = "state" in inspect.signature(model.forward).parameters
        assert carries_state(model) is entry.carries_state is takes_state, name
        assert (entry.sized is None) == (name == "new_llm")  # the others are sized to New-LLM
        at_32 = entry.build(entry.at_width(300, 32, 2, 16))  # the recall sweep's rule: exactly this width and depth
        assert at_32.config.model_type == entry.model_type and at_32.get_input_embeddings().embedding_dim == 32
    assert not carries_state(torch.nn.Linear(2, 2))  # not a family of the registry


def test_reporting_names_the_registrys_models_as_the_registry_does():
    # reporting/ imports no torch, so it keeps its own copy of the names and labels: checked here
    from newllm.models.registry import MODEL_LABELS, MODEL_NAMES
    from newllm.reporting import plots, report

    from newllm.models.registry import DEFAULT_MODEL_NAMES

    assert plots.MODEL_LABELS == MODEL_LABELS and tuple(plots.MODEL_LABELS) == MODEL_NAMES
    assert tuple(report.EXPECTED_MODELS) == DEFAULT_MODEL_NAMES
