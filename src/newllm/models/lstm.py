"""The classic recurrent baseline: embedding → multi-layer `nn.LSTM` → vocabulary head.

Same Hugging Face contract as New-LLM (`labels=input_ids`, `generate()` with the (h, c) state as
cache), so training and evaluation never branch on the model type.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel

from newllm.models.recurrent import RecurrentGenerationMixin, needs_state_mask


class LSTMLMConfig(PretrainedConfig):
    r"""
    Args:
        vocab_size: number of token ids.
        embedding_size: width of the token embedding (the LSTM's input).
        hidden_size: width of the LSTM's hidden and cell state.
        num_hidden_layers: stacked LSTM layers.
        dropout: dropout on the embedding, between layers and before the head.
        initializer_range: std of the normal init of the embedding and head.
    """

    model_type = "newllm_lstm"

    def __init__(
        self,
        vocab_size: int = 8192,
        embedding_size: int = 256,
        hidden_size: int = 512,
        num_hidden_layers: int = 2,
        dropout: float = 0.1,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        **kwargs,
    ):
        for name, value in [
            ("vocab_size", vocab_size),
            ("embedding_size", embedding_size),
            ("hidden_size", hidden_size),
            ("num_hidden_layers", num_hidden_layers),
        ]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LSTMLMConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LSTMLMConfig.dropout must be in [0, 1), got {dropout!r}")
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


class LSTMLMPreTrainedModel(PreTrainedModel):
    config_class = LSTMLMConfig
    base_model_prefix = "lstm_lm"
    main_input_name = "input_ids"

    @torch.no_grad()
    def _init_weights(self, module):
        # pytorch/examples word_language_model: embedding and decoder uniform in ±0.1, zero decoder
        # bias; the LSTM keeps PyTorch's uniform ±1/√H. GPT-2's N(0, 0.02) embedding starves an
        # LSTM of input signal: it barely learns in the first epochs.
        if isinstance(module, (nn.Embedding, nn.Linear)):
            module.weight.uniform_(-0.1, 0.1)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()


class LSTMForCausalLM(RecurrentGenerationMixin, LSTMLMPreTrainedModel, GenerationMixin):
    def __init__(self, config: LSTMLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.embedding_size,
            config.hidden_size,
            num_layers=config.num_hidden_layers,
            dropout=config.dropout if config.num_hidden_layers > 1 else 0.0,
            batch_first=True,
        )
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def _run_lstm(self, embeddings, hc, attention_mask):
        if not needs_state_mask(attention_mask):
            return self.lstm(embeddings, hc)  # cuDNN path
        # Left padding (generation only): step by step, carrying (h, c) unchanged over masked tokens.
        outputs = []
        for t in range(embeddings.shape[1]):
            out, new_hc = self.lstm(embeddings[:, t : t + 1], hc)
            keep = attention_mask[:, t].bool()[None, :, None]  # (1, B, 1) against (L, B, H)
            hc = tuple(torch.where(keep, new, old) for new, old in zip(new_hc, hc))
            outputs.append(out)
        return torch.cat(outputs, dim=1), hc

    def window(self, input_ids, states, attention_mask):
        embeddings = self.dropout(self.embed_tokens(input_ids))  # (B, T, E)
        if states is None:
            zeros = embeddings.new_zeros(self.config.num_hidden_layers, input_ids.shape[0], self.config.hidden_size)
            hc = (zeros, zeros)
        else:
            # The cache keeps the batch first (for beam reordering); nn.LSTM wants (L, B, H).
            hc = tuple(s.transpose(0, 1).contiguous() for s in states)
        hidden, hc = self._run_lstm(embeddings, hc, attention_mask)
        return self.lm_head(self.dropout(hidden)), tuple(s.transpose(0, 1) for s in hc)  # (B, T, V)


AutoConfig.register(LSTMLMConfig.model_type, LSTMLMConfig, exist_ok=True)
AutoModelForCausalLM.register(LSTMLMConfig, LSTMForCausalLM, exist_ok=True)
