"""measure_speed runs for every model and sizes each cache correctly; no timing thresholds (see benchmarks/)."""

import math

import pytest
import torch

from newllm.evaluation.decoding import cache_bytes
from newllm.evaluation.speed import PROMPT_TOKENS, SpeedResult, environment, measure_speed
from newllm.models.registry import MODEL_NAMES

from tests.tiny_models import build_tiny_models

VOCAB = 300
FLOAT32_BYTES = 4
NEW_TOKENS = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_models(gpt2_positions: int = 128):
    return build_tiny_models(VOCAB, gpt2_positions, end_of_text=0, pad=0)


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def results(models):
    return {
        # Three repeats: a median then survives one stall of this shared CPU in each timed series.
        name: measure_speed(model, VOCAB, batch_size=2, seq_len=8, new_tokens=NEW_TOKENS, repeats=3)
        for name, model in models.items()
    }


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_measure_speed_returns_positive_finite_numbers(results, name):
    result = results[name]
    assert isinstance(result, SpeedResult)
    for value in (result.ms_per_batch, result.ms_per_token):
        assert math.isfinite(value) and value > 0
    assert (result.batch_size, result.seq_len, result.generated_tokens) == (2, 8, NEW_TOKENS)
    assert (result.device, result.dtype) == ("cpu", "float32")


def test_new_llm_state_is_one_context_vector(models, results):
    config = models["new_llm"].config
    assert results["new_llm"].state_bytes == 1 * config.context_size * FLOAT32_BYTES


def test_lstm_state_is_h_and_c_of_every_layer(models, results):
    config = models["lstm"].config
    expected = 2 * config.num_hidden_layers * 1 * config.hidden_size * FLOAT32_BYTES
    assert results["lstm"].state_bytes == expected


def test_gpt2_cache_holds_keys_and_values_of_every_fed_token(models, results):
    config = models["tinygpt2"].config
    # The prompt and every generated token but the last, which is produced and never fed back.
    fed = PROMPT_TOKENS + NEW_TOKENS - 1
    assert results["tinygpt2"].state_bytes == 2 * config.n_layer * fed * config.n_embd * FLOAT32_BYTES


def test_gpt2_generation_is_clipped_to_its_positions():
    model = tiny_models(gpt2_positions=32)["tinygpt2"]
    result = measure_speed(model, VOCAB, batch_size=1, seq_len=8, new_tokens=100, repeats=1)
    assert result.generated_tokens == 32 - PROMPT_TOKENS


def test_invalid_arguments_raise(models):
    with pytest.raises(ValueError):
        measure_speed(models["new_llm"], VOCAB, repeats=0)
    with pytest.raises(ValueError):
        measure_speed(models["tinygpt2"], VOCAB, seq_len=1000)  # past its 128 positions
    assert cache_bytes(None) is None


def test_mode_is_restored(models):
    model = models["lstm"]
    model.train()
    measure_speed(model, VOCAB, batch_size=1, seq_len=4, new_tokens=2, repeats=1)
    assert model.training
    model.eval()


def test_environment_names_versions_and_hardware():
    env = environment()
    assert env["torch"] == torch.__version__
    assert env["transformers"]
    assert env["cpu"]
    assert env["threads"] == torch.get_num_threads()
    assert (env["gpu"] is None) == (not torch.cuda.is_available())
