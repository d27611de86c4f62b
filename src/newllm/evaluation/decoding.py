"""The one decoding path of every model: prefill → step → sample, on Hugging Face logits processors.

    prefill(prompt)  feeds a (B, P) prompt in chunks into the model's own cache: logits of its last token
    step(tokens)     feeds one token per row on top of the cache: logits of the next one
    sample(logits)   picks the next tokens: argmax, or temperature → top-k → top-p (transformers'
                     warpers, in generate()'s order) and a draw
    generate(logits) samples up to max_new_tokens, feeding each token back but the last

`respond`, chat, speed and bench all decode through `Decoder`, and it does what `generate()` does
with the same settings (the same processors, float32 scores, one `torch.multinomial` per token, pads
after a row's stop token), so greedy replies and seeded draws are the ones `generate()` gives.
New-LLM's `GreedyDecoder` and TinyGPT2's `StaticCacheDecoder` (a static key/value cache; each one CUDA
graph replay per token) are the backends of greedy runs without stop tokens when a caller asks for
`graphed`.

The cache is whatever the model returns: New-LLM's context vector and the LSTM's (h, c) in a
`RecurrentCache` under `state`, GPT-2's key/value cache under `cache` or `past_key_values`
(transformers renamed it in 5.2x). `cache_argument` and `output_cache` are the only code that knows
those names.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from transformers import GPT2LMHeadModel, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from newllm.evaluation.perplexity import autocast_context
from newllm.models.new_llm import NewLLMForCausalLM
from newllm.models.gpt2 import StaticCacheDecoder
from newllm.models.new_llm.decoding import GreedyDecoder
from newllm.models.registry import carries_state, usable_positions

CACHE_NAMES = ("state", "cache", "past_key_values", "cache_params")  # cache_params: Mamba-2 before transformers 5.2x
# Prompts are fed in chunks: one forward over 65,536 tokens would hold (B, T, V) logits, 17 GiB at B=1
# and V=8192, while the cache the chunks hand on is exactly the one a single pass would leave.
PREFILL_CHUNK = 512


def cache_argument(model) -> str:
    """The keyword a model takes its generation cache by: `state` (the recurrent families) or, for a
    transformers model, `cache` (transformers >= 5.2x) or `past_key_values`, whichever its forward has."""
    if carries_state(model):
        return "state"
    parameters = inspect.signature(model.forward).parameters
    return next(name for name in CACHE_NAMES if name in parameters)


def output_cache(output):
    """The cache a forward returned, under whichever name its family or this transformers version gives it."""
    return next((output[name] for name in CACHE_NAMES if output.get(name) is not None), None)


def cache_bytes(cache) -> int | None:
    """Bytes held by a generation cache: a `RecurrentCache`, or a key/value cache with `.layers`; else None."""
    if cache is None:
        return None
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    # transformers' caches: per layer keys and values (attention) or conv and SSM states (Mamba-2), held as
    # tensors or dicts of tensors; counters are 0-d tensors and not state
    tensors = {}
    for layer in getattr(cache, "layers", None) or [cache]:
        for value in vars(layer).values():
            for t in value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(t, torch.Tensor) and t.dim() > 0:
                    tensors[id(t)] = t
    return sum(t.numel() * t.element_size() for t in tensors.values()) if tensors else None


@dataclass(frozen=True)
class SamplingOptions:
    """How tokens are picked: greedy, or sampled with temperature, top-k (0 = off) and top-p from `seed`."""

    max_new_tokens: int = 40
    do_sample: bool = True
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = no limit), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


def logits_processors(options: SamplingOptions) -> LogitsProcessorList:
    """The warpers `generate()` builds for these options, in its order; none for greedy decoding."""
    processors = LogitsProcessorList()
    if not options.do_sample:
        return processors
    # generate() leaves out a warper that would change nothing; so does this, to draw from the same scores.
    if options.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(options.temperature))
    if options.top_k != 0:
        processors.append(TopKLogitsWarper(top_k=options.top_k))
    if options.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=options.top_p))
    return processors


def has_graphed_backend(model) -> bool:
    """Whether greedy decoding of `model` can replay one CUDA graph per token: New-LLM's `GreedyDecoder`, or
    TinyGPT2's `StaticCacheDecoder` (a static key/value cache, so that its step is a fixed graph too)."""
    return isinstance(model, (NewLLMForCausalLM, GPT2LMHeadModel))


