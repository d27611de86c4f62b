"""New-LLM: importing this registers it with `AutoConfig` / `AutoModelForCausalLM`."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from newllm.models.new_llm.configuration import NewLLMConfig
from newllm.models.new_llm.modeling import NewLLMForCausalLM, NewLLMModel, NewLLMPreTrainedModel

AutoConfig.register(NewLLMConfig.model_type, NewLLMConfig, exist_ok=True)
AutoModel.register(NewLLMConfig, NewLLMModel, exist_ok=True)
AutoModelForCausalLM.register(NewLLMConfig, NewLLMForCausalLM, exist_ok=True)

__all__ = ["NewLLMConfig", "NewLLMForCausalLM", "NewLLMModel", "NewLLMPreTrainedModel"]
