"""Mamba-2 (Dao & Gu 2024), the attention-free peer: `transformers.Mamba2ForCausalLM`, sized to a parameter
budget. Nothing is re-implemented.

Without the optional `mamba_ssm` / `causal_conv1d` CUDA packages (absent on CPU, in CI and on our GPU
machine) transformers runs its pure-PyTorch path: the chunked state-space scan in training, one
recurrent step per token in decoding. Its state is fixed-size like New-LLM's: per layer a
(heads × head_dim × state_size) SSM state plus a short convolution window.

The architecture has no dropout: the experiment's dropout setting does not reach it (`dropout_fields`
is empty in the registry), and weight decay is its only regulariser.
"""

from __future__ import annotations

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

HEAD_DIM = 32  # narrow heads, so that a 7 M-parameter model still has a dozen or more of them (16 where 32 won't divide)
STATE_SIZE = 64  # Mamba-2's default N
EXPAND = 2  # inner width = EXPAND × hidden, Mamba's default


def mamba2_config(vocab_size: int, hidden_size: int, num_layers: int, **config_kwargs) -> Mamba2Config:
    """A Mamba-2 of width `hidden_size` (a multiple of 8) with the head tied to the embedding. `config_kwargs` go to
    `Mamba2Config` and win over the choices here (`state_size=4` shrinks the state, as the recall sweep does)."""
    expand = config_kwargs.pop("expand", EXPAND)
    inner = expand * hidden_size
    if hidden_size % 8:
        raise ValueError(f"Mamba-2's width must be a multiple of 8, got {hidden_size}")
    head_dim = config_kwargs.pop("head_dim", HEAD_DIM if inner % HEAD_DIM == 0 else HEAD_DIM // 2)
    if inner % head_dim:
        raise ValueError(f"Mamba-2's inner width {inner} is not a multiple of head_dim {head_dim}")
    arguments = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        expand=expand,
        head_dim=head_dim,
        num_heads=inner // head_dim,
        n_groups=1,
        state_size=STATE_SIZE,
        chunk_size=64,  # the training windows (64-128 tokens) are one or two chunks of the SSD scan
        tie_word_embeddings=True,
    )
    return Mamba2Config(**(arguments | config_kwargs))


def mamba2_parameter_count(config: Mamba2Config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Mamba2ForCausalLM(config).parameters())


def mamba2_config_for_budget(
    target_params: int, vocab_size: int, num_layers: int = 6, tolerance: float = 0.05, **config_kwargs
) -> Mamba2Config:
    """The Mamba-2 closest to `target_params`: its width in steps of 8 at `num_layers` blocks, other depths
    (nearest first) where that depth cannot reach the budget."""
    step = 8
    for depth in sorted(range(1, 25), key=lambda d: (abs(d - num_layers), d)):

        def count(width: int, depth=depth) -> int:
            return mamba2_parameter_count(mamba2_config(vocab_size, width, depth, **config_kwargs))

        low, high = 1, 4096 // step  # the count grows with the width: bisect on multiples of `step`
        while low < high:
            mid = (low + high) // 2
            if count(mid * step) < target_params:
                low = mid + 1
            else:
                high = mid
        width = min({max(1, low - 1) * step, low * step}, key=lambda w: abs(count(w) - target_params))
        if abs(count(width) - target_params) <= tolerance * target_params:
            return mamba2_config(vocab_size, width, depth, **config_kwargs)
    raise ValueError(
        f"no Mamba-2 within ±{tolerance:.0%} of {target_params:,} parameters (vocab {vocab_size}): "
        "change the New-LLM size or the tolerance"
    )


def build_mamba2(config: Mamba2Config) -> Mamba2ForCausalLM:
    return Mamba2ForCausalLM(config)
