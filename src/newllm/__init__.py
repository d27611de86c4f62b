"""newllm: New-LLM (one fixed-size context vector, no attention) against GPT-2 and an LSTM of the same size.

Importing the package registers New-LLM and the LSTM with transformers' `Auto*` classes, so
`AutoModelForCausalLM.from_pretrained("checkpoints/best_new_llm_dialog")` works after `import newllm`.
"""

from newllm import models  # noqa: F401  (registration)

__version__ = "0.1.0"
