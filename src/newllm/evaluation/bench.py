"""The speed benchmark: training throughput and cached decoding latency/memory of the matched models.

Two questions, each over a grid:

- training: how many tokens per second a full optimizer step (forward with labels, backward, AdamW)
  gets through, per batch size × sequence length × precision × mode. New-LLM pays for its
  recurrence here: GPT-2 processes the T positions in parallel, New-LLM loops over them.
  Modes: "eager"; "compiled" (New-LLM: its step functions through torch.compile; the baselines:
  torch.compile of the model); "graphed" (New-LLM: compiled steps and the whole scan replayed from
  CUDA graphs; the baselines: torch.compile(mode="reduce-overhead"), which adds CUDA graphs); "kernel"
  (New-LLM only, CUDA only, opt-in: the whole window in one Triton launch each way, kernel.py and
  kernel_mlp.py; the baselines' rows say so and their best stays their graphed row); "kernel_loop" (the same
  kernels as one program per SM walking the window together, grid barriers between phases).
- generation: how long one greedy token costs (ms_per_token as `speed.time_decoding` defines it),
  and how big the cache is, after a prompt of `context_len` tokens. This is what the fixed-size context vector is for: New-LLM's cost and
  state stay flat while GPT-2's key/value cache grows with the context (and stops at its positions).
  Both run through the shared decoding path (decoding.py). Modes: "forward" (the model's forward,
  one token per call, for every model) and "graphed" (one CUDA graph replay per token, CUDA only:
  New-LLM's `GreedyDecoder`, and TinyGPT2's `StaticCacheDecoder` over a static key/value cache, so
  that both get their fastest fair setup) and "kernel" (New-LLM's graphed decoder on its few Triton
  kernels per step, decode_kernel.py; fp32, CUDA only, opt-in); "kernel_bf16_head" is "kernel" with a
  bf16 copy of the output head, summed in fp32 (at batch 1; larger batches keep the fp32 head);
  "kernel_loop" and "kernel_loop_bf16_head" run every new token in one persistent launch instead
  (decode_loop.py).

Every number is a median over `repeats` after `warmup` untimed runs; CUDA is synchronised around
each timed call. Rows that cannot run (bf16 on CPU, GPT-2 past its positions) are kept with the
reason in "skipped", so a table never silently loses a cell.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from newllm.config import DEFAULT_MODEL_NAMES, MODEL_NAMES, POSITIVE_INT, Bound, check_limits, load_config
from newllm.evaluation.decoding import PREFILL_CHUNK, Decoder, SamplingOptions, cache_bytes, has_graphed_backend
from newllm.evaluation.perplexity import autocast_context
from newllm.evaluation.speed import environment, median_seconds, time_decoding
from newllm.models.new_llm import NewLLMConfig
from newllm.models.registry import BaselineShape, build_model, count_parameters, matched_configs, max_positions

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
COMPILE_MODES = ("eager", "compiled", "graphed", "kernel", "kernel_loop")
TRITON_TRAINING_MODES = ("kernel", "kernel_loop")  # New-LLM's training kernels: CUDA only, no baseline rows
GEN_MODES = ("forward", "graphed", "kernel", "kernel_bf16_head", "kernel_loop", "kernel_loop_bf16_head")
# decode modes on the Triton kernels: the output head's dtype each reads, and whether every token is one launch
KERNEL_MODES = {
    "kernel": dict(head_dtype=torch.float32, persistent=False),
    "kernel_bf16_head": dict(head_dtype=torch.bfloat16, persistent=False),
    "kernel_loop": dict(head_dtype=torch.float32, persistent=True),
    "kernel_loop_bf16_head": dict(head_dtype=torch.bfloat16, persistent=True),
}
# New-LLM's own fast path for each training mode (NewLLMForCausalLM.set_fast_path)
NEW_LLM_FAST_PATHS = {"eager": "eager", "compiled": "compiled", "graphed": "compiled+graphed", "kernel": "kernel",
                      "kernel_loop": "kernel_loop"}
LEARNING_RATE = 1e-4  # irrelevant to the timing; small so that a few steps on random ids stay finite


@dataclass(frozen=True)
class BenchConfig:
    """Model sizes and the grid the benchmark measures (see benchmarks/README.md)."""

    vocab_size: int = 8192
    # The experiment preset whose [model] gives New-LLM's architecture and the baselines' shape ("full": the
    # prototype's cell; "full_parallel", "study" ...). The baselines are matched to whichever is measured.
    preset: str = "full"
    gpt2_positions: int = 1024
    batch_sizes: tuple[int, ...] = (64, 256)
    seq_lens: tuple[int, ...] = (64, 128)
    precisions: tuple[str, ...] = ("fp32", "bf16")
    compile_modes: tuple[str, ...] = ("eager", "compiled", "graphed")
    # torch.compile on CPU takes minutes per row and is not what the comparison is about; opt in here.
    compile_on_cpu: bool = False
    # Intra-op threads on CPU (None: torch's default). Tiny models gain nothing from more than one, and
    # on a shared CPU the threads wait on each other: a 2-core box under load ran the quick bench 30× slower.
    cpu_threads: int | None = None
    context_lengths: tuple[int, ...] = (128, 1024, 8192, 65536)
    gen_batch_sizes: tuple[int, ...] = (1, 32)
    gen_modes: tuple[str, ...] = ("forward", "graphed")
    gen_tokens: int = 64
    warmup: int = 2
    repeats: int = 5
    models: tuple[str, ...] = DEFAULT_MODEL_NAMES
    seed: int = 0

    def __post_init__(self):
        # Checked when the config is built, like the experiment's: --set batch_sizes=0 fails before any model is built.
        check_limits(self, BENCH_LIMITS)
        load_config(self.preset)  # an unknown or broken preset fails here, naming itself


# The allowed values of every setting but the switch compile_on_cpu and the preset (load_config checks that
# it exists and what it holds); test_bench.py checks that.
BENCH_LIMITS = {
    "vocab_size": POSITIVE_INT,
    "gpt2_positions": Bound(2),  # one token of context and one to predict
    "batch_sizes": POSITIVE_INT,
    "seq_lens": POSITIVE_INT,
    "precisions": tuple(PRECISIONS),
    "compile_modes": COMPILE_MODES,
    "cpu_threads": Bound(1, note="none: torch's default"),
    "context_lengths": POSITIVE_INT,
    "gen_batch_sizes": POSITIVE_INT,
    "gen_modes": GEN_MODES,
    "gen_tokens": POSITIVE_INT,
    "warmup": Bound(0, note="untimed runs"),
    "repeats": POSITIVE_INT,
    "models": MODEL_NAMES,
    "seed": Bound(0, 2**32, note="NumPy's seed range"),
}


def quick_bench_config() -> BenchConfig:
    """Tiny sizes so that the whole bench runs on two CPU cores in well under a minute."""
    # 256 positions: GPT-2 then cannot decode after the 512-token context, the skip the real bench shows at 65,536.
    return BenchConfig(
        vocab_size=1024, preset="quick", gpt2_positions=256, batch_sizes=(8,), seq_lens=(32,), precisions=("fp32",), compile_modes=("eager",),
        context_lengths=(32, 128, 512), gen_batch_sizes=(1,), gen_modes=("forward",), gen_tokens=8, warmup=1, repeats=2,
        cpu_threads=1,
    )  # fmt: skip


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _precision_skip(precision: str, device: torch.device) -> str | None:
    """Why `precision` cannot be timed on `device`, or None."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type != "cuda":
        # compute_dtype keeps CPU runs in float32: a "bf16" CPU row would time fp32 under another name.
        return "bf16 is timed on CUDA only (CPU runs stay float32)"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    return None


