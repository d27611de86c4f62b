"""Wall-clock speed of any causal LM: a teacher-forced batch, and one token of cached greedy decoding.

ms_per_batch is the prototype's measure (forward over (B, T) random ids). ms_per_token is what the
fixed-size state is for: each model decodes through the shared decoding path with its own cache
(New-LLM's context vector, the LSTM's (h, c), GPT-2's growing key/value cache); `time_decoding`
defines it, for this module and for the benchmark (bench.py). state_bytes is how big that cache is
after the prompt and the generated tokens. Timings belong in benchmarks/, never in test assertions.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import transformers

from newllm.evaluation.decoding import Decoder, SamplingOptions, cache_bytes
from newllm.evaluation.perplexity import autocast_context, compute_dtype

PROMPT_TOKENS = 16  # prefilled before ms_per_token is timed, so every model starts from a warm cache


@dataclass(frozen=True)
class SpeedResult:
    """Median timings and the size of the decoding cache."""

    ms_per_batch: float
    ms_per_token: float
    batch_size: int
    seq_len: int
    generated_tokens: int
    device: str
    dtype: str
    state_bytes: int | None


@dataclass(frozen=True)
class DecodeTiming:
    """ms_per_token as `time_decoding` defines it, and the bytes of the cache after the decoded tokens."""

    ms_per_token: float
    state_bytes: int | None


def median_seconds(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall-clock seconds of fn() over `repeats` calls after `warmup` untimed ones (which pay for
    allocation and kernel selection); CUDA is synchronised around each timed call so that queued kernels
    count in the call that queued them."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def time_decoding(decoder: Decoder, logits: torch.Tensor, warmup: int, repeats: int) -> DecodeTiming:
    """ms_per_token: the median time `decoder.generate(logits)` takes, divided by the tokens it makes.

    That is the work of decoding after a prompt, per token: `decoder` holds the prompt's cache and
    `logits` the scores after it (the prefill is not timed); the run picks `options.max_new_tokens`
    tokens (no stop tokens) and feeds each back but the last, as `generate()` does. Every run starts
    from the prompt's cache again (`Decoder.rewind`), so each repeat does the same work.
    """
    start = decoder.mark()
    new_tokens = decoder.options.max_new_tokens
    after = []

    def decode():
        decoder.generate(logits)
        after[:] = [cache_bytes(decoder.cache)]
        decoder.rewind(start)

    seconds = median_seconds(decode, decoder.device, warmup, repeats)
    return DecodeTiming(ms_per_token=1000 * seconds / new_tokens, state_bytes=after[0] if after else None)


@torch.no_grad()
def measure_speed(
    model,
    vocab_size: int,
    *,
    batch_size: int = 32,
    seq_len: int = 64,
    new_tokens: int = 64,
    repeats: int = 5,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> SpeedResult:
    """Median ms per teacher-forced batch and per cached greedy token of `model` (moved to `device`)."""
    for name, value in [
        ("vocab_size", vocab_size),
        ("batch_size", batch_size),
        ("seq_len", seq_len),
        ("new_tokens", new_tokens),
        ("repeats", repeats),
    ]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    device = torch.device(device)
    # A model with learned positions cannot go past them: clip the generated tokens and say so in the result.
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None:
        new_tokens = min(new_tokens, limit - PROMPT_TOKENS)
        if new_tokens < 1 or seq_len > limit:
            raise ValueError(
                f"the model has {limit} positions: too few for seq_len={seq_len} or a prompt of {PROMPT_TOKENS}"
            )
    generator = torch.Generator().manual_seed(seed)
    # Random ids, not zeros: 0 is the pad / end-of-text id, and no real batch is made of it.
    batch = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)  # (B, T)
    prompt = torch.randint(0, vocab_size, (1, PROMPT_TOKENS), generator=generator).to(device)  # (1, P)
    was_training = model.training
    model.to(device).eval()

    # An all-ones mask, as the decoder passes: the forward then does the work a prefill does.
    def forward():
        with autocast_context(device, dtype):
            return model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False)

    try:
        batch_ms = 1000 * median_seconds(forward, device, warmup=1, repeats=repeats)
        decoder = Decoder(model, SamplingOptions(max_new_tokens=new_tokens, do_sample=False), dtype=dtype)
        decoding = time_decoding(decoder, decoder.prefill(prompt), warmup=1, repeats=repeats)
    finally:
        model.train(was_training)
    return SpeedResult(
        ms_per_batch=batch_ms,
        ms_per_token=decoding.ms_per_token,
        batch_size=batch_size,
        seq_len=seq_len,
        generated_tokens=new_tokens,
        device=str(device),
        dtype=str(compute_dtype(device, dtype)).removeprefix("torch."),
        state_bytes=decoding.state_bytes,
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions and hardware that speed numbers depend on."""
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
