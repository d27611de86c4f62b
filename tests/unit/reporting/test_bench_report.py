"""Tests for reporting.bench_report: the table names every model and ratio, PNGs are valid, bench.json round-trips."""

import json
import math
import struct

import pytest

from newllm.reporting.bench_report import format_bench_table, format_bytes, write_bench_outputs

MODELS = ("new_llm", "tinygpt2", "lstm")
RATE = {"new_llm": 30_000.0, "tinygpt2": 120_000.0, "lstm": 60_000.0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    """A complete PNG (signature, IHDR, IEND) of a plausible figure size."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 200
    assert data[-8:-4] == b"IEND", "truncated PNG"
    assert len(data) > 5_000, "a figure with axes and text should not be this small"


def training_row(model, batch, seq, precision, mode, **extra):
    if extra:
        return {"model": model, "batch_size": batch, "seq_len": seq, "precision": precision, "mode": mode,
                "tokens_per_s": None, "ms_per_step": None, "peak_mem_bytes": None, **extra}  # fmt: skip
    rate = RATE[model] * (2 if precision == "bf16" else 1)
    return {"model": model, "batch_size": batch, "seq_len": seq, "precision": precision, "mode": mode,
            "tokens_per_s": rate, "ms_per_step": 1000 * batch * seq / rate, "peak_mem_bytes": 3 * 2**30}  # fmt: skip


def generation_row(model, context, batch, precision="fp32"):
    row = {"model": model, "precision": precision, "context_len": context, "batch_size": batch, "gen_tokens": 64}
    if model == "tinygpt2" and context + 64 > 1024:
        return {**row, "ms_per_token": None, "state_bytes": None, "peak_mem_bytes": None,
                "skipped": "beyond GPT-2's 1024 positions"}  # fmt: skip
    state = {"new_llm": batch * 256 * 4, "lstm": batch * 2 * 2 * 512 * 4}.get(model, batch * 2 * 4 * context * 320 * 4)
    return {**row, "ms_per_token": 1.5 if model != "tinygpt2" else 2.0 + context / 1000, "state_bytes": state,
            "peak_mem_bytes": 40 * 2**20 + state}  # fmt: skip


@pytest.fixture
def results():
    """A bench.json-shaped dict as run_bench writes it on a GPU, with one skip and one compile error."""
    training = []
    for mode in ("eager", "compiled"):
        for precision in ("fp32", "bf16"):
            for batch, seq in ((64, 64), (256, 128)):
                for model in MODELS:
                    if (model, mode, precision) == ("lstm", "compiled", "bf16"):
                        training.append(training_row(model, batch, seq, precision, mode,
                                                     error="BackendCompilerFailed: cudnn rnn"))  # fmt: skip
                    else:
                        training.append(training_row(model, batch, seq, precision, mode))
    ratios = [
        {"batch_size": r["batch_size"], "seq_len": r["seq_len"], "precision": r["precision"], "mode": r["mode"],
         "new_llm_tokens_per_s": r["tokens_per_s"], "tinygpt2_tokens_per_s": RATE["tinygpt2"],
         "new_llm_over_tinygpt2": 0.25}
        for r in training if r["model"] == "new_llm"
    ]  # fmt: skip
    best = [
        {"batch_size": b, "seq_len": s, "tokens_per_s": {m: 2 * RATE[m] for m in MODELS},
         "setting": {m: "bf16 eager" for m in MODELS}, "new_llm_over_tinygpt2": 0.25}
        for b, s in ((64, 64), (256, 128))
    ]  # fmt: skip
    generation = [
        generation_row(model, context, batch)
        for model in MODELS for batch in (1, 32) for context in (128, 1024, 8192, 65536)
    ]  # fmt: skip
    return {
        "environment": {"torch": "2.11.0", "transformers": "5.17.0", "cuda": "13.0", "gpu": "NVIDIA H200",
                        "cpu": "x86_64", "threads": 16},  # fmt: skip
        "device": "cuda",
        "config": {"gpt2_positions": 1024, "gen_tokens": 64, "models": list(MODELS)},
        "params": {"new_llm": 7_519_488, "tinygpt2": 7_404_800, "lstm": 7_640_576},
        "training": training,
        "generation": generation,
        "ratios": ratios,
        "best": best,
    }


def test_table_names_every_model_the_ratio_and_the_environment(results):
    table = format_bench_table(results)
    for label in ("New-LLM", "TinyGPT2", "LSTM", "New-LLM/TinyGPT2", "NVIDIA H200", "torch 2.11.0"):
        assert label in table
    assert "0.25×" in table
    assert "7,519,488" in table
    assert "120,000" in table and "240,000 (bf16 eager)" in table


def test_table_rows_follow_the_training_settings(results):
    table = format_bench_table(results).splitlines()
    settings = [line.split()[:4] for line in table if line.split()[:2] in (["64", "64"], ["256", "128"])]
    assert ["256", "128", "bf16", "compiled"] in settings
    # one line per (batch, seq, precision, mode), plus one per (batch, seq) in the best-of table
    assert len(settings) == 8 + 2


def test_table_shows_generation_by_context_with_memory(results):
    table = format_bench_table(results)
    for text in ("ms_per_token", "state_bytes", "peak_mem_bytes", "65536", "1 KiB", "32 KiB"):
        assert text in table
    assert "skip: beyond GPT-2's 1024 positions (6 rows)" in table


def test_table_explains_errors_and_cpu_skips(results):
    results["generation"] = [r for r in results["generation"] if r["model"] != "tinygpt2"] + [
        {**generation_row("new_llm", 128, 1, "bf16"), "ms_per_token": None, "state_bytes": None,
         "peak_mem_bytes": None, "skipped": "bf16 is timed on CUDA only (CPU runs stay float32)"}
    ]  # fmt: skip
    table = format_bench_table(results)
    setting = "batch_size 64, seq_len 64, precision bf16, mode compiled"
    assert f"error: LSTM training ({setting}): BackendCompilerFailed: cudnn rnn" in table
    assert "bf16 is timed on CUDA only" in table
    assert "Generation, bf16" not in table  # nothing measured: the note says why, no table of "skip"
    assert "TinyGPT2" in table  # still a training column


def test_table_without_tinygpt2_has_no_ratio_column(results):
    results["training"] = [r for r in results["training"] if r["model"] != "tinygpt2"]
    results["generation"] = [r for r in results["generation"] if r["model"] != "tinygpt2"]
    del results["params"]["tinygpt2"]
    results["ratios"], results["best"] = [], []
    table = format_bench_table(results)
    assert "New-LLM/TinyGPT2" not in table and "TinyGPT2" not in table


@pytest.mark.parametrize(
    "value, text",
    [(None, "—"), (128, "128 B"), (1024, "1 KiB"), (1536, "1.5 KiB"), (100_000, "97.7 KiB"), (8 * 2**30, "8 GiB"),
     (1023.9 * 2**20, "1,024 MiB"), (math.nan, "—")],
)  # fmt: skip
def test_format_bytes(value, text):
    assert format_bytes(value) == text


def test_outputs_are_written_and_json_round_trips(results, tmp_path):
    paths = write_bench_outputs(results, tmp_path / "bench")
    names = [p.name for p in paths]
    assert names == ["bench.json", "bench_throughput.png", "bench_latency.png", "bench_memory.png"]
    assert json.loads((tmp_path / "bench" / "bench.json").read_text(encoding="utf-8")) == results
    for path in paths[1:]:
        assert_png(path)
    assert not [p for p in (tmp_path / "bench").iterdir() if p.name.endswith(".tmp")]


def test_cpu_results_without_peak_memory_still_plot(results, tmp_path):
    for row in results["training"] + results["generation"]:
        row["peak_mem_bytes"] = None
    paths = write_bench_outputs(results, tmp_path)
    assert [p.name for p in paths][-1] == "bench_memory.png"
    assert "peak_mem_bytes" not in format_bench_table(results)


def test_figures_with_nothing_measured_are_left_out(results, tmp_path):
    skipped = "bf16 is timed on CUDA only"
    results["training"] = [training_row(m, 8, 32, "bf16", "eager", skipped=skipped) for m in MODELS]
    results["generation"] = []
    paths = write_bench_outputs(results, tmp_path)
    assert [p.name for p in paths] == ["bench.json"]


def test_non_finite_numbers_are_refused_not_written_as_nan(results, tmp_path):
    results["training"][0]["tokens_per_s"] = math.nan
    with pytest.raises(ValueError):
        write_bench_outputs(results, tmp_path)
    assert not (tmp_path / "bench.json").exists()
