"""Tiny New-LLM, TinyGPT2 and LSTM for the evaluation tests: the three architectures, not a fair match."""

import torch

from newllm.models.new_llm import NewLLMConfig
from newllm.models.registry import MODEL_NAMES, BaselineShape, build_model, matched_configs


def build_tiny_models(vocab_size: int, gpt2_positions: int, *, end_of_text=None, pad=None, dropout=None) -> dict:
    """Seeded tiny models of every name; the tolerance is loose (±50 %) since no budget fits all widths."""
    torch.manual_seed(0)
    ids = {} if end_of_text is None else {"bos_token_id": end_of_text, "eos_token_id": end_of_text, "pad_token_id": pad}
    drop = {} if dropout is None else {"dropout": dropout}
    config = NewLLMConfig(
        vocab_size=vocab_size, embedding_size=16, context_size=16, hidden_size=32, num_hidden_layers=2, **ids, **drop
    )
    configs = matched_configs(config, shape=BaselineShape(gpt2_positions=gpt2_positions, tolerance=0.5, **drop))
    return {name: build_model(name, configs[name]) for name in MODEL_NAMES}
