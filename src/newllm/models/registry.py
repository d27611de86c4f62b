"""Model names → classes, and the rule that makes the comparison fair: equal parameter counts (±5 %)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from newllm.models.gpt2 import GPT2_DROPOUT_FIELDS, build_tinygpt2, gpt2_config_for_budget
from newllm.models.lstm import LSTMForCausalLM, LSTMLMConfig
from newllm.models.new_llm import NewLLMConfig, NewLLMForCausalLM

MODEL_NAMES = ("new_llm", "tinygpt2", "lstm")
# The `model_type` each name's checkpoints carry in config.json.
MODEL_TYPES = {"new_llm": "new_llm", "tinygpt2": "gpt2", "lstm": "newllm_lstm"}
# The config fields that the experiment's one dropout (`model.dropout`) sets in each model.
DROPOUT_FIELDS = {"new_llm": ("dropout",), "tinygpt2": GPT2_DROPOUT_FIELDS, "lstm": ("dropout",)}


def max_positions(model) -> int | None:
    """The size of a position-embedding model's position table (GPT-2's `n_positions`), or None."""
    config = getattr(model, "config", None)
    # GPT2Config maps max_position_embeddings to n_positions; the recurrent configs have neither.
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def usable_positions(model) -> int | None:
    """How many positions a position-embedding model (GPT-2) can read well, None for the recurrent models.

    That is `n_positions`, or fewer where the config records `trained_positions`, the longest window
    the model was trained on (the pipeline writes it at the end of each stage): the position embeddings
    past it never got a gradient, and reading them made TinyGPT2's perplexity 2.5 times worse.
    """
    limit = max_positions(model)
    if limit is None:
        return None
    trained = getattr(model.config, "trained_positions", None)
    return min(limit, trained) if isinstance(trained, int) and trained > 0 else limit


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, a tied matrix counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_count(name: str, config: PretrainedConfig) -> int:
    """Parameters of model `name` built from `config`, counted on the meta device (no memory, no RNG draw)."""
    with torch.device("meta"):
        return count_parameters(build_model(name, config))


def lstm_parameter_count(vocab_size: int, embedding_size: int, hidden_size: int, num_layers: int) -> int:
    """Embedding V×E, LSTM layers (4 gates; PyTorch keeps two bias vectors), head H×V + V."""
    first = 4 * (embedding_size * hidden_size + hidden_size * hidden_size + 2 * hidden_size)
    rest = (num_layers - 1) * 4 * (2 * hidden_size * hidden_size + 2 * hidden_size)
    return vocab_size * embedding_size + first + rest + hidden_size * vocab_size + vocab_size


def lstm_config_for_budget(
    target_params: int, vocab_size: int, num_layers: int = 2, tolerance: float = 0.05, dropout: float = 0.1, **kwargs
) -> LSTMLMConfig:
    """The LSTM matching `target_params`: hidden width in steps of 8, embedding width solved exactly.

    Among the hidden widths that fit, the one whose embedding width is closest to it wins, so the
    baseline is the usual square LSTM LM whenever the budget allows.
    """
    best = None
    for hidden in range(8, 4097, 8):
        per_embedding = vocab_size + 4 * hidden  # parameters added by one more embedding dimension
        fixed = lstm_parameter_count(vocab_size, 0, hidden, num_layers)
        embedding = round((target_params - fixed) / per_embedding)
        if embedding < 8:
            break
        count = lstm_parameter_count(vocab_size, embedding, hidden, num_layers)
        if abs(count - target_params) <= tolerance * target_params:
            score = abs(math.log(embedding / hidden))
            if best is None or score < best[0]:
                best = (score, embedding, hidden)
    if best is None:
        raise ValueError(
            f"no {num_layers}-layer LSTM within ±{tolerance:.0%} of {target_params:,} parameters "
            f"(vocab {vocab_size}): change the New-LLM size or the tolerance"
        )
    _, embedding, hidden = best
    return LSTMLMConfig(
        vocab_size=vocab_size,
        embedding_size=embedding,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        dropout=dropout,
        **kwargs,
    )


@dataclass(frozen=True)
class BaselineShape:
    """How the baselines are sized (their widths follow from the New-LLM's parameter count)."""

    gpt2_layers: int = 4
    gpt2_positions: int = 1024
    lstm_layers: int = 2
    dropout: float = 0.1
    tolerance: float = 0.05


def build_model(name: str, config: PretrainedConfig) -> PreTrainedModel:
    """A freshly initialised model of `name` from its config."""
    if name == "new_llm":
        return NewLLMForCausalLM(config)
    if name == "tinygpt2":
        return build_tinygpt2(config)
    if name == "lstm":
        return LSTMForCausalLM(config)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def matched_configs(
    new_llm_config: NewLLMConfig, names=MODEL_NAMES, shape: BaselineShape = BaselineShape()
) -> dict[str, PretrainedConfig]:
    """Configs for `names`, each baseline sized to the New-LLM's parameter count within `shape.tolerance`."""
    unknown = set(names) - set(MODEL_NAMES)
    if unknown:
        raise ValueError(f"unknown model {sorted(unknown)[0]!r}; choose from {', '.join(MODEL_NAMES)}")
    target = parameter_count("new_llm", new_llm_config)
    special = {
        key: getattr(new_llm_config, key)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id")
        if getattr(new_llm_config, key, None) is not None
    }
    configs: dict[str, PretrainedConfig] = {}
    for name in names:
        if name == "new_llm":
            configs[name] = new_llm_config
        elif name == "tinygpt2":
            configs[name] = gpt2_config_for_budget(
                target,
                new_llm_config.vocab_size,
                shape.gpt2_positions,
                n_layer=shape.gpt2_layers,
                tolerance=shape.tolerance,
                dropout=shape.dropout,
                **special,
            )
        elif name == "lstm":
            configs[name] = lstm_config_for_budget(
                target,
                new_llm_config.vocab_size,
                num_layers=shape.lstm_layers,
                tolerance=shape.tolerance,
                dropout=shape.dropout,
                **special,
            )
    return configs
