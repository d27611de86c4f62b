"""Configuration of New-LLM: every architectural choice, saved as `config.json` beside the weights."""

from __future__ import annotations

from transformers import PretrainedConfig


class NewLLMConfig(PretrainedConfig):
    r"""
    Args:
        vocab_size: number of token ids.
        embedding_size: width of the token embedding.
        context_size: width of the context vector `c` carried from token to token (the model's only state).
        hidden_size: width of each feed-forward layer; the last one's output `h` feeds the heads.
        num_hidden_layers: number of Linear → ReLU → Dropout layers on `[embedding; context]`.
        dropout: dropout after each feed-forward layer.
        context_clamp: the context is clamped to ±this after its LayerNorm (the prototype used 10).
        layer_norm_eps: epsilon of the context LayerNorm.
        initializer_range: std of the normal init of linear and embedding weights.
        use_cache: return the context as `past_key_values` (what `generate()` feeds back).
    """

    model_type = "new_llm"
    attribute_map = {"num_layers": "num_hidden_layers"}

    def __init__(
        self,
        vocab_size: int = 8192,
        embedding_size: int = 256,
        context_size: int = 256,
        hidden_size: int = 512,
        num_hidden_layers: int = 3,
        dropout: float = 0.1,
        context_clamp: float = 10.0,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        **kwargs,
    ):
        for name, value in [
            ("vocab_size", vocab_size),
            ("embedding_size", embedding_size),
            ("context_size", context_size),
            ("hidden_size", hidden_size),
            ("num_hidden_layers", num_hidden_layers),
        ]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"NewLLMConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"NewLLMConfig.dropout must be in [0, 1), got {dropout!r}")
        if context_clamp <= 0:
            raise ValueError(f"NewLLMConfig.context_clamp must be positive, got {context_clamp!r}")
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.context_size = context_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.dropout = dropout
        self.context_clamp = context_clamp
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        # The embedding (E) and the output head (H) have different widths in general: nothing to tie.
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
