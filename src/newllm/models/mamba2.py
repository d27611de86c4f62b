"""Mamba-2 (Dao & Gu 2024), the attention-free peer: `transformers.Mamba2ForCausalLM`, sized to a parameter
budget. The model is transformers'; one function of its pure-PyTorch path is ours (below).

Without the optional `mamba_ssm` / `causal_conv1d` CUDA packages (absent on CPU, in CI and on our GPU
machine) transformers runs its pure-PyTorch path: the chunked state-space scan in training, one
recurrent step per token in decoding. Its state is fixed-size like New-LLM's: per layer a
(heads × head_dim × state_size) SSM state plus a short convolution window.

One piece of that path is replaced, the chunked scan (`ssd_chunk_scan`), and only where `mamba_ssm` is
absent. Some transformers releases (5.17, on our GPU machine) write its contractions as broadcast products
summed afterwards: a (batch, chunk, l, s, heads, state) tensor of 5.8 GB in fp32 at the study's sizes, so a
training step took 70 ms compiled against 17 ms for TinyGPT2, and the six-point grid could not finish in a
30-minute lease. `ssd_chunk_scan` is the same computation written as matrix products (the SSD algorithm's
minimal form, Dao & Gu 2024, listing 1), in fp32 as transformers' path is; tests hold it to a step-by-step
recurrence and to the installed transformers' own scan.

The architecture has no dropout: the experiment's dropout setting does not reach it (`dropout_fields`
is empty in the registry), and weight decay is its only regulariser.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import Mamba2Config, Mamba2ForCausalLM
from transformers.models.mamba2 import modeling_mamba2

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


def _within_chunks(C, B, log_decay, xdt):
    """The scan's output from inside each chunk: scores C_l · B_s, decayed from s to l, times x_s dt_s, summed over
    s ≤ l. B, C (b, chunks, l, groups, state) once per group; log_decay (b, groups, k, chunks, l) and xdt (b, chunks,
    l, groups, k, head_dim) per head, the k heads of each group."""
    shared = torch.einsum("bclgn,bcsgn->bgcls", C, B)  # C_l · B_s, once per group and not once per head
    # transformers' segment_sum: [i, j] = the log-decay from position j to i (−inf above the diagonal)
    scores = shared[:, :, None] * modeling_mamba2.segment_sum(log_decay).exp()
    return torch.einsum("bgkcls,bcsgkp->bclgkp", scores, xdt)


def ssd_chunk_scan(hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None,
                   dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False, **kwargs):  # fmt: skip
    """Mamba-2's selective scan over a whole sequence, in chunks: transformers' `mamba2_chunk_scan` contract
    (hidden_states (b, t, heads, head_dim), dt (b, t, heads), A (heads,), B and C (b, t, groups, state)),
    returning y (b, t, heads, head_dim) in fp32, and the final state (b, heads, head_dim, state) when asked.

    Per head the recurrence is state_t = exp(A dt_t) state_{t-1} + dt_t x_t ⊗ B_t, y_t = state_t · C_t + D x_t.
    Inside a chunk it is computed like masked attention (scores C_l · B_s, decayed from s to l); between
    chunks through the state each chunk leaves at its end. The heads are indexed as (group, head within it), as
    transformers' repeat_interleave of B and C assigns them, so B and C stay once per group: at the study's sizes
    (43 heads, one group) copying them to every head made them most of what backward kept."""
    if kwargs.get("z") is not None or kwargs.get("seq_idx") is not None:
        raise NotImplementedError("ssd_chunk_scan: a gate z or packed sequences (seq_idx) inside the scan")
    batch, length, heads, head_dim = hidden_states.shape
    groups = B.shape[2]
    per_group = heads // groups
    with torch.autocast(hidden_states.device.type, enabled=False):  # fp32, as transformers' own path
        if dt_bias is not None:
            dt = dt + dt_bias.to(dt.dtype)
        if dt_softplus:
            dt = F.softplus(dt)
        dt = dt.clamp(*dt_limit).float()
        x = hidden_states.float()

        # (b, t, ...) → (b, chunks, chunk_size, ...), zero-padded at the end; heads → (groups, k)
        pad, chunked = -length % chunk_size, modeling_mamba2.reshape_into_chunks
        xdt, B, C, log_decay = (chunked(t, pad, chunk_size) for t in (x * dt[..., None], B.float(), C.float(),
                                                                      A.float() * dt))  # fmt: skip
        chunks = xdt.shape[1]
        xdt = xdt.view(batch, chunks, chunk_size, groups, per_group, head_dim)
        log_decay = log_decay.permute(0, 3, 1, 2).reshape(batch, groups, per_group, chunks, chunk_size)  # ≤ 0
        log_decay_sum = log_decay.cumsum(dim=-1)

        # 1. within each chunk, as masked attention. Its (chunk × chunk) matrices are most of what backward would
        # keep: eager, they are recomputed in backward instead, which lets nine step-2 runs share a GPU; compiled
        # (WikiText-2's windows), inductor plans the memory.
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            y = checkpoint(_within_chunks, C, B, log_decay, xdt, use_reentrant=False)
        else:
            y = _within_chunks(C, B, log_decay, xdt)

        # 2. what each chunk adds to the state by its last position
        to_end = (log_decay_sum[..., -1:] - log_decay_sum).exp()
        states = torch.einsum("bclgn,bgkcl,bclgkp->bcgkpn", B, to_end, xdt)

        # 3. the state entering each chunk: the chunks' additions, each decayed to that chunk's start
        if initial_states is None:
            start = states.new_zeros(states[:, 0].shape)
        else:
            start = initial_states.float().reshape(batch, groups, per_group, head_dim, -1)
        states = torch.cat([start[:, None], states], dim=1)
        # (b, groups, k, chunks + 1, chunks + 1): the decay from one chunk boundary to a later one
        between = modeling_mamba2.segment_sum(F.pad(log_decay_sum[..., -1], (1, 0))).exp()
        states = torch.einsum("bgkzc,bcgkpn->bzgkpn", between, states)
        states, final_state = states[:, :-1], states[:, -1]

        # 4. that entering state, read by C and decayed to each position of its chunk
        y = y + torch.einsum("bclgn,bcgkpn,bgkcl->bclgkp", C, states, log_decay_sum.exp())
        y = y.reshape(batch, chunks * chunk_size, heads, head_dim)[:, :length]
        if D is not None:
            y = y + D.float()[:, None] * x
    final_state = final_state.reshape(batch, heads, head_dim, -1)
    return (y, final_state) if return_final_states else y


# transformers' scan as installed (its pure-PyTorch path, or mamba_ssm's kernel where that package exists)
LIBRARY_CHUNK_SCAN = modeling_mamba2.mamba2_chunk_scan
if importlib.util.find_spec("mamba_ssm") is None:
    # the mixer looks the scan up in its module at every call: every Mamba-2 of this process, built here or
    # loaded with `from_pretrained`, runs `ssd_chunk_scan`
    modeling_mamba2.mamba2_chunk_scan = ssd_chunk_scan
