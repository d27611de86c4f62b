"""Model names → classes, and the rule that makes the comparison fair: equal parameter counts (±5 %)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from newllm.models.gpt2 import GPT2_DROPOUT_FIELDS, build_tinygpt2, gpt2_config_for_budget, gpt2_parameter_count
from newllm.models.lstm import LSTMForCausalLM, LSTMLMConfig
from newllm.models.mamba2 import build_mamba2, mamba2_config, mamba2_config_for_budget
from newllm.models.new_llm import NewLLMConfig, NewLLMForCausalLM



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
    later_layers = (num_layers - 1) * 4 * (2 * hidden_size * hidden_size + 2 * hidden_size)
    return vocab_size * embedding_size + first + later_layers + hidden_size * vocab_size + vocab_size


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
    mamba2_layers: int = 6
    dropout: float = 0.1
    tolerance: float = 0.05


@dataclass(frozen=True)
class ModelSpec:
    """Everything the experiment knows about one model family; `MODELS` holds one entry per family.

    Adding a model is a module under models/ plus one entry here: every list of names, label,
    checkpoint type, dropout field and capability elsewhere is read from `MODELS`."""

    name: str  # the experiment's name (--models, folder names, results.json)
    label: str  # how reports and figures name it
    model_type: str  # `model_type` in its checkpoints' config.json
    build: Callable[[PretrainedConfig], PreTrainedModel]  # a freshly initialised model from its config
    dropout_fields: tuple[str, ...]  # the config fields the experiment's one dropout (`model.dropout`) sets
    # (target parameters, vocabulary, BaselineShape, **special token ids) → its config at that budget;
    # None for New-LLM, whose config the experiment gives and whose count the others match
    sized: Callable[..., PretrainedConfig] | None
    carries_state: bool  # forward takes and returns `state` (a recurrent model: stateful training and evaluation)
    # (vocabulary, width, layers, sequence length, **config fields) → its config at exactly that width and depth,
    # no dropout: how the recall diagnostic (newllm recall) builds each family at each state size
    at_width: Callable[..., PretrainedConfig] | None = None
    # in every run unless --models says otherwise; the peers are run by the presets that name them
    in_default_run: bool = True
    # torch.compile can trace it with dynamic shapes: DailyDialog's batches change width from step to step, and
    # after the second width torch.compile traces the model with a symbolic length
    compiles_any_length: bool = True


def _sized_gpt2(target: int, vocab_size: int, shape: BaselineShape, **special) -> PretrainedConfig:
    return gpt2_config_for_budget(target, vocab_size, shape.gpt2_positions, n_layer=shape.gpt2_layers,
                                  tolerance=shape.tolerance, dropout=shape.dropout, **special)  # fmt: skip


def _sized_mamba2(target: int, vocab_size: int, shape: BaselineShape, **special) -> PretrainedConfig:
    return mamba2_config_for_budget(target, vocab_size, num_layers=shape.mamba2_layers, tolerance=shape.tolerance,
                                    **special)  # fmt: skip


def _sized_lstm(target: int, vocab_size: int, shape: BaselineShape, **special) -> PretrainedConfig:
    return lstm_config_for_budget(target, vocab_size, num_layers=shape.lstm_layers, tolerance=shape.tolerance,
                                  dropout=shape.dropout, **special)  # fmt: skip


# The `at_width` rules: a model of `width` and `layers`, no dropout; `fields` win over the rule's own choices (a
# recall sweep's wider context or smaller state).
def _new_llm_at(vocab_size: int, width: int, layers: int, seq_len: int, **fields) -> PretrainedConfig:
    shape = dict(embedding_size=width, context_size=width, hidden_size=width, num_hidden_layers=layers, dropout=0.0)
    return NewLLMConfig(vocab_size=vocab_size, **(shape | fields))


def _gpt2_at(vocab_size: int, width: int, layers: int, seq_len: int, **fields) -> PretrainedConfig:
    # the sizing rule at exactly this width (its head sizes), positions = the sequence
    return gpt2_config_for_budget(gpt2_parameter_count(vocab_size, seq_len, width, layers), vocab_size, seq_len,
                                  n_layer=layers, tolerance=0.0, dropout=0.0, **fields)  # fmt: skip


def _lstm_at(vocab_size: int, width: int, layers: int, seq_len: int, **fields) -> PretrainedConfig:
    shape = dict(embedding_size=width, hidden_size=width, num_hidden_layers=layers, dropout=0.0)
    return LSTMLMConfig(vocab_size=vocab_size, **(shape | fields))


def _mamba2_at(vocab_size: int, width: int, layers: int, seq_len: int, **fields) -> PretrainedConfig:
    return mamba2_config(vocab_size, width, layers, **fields)


MODELS = {
    spec.name: spec
    for spec in (
        ModelSpec("new_llm", "New-LLM", "new_llm", NewLLMForCausalLM, ("dropout",), None, carries_state=True,
                  at_width=_new_llm_at),  # fmt: skip
        ModelSpec("tinygpt2", "TinyGPT2", "gpt2", build_tinygpt2, GPT2_DROPOUT_FIELDS, _sized_gpt2, carries_state=False,
                  at_width=_gpt2_at),  # fmt: skip
        ModelSpec("lstm", "LSTM", "newllm_lstm", LSTMForCausalLM, ("dropout",), _sized_lstm, carries_state=True,
                  at_width=_lstm_at),  # fmt: skip
        # its cache is transformers' own (`cache` / `cache_params`), not `state`; the architecture has no dropout
        # it does not compile with a symbolic length, with transformers' scan or ours: inductor's stride sorting raises
        # on torch 2.13 (pytorch/pytorch#185510) and ran 11 minutes without an epoch on 2.11; DailyDialog trains eagerly
        ModelSpec("mamba2", "Mamba-2", "mamba2", build_mamba2, (), _sized_mamba2, carries_state=False,
                  at_width=_mamba2_at, in_default_run=False, compiles_any_length=False),  # fmt: skip
    )
}
MODEL_NAMES = tuple(MODELS)
DEFAULT_MODEL_NAMES = tuple(name for name, spec in MODELS.items() if spec.in_default_run)
MODEL_LABELS = {name: spec.label for name, spec in MODELS.items()}
MODEL_TYPES = {name: spec.model_type for name, spec in MODELS.items()}
DROPOUT_FIELDS = {name: spec.dropout_fields for name, spec in MODELS.items()}


def spec(name: str) -> ModelSpec:
    """The registry entry of `name`, or a ValueError listing the known names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    return MODELS[name]


def _specs_of(model) -> list[ModelSpec]:
    """The registry entries of a built model, found by its config's `model_type` (none for a foreign model)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return [s for s in MODELS.values() if s.model_type == model_type]


def carries_state(model) -> bool:
    """Whether `model` is one of the recurrent families (its forward takes and returns `state`)."""
    return any(s.carries_state for s in _specs_of(model))


def compiles_any_length(model) -> bool:
    """Whether torch.compile can trace `model` with a symbolic sequence length (ModelSpec.compiles_any_length)."""
    return all(s.compiles_any_length for s in _specs_of(model))


def build_model(name: str, config: PretrainedConfig) -> PreTrainedModel:
    """A freshly initialised model of `name` from its config."""
    return spec(name).build(config)


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
        sized = MODELS[name].sized
        configs[name] = new_llm_config if sized is None else sized(target, new_llm_config.vocab_size, shape, **special)
    return configs
