"""Configuration of New-LLM: every architectural choice, saved as `config.json` beside the weights."""

from __future__ import annotations

import math

from transformers import PretrainedConfig


CELLS = ("prototype", "parallel")
# Earlier spellings that checkpoints in the wild carry in config.json
CELL_ALIASES = {"seed": "prototype"}
BLOCKS = ("linear", "mlp")
CANDIDATES = ("linear", "tanh")


class NewLLMConfig(PretrainedConfig):
    r"""
    Args:
        vocab_size: number of token ids.
        embedding_size: width of the token embedding.
        context_size: width of the context vector `c` carried from token to token (the model's only state).
        hidden_size: width of each feed-forward layer; the last one's output `h` feeds the heads.
        num_hidden_layers: number of Linear → ReLU → Dropout layers on `[embedding; context]`.
        dropout: dropout after each feed-forward layer.
        context_clamp: the context is clamped to ±this after its LayerNorm (the prototype used 10); 0: no clamp.
        layer_norm_eps: epsilon of the context LayerNorm.
        initializer_range: std of the normal init of linear and embedding weights.
        use_cache: return the context as `past_key_values` (what `generate()` feeds back).

    Research options (every default is the prototype's cell):
        cell: "prototype" (the context update reads the FFN output h_t, so it is sequential) or "parallel"
            (gates and update read only the current token: a linear recurrence in the context,
            trained with a chunked parallel scan, minGRU-style; parallel.py).
        embedding_dropout: dropout on the token embeddings.
        context_dropout: dropout on the context where the FFN reads it.
        residual: layers 2..L add their output to their input (h ← h + layer(h)).
        ffn_norm: LayerNorm before each of layers 2..L (pre-norm).
        tie_embeddings: the output head reuses the token embedding matrix (needs embedding_size ==
            hidden_size); the head keeps its own bias.
        forget_bias, input_bias: initial biases of the forget and input gates (0: σ = 0.5).
        context_scales: the context is split into this many blocks, each with its own LayerNorm and a
            forget-gate bias that starts it at a different time scale (about 4^k tokens for block k);
            `forget_bias` is then ignored.

    Block options (cell.py's docstring has the equations):
        block: "linear" (the prototype: L × Linear → ReLU → Dropout on [e; c]) or "mlp" (h_0 = W_in [e; c],
            then L pre-norm Transformer MLP blocks h ← h + Dropout(W_2 GELU(W_1 LN(h))) of width hidden_size).
        mlp_ratio: k, the MLP blocks' inner width k · hidden_size.
        final_norm: a LayerNorm on the FFN output, read by the head and by the context update.
        candidate: "linear" (Δ = W_Δ h) or "tanh" (Δ = tanh(W_Δ h), bounded like an LSTM's candidate).
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
        cell: str = "prototype",
        embedding_dropout: float = 0.0,
        context_dropout: float = 0.0,
        residual: bool = False,
        ffn_norm: bool = False,
        tie_embeddings: bool = False,
        forget_bias: float = 0.0,
        input_bias: float = 0.0,
        context_scales: int = 1,
        block: str = "linear",
        mlp_ratio: int = 4,
        final_norm: bool = False,
        candidate: str = "linear",
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
        if not context_clamp >= 0:
            raise ValueError(f"NewLLMConfig.context_clamp must be >= 0 (0: no clamp), got {context_clamp!r}")
        for name, value in [("forget_bias", forget_bias), ("input_bias", input_bias)]:
            if not math.isfinite(value):
                raise ValueError(f"NewLLMConfig.{name} must be a finite number, got {value!r}")
        if not (layer_norm_eps > 0 and initializer_range >= 0):
            raise ValueError(
                f"NewLLMConfig.layer_norm_eps must be > 0 and initializer_range >= 0, got {layer_norm_eps!r} and "
                f"{initializer_range!r}"
            )
        if block not in BLOCKS:
            raise ValueError(f"NewLLMConfig.block must be one of {', '.join(BLOCKS)}, got {block!r}")
        if candidate not in CANDIDATES:
            raise ValueError(f"NewLLMConfig.candidate must be one of {', '.join(CANDIDATES)}, got {candidate!r}")
        if not isinstance(mlp_ratio, int) or mlp_ratio < 1:
            raise ValueError(f"NewLLMConfig.mlp_ratio must be a positive integer, got {mlp_ratio!r}")
        if block == "mlp" and (residual or ffn_norm):
            raise ValueError("NewLLMConfig.residual and ffn_norm shape the linear block; the mlp block has both built in")
        cell = CELL_ALIASES.get(cell, cell)
        if cell not in CELLS:
            raise ValueError(f"NewLLMConfig.cell must be one of {', '.join(CELLS)}, got {cell!r}")
        for name, value in [("embedding_dropout", embedding_dropout), ("context_dropout", context_dropout)]:
            if not 0.0 <= value < 1.0:
                raise ValueError(f"NewLLMConfig.{name} must be in [0, 1), got {value!r}")
        if tie_embeddings and embedding_size != hidden_size:
            raise ValueError(
                f"NewLLMConfig.tie_embeddings needs embedding_size == hidden_size, got {embedding_size} and {hidden_size}"
            )
        if not isinstance(context_scales, int) or context_scales < 1 or context_size % context_scales:
            raise ValueError(
                f"NewLLMConfig.context_scales must be a positive divisor of context_size ({context_size}), "
                f"got {context_scales!r}"
            )
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
        self.cell = cell
        self.embedding_dropout = embedding_dropout
        self.context_dropout = context_dropout
        self.residual = residual
        self.ffn_norm = ffn_norm
        self.tie_embeddings = tie_embeddings
        self.forget_bias = forget_bias
        self.input_bias = input_bias
        self.context_scales = context_scales
        self.block = block
        self.mlp_ratio = mlp_ratio
        self.final_norm = final_norm
        self.candidate = candidate
        # Hugging Face's tying machinery stays off: `tie_embeddings` shares the matrix in the model itself.
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
