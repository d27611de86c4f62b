"""Models with one Hugging Face contract: `model(input_ids, attention_mask, labels)` → loss, logits; `generate()`.

Importing this package registers New-LLM and the LSTM with the `Auto*` classes.
"""

from newllm.models.gpt2 import gpt2_config_for_budget
from newllm.models.lstm import LSTMForCausalLM, LSTMLMConfig
from newllm.models.new_llm import NewLLMConfig, NewLLMForCausalLM, NewLLMModel
from newllm.models.recurrent import RecurrentCache
from newllm.models.registry import (
    DROPOUT_FIELDS,
    MODEL_LABELS,
    DEFAULT_MODEL_NAMES,
    MODEL_NAMES,
    MODEL_TYPES,
    MODELS,
    BaselineShape,
    ModelSpec,
    build_model,
    carries_state,
    count_parameters,
    matched_configs,
    parameter_count,
    usable_positions,
)

__all__ = [
    "DROPOUT_FIELDS",
    "MODEL_LABELS",
    "DEFAULT_MODEL_NAMES",
    "MODEL_NAMES",
    "MODEL_TYPES",
    "MODELS",
    "BaselineShape",
    "ModelSpec",
    "LSTMForCausalLM",
    "LSTMLMConfig",
    "NewLLMConfig",
    "NewLLMForCausalLM",
    "NewLLMModel",
    "RecurrentCache",
    "build_model",
    "carries_state",
    "count_parameters",
    "gpt2_config_for_budget",
    "matched_configs",
    "parameter_count",
    "usable_positions",
]
