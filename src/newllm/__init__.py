"""newllm: New-LLM (one fixed-size context vector, no attention) against GPT-2 and an LSTM of the same size.

Importing `newllm.models` (so also `newllm.training` and `newllm.pipeline`) registers New-LLM and the LSTM
with transformers' `Auto*` classes, so `AutoModelForCausalLM.from_pretrained("checkpoints/best_new_llm_dialog")`
works after `import newllm.models`. `import newllm` alone loads a subpackage on first use (`newllm.models`
registers then), so that `newllm --help` does not wait seconds for torch and transformers.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("cli", "config", "data", "evaluation", "models", "pipeline", "reporting", "training")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"newllm.{name}")
    raise AttributeError(f"module 'newllm' has no attribute {name!r}")