def _random_ids(vocab_size: int, shape: tuple[int, ...], device: torch.device, seed: int) -> torch.Tensor:
    # Random ids, not zeros: 0 is the pad / end-of-text id, and no real batch is made of it.
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, shape, generator=generator).to(device)


def measure_training(
    model, batch_size: int, seq_len: int, precision: str, device, warmup: int = 2, repeats: int = 5, seed: int = 0
) -> dict:
    """Tokens per second of full AdamW steps (forward with labels, backward, step, zero_grad) on random ids."""
    device = torch.device(device)
    row = {"batch_size": batch_size, "seq_len": seq_len, "precision": precision}
    row.update(tokens_per_s=None, ms_per_step=None, peak_mem_bytes=None)
    limit = max_positions(model)
    skip = _precision_skip(precision, device)
    if skip is None and limit is not None and seq_len > limit:
        skip = f"seq_len {seq_len} is beyond the model's {limit} positions"
    if skip is not None:
        return {**row, "skipped": skip}
    ids = _random_ids(model.config.vocab_size, (batch_size, seq_len), device, seed)  # (B, T)
    was_training = model.training
    model.to(device).train()  # dropout on, as in real training
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)

    def step():
        with autocast_context(device, PRECISIONS[precision]):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        # The warmup steps create AdamW's moments; resetting after them counts those in the peak.
        for _ in range(warmup):
            step()
        _reset_peak(device)
        seconds = median_seconds(step, device, 0, repeats)
        peak = _peak(device)
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    row.update(tokens_per_s=batch_size * seq_len / seconds, ms_per_step=1000 * seconds, peak_mem_bytes=peak)
    return row


