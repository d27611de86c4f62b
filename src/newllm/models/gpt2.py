"""TinyGPT2: `transformers.GPT2LMHeadModel`, sized to a parameter budget. Nothing is re-implemented."""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel

# The fields one dropout setting sets in GPT2Config (residual, embedding and attention dropout).
GPT2_DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def gpt2_parameter_count(vocab_size: int, n_positions: int, n_embd: int, n_layer: int) -> int:
    """Parameters of GPT2LMHeadModel with the head tied to the token embedding."""
    per_block = 12 * n_embd * n_embd + 13 * n_embd  # attention 4d²+4d, MLP 8d²+5d, two LayerNorms 4d
    return vocab_size * n_embd + n_positions * n_embd + n_layer * per_block + 2 * n_embd


def gpt2_config_for_budget(
    target_params: int,
    vocab_size: int,
    n_positions: int,
    n_layer: int = 4,
    tolerance: float = 0.05,
    dropout: float = 0.1,
    **config_kwargs,
) -> GPT2Config:
    """The GPT-2 closest to `target_params`: width in steps of 16 at `n_layer` blocks, other depths if needed."""
    depths = sorted(range(1, 25), key=lambda depth: (abs(depth - n_layer), depth))
    for depth in depths:
        best = min(
            range(16, 2049, 16),
            key=lambda width: abs(gpt2_parameter_count(vocab_size, n_positions, width, depth) - target_params),
        )
        count = gpt2_parameter_count(vocab_size, n_positions, best, depth)
        if abs(count - target_params) <= tolerance * target_params:
            # Heads of 64 dims as in GPT-2 where the width allows, else of 32 or 16.
            head_size = next(size for size in (64, 32, 16) if best % size == 0)
            n_head = max(1, best // head_size)
            return GPT2Config(
                vocab_size=vocab_size,
                n_positions=n_positions,
                n_embd=best,
                n_layer=depth,
                n_head=n_head,
                **dict.fromkeys(GPT2_DROPOUT_FIELDS, dropout),
                tie_word_embeddings=True,
                **config_kwargs,
            )
    raise ValueError(
        f"no GPT-2 within ±{tolerance:.0%} of {target_params:,} parameters "
        f"(vocab {vocab_size}, {n_positions} positions): change the New-LLM size or the tolerance"
    )


def build_tinygpt2(config: GPT2Config) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(config)
