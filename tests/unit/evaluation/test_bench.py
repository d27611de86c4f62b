"""run_bench on the quick config: every row present, skips explained, ratios from the rows; no timing thresholds."""

import dataclasses
import json
import math

import pytest
import torch

from newllm.config import load_config
from newllm.evaluation import bench
from newllm.evaluation.bench import (
    BenchConfig,
    measure_generation,
    measure_training,
    quick_bench_config,
    run_bench,
    summarize_training,
)
from newllm.models.new_llm import NewLLMConfig
from newllm.models.registry import BaselineShape, build_model, matched_configs
from newllm.reporting.bench_report import new_llm_variant

FLOAT32_BYTES = 4
# The quick sizes, plus every setting a CPU must skip: bf16, compiled and graphed rows cost nothing there.
CONFIG = dataclasses.replace(
    quick_bench_config(), precisions=("fp32", "bf16"), compile_modes=("eager", "compiled", "graphed"),
    gen_batch_sizes=(1, 2),
)  # fmt: skip


@pytest.fixture(scope="module")
def results():
    return run_bench(CONFIG, "cpu", progress=False)


@pytest.fixture(scope="module")
def tiny_models():
    config = NewLLMConfig(
        vocab_size=200, embedding_size=16, context_size=16, hidden_size=32, num_hidden_layers=2,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    # Loose tolerance: these tests need the architectures, not a fair parameter match.
    configs = matched_configs(config, shape=BaselineShape(gpt2_positions=64, tolerance=0.5))
    torch.manual_seed(0)
    return {name: build_model(name, configs[name]) for name in configs}


def measured(row, key):
    return row.get(key) is not None and "skipped" not in row and "error" not in row


def test_quick_config_forces_a_gpt2_skip():
    config = quick_bench_config()
    assert max(config.context_lengths) + config.gen_tokens > config.gpt2_positions


def test_results_are_json_ready(results):
    assert json.loads(json.dumps(results, allow_nan=False))["config"]["models"] == list(CONFIG.models)
    assert results["device"] == "cpu"
    assert results["environment"]["threads"] == CONFIG.cpu_threads
    assert set(results["params"]) == set(CONFIG.models)
    assert all(isinstance(n, int) and n > 0 for n in results["params"].values())


def test_training_has_a_row_per_model_and_setting(results):
    keys = {(r["model"], r["batch_size"], r["seq_len"], r["precision"], r["mode"]) for r in results["training"]}
    expected = {
        (m, b, s, p, c)
        for m in CONFIG.models
        for b in CONFIG.batch_sizes
        for s in CONFIG.seq_lens
        for p in CONFIG.precisions
        for c in CONFIG.compile_modes
    }
    assert keys == expected and len(results["training"]) == len(expected)


def test_fp32_eager_training_is_measured(results):
    rows = [r for r in results["training"] if (r["precision"], r["mode"]) == ("fp32", "eager")]
    assert {r["model"] for r in rows} == set(CONFIG.models)
    for row in rows:
        assert measured(row, "tokens_per_s"), row
        assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0
        # tokens_per_s and ms_per_step are two views of one median
        assert row["tokens_per_s"] == pytest.approx(row["batch_size"] * row["seq_len"] / (row["ms_per_step"] / 1000))
        assert row["peak_mem_bytes"] is None  # CPU: no allocator statistics


def test_bf16_and_compiled_rows_on_cpu_are_skipped_with_a_reason(results):
    rows = [r for r in results["training"] if r["precision"] == "bf16" or r["mode"] != "eager"]
    assert rows
    for row in rows:
        assert row["tokens_per_s"] is None
        assert ("bf16" in row["skipped"]) if row["mode"] == "eager" else (row["mode"] in row["skipped"])
    generation_bf16 = [r for r in results["generation"] if r["precision"] == "bf16"]
    assert generation_bf16 and all("CUDA" in r["skipped"] for r in generation_bf16)


def test_graphed_decoding_rows_say_why_they_were_skipped():
    config = dataclasses.replace(quick_bench_config(), compile_modes=("graphed",), gen_modes=("graphed",))
    results = run_bench(config, "cpu", progress=False)
    assert results["training"] and all("CUDA" in r["skipped"] for r in results["training"])
    reasons = {r["model"]: r["skipped"] for r in results["generation"]}
    assert reasons == {
        "new_llm": "graphed decoding is timed on CUDA only (CUDA graphs)",
        "tinygpt2": "graphed decoding is timed on CUDA only (CUDA graphs)",
        "lstm": "graphed decoding is New-LLM's GreedyDecoder and GPT-2's StaticCacheDecoder",
    }


@pytest.mark.parametrize("mode", ["kernel", "kernel_loop"])
def test_kernel_training_rows_are_new_llms_and_say_why_they_were_skipped_on_cpu(mode):
    config = dataclasses.replace(quick_bench_config(), compile_modes=(mode,), gen_modes=("forward",))
    results = run_bench(config, "cpu", progress=False)
    reasons = {r["model"]: r["skipped"] for r in results["training"]}
    assert reasons == {
        "new_llm": f"{mode} is timed on CUDA only (Triton)",
        "tinygpt2": f"{mode} is New-LLM's Triton path (the baselines' best is graphed)",
        "lstm": f"{mode} is New-LLM's Triton path (the baselines' best is graphed)",
    }


@pytest.mark.parametrize("mode", ["kernel", "kernel_bf16_head", "kernel_loop", "kernel_loop_bf16_head"])
def test_kernel_decoding_rows_are_new_llms_in_fp32_and_say_why_they_were_skipped_on_cpu(mode):
    config = dataclasses.replace(quick_bench_config(), compile_modes=("eager",), gen_modes=(mode,),
                                 precisions=("fp32", "bf16"))  # fmt: skip
    rows = run_bench(config, "cpu", progress=False)["generation"]
    assert {r["mode"] for r in rows} == {mode}
    reasons = {r["model"]: r["skipped"] for r in rows if r["precision"] == "fp32"}
    assert reasons == {
        "new_llm": "kernel decoding is timed on CUDA only (Triton, CUDA graphs)",
        "tinygpt2": "kernel decoding is New-LLM's (decode_kernel.py)",
        "lstm": "kernel decoding is New-LLM's (decode_kernel.py)",
    }
    assert all("bf16" in r["skipped"] for r in rows if r["precision"] == "bf16")


def test_graphed_decoding_runs_eagerly_on_cpu_and_reports_the_context_vector(tiny_models):
    row = measure_generation(tiny_models["new_llm"], 12, 2, 4, "cpu", warmup=0, repeats=1, graphed=True)
    assert math.isfinite(row["ms_per_token"]) and row["ms_per_token"] > 0
    assert row["state_bytes"] == 2 * 16 * FLOAT32_BYTES  # batch 2, context 16, fp32: nothing grows
    assert tiny_models["new_llm"].training  # the model's mode is given back


def test_unknown_generation_mode_is_refused():
    with pytest.raises(ValueError, match="gen_modes: must be 'forward', 'graphed', 'kernel', 'kernel_bf16_head', 'kernel_loop' or 'kernel_loop_bf16_head', got 'graph'"):
        BenchConfig(gen_modes=("graph",))


def test_generation_has_a_row_per_model_and_context(results):
    keys = {(r["model"], r["precision"], r["batch_size"], r["context_len"]) for r in results["generation"]}
    expected = {
        (m, p, b, c)
        for m in CONFIG.models
        for p in CONFIG.precisions
        for b in CONFIG.gen_batch_sizes
        for c in CONFIG.context_lengths
    }
    assert keys == expected and len(results["generation"]) == len(expected)


def test_generation_numbers_are_finite_and_positive(results):
    for row in results["generation"]:
        if row["precision"] != "fp32" or "skipped" in row:
            continue
        assert math.isfinite(row["ms_per_token"]) and row["ms_per_token"] > 0
        assert isinstance(row["state_bytes"], int) and row["state_bytes"] > 0
        assert row["gen_tokens"] == CONFIG.gen_tokens


def test_gpt2_beyond_its_positions_is_skipped_and_only_then(results):
    for row in results["generation"]:
        if row["model"] != "tinygpt2" or row["precision"] != "fp32":
            continue
        if row["context_len"] + CONFIG.gen_tokens > CONFIG.gpt2_positions:
            assert row["skipped"] == f"beyond GPT-2's {CONFIG.gpt2_positions} positions"
            assert row["ms_per_token"] is None and row["state_bytes"] is None
        else:
            assert measured(row, "ms_per_token"), row
    # The recurrent models have no positions to run out of.
    others = [r for r in results["generation"] if r["model"] != "tinygpt2" and r["precision"] == "fp32"]
    assert all(measured(r, "ms_per_token") for r in others)


def fp32_state_bytes(results, model, batch):
    rows = [r for r in results["generation"] if (r["model"], r["precision"], r["batch_size"]) == (model, "fp32", batch)]
    return {r["context_len"]: r["state_bytes"] for r in rows if r["state_bytes"] is not None}


@pytest.mark.parametrize("batch", CONFIG.gen_batch_sizes)
def test_new_llm_state_is_flat_and_gpt2_cache_grows(results, batch):
    new_llm = fp32_state_bytes(results, "new_llm", batch)
    assert sorted(new_llm) == sorted(CONFIG.context_lengths)
    context_size = load_config(CONFIG.preset).model.new_llm_options()["context_size"]
    assert set(new_llm.values()) == {batch * context_size * FLOAT32_BYTES}
    lstm = fp32_state_bytes(results, "lstm", batch)
    assert len(set(lstm.values())) == 1
    gpt2 = fp32_state_bytes(results, "tinygpt2", batch)
    contexts = sorted(gpt2)
    assert len(contexts) >= 2
    # Keys and values of every prompt token: exactly proportional to the context length.
    per_token = {gpt2[c] / c for c in contexts}
    assert len(per_token) == 1 and gpt2[contexts[-1]] > gpt2[contexts[0]]


def test_ratios_are_recomputed_from_the_rows(results):
    rate = {
        (r["model"], r["batch_size"], r["seq_len"], r["precision"], r["mode"]): r["tokens_per_s"]
        for r in results["training"]
    }
    assert len(results["ratios"]) == (
        len(CONFIG.batch_sizes) * len(CONFIG.seq_lens) * len(CONFIG.precisions) * len(CONFIG.compile_modes)
    )
    for entry in results["ratios"]:
        setting = (entry["batch_size"], entry["seq_len"], entry["precision"], entry["mode"])
        new, ref = rate[("new_llm", *setting)], rate[("tinygpt2", *setting)]
        if new is None or ref is None:
            assert entry["new_llm_over_tinygpt2"] is None
        else:
            assert entry["new_llm_over_tinygpt2"] == pytest.approx(new / ref)
    measured_ratios = [e for e in results["ratios"] if e["new_llm_over_tinygpt2"] is not None]
    assert [(e["precision"], e["mode"]) for e in measured_ratios] == [("fp32", "eager")] * len(measured_ratios)


def test_best_is_each_models_fastest_setting(results):
    assert len(results["best"]) == len(CONFIG.batch_sizes) * len(CONFIG.seq_lens)
    for entry in results["best"]:
        for model in CONFIG.models:
            rows = [
                r for r in results["training"]
                if (r["model"], r["batch_size"], r["seq_len"]) == (model, entry["batch_size"], entry["seq_len"])
                and r["tokens_per_s"] is not None
            ]  # fmt: skip
            top = max(rows, key=lambda r: r["tokens_per_s"])
            assert entry["tokens_per_s"][model] == top["tokens_per_s"]
            assert entry["setting"][model] == f"{top['precision']} {top['mode']}"
        expected = entry["tokens_per_s"]["new_llm"] / entry["tokens_per_s"]["tinygpt2"]
        assert entry["new_llm_over_tinygpt2"] == pytest.approx(expected)


def test_summarize_training_picks_the_best_and_skips_missing():
    def row(model, precision, mode, rate):
        setting = {"batch_size": 4, "seq_len": 8, "precision": precision, "mode": mode}
        return {"model": model, **setting, "tokens_per_s": rate}

    rows = [
        row("new_llm", "fp32", "eager", 100.0), row("tinygpt2", "fp32", "eager", 400.0),
        row("new_llm", "bf16", "eager", 300.0), row("tinygpt2", "bf16", "eager", None),
        row("new_llm", "fp32", "compiled", 200.0), row("tinygpt2", "fp32", "compiled", 500.0),
    ]  # fmt: skip
    ratios, best = summarize_training(rows)
    assert [r["new_llm_over_tinygpt2"] for r in ratios] == [0.25, None, 0.4]
    assert best == [{
        "batch_size": 4, "seq_len": 8,
        "tokens_per_s": {"new_llm": 300.0, "tinygpt2": 500.0},
        "setting": {"new_llm": "bf16 eager", "tinygpt2": "fp32 compiled"},
        "new_llm_over_tinygpt2": 0.6,
    }]  # fmt: skip


def expected_state_floats(name, config, batch, context):
    if name == "new_llm":
        return batch * config.context_size
    if name == "lstm":
        return 2 * config.num_hidden_layers * batch * config.hidden_size  # h and c of every layer
    return 2 * config.n_layer * batch * context * config.n_embd  # keys and values of every prompt token


@pytest.mark.parametrize("name", ["new_llm", "tinygpt2", "lstm"])
def test_measure_generation_sizes_the_cache_after_a_chunked_prompt(tiny_models, name, monkeypatch):
    # 40 tokens in chunks of 16: the cache must carry over chunk boundaries, ending as one pass would leave it.
    monkeypatch.setattr(bench, "PREFILL_CHUNK", 16)
    model = tiny_models[name]
    model.train()
    row = measure_generation(model, 40, 3, 4, "cpu", torch.float32, warmup=0, repeats=1)
    assert row["state_bytes"] == expected_state_floats(name, model.config, 3, 40) * FLOAT32_BYTES
    assert model.training  # mode restored


def test_gpt2_cache_is_cropped_back_between_repeats(tiny_models):
    # Were it not, the second repeat would decode past the prompt + gen_tokens that fit the positions.
    row = measure_generation(tiny_models["tinygpt2"], 56, 1, 8, "cpu", torch.float32, warmup=2, repeats=3)
    assert row["ms_per_token"] > 0 and "skipped" not in row


def test_measure_training_skips_bf16_and_too_long_sequences_on_cpu(tiny_models):
    assert "bf16" in measure_training(tiny_models["new_llm"], 2, 8, "bf16", "cpu")["skipped"]
    assert "positions" in measure_training(tiny_models["tinygpt2"], 2, 65, "fp32", "cpu")["skipped"]
    with pytest.raises(ValueError, match="precision"):
        measure_training(tiny_models["new_llm"], 2, 8, "fp16", "cpu")


def test_invalid_config_raises():
    with pytest.raises(ValueError, match="precisions"):
        BenchConfig(precisions=("fp16",))
    with pytest.raises(ValueError, match="repeats"):
        BenchConfig(repeats=0)
    with pytest.raises(ValueError, match="context_lengths"):
        BenchConfig(context_lengths=(0,))


def test_the_new_llm_of_a_preset_is_built_and_named():
    config = dataclasses.replace(quick_bench_config(), preset="study", models=("new_llm", "tinygpt2"))
    models = bench.bench_models(config)
    assert (models["new_llm"].config.block, models["new_llm"].config.final_norm) == ("mlp", True)
    assert models["new_llm"].config.hidden_size == 384  # the study's cell, at the bench's vocabulary
    assert models["tinygpt2"].config.n_layer == 4  # and the preset's baseline shape
    assert new_llm_variant(dataclasses.asdict(config)) == "preset study"
    assert new_llm_variant(dataclasses.asdict(dataclasses.replace(config, preset="full"))) is None
    # bench results written before the bench took a preset name the cell options instead
    assert new_llm_variant({"cell": "parallel", "residual": True, "ffn_norm": True}) == "parallel cell, residual, ffn_norm"
    with pytest.raises(ValueError, match="unknown preset 'attention'"):
        dataclasses.replace(config, preset="attention")


def test_the_peer_is_benched_beside_new_llm_with_a_flat_state():
    """Mamba-2 through the same training and decoding rows: its state (conv and SSM states) does not grow."""
    config = dataclasses.replace(quick_bench_config(), models=("new_llm", "mamba2"), precisions=("fp32",),
                                 compile_modes=("eager",))  # fmt: skip
    results = run_bench(config, "cpu", progress=False)
    assert {r["model"] for r in results["training"] if measured(r, "tokens_per_s")} == {"new_llm", "mamba2"}
    for batch in config.gen_batch_sizes:
        mamba2 = fp32_state_bytes(results, "mamba2", batch)
        assert sorted(mamba2) == sorted(config.context_lengths)
        new_llm = fp32_state_bytes(results, "new_llm", batch)
        assert len(set(mamba2.values())) == 1 and min(mamba2.values()) > max(new_llm.values())
