"""Wall-clock speed of any causal LM: a teacher-forced batch, and one token of cached greedy decoding.

ms_per_batch is the prototype's measure (forward over (B, T) random ids). ms_per_token is what the
fixed-size state is for: each model decodes with its own cache (New-LLM's context vector, the
LSTM's (h, c), GPT-2's growing key/value cache), and state_bytes is how big that cache is after
the prompt and the generated tokens. Timings belong in benchmarks/, never in test assertions.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import transformers

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


def _timed(fn, device: torch.device):
    """(result of fn(), seconds), synchronising CUDA so that queued kernels are counted."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def cache_bytes(cache) -> int | None:
    """Bytes held by a generation cache: a `RecurrentCache`, or a key/value cache with `.layers`; else None."""
    if cache is None:
        return None
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    tensors = [getattr(layer, name, None) for layer in layers for name in ("keys", "values")]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


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
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos)
    was_training = model.training
    model.to(device).eval()

    # All-ones masks, as generate() passes: the prefill it is compared with then does the same work.
    def forward():
        return model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False)

    def prefill():
        return model(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True)

    def decode():
        # min_new_tokens = max_new_tokens: an early end-of-text must not shorten the run being timed.
        return model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
            return_dict_in_generate=True,
        )

    try:
        with autocast_context(device, dtype):
            # The first call of each pays for allocation and kernel selection; it is not timed.
            forward(), prefill(), decode()
            batch_ms = [1000 * _timed(forward, device)[1] for _ in range(repeats)]
            prefill_s, decode_s = [], []
            for _ in range(repeats):
                prefill_s.append(_timed(prefill, device)[1])
                output, seconds = _timed(decode, device)
                decode_s.append(seconds)
    finally:
        model.train(was_training)
    generated = output.sequences.shape[1] - PROMPT_TOKENS
    # generate() spends one prefill on the prompt; what is left is the per-token cost. A difference of
    # medians, not a median of differences: a stall in either call then spoils only its own series.
    ms_per_token = 1000 * (statistics.median(decode_s) - statistics.median(prefill_s)) / generated
    return SpeedResult(
        ms_per_batch=statistics.median(batch_ms),
        ms_per_token=ms_per_token,
        batch_size=batch_size,
        seq_len=seq_len,
        generated_tokens=generated,
        device=str(device),
        dtype=str(compute_dtype(device, dtype)).removeprefix("torch."),
        # The output field was `past_key_values` before transformers renamed it `cache`.
        state_bytes=cache_bytes(output.get("cache", output.get("past_key_values"))),
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
