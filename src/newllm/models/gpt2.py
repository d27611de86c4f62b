"""TinyGPT2: `transformers.GPT2LMHeadModel`, sized to a parameter budget, and its static-cache greedy decoder
(the fair counterpart of New-LLM's CUDA-graphed one, for timing). The model itself is not re-implemented."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from newllm.models.cuda_graphs import capture_step, replay_autocast

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


class StaticCacheDecoder:
    """TinyGPT2's fastest fair greedy decoding, the counterpart of New-LLM's `GreedyDecoder`.

    The prompt's keys and values are copied once into buffers sized for the prompt and `max_new_tokens`
    (a static cache), and one token's whole step (embedding → blocks attending over the buffers → head
    → argmax → write back) is captured as a CUDA graph on CUDA, so each new token is one replay. It
    runs GPT-2's own modules (LayerNorms, `c_attn`, `c_proj`, the MLP, the head) on the same
    arithmetic as their forward, attention through `scaled_dot_product_attention` over the slots a
    row may see (its real prompt tokens and what it has decoded). On CPU the same step runs eagerly.

    `decode` appends the fed tokens' keys and values to the prompt's cache afterwards (one copy per
    call), so the caller's cache ends as the forward path's would.
    """

    def __init__(self, model, cache, mask: torch.Tensor, max_new_tokens: int, dtype: torch.dtype = torch.float32):
        config = model.config
        if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx or config.reorder_and_upcast_attn:
            raise ValueError("StaticCacheDecoder computes GPT-2's default attention scaling only")
        if model.training:
            raise ValueError("StaticCacheDecoder needs the model in eval mode (call model.eval())")
        self.model, self.dtype, self.source = model, dtype, cache
        batch, prompt = mask.shape
        self.batch_size, self.prompt_length = batch, prompt
        slots = prompt + max_new_tokens
        if slots > config.n_positions:
            raise ValueError(f"a {prompt}-token prompt and {max_new_tokens} new tokens exceed GPT-2's {config.n_positions} positions")
        first = cache.layers[0].keys  # (B, H, P, D): the dtype and device the forward gave the keys
        shape = (config.n_layer, batch, config.n_head, slots, config.n_embd // config.n_head)
        self.keys = first.new_zeros(shape)
        self.values = first.new_zeros(shape)
        for i, layer in enumerate(cache.layers):
            self.keys[i, :, :, :prompt] = layer.keys
            self.values[i, :, :, :prompt] = layer.values
        self.visible = torch.ones(batch, slots, dtype=torch.bool, device=first.device)  # slots a row attends to
        self.visible[:, :prompt] = mask.bool()
        self.slots = torch.arange(slots, device=first.device)
        self.next_positions = mask.long().sum(1)  # each row's next position id: its real tokens so far
        self.slot = torch.zeros(1, dtype=torch.long, device=first.device)  # on the device: a replay needs no sync
        self.row_positions = torch.zeros_like(self.next_positions)
        self.token = torch.zeros(batch, dtype=torch.long, device=first.device)
        self.tokens = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=first.device)
        self.position = torch.zeros(1, dtype=torch.long, device=first.device)
        self.graph = None
        if first.is_cuda:
            self.graph = capture_step(self._step, self._restart, first.device.index)

    def _restart(self) -> None:
        self.slot.fill_(self.prompt_length)
        self.row_positions.copy_(self.next_positions)
        self.position.zero_()

    @torch.no_grad()
    def _step(self) -> None:
        gpt2 = self.model.transformer
        batch, heads = self.batch_size, self.model.config.n_head
        with replay_autocast(self.model.device.type, self.dtype):
            x = gpt2.wte(self.token) + gpt2.wpe(self.row_positions)  # (B, E)
            allowed = (self.visible & (self.slots <= self.slot))[:, None, None, :]  # (B, 1, 1, S)
            for i, block in enumerate(gpt2.h):
                query, key, value = block.attn.c_attn(block.ln_1(x)).split(x.shape[-1], dim=-1)
                query, key, value = (t.view(batch, heads, 1, -1) for t in (query, key, value))
                self.keys[i].index_copy_(2, self.slot, key.to(self.keys.dtype))
                self.values[i].index_copy_(2, self.slot, value.to(self.values.dtype))
                attended = F.scaled_dot_product_attention(query, self.keys[i], self.values[i], attn_mask=allowed)
                x = x + block.attn.c_proj(attended.reshape(batch, -1))
                x = x + block.mlp(block.ln_2(x))
            next_token = self.model.lm_head(gpt2.ln_f(x)).argmax(-1)
        self.token.copy_(next_token)
        self.tokens.index_copy_(1, self.position, next_token[:, None])
        self.position += 1
        self.slot += 1
        self.row_positions += 1

    @torch.no_grad()
    def decode(self, cache, token: torch.Tensor, new_tokens: int):
        """(B, new_tokens) greedy tokens after `token` (B,) from the prompt's cache, and that cache with the fed
        tokens appended. `token` and all but the last new token are fed, as `generate()` feeds what it picks."""
        if cache is not self.source or cache.get_seq_length() != self.prompt_length:
            raise ValueError("StaticCacheDecoder decodes from the prompt cache it was built on, at the prompt's length")
        if not 1 <= new_tokens <= self.tokens.shape[1]:
            raise ValueError(f"new_tokens must be in 1..{self.tokens.shape[1]}, got {new_tokens}")
        self._restart()
        self.token.copy_(token)
        for _ in range(new_tokens):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        fed = slice(self.prompt_length, self.prompt_length + new_tokens)
        for i in range(len(cache.layers)):
            cache.update(self.keys[i, :, :, fed], self.values[i, :, :, fed], i)
        return self.tokens[:, :new_tokens].clone(), cache