@torch.no_grad()
def measure_generation(
    model,
    context_len: int,
    batch_size: int,
    gen_tokens: int,
    device,
    dtype: torch.dtype = torch.float32,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
    graphed: bool = False,
    kernels: bool = False,
    head_dtype: torch.dtype = torch.float32,
    persistent: bool = False,
) -> dict:
    """ms_per_token (speed.time_decoding) of greedy decoding after a `context_len`-token prompt, and the
    cache's bytes after the prompt.

    graphed: through New-LLM's `GreedyDecoder` (one CUDA graph replay per token) instead of the
    model's forward per token; kernels: that decoder on its Triton step, its head in head_dtype; persistent:
    every new token in one launch of those kernels' loop.
    """
    device = torch.device(device)
    row = {"context_len": context_len, "batch_size": batch_size, "gen_tokens": gen_tokens}
    row.update(ms_per_token=None, state_bytes=None, peak_mem_bytes=None)
    limit = max_positions(model)
    if limit is not None and context_len + gen_tokens > limit:
        name = "GPT-2" if model.config.model_type == "gpt2" else model.config.model_type
        return {**row, "skipped": f"beyond {name}'s {limit} positions"}
    prompt = _random_ids(model.config.vocab_size, (batch_size, context_len), device, seed)  # (B, P)
    was_training = model.training
    model.to(device).eval()
    try:
        options = SamplingOptions(max_new_tokens=gen_tokens, do_sample=False)
        decoder = Decoder(model, options, dtype=dtype, graphed=graphed or kernels, kernels=kernels,
                          head_dtype=head_dtype, persistent=persistent)  # fmt: skip
        logits = decoder.prefill(prompt, chunk=PREFILL_CHUNK)
        # The (B, P) prompt is not decoding memory: out of the peak.
        del prompt
        state_bytes = cache_bytes(decoder.cache)
        _reset_peak(device)
        timing = time_decoding(decoder, logits, warmup, repeats)
        peak = _peak(device)
    finally:
        model.train(was_training)
    row.update(ms_per_token=timing.ms_per_token, state_bytes=state_bytes, peak_mem_bytes=peak)
    return row