def _croppable(cache) -> bool:
    """A key/value cache (attention): it grows by a token per step and can be cut back."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(hasattr(layer, "keys") for layer in layers) and hasattr(cache, "crop")


def _updated_in_place(cache, recurrent: bool) -> bool:
    """A transformers cache of fixed-size states (Mamba-2's conv and SSM states), which each forward overwrites."""
    return cache is not None and not recurrent and not _croppable(cache)


@dataclass(frozen=True)
class Mark:
    """Where a decoder's cache stood, to go back to (`Decoder.rewind`)."""

    cache: object
    mask: torch.Tensor | None
    window: torch.Tensor | None
    length: int


class Decoder:
    """Prefill → step → sample for one batch of sequences of an eval-mode `model` (see the module docstring).

    dtype: autocast for every forward (float32: none). graphed: greedy runs without stop tokens go
    through New-LLM's `GreedyDecoder` or GPT-2's `StaticCacheDecoder`; kernels: New-LLM's on its few
    Triton kernels per step (decode_kernel.py; None: where they were timed faster than the graph,
    `kernels_by_default`), their output head in head_dtype (bf16: at batch 1);
    persistent: those kernels' loop, every token of a `generate` in one launch (decode_loop.py).
    keep: for a model with learned positions, a feed that would go past them restarts the cache from
    the last `keep` tokens instead (chat's sliding window).
    """

    def __init__(
        self,
        model,
        options: SamplingOptions,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        graphed: bool = False,
        kernels: bool | None = None,
        head_dtype: torch.dtype = torch.float32,
        persistent: bool = False,
        keep: int | None = None,
    ):
        if graphed and not has_graphed_backend(model):
            raise ValueError(f"graphed decoding is New-LLM's and GPT-2's, not {type(model).__name__}'s")
        self.model = model
        self.options = options
        self.processors = logits_processors(options)
        self.generator = generator  # None: the global RNG, as generate() draws
        self.dtype = dtype
        self.graphed = graphed and not options.do_sample
        if kernels and not (self.graphed and isinstance(model, NewLLMForCausalLM)):
            raise ValueError("kernels: New-LLM's greedy graphed decoding on its Triton step (graphed=True, do_sample=False)")
        if head_dtype != torch.float32 and not kernels:
            raise ValueError("head_dtype is the decode kernels' head (kernels=True); the other paths read the model's")
        if persistent and not kernels:
            raise ValueError("persistent is the decode kernels' loop (kernels=True)")
        self.kernels = kernels
        self.head_dtype = head_dtype
        self.persistent = persistent
        self.recurrent = carries_state(model)
        self.positions = None if self.recurrent else usable_positions(model)
        if keep is not None and (self.positions is None or not 1 <= keep < self.positions):
            raise ValueError(f"keep={keep!r} needs a model with learned positions and 1 <= keep < its positions")
        self.keep = keep
        self.cache_name = cache_argument(model)
        # GPT-2 can project only the last position onto the vocabulary, as generate() asks it to.
        self.last_logits_only = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.backend: GreedyDecoder | StaticCacheDecoder | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every token fed: the next prefill starts from the model's initial state."""
        self.cache = None
        self.mask: torch.Tensor | None = None  # (B, T) over every token a key/value cache holds
        self.window: torch.Tensor | None = None  # (B, T) ids the cache holds, with `keep`
        self.length = 0  # tokens the cache holds

    @property
    def device(self) -> torch.device:
        return self.model.device

    def mark(self) -> Mark:
        cache = self.cache
        if _updated_in_place(cache, self.recurrent):
            cache = copy.deepcopy(cache)  # a fixed-size state (Mamba-2's): cheap to copy
        return Mark(cache, self.mask, self.window, self.length)

    def rewind(self, mark: Mark) -> None:
        """Go back to `mark`: a key/value cache grows in place and is cropped, a recurrent state is replaced,
        a state that transformers updates in place (Mamba-2's) is restored from the copy `mark` took."""
        grown = self.length - mark.length
        cache = mark.cache
        if _croppable(cache):
            if grown > 0:
                # A negative count removes that many tokens in every 5.x (a positive one means "keep" before
                # 5.2x and is refused after).
                cache.crop(-grown)
        elif _updated_in_place(cache, self.recurrent):
            cache = copy.deepcopy(cache)  # the mark stays whole for another rewind
        self.cache, self.mask, self.window, self.length = cache, mark.mask, mark.window, mark.length

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                chunk: int = PREFILL_CHUNK) -> torch.Tensor:  # fmt: skip
        """Feed a (B, P) prompt (0 in the mask on left padding), `chunk` tokens per forward: the (B, V) logits after it."""
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"the prompt must be (batch, length >= 1) token ids, got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # A recurrent model sees one chunk's mask and runs through pads that no real token follows in it
        # (right padding): the first chunk goes on to every row's first real token, past the left padding.
        first = max(chunk, int((attention_mask == 0).sum(1).max()) + 1)
        starts = [0, *range(first, input_ids.shape[1], chunk)]
        for start, stop in zip(starts, [*starts[1:], input_ids.shape[1]]):
            logits = self._forward(input_ids[:, start:stop], attention_mask[:, start:stop])
        # Captured here, before any decoding is timed: New-LLM's once per batch size, GPT-2's per prompt (its
        # static cache starts as a copy of the prompt's).
        if self.graphed and not self.recurrent:
            self.backend = StaticCacheDecoder(self.model, self.cache, self.mask, self.options.max_new_tokens, self.dtype)
        elif self.graphed and (self.backend is None or self.backend.batch_size != input_ids.shape[0]):
            self.backend = GreedyDecoder(self.model, input_ids.shape[0], self.options.max_new_tokens, self.dtype,
                                         kernels=self.kernels, head_dtype=self.head_dtype,
                                         persistent=self.persistent)  # fmt: skip
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row, (B,): the (B, V) logits after it."""
        return self._forward(tokens[:, None], torch.ones_like(tokens[:, None]))

    def sample(self, logits: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """The next token of each row, (B,), from (B, V) logits; `generated` (B, n) is what the processors see."""
        # A float32 copy, as generate() takes: the warpers must not write into the model's output.
        scores = self.processors(generated, logits.to(dtype=torch.float32, copy=True))
        if not self.options.do_sample:
            return scores.argmax(-1)
        probs = torch.softmax(scores, dim=-1)
        if self.generator is None:
            return torch.multinomial(probs, 1).squeeze(1)
        drawn = torch.multinomial(probs.to(self.generator.device), 1, generator=self.generator)
        return drawn.squeeze(1).to(probs.device)

    @torch.no_grad()
    def generate(self, logits: torch.Tensor, stop_ids=(), pad_id: int | None = None) -> torch.Tensor:
        """Up to `options.max_new_tokens` tokens per row after (B, V) `logits`, (B, n); every one but the last is fed.

        A row that picks one of `stop_ids` is done: `pad_id` fills it from then on, and decoding ends
        once every row is done (n is then shorter). Without stop ids all max_new_tokens are made.
        """
        stop_ids = list(stop_ids)
        if stop_ids and pad_id is None:
            raise ValueError("stop_ids need a pad_id to fill the rows that are done")
        new_tokens = self.options.max_new_tokens
        tokens = torch.zeros(logits.shape[0], new_tokens, dtype=torch.long, device=logits.device)  # (B, N)
        if self.backend is not None and not stop_ids:
            return self._graphed(logits, tokens)
        stops = torch.tensor(stop_ids, device=logits.device)
        running = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        for i in range(new_tokens):
            token = self.sample(logits, tokens[:, :i])
            if stop_ids:
                token = torch.where(running, token, pad_id)
                running &= ~torch.isin(token, stops)
            tokens[:, i] = token
            if stop_ids and not running.any():
                return tokens[:, : i + 1]
            if i + 1 < new_tokens:  # the last token is picked, never fed, as in generate()
                logits = self.step(token)
        return tokens

    def _graphed(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """`generate` without stop tokens through the graphed backend: one graph replay per fed token."""
        tokens[:, 0] = self.sample(logits, tokens[:, :0])
        fed = tokens.shape[1] - 1
        if fed:
            tokens[:, 1:], self.cache = self.backend.decode(self.cache, tokens[:, 0], fed)
            self.length += fed
            if self.mask is not None:  # a key/value cache's mask spans every token it holds
                self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], fed)], dim=1)
        return tokens

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Feed (B, T) ids on top of the cache: the logits (B, V) of the last position."""
        if self.keep is not None:
            held = input_ids if self.window is None else torch.cat([self.window, input_ids], dim=1)
            if held.shape[1] > self.positions:
                # Out of positions: rebuild the cache from the most recent tokens, from position 0.
                self.reset()
                held = input_ids = held[:, -self.keep :]
                mask = torch.ones_like(input_ids)
            self.window = held
        kwargs = {}
        if self.recurrent:
            # The recurrent models take the mask of the new tokens: 0 freezes the state over a pad.
            model_mask = mask
        else:
            # GPT-2's mask spans its cache too; positions count only real tokens, as generate() numbers them.
            model_mask = self.mask = mask if self.mask is None else torch.cat([self.mask, mask], dim=1)
            positions = (model_mask.long().cumsum(-1) - 1).masked_fill(model_mask == 0, 0)
            kwargs["position_ids"] = positions[:, -input_ids.shape[1] :]
        if self.last_logits_only:
            kwargs["logits_to_keep"] = 1
        if self.cache is not None:
            kwargs[self.cache_name] = self.cache
        with autocast_context(self.device, self.dtype):
            output = self.model(input_ids=input_ids, attention_mask=model_mask, use_cache=True, **kwargs)
        self.cache = output_cache(output)
        self.length += input_ids.shape[1]
        return output.logits[:, -1]
