"""Configuration of New-LLM: every architectural choice, saved as `config.json` beside the weights.

It is also the one home of New-LLM's options in experiments: `NewLLMConfig.options()` lists them from `__init__`'s
signature, and config.py's `ModelConfig` reads their names, types and defaults from there and checks a preset's
values by building a `NewLLMConfig` (docs/architecture.md, "New-LLM's options").
"""

from __future__ import annotations

import inspect
import math
import typing

from transformers import PretrainedConfig


CELLS = ("prototype", "parallel")
# Earlier spellings that checkpoints in the wild carry in config.json
CELL_ALIASES = {"seed": "prototype"}
BLOCKS = ("linear", "mlp")
CANDIDATES = ("linear", "tanh")
UPDATE_INPUTS = ("output", "stream")
FINAL_NORM_TYPES = ("layer", "rms", "center")


class Option(typing.NamedTuple):
    """One of New-LLM's options: the `NewLLMConfig` argument that takes it, its type (the annotation) and default."""

    argument: str
    type: typing.Any
    default: typing.Any


class OptionError(ValueError):
    """An argument `NewLLMConfig` refuses: `argument` names it and `reason` says why, in one line."""

    def __init__(self, argument: str, reason: str):
        super().__init__(f"NewLLMConfig.{argument}: {reason}")
        self.argument, self.reason = argument, reason

    def __reduce__(self):
        return type(self), (self.argument, self.reason)


def _one_of(choices) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _check_count(argument: str, value, low: int = 1) -> None:
    if not isinstance(value, int):
        raise OptionError(argument, f"must be an integer, got {value!r}")
    if value < low:
        raise OptionError(argument, f"must be at least {low}, got {value!r}")


def _check_fraction(argument: str, value) -> None:
    if not 0.0 <= value < 1.0:
        raise OptionError(argument, f"must be in [0, 1), got {value!r}")


def _check_choice(argument: str, value, choices) -> None:
    if value not in choices:
        raise OptionError(argument, f"must be {_one_of(choices)}, got {value!r}")


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
        final_norm_type: what that final norm is: "layer" (LayerNorm: centre and scale), "rms" (RMSNorm: scale
            only) or "center" (γ ⊙ (h - mean(h)) + β: centre only), to tell which half of it shapes what the
            model can recall; needs final_norm for any but "layer".
        candidate: "linear" (Δ = W_Δ h) or "tanh" (Δ = tanh(W_Δ h), bounded like an LSTM's candidate).
        update_input: what the context update reads: "output" (the vector the head reads) or "stream" (h_L
            before the final norm, so that the head's LayerNorm does not shape what the context keeps;
            needs final_norm and the prototype cell).

    Every argument with a default but FIXED_ARGUMENTS is an option an experiment sets, in a preset's `[model]` table
    or with `--set model.<name>=` (`options()`): adding one here, with its check and its line above, is all the
    experiment layer needs. A refused value raises `OptionError`, naming the argument.
    """

    model_type = "new_llm"
    # `num_layers` is also the name presets and --set give `num_hidden_layers` (options())
    attribute_map = {"num_layers": "num_hidden_layers"}
    # Arguments that are not experiment options: the tokenizer gives the vocabulary; the others stay as they are.
    FIXED_ARGUMENTS = ("vocab_size", "layer_norm_eps", "initializer_range", "use_cache")

    def __init__(
        self,
        vocab_size: int = 8192,
        embedding_size: int = 256,
        context_size: int = 256,
        hidden_size: int = 512,
        num_hidden_layers: int = 3,
        dropout: float = 0.1,
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
        final_norm_type: str = "layer",
        candidate: str = "linear",
        context_clamp: float = 10.0,
        update_input: str = "output",
        **kwargs,
    ):
        for name, value in [
            ("vocab_size", vocab_size),
            ("embedding_size", embedding_size),
            ("context_size", context_size),
            ("hidden_size", hidden_size),
            ("num_hidden_layers", num_hidden_layers),
            ("mlp_ratio", mlp_ratio),
            ("context_scales", context_scales),
        ]:
            _check_count(name, value)
        for name, value in [("dropout", dropout), ("embedding_dropout", embedding_dropout),
                            ("context_dropout", context_dropout)]:  # fmt: skip
            _check_fraction(name, value)
        if not (math.isfinite(context_clamp) and context_clamp >= 0):
            raise OptionError("context_clamp", f"must be at least 0 (0: no clamp), got {context_clamp!r}")
        for name, value in [("forget_bias", forget_bias), ("input_bias", input_bias)]:
            if not math.isfinite(value):
                raise OptionError(name, f"must be a finite number, got {value!r}")
        if not layer_norm_eps > 0:
            raise OptionError("layer_norm_eps", f"must be a positive number, got {layer_norm_eps!r}")
        if not initializer_range >= 0:
            raise OptionError("initializer_range", f"must be at least 0, got {initializer_range!r}")
        cell = CELL_ALIASES.get(cell, cell)
        _check_choice("cell", cell, CELLS)
        _check_choice("block", block, BLOCKS)
        _check_choice("candidate", candidate, CANDIDATES)
        _check_choice("update_input", update_input, UPDATE_INPUTS)
        _check_choice("final_norm_type", final_norm_type, FINAL_NORM_TYPES)
        if final_norm_type != "layer" and not final_norm:
            raise OptionError("final_norm_type", f"{final_norm_type!r} is the final norm's type: needs final_norm")
        if update_input == "stream" and not (final_norm and cell == "prototype"):
            reason = "the update reads h_L before the final norm: needs final_norm and the prototype cell"
            raise OptionError("update_input", reason)
        if block == "mlp" and (residual or ffn_norm):
            reason = "residual and ffn_norm shape the linear block; the mlp block has both built in"
            raise OptionError("residual" if residual else "ffn_norm", reason)
        if tie_embeddings and embedding_size != hidden_size:
            raise OptionError(
                "tie_embeddings", f"needs embedding_size == hidden_size, got {embedding_size} and {hidden_size}"
            )
        if context_size % context_scales:
            raise OptionError("context_scales", f"must divide context_size ({context_size}), got {context_scales}")
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
        self.final_norm_type = final_norm_type
        self.candidate = candidate
        self.update_input = update_input
        # Hugging Face's tying machinery stays off: `tie_embeddings` shares the matrix in the model itself.
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @classmethod
    def options(cls) -> dict[str, Option]:
        """The options an experiment sets, by the name it gives them (`attribute_map`'s `num_layers` for
        `num_hidden_layers`), in `__init__`'s order: every argument with a default but FIXED_ARGUMENTS, a subclass's
        own arguments after its bases'."""
        spelling = {argument: name for name, argument in cls.attribute_map.items()}
        options = {}
        for klass in reversed(cls.__mro__[: cls.__mro__.index(PretrainedConfig)]):  # this class and its bases
            if "__init__" not in vars(klass):
                continue
            hints = typing.get_type_hints(klass.__init__)
            for parameter in inspect.signature(klass.__init__).parameters.values():
                if parameter.default is parameter.empty or parameter.name in cls.FIXED_ARGUMENTS:
                    continue
                kind = hints.get(parameter.name, type(parameter.default))
                options[spelling.get(parameter.name, parameter.name)] = Option(parameter.name, kind, parameter.default)
        return options