def summarize_training(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(ratios, best): New-LLM / TinyGPT2 tokens_per_s per setting, and each model's best per (batch, seq)."""
    measured = {}
    for r in rows:
        if r.get("tokens_per_s") is not None:
            measured[(r["batch_size"], r["seq_len"], r["precision"], r["mode"], r["model"])] = r["tokens_per_s"]

    def ratio(new, ref):
        return new / ref if new is not None and ref is not None else None

    settings = list(dict.fromkeys((r["batch_size"], r["seq_len"], r["precision"], r["mode"]) for r in rows))
    ratios = []
    for batch, seq, precision, mode in settings:
        new = measured.get((batch, seq, precision, mode, "new_llm"))
        ref = measured.get((batch, seq, precision, mode, "tinygpt2"))
        ratios.append({
            "batch_size": batch, "seq_len": seq, "precision": precision, "mode": mode,
            "new_llm_tokens_per_s": new, "tinygpt2_tokens_per_s": ref, "new_llm_over_tinygpt2": ratio(new, ref),
        })  # fmt: skip
    best = []
    models = list(dict.fromkeys(r["model"] for r in rows))
    for batch, seq in dict.fromkeys((b, s) for b, s, _, _ in settings):
        tokens_per_s, setting = {}, {}
        for model in models:
            candidates = [
                (value, f"{p} {m}")
                for (b, s, p, m, name), value in measured.items()
                if (b, s, name) == (batch, seq, model)
            ]
            top = max(candidates, default=(None, None), key=lambda c: c[0])
            tokens_per_s[model], setting[model] = top
        best.append({
            "batch_size": batch, "seq_len": seq, "tokens_per_s": tokens_per_s, "setting": setting,
            "new_llm_over_tinygpt2": ratio(tokens_per_s.get("new_llm"), tokens_per_s.get("tinygpt2")),
        })  # fmt: skip
    return ratios, best


def bench_models(config: BenchConfig) -> dict:
    """Fresh models of `config.models`, the baselines matched to New-LLM's parameter count."""
    model = load_config(config.preset).model
    new_llm = NewLLMConfig(
        vocab_size=config.vocab_size,
        # 0 is the tokenizer's pad / end-of-text id; copied to the baselines, where GPT-2's default 50256 exceeds V.
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        **model.new_llm_arguments(),
    )
    shape = BaselineShape(**{**model.baseline_shape(), "gpt2_positions": config.gpt2_positions})
    configs = matched_configs(new_llm, config.models, shape)
    models = {}
    for name in config.models:
        torch.manual_seed(config.seed)
        models[name] = build_model(name, configs[name])
    return models


def _release(device: torch.device) -> None:
    """Give cached blocks back so that one row's leftovers do not count in the next one's peak."""
    if device.type == "cuda":
        gc.collect()  # captured graphs sit in reference cycles (autograd nodes ↔ their context objects)
        torch.cuda.empty_cache()


def _first_line(error: Exception) -> str:
    """`Type: first line of the message`, short enough for a table cell."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def _training_rows(name: str, model, config: BenchConfig, device: torch.device, bar) -> list[dict]:
    """One row per (mode, precision, batch, seq) for one model."""
    rows = []
    grid = itertools.product(config.compile_modes, config.precisions, config.batch_sizes, config.seq_lens)
    for mode, precision, batch, seq in grid:
        bar.set_description(f"train {name} B={batch} T={seq} {precision} {mode}")
        head = {"model": name, "batch_size": batch, "seq_len": seq, "precision": precision, "mode": mode}
        empty = {"tokens_per_s": None, "ms_per_step": None, "peak_mem_bytes": None}
        skip = None
        if mode in TRITON_TRAINING_MODES and not hasattr(model, "set_fast_path"):
            skip = f"{mode} is New-LLM's Triton path (the baselines' best is graphed)"
        elif mode in TRITON_TRAINING_MODES and device.type != "cuda":
            skip = f"{mode} is timed on CUDA only (Triton)"
        elif mode == "graphed" and device.type != "cuda":
            skip = "graphed is timed on CUDA only (CUDA graphs)"
        elif mode == "compiled" and device.type != "cuda" and not config.compile_on_cpu:
            skip = "compiled is timed on CUDA only (compile_on_cpu=False)"
        if skip is not None:
            rows.append({**head, **empty, "skipped": skip})
            bar.update()
            continue
        if mode != "eager":
            # A fresh compile per row: no recompile limit to hit, no guards left by another shape or dtype.
            torch.compiler.reset()
        runner = _runner(model, mode, device)
        try:
            measured = measure_training(
                runner, batch, seq, precision, device, config.warmup, config.repeats, config.seed
            )
            rows.append({**head, **measured})
        except torch.cuda.OutOfMemoryError as error:
            rows.append({**head, **empty, "error": _first_line(error)})
        except Exception as error:
            if mode == "eager":
                raise
            # A compiler failure is a result about the compiler, not a reason to lose the whole bench.
            rows.append({**head, **empty, "error": _first_line(error)})
        _release(device)
        bar.update()
    if hasattr(model, "set_fast_path"):
        model.set_fast_path("eager")  # and drop the captured graphs
    if set(config.compile_modes) - {"eager"}:
        torch.compiler.reset()
    return rows


def _runner(model, mode: str, device: torch.device):
    """What a training row times: New-LLM with its own fast path on CUDA; otherwise the model or torch.compile of it."""
    if hasattr(model, "set_fast_path") and device.type == "cuda":
        return model.set_fast_path(NEW_LLM_FAST_PATHS[mode])
    if mode == "eager":
        return model
    return torch.compile(model, mode="reduce-overhead" if mode == "graphed" else None)


def _generation_rows(name: str, model, config: BenchConfig, device: torch.device, bar) -> list[dict]:
    """One row per (precision, mode, batch, context length) for one model."""
    rows = []
    grid = itertools.product(config.precisions, config.gen_modes, config.gen_batch_sizes, config.context_lengths)
    for precision, mode, batch, context in grid:
        bar.set_description(f"generate {name} B={batch} context={context} {precision} {mode}")
        head = {"model": name, "precision": precision, "mode": mode}
        empty = {"context_len": context, "batch_size": batch, "gen_tokens": config.gen_tokens}
        empty.update(ms_per_token=None, state_bytes=None, peak_mem_bytes=None)
        skip = _precision_skip(precision, device)
        if skip is None and mode == "graphed":
            if not has_graphed_backend(model):
                skip = "graphed decoding is New-LLM's GreedyDecoder and GPT-2's StaticCacheDecoder"
            elif device.type != "cuda":
                skip = "graphed decoding is timed on CUDA only (CUDA graphs)"
        if skip is None and mode in KERNEL_MODES:
            if name != "new_llm":
                skip = "kernel decoding is New-LLM's (decode_kernel.py)"
            elif precision != "fp32":
                skip = "the decode kernels run in float32"
            elif device.type != "cuda":
                skip = "kernel decoding is timed on CUDA only (Triton, CUDA graphs)"
        if skip is not None:
            rows.append({**head, **empty, "skipped": skip})
        else:
            try:
                measured = measure_generation(
                    model, context, batch, config.gen_tokens, device, PRECISIONS[precision],
                    config.warmup, config.repeats, config.seed, graphed=mode == "graphed", kernels=mode in KERNEL_MODES,
                    **KERNEL_MODES.get(mode, {}),
                )  # fmt: skip
                rows.append({**head, **measured})
            except torch.cuda.OutOfMemoryError as error:
                rows.append({**head, **empty, "error": _first_line(error)})
        _release(device)
        bar.update()
    return rows


@contextlib.contextmanager
def _cpu_threads(threads: int | None):
    """Run with `threads` intra-op threads (None: leave torch's setting), restoring it afterwards."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_bench(config: BenchConfig, device: str = "cpu", progress: bool = True) -> dict:
    """Every training and generation row of `config` on `device`, with New-LLM / TinyGPT2 ratios (JSON-ready)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for, but CUDA is not available")
    models = bench_models(config)
    params = {name: count_parameters(model) for name, model in models.items()}
    rows_per_model = len(config.precisions) * (
        len(config.compile_modes) * len(config.batch_sizes) * len(config.seq_lens)
        + len(config.gen_modes) * len(config.gen_batch_sizes) * len(config.context_lengths)
    )
    training, generation = [], []
    with _cpu_threads(config.cpu_threads if device.type == "cpu" else None):
        env = environment()  # inside: it records the thread count the numbers were taken with
        with tqdm(total=rows_per_model * len(models), desc="bench", disable=not progress, leave=False) as bar:
            for name in list(models):
                # One model on the device at a time: another's weights must not count in this one's peak.
                model = models.pop(name)
                training += _training_rows(name, model, config, device, bar)
                generation += _generation_rows(name, model, config, device, bar)
                del model
                _release(device)
    ratios, best = summarize_training(training)
    return {
        "environment": env,
        "device": str(device),
        "config": asdict(config),
        "params": params,
        "training": training,
        "generation": generation,
        "ratios": ratios,
        "best": best,
    }
