"""`newllm recall`: each family's state measured on its own cache, answers scored alone, early stop, the CLI end to end."""

import dataclasses
import json
import math
import re
import statistics
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from newllm.cli import main
from newllm.config import ConfigError, load_config
from newllm.data.mqar import keyless_accuracy, mqar
from newllm.models.registry import build_model
import newllm.recall as recall_module
from newllm.recall import (
    DEFAULT_CONFIG,
    FAMILIES,
    START_SECONDS,
    estimated_seconds,
    load_recall_config,
    model_config,
    parse_option,
    accuracy_by_pair,
    query_accuracy,
    quick_recall_config,
    run_recall,
    state_bytes,
    study_options,
    train_recall,
    with_keyless,
)
from newllm.reporting.bench_report import format_bytes

FLOAT32 = 4
CONFIG = dataclasses.replace(quick_recall_config(), widths=(32,), layers=2, vocab_size=64)


class Oracle(torch.nn.Module):
    """Reads the pairs of each sequence and puts all its mass on the value of the key it has just read.

    `late` moves every prediction one position on, the off-by-one that the scoring must not reward;
    `knows` (indices in the order the pairs were given) keeps only those pairs, `answers` only those queries."""

    def __init__(self, pairs: int, vocab_size: int, late: bool = False, knows=None, answers=None):
        super().__init__()
        self.pairs, self.vocab_size, self.late = pairs, vocab_size, late
        self.knows, self.answers = knows or range(pairs), answers or range(pairs)
        self.scale = torch.nn.Parameter(torch.tensor(5.0))  # something for the optimizer to step

    def forward(self, input_ids, labels=None):
        hits = torch.zeros(*input_ids.shape, self.vocab_size)  # (B, T, V)
        for b, ids in enumerate(input_ids.tolist()):
            pairs = list(zip(ids[0 : 2 * self.pairs : 2], ids[1 : 2 * self.pairs : 2]))
            table = {key: value for i, (key, value) in enumerate(pairs) if i in self.knows}
            queries = [t for t, token in enumerate(ids) if t >= 2 * self.pairs and token in dict(pairs)]
            for t in (queries[i] for i in self.answers):
                if ids[t] in table and t + self.late < len(ids):
                    hits[b, t + self.late, table[ids[t]]] = 1.0
        logits = self.scale * hits
        loss = None if labels is None else F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return SimpleNamespace(logits=logits, loss=loss)


def test_state_bytes_are_each_models_cache_at_that_length():
    width, T, L = 32, 32, CONFIG.layers
    expected = {
        "new_llm": width * FLOAT32,  # one context vector
        "new_llm_mlp": width * FLOAT32,
        "lstm": L * 2 * width * FLOAT32,  # (h, c) per layer
        "tinygpt2": L * 2 * width * T * FLOAT32,  # keys and values (heads × head size = width) per layer and position
        # per layer: the SSM state (inner width 2w × state size 64) and the last 4 inputs of the convolution,
        # which runs over x, B and C (2w + 2 × 64 channels)
        "mamba2": L * (2 * width * 64 + 4 * (2 * width + 2 * 64)) * FLOAT32,
    }
    for family, size in expected.items():
        model = build_model(FAMILIES[family][0], model_config(family, width, CONFIG, T))
        assert state_bytes(model, T, "cpu") == size, family
    gpt2 = build_model("tinygpt2", model_config("tinygpt2", width, CONFIG, 2 * T))
    assert state_bytes(gpt2, 2 * T, "cpu") == 2 * expected["tinygpt2"]  # grows with the sequence; the others do not
    mamba2 = build_model("mamba2", model_config("mamba2", width, CONFIG, 2 * T))
    assert state_bytes(mamba2, 2 * T, "cpu") == expected["mamba2"]


def test_the_study_cell_is_the_study_presets_at_the_sweeps_width():
    study = load_config("study").model.new_llm_options()
    config = model_config("new_llm_mlp", 48, CONFIG, 32)
    assert config.block == study["block"] == "mlp"
    for key, value in study_options().items():
        assert getattr(config, key) == value, key
    assert (config.embedding_size, config.context_size, config.hidden_size) == (48, 48, 48)
    assert config.num_hidden_layers == CONFIG.layers
    assert config.dropout == config.embedding_dropout == 0.0 < study["dropout"]
    prototype = model_config("new_llm", 48, CONFIG, 32)
    assert (prototype.block, prototype.cell) == ("linear", "prototype")


def test_gpt2_is_built_at_the_width_and_the_sequence_length():
    config = model_config("tinygpt2", 96, CONFIG, 64)
    assert (config.n_embd, config.n_layer, config.n_positions) == (96, CONFIG.layers, 64)
    assert config.n_embd % config.n_head == 0


def test_options_win_over_the_width_rule_and_set_the_state(tmp_path):
    path = tmp_path / "equal_state.toml"
    path.write_text(
        'models = ["new_llm", "new_llm_mlp", "mamba2"]\nwidths = [32]\nseq_lens = [32]\npairs = [2]\nvocab_size = 64\n'
        "[options.new_llm]\ncontext_size = 128\nforget_bias = 2.0\n[options.new_llm_mlp]\ncontext_size = 64\n"
        "[options.mamba2]\nstate_size = 4\n"
    )
    config = load_recall_config(path)
    new_llm = model_config("new_llm", 32, config, 32)
    assert (new_llm.embedding_size, new_llm.context_size, new_llm.hidden_size, new_llm.forget_bias) == (32, 128, 32, 2.0)
    assert state_bytes(build_model("new_llm", new_llm), 32, "cpu") == 128 * FLOAT32  # the context, not the width
    mlp = model_config("new_llm_mlp", 32, config, 32)
    assert (mlp.block, mlp.context_size) == ("mlp", 64)  # the study's cell, then the options
    mamba2 = model_config("mamba2", 32, config, 32)
    assert mamba2.state_size == 4 and mamba2.num_heads * mamba2.head_dim == 2 * 32
    # per layer: the SSM state (2w × 4) and the convolution's last 4 inputs over x, B and C (2w + 2 × 4 channels)
    expected = CONFIG.layers * (2 * 32 * 4 + 4 * (2 * 32 + 2 * 4)) * FLOAT32
    assert state_bytes(build_model("mamba2", mamba2), 32, "cpu") == expected
    # a family without options keeps its rule
    assert model_config("new_llm", 32, CONFIG, 32).context_size == 32


@pytest.mark.parametrize(
    "table, message",
    [
        ("[options.new_llm]\ncontxt_size = 64\n", "options.new_llm: NewLLMConfig has no argument 'contxt_size'"),
        ("[options.new_llm]\ncontext_size = 0\n", "options.new_llm: NewLLMConfig.context_size: must be at least 1"),
        ("[options.mamba]\nstate_size = 4\n", "options: unknown model 'mamba'"),
        ("options = 3\n", "options: expected [options.<model>] tables"),
        ("[options.new_llm_mlp]\nresidual = true\n", "options.new_llm_mlp: NewLLMConfig.residual:"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, table, message):
    path = tmp_path / "bad.toml"
    path.write_text("vocab_size = 64\nseq_lens = [32]\npairs = [2]\n" + table)
    with pytest.raises(ConfigError) as info:
        load_recall_config(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_option_flags_go_over_the_files_tables(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text('vocab_size = 64\nseq_lens = [32]\npairs = [2]\n[options.new_llm]\ncontext_size = 128\n')
    config = load_recall_config(path, options=["new_llm.forget_bias=3", "new_llm_mlp.candidate=linear",
                                               'new_llm.context_size = 256'])  # fmt: skip
    assert config.options == {"new_llm": {"context_size": 256, "forget_bias": 3},
                              "new_llm_mlp": {"candidate": "linear"}}  # fmt: skip
    assert model_config("new_llm", 32, config, 32).forget_bias == 3.0
    # a string reaches the study cell's config (whose final norm is on), bare or quoted
    for flag in ("new_llm_mlp.final_norm_type=rms", 'new_llm_mlp.final_norm_type="rms"'):
        rms = load_recall_config(path, options=[flag])
        assert model_config("new_llm_mlp", 32, rms, 32).final_norm_type == "rms"
    assert parse_option("new_llm.residual=true") == ("new_llm", "residual", True)
    assert parse_option('new_llm.cell="parallel"') == parse_option("new_llm.cell=parallel") == ("new_llm", "cell", "parallel")
    for bad in ("new_llm=3", "forget_bias=3", "new_llm.forget_bias", ".x=1"):
        with pytest.raises(ConfigError, match="expected MODEL.ARGUMENT=VALUE"):
            parse_option(bad)


def test_a_bad_option_flag_exits_1_before_any_work(capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["recall", "--quick", "--option", "new_llm.contxt_size=64", "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "newllm: error: options.new_llm: NewLLMConfig has no argument 'contxt_size'"  # fmt: skip
    assert not out.exists()


@pytest.fixture(scope="module")
def task():
    return mqar(64, 3, 24, examples=20, seed=0)


def test_only_the_answers_are_scored(task):
    assert query_accuracy(Oracle(3, 64), *task, batch_size=8, device="cpu") == 1.0
    # the right values, one position late: every answer missed
    assert query_accuracy(Oracle(3, 64, late=True), *task, batch_size=8, device="cpu") == 0.0


def test_accuracy_by_pair_tells_which_pair_and_which_query_a_model_answers(task):
    # three pairs, each queried once: knowing only the last pair answers a third of the queries, all of them
    # that pair's, spread over whichever query slot it fell in; answering only the first query is the other split
    last = accuracy_by_pair(Oracle(3, 64, knows=[2]), *task, batch_size=8, device="cpu")
    assert last["pair"] == [0.0, 0.0, 1.0] and sum(last["query"]) == pytest.approx(1.0)
    first = accuracy_by_pair(Oracle(3, 64, answers=[0]), *task, batch_size=8, device="cpu")
    assert first["query"] == [1.0, 0.0, 0.0] and sum(first["pair"]) == pytest.approx(1.0)
    assert accuracy_by_pair(Oracle(3, 64), *task, batch_size=7, device="cpu") == {"pair": [1.0] * 3, "query": [1.0] * 3}
    assert query_accuracy(Oracle(3, 64, knows=[2]), *task, batch_size=8, device="cpu") == pytest.approx(1 / 3)


def test_runs_written_before_the_keyless_score_get_their_tasks():
    shown = {"config": {}, "runs": [{"pairs": 4}, {"pairs": 2, "keyless": 0.1}]}
    assert [r["keyless"] for r in with_keyless(shown)["runs"]] == [pytest.approx(25 / 48), 0.1]  # a recorded one stays
    hidden = {"config": {"hide_answers": True}, "runs": [{"pairs": 4}]}
    assert with_keyless(hidden)["runs"][0]["keyless"] == 0.25


def test_training_stops_at_the_target_on_the_validation_set_and_reads_the_test_set_once(task):
    config = dataclasses.replace(CONFIG, steps=50, eval_every=5, batch_size=4)
    # the test set's answers all shifted by one value: the oracle misses every one, and no check may see that
    answers = task.labels != -100
    shifted = task._replace(labels=torch.where(answers, (task.labels + 1) % 64, task.labels))
    row = train_recall(Oracle(3, 64), task, task, shifted, config, "cpu", seed=0)
    assert row["steps"] == 5 and row["reached_target"] and row["valid_accuracy"] == 1.0 and row["accuracy"] == 0.0
    assert [step for step, _, _ in row["history"]] == [5] and row["history"][0][1] == 1.0
    assert row["accuracy_by"] == {"pair": [0.0] * 3, "query": [0.0] * 3}  # the test set's split
    never = dataclasses.replace(config, steps=7)
    row = train_recall(Oracle(3, 64, late=True), task, task, task, never, "cpu", seed=0)
    assert row["steps"] == 7 and not row["reached_target"]  # ran to the end, evaluated at the last step
    assert [step for step, _, _ in row["history"]] == [5, 7]  # every check, the last step's included
    assert [accuracy for _, accuracy, _ in row["history"]] == [0.0, 0.0]


def test_the_validation_set_is_drawn_apart_from_the_test_set(monkeypatch):
    drawn = []
    real = recall_module.mqar
    monkeypatch.setattr(recall_module, "mqar", lambda *args: drawn.append(args) or real(*args))
    config = dataclasses.replace(quick_recall_config(), models=("lstm",), widths=(32,), steps=2, valid_examples=16)
    run = run_recall(config)["runs"][0]
    train, test, valid = drawn  # vocab, pairs, seq_len, examples, seed, power_a, hide_answers
    assert (test[3], valid[3]) == (config.test_examples, 16) and len({train[4], test[4], valid[4]}) == 3
    assert 0 <= run["valid_accuracy"] <= 1 and run["history"][-1][1] == run["valid_accuracy"]
    with pytest.raises(ConfigError, match="valid_examples must be a positive integer"):
        dataclasses.replace(config, valid_examples=0)


def test_each_finished_run_is_handed_on_before_the_next_starts():
    config = dataclasses.replace(quick_recall_config(), models=("lstm",), widths=(32, 48), steps=2)
    seen = []
    results = run_recall(config, on_run=seen.append)
    (partial,) = seen  # after the first run; the last one's results are the return value
    assert partial["complete"] is False and results["complete"] is True
    assert [r["width"] for r in partial["runs"]] == [32] and partial["runs"][0] == results["runs"][0]
    assert {k: v for k, v in partial.items() if k not in ("runs", "date", "complete")} == {
        k: v for k, v in results.items() if k not in ("runs", "date", "complete")}  # fmt: skip


def test_a_process_stopped_mid_sweep_keeps_its_finished_runs_on_disk(capsys, monkeypatch, tmp_path):
    # as a deadline's `timeout` stops a sweep process: the runs it finished are in its recall.json
    real, calls = recall_module.train_recall, []

    def second_run_stops(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(recall_module, "train_recall", second_run_stops)
    assert main(["recall", "--quick", "--models", "lstm", "--steps", "2", "--device", "cpu", "--out", str(tmp_path)]) == 130
    assert f"the runs finished so far are in {tmp_path / 'recall.json'}" in capsys.readouterr().err
    written = json.loads((tmp_path / "recall.json").read_text())
    assert written["complete"] is False and [r["width"] for r in written["runs"]] == [32]
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "recall.png").exists()


def test_a_runs_time_is_judged_from_its_models_recorded_steps():
    def run(model, seq_len, width, ms, seed=0):
        return {"model": model, "seq_len": seq_len, "width": width, "seed": seed, "ms_per_step": ms}

    runs = [run("lstm", 64, 64, 10.0), run("lstm", 64, 64, 14.0, 1), run("lstm", 64, 64, 30.0, 2),  # median 14
            run("lstm", 128, 64, 40.0), run("lstm", 64, 256, 20.0), run("lstm", 64, 512, 50.0),
            run("tinygpt2", 64, 64, 1.0), {"model": "mamba2", "seq_len": 64, "width": 64, "seed": 0}]  # fmt: skip
    assert estimated_seconds(runs, "lstm", 64, 64, 1000) == 14.0 + START_SECONDS  # the seeds' median
    assert estimated_seconds(runs, "lstm", 128, 64, 1000) == 40.0 + START_SECONDS  # its own length before a scaled one
    assert estimated_seconds(runs, "lstm", 512, 64, 1000) == 40.0 * 4 + START_SECONDS  # nearest length, times 512 / 128
    assert estimated_seconds(runs, "lstm", 64, 256, 500) == 10.0 + START_SECONDS  # its own width
    # no run of width 128: the slowest width's median at the nearest length (width 512's 50 ms, not width 64's 14)
    assert estimated_seconds(runs, "lstm", 64, 128, 1000) == 50.0 + START_SECONDS
    assert estimated_seconds(runs, "tinygpt2", 256, 512, 1000) == 4.0 + START_SECONDS
    assert estimated_seconds(runs, "mamba2", 64, 64, 1000) is None  # a run without a step time judges nothing
    assert estimated_seconds(runs, "new_llm", 64, 64, 1000) is None and estimated_seconds([], "lstm", 64, 64, 1) is None


def test_the_gpu_sweep_covers_three_or_more_state_sizes_per_model():
    config = load_recall_config(DEFAULT_CONFIG)
    assert set(config.models) == set(FAMILIES)
    assert len(config.widths) >= 3 and min(config.widths) >= 64 and max(config.widths) <= 512
    assert config.settings() and all(t >= 4 * n for t, n in config.settings())
    assert config.hide_answers  # no query answerable by elimination (docs/recall.md)


def test_the_cpu_sweep_covers_every_family_at_three_state_sizes_on_one_thread():
    config = load_recall_config(DEFAULT_CONFIG.parent / "cpu_small.toml")
    assert set(config.models) == set(FAMILIES) and len(config.widths) == 3
    assert config.cpu_threads == 1 and config.settings() == [(64, 4)]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"widths": "30"}, "widths must be multiples of 16, got 30"),
        ({"models": "mamba"}, "models: unknown model 'mamba'"),
        ({"pairs": "64"}, "no seq_len in [32] is at least 4 × pairs"),
        ({"steps": "0"}, "steps must be a positive integer"),
        ({"seq_lens": "256", "pairs": "40"}, "vocab_size 64 has too few keys for 40 pairs"),
        ({"fast_path": "fast"}, "fast_path: unknown 'fast'"),
        ({"seq_lens": "x"}, "seq_lens: expected an integer"),
        ({"lr": "0"}, "lr and grad_clip must be positive, got 0.0"),
        ({"warmup": "1"}, "warmup in [0, 1), got 0.1 and 1.0"),
    ],
)
def test_bad_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_recall_config(None, quick=True, overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_points_replace_the_product_until_the_flags_name_a_grid(tmp_path):
    path = tmp_path / "diagonal.toml"
    path.write_text("seq_lens = [64, 512]\npairs = [4, 64]\npoints = [[64, 4], [512, 64]]\nvocab_size = 256\n")
    assert load_recall_config(path).settings() == [(64, 4), (512, 64)]  # not (512, 4)
    flagged = load_recall_config(path, overrides={"seq_lens": "512", "pairs": "4"})
    assert flagged.points == () and flagged.settings() == [(512, 4)]
    path.write_text("points = [[64, 32]]\nvocab_size = 256\n")
    with pytest.raises(ConfigError, match="points: seq_len 64 is less than 4 × pairs for 32 pairs"):
        load_recall_config(path)
    path.write_text("points = [[64]]\n")
    with pytest.raises(ConfigError, match=r"points: expected \[seq_len, pairs\]"):
        load_recall_config(path)


def test_bad_flag_exits_1_before_any_work(capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["recall", "--quick", "--widths", "32,40", "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "newllm: error: widths must be multiples of 16, got 40"
    assert main(["recall", "--quick", "--weight-decay", "-0.1", "--out", str(out)]) == 1
    assert "weight_decay must be >= 0" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


def test_quick_runs_end_to_end(capsys, tmp_path):
    # --widths 32 halves the quick mode's time; every family still trains, is scored and is plotted
    assert main(["recall", "--quick", "--widths", "32", "--weight-decay", "0.05", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    results = json.loads((tmp_path / "recall.json").read_text())
    assert (tmp_path / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["command"] == f"newllm recall --quick --widths 32 --weight-decay 0.05 --device cpu --out {tmp_path}"
    assert results["config"]["weight_decay"] == 0.05 and {r["weight_decay"] for r in results["runs"]} == {0.05}
    assert {"commit", "date", "device", "environment", "config", "seeds"} <= set(results)
    assert results["environment"]["torch"] == torch.__version__
    runs = results["runs"]
    assert sorted(r["model"] for r in runs) == sorted(FAMILIES)
    assert all(0.0 <= r["accuracy"] <= 1.0 and 1 <= r["steps"] <= results["config"]["steps"] for r in runs)
    # attention keeps every key and value: TinyGPT2 carries more state than the context vector and the LSTM
    # (Mamba-2's expanded SSM state, 2w × 64 per layer, outweighs a 32-token key/value cache at this width)
    gpt2 = next(r for r in runs if r["model"] == "tinygpt2")
    assert gpt2["state_bytes"] > max(r["state_bytes"] for r in runs if r["model"] in ("new_llm", "new_llm_mlp", "lstm"))
    easiest = min(r["pairs"] for r in runs)
    assert max(r["accuracy"] for r in runs if r["pairs"] == easiest) >= 3 * runs[0]["chance"]
    table = capsys.readouterr().out
    assert "| TinyGPT2 | 32 |" in table and "recall.png" in table


def test_the_cpu_sweeps_tables_in_recall_md_are_their_json():
    """docs/recall.md's CPU tables, number by number, against the committed recall.json files."""
    docs = DEFAULT_CONFIG.parents[2] / "docs"
    text = (docs / "recall.md").read_text(encoding="utf-8")
    for name in ("recall_cpu_small", "recall_cpu_one_pair"):
        runs = json.loads((docs / "results" / f"{name}.json").read_text(encoding="utf-8"))["runs"]
        for label in {FAMILIES[r["model"]][1] for r in runs}:
            pattern = rf"\| {re.escape(label)} \| 32 / 64 / 128 \|.*" if name == "recall_cpu_small" else \
                rf"\| {re.escape(label)} \| \d+ (B|KiB) \| 0\.\d{{3}} \|"  # fmt: skip
            row = next(line for line in text.splitlines() if re.fullmatch(pattern, line))
            printed = [float(x) for x in re.findall(r"\b0\.\d{3}\b", row)]
            widths = sorted(r["width"] for r in runs if FAMILIES[r["model"]][1] == label)
            expected = [next(r["accuracy"] for r in runs if FAMILIES[r["model"]][1] == label and r["width"] == w)
                        for w in widths]  # fmt: skip
            assert printed == [round(a, 3) for a in expected], (name, label)
    for model in ("new_llm", "lstm"):
        (run,) = json.loads((docs / "results" / f"recall_cpu_longer_{model}.json").read_text(encoding="utf-8"))["runs"]
        row = next(line for line in text.splitlines() if re.fullmatch(
            rf"\| {re.escape(FAMILIES[model][1])} \| \d+ (B|KiB) \| {run['steps']:,} \| 0\.\d{{3}} \|", line))  # fmt: skip
        assert float(row.split("|")[-2]) == round(run["accuracy"], 3), model


def test_the_first_gpu_sweep_in_recall_md_is_its_json():
    """The first GPU sweep's table (a cell per setting: accuracy at each width) and its loss and keyless claims."""
    lines, results = _recall_doc("recall_gpu_sweep_vocab8192")
    runs = results["runs"]
    settings = [(64, 4), (64, 16), (128, 4)]
    start = lines.index("| model | state | 64 tokens, 4 pairs | 64 tokens, 16 pairs | 128 tokens, 4 pairs |")
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("|").split(" | ")[2:] for line in lines[start + 2: start + 7]}
    assert len(rows) == len(FAMILIES) and {r["seed"] for r in runs} == {0}
    for family, (_, label) in FAMILIES.items():
        for (seq_len, pairs), cell in zip(settings, rows[label]):
            own = sorted((r for r in runs if (r["model"], r["seq_len"], r["pairs"]) == (family, seq_len, pairs)),
                         key=lambda r: r["width"])  # fmt: skip
            expected = " / ".join(f"{r['accuracy']:.3f}" for r in own) if own else "–"
            assert cell.strip() == expected, (label, seq_len, pairs)
            assert not own or [r["width"] for r in own] == [64, 128, 256, 512]
    text = " ".join(lines)
    recurrent = [r["final_loss"] for r in runs if r["model"] != "tinygpt2"]
    assert f"loss of {min(recurrent):.2f}–{max(recurrent):.2f}" in text and max(r["accuracy"] for r in runs if r["model"] != "tinygpt2") < 0.01
    assert f"13 of the 60 processes, {len(runs)} runs" in text


def test_the_cpu_step_times_in_recall_md_are_their_jsons():
    lines, _ = _recall_doc("recall_gpu_sweep_vocab8192")
    text = " ".join(line.strip() for line in lines)
    folder = DEFAULT_CONFIG.parents[2] / "docs" / "results" / "recall_step_times_cpu"
    spans = []
    for vocab in (8192, 256):
        timed = json.loads((folder / f"vocab{vocab}.json").read_text(encoding="utf-8"))
        assert timed["config"]["vocab_size"] == vocab and timed["device"] == "cpu"
        assert {r["model"] for r in timed["rows"]} == set(FAMILIES) and {r["width"] for r in timed["rows"]} == {64}
        spans.append(sorted(r["ms_per_step"] for r in timed["rows"]))
    slow, fast = spans
    assert f"costs {slow[0] / 1000:.2f}–{slow[-1] / 1000:.2f} s for every family at vocabulary 8,192" in text
    assert f"against {fast[0]:.0f}–{fast[-1]:.0f} ms at 256" in text


def _logged_runs(folder, seq_len):
    """(model, width, seed) -> (accuracy, steps) from the logs of sweep processes a deadline cut before they wrote a
    recall.json: each finished run logs one line."""
    logged = {}
    for log in sorted(folder.glob(f"*_T{seq_len}_p*_s*.log")):
        for model, width, seed, accuracy, steps in re.findall(rf"\] (\w+) width (\d+), T={seq_len}, \d+ pairs, seed (\d+): "
                                                              r"accuracy ([\d.]+) after (\d+) steps",
                                                              log.read_text(encoding="utf-8")):  # fmt: skip
            logged[model, int(width), int(seed)] = (float(accuracy), int(steps))
    return logged


def _sweep_log_processes(log, status):
    """(model, seq_len, width, seed) of each one-width process a sweep log names with `status` ("ended (0)", ...)."""
    return {(model, int(seq_len), int(width), int(seed)) for model, seq_len, seed, width in
            re.findall(rf"^\S+ (\w+)_T(\d+)_p\d+_s(\d+)_w(\d+): {re.escape(status)}$", log, re.MULTILINE)}  # fmt: skip


def test_the_gpu_sweep_at_vocabulary_256_in_recall_md_is_its_json():
    """Both tables of the vocabulary-256 GPU sweep, the rows and seeds read from the logs of its cut processes, and
    the counts, losses and step times the text states."""
    lines, results = _recall_doc("recall_gpu_sweep")
    folder = DEFAULT_CONFIG.parents[2] / "docs" / "results" / "recall_gpu_sweep"
    runs, config = results["runs"], load_recall_config(DEFAULT_CONFIG.parent / "sweep.toml")
    labels = {label: family for family, (_, label) in FAMILIES.items()}
    by_key = {(r["model"], r["seq_len"], r["width"], r["seed"]): r for r in runs}
    # the third part: one process a run; the ones that ended well are its runs in the recall.json
    sweep_third = (folder / "sweep_third.log").read_text(encoding="utf-8")
    third = _sweep_log_processes(sweep_third, "ended (0)")
    cut_third = _sweep_log_processes(sweep_third, "ended (124)")
    assert third <= set(by_key) and len(third) == 9
    names = {f"{m}_T{t}_p{t // 16}_s{s}_w{w}.log" for m, t, w, s in cut_third}  # 4 pairs in 64 tokens, 8 in 128
    assert {p.name for p in (folder / "cut_third").iterdir()} == names
    assert len(cut_third) == 11 and not any(_logged_runs(folder / "cut_third", t) for t in (64, 128))  # none finished
    # the MLP cell at width 512 and 64 tokens, cut a third time: past step 1,750, the slowest run of the point
    cut_512 = [(folder / "cut_third" / f"new_llm_mlp_T64_p4_s{s}_w512.log").read_text(encoding="utf-8")
               for s in (0, 1, 2)]  # fmt: skip
    assert all(re.findall(r"step (\d+):", log)[-1] == "1750" for log in cut_512)
    ms = [float(x) for log in cut_512 for x in re.findall(r"([\d.]+) ms a step", log)]
    assert min(ms) > max(r["ms_per_step"] for r in runs if r["seq_len"] == 64)
    assert 14.5 < min(ms) * 2 / 60 < max(ms) * 2 / 60 < 16  # 2,000 steps: about 15 minutes
    assert (f"side by side it took {min(ms):.0f}–{max(ms):.0f} ms a step, so its 2,000 steps need about 15 minutes"
            in " ".join(lines))  # fmt: skip
    # the fourth: the same without the MLP cell, 14 processes at once, a deadline 420 s after the sweep's start
    sweep_fourth = (folder / "sweep_fourth.log").read_text(encoding="utf-8")
    fourth = _sweep_log_processes(sweep_fourth, "ended (0)")
    cut_fourth = _sweep_log_processes(sweep_fourth, "ended (124)")
    started = _sweep_log_processes(sweep_fourth, "started")
    assert fourth <= set(by_key) and not fourth & third and len(fourth) == 4
    assert started == fourth | cut_fourth and len(started) == 14 and "new_llm_mlp" not in sweep_fourth
    assert {p.name for p in (folder / "cut_fourth").iterdir()} == {
        f"{m}_T{t}_p{t // 16}_s{s}_w{w}.log" for m, t, w, s in cut_fourth}  # fmt: skip
    assert len(cut_fourth) == 10 and not any(_logged_runs(folder / "cut_fourth", t) for t in (128, 256))  # none finished
    clock = {status: sorted(int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in
                            re.findall(rf"^(\d\d):(\d\d):(\d\d) \w+: {re.escape(status)}", sweep_fourth, re.MULTILINE))
             for status in ("in RESUME", "ended (0)", "ended (124)", "not started (deadline)")}  # fmt: skip
    deadline = clock["ended (124)"][0]  # the cuts, all within a second
    assert clock["ended (124)"][-1] - deadline <= 1 and deadline - clock["in RESUME"][0] == 420
    assert clock["not started (deadline)"][0] == clock["ended (0)"][0] > deadline - 240  # MIN_LEFT
    last_step = {(m, t, w, s): int(re.findall(r"step (\d+):", (folder / "cut_fourth" / f"{m}_T{t}_p{t // 16}_s{s}_w{w}.log")
                                             .read_text(encoding="utf-8"))[-1]) for m, t, w, s in cut_fourth}  # fmt: skip
    furthest = max(last_step.values())
    assert sorted(k for k, step in last_step.items() if step == furthest) == [
        ("lstm", 256, 512, 0), ("new_llm", 128, 64, 1), ("new_llm", 128, 256, 1)]  # fmt: skip
    assert {("new_llm", 128, w, 1) for w in (64, 256, 512)} <= cut_third & cut_fourth

    logged = _logged_runs(folder / "cut", 64)  # the MLP cell's in the first part, which wrote no recall.json
    assert sorted(logged) == [("new_llm_mlp", w, s) for w in (64, 256) for s in (0, 1, 2)]
    # the second part ran those processes again and was cut at the same width, the third ran each width alone and
    # finished: the same accuracies to three digits; as do the prototype's 128-token seed 0 in the second's logs and
    # the third's recall.json
    again = _logged_runs(folder / "cut_resumed", 64)
    assert {key: accuracy for key, (accuracy, _) in again.items()} == {key: a for key, (a, _) in logged.items()}
    for (model, width, seed), (accuracy, steps) in logged.items():
        run = by_key[model, 64, width, seed]
        assert (model, 64, width, seed) in third and (round(run["accuracy"], 3), run["steps"]) == (accuracy, steps)
    for (model, width, seed), (accuracy, steps) in _logged_runs(folder / "cut_resumed", 128).items():
        if (model, 128, width, seed) in third:
            assert (round(by_key[model, 128, width, seed]["accuracy"], 3), by_key[model, 128, width, seed]["steps"]) == (
                accuracy, steps)  # fmt: skip
    assert {(m, w) for m, t, w, s in third if t == 128} == {("new_llm", w) for w in (64, 256, 512)}
    # TinyGPT2's 128-token seed 2, in the second part's log (widths in one process) and alone in the fourth's runs:
    # width 64 the same to three digits, width 256 not, apart from the first evaluation
    again_128 = _logged_runs(folder / "cut_resumed", 128)
    gpt2 = {w: by_key["tinygpt2", 128, w, 2] for w in (64, 256)}
    assert {("tinygpt2", 128, w, 2) for w in (64, 256)} <= fourth
    assert round(gpt2[64]["accuracy"], 3) == again_128["tinygpt2", 64, 2][0] != again_128["tinygpt2", 256, 2][0]
    assert round(gpt2[256]["accuracy"], 3) != again_128["tinygpt2", 256, 2][0]
    one_process = (folder / "cut_resumed" / "tinygpt2_T128_p8_s2.log").read_text(encoding="utf-8")
    assert one_process.index("tinygpt2 width 64,") < one_process.index("tinygpt2 width 256,")  # width 64 first
    first_loss = re.findall(r"step 250: validation accuracy [\d.]+, training loss ([\d.]+)", one_process)
    assert gpt2[256]["history"][0][0] == 250 and f"{gpt2[256]['history'][0][2]:.3f}" != first_loss[1]
    gpt2_text = (f"TinyGPT2's seed 2 at 128 tokens, width 64 ({gpt2[64]['accuracy']:.3f}), gave the same test accuracy "
                 f"to three digits in a log and in the recall.json. TinyGPT2's width 256 there did not: "
                 f"{again_128['tinygpt2', 256, 2][0]:.3f} in the log, where it ran after width 64 in the same process, "
                 f"{gpt2[256]['accuracy']:.3f} in the recall.json, the two apart from the first evaluation on (training "
                 f"loss {first_loss[1]} and {gpt2[256]['history'][0][2]:.3f} at step 250)")  # fmt: skip

    start = lines.index("| model | width | state | parameters | accuracy | seeds 0, 1, 2 | steps |")
    rows = lines[start + 2: lines.index("", start)]
    assert len(rows) == 14
    means = {}  # (model, seq_len, width) -> "mean ± std" as the tables print it
    for row in rows:
        label, width, state, parameters, mean_std, seeds, steps = _cells(row)
        family, width = labels[label], int(width)
        means[family, 64, width] = mean_std
        own = sorted((r for r in runs if (r["model"], r["width"], r["seq_len"], r["pairs"]) == (family, width, 64, 4)),
                     key=lambda r: r["seed"])  # fmt: skip
        assert [r["seed"] for r in own] == [0, 1, 2] and state == format_bytes(own[0]["state_bytes"])
        assert parameters == f"{own[0]['parameters']:,}" and f"{mean_std} | {seeds}" == _seed_cells(own)
        assert steps == ", ".join(str(r["steps"]) for r in own)
    assert not [r for r in runs if (r["model"], r["seq_len"], r["width"]) == ("new_llm_mlp", 64, 512)]

    # 128 tokens: each seed from the recall.json, else from a cut process's log (and then named in the last column)
    longer = [r for r in runs if (r["seq_len"], r["pairs"]) == (128, 8)]
    found = {(r["model"], r["width"], r["seed"]): (r["accuracy"], r["steps"]) for r in longer}
    state_found = {(r["model"], r["width"]): r["state_bytes"] for r in longer}
    from_logs = {key: value for key, value in _logged_runs(folder / "cut_resumed", 128).items() if key not in found}
    start = lines.index("| model | width | state | accuracy | seeds 0, 1, 2 | steps | read from logs |")
    rows = lines[start + 2: lines.index("", start)]
    assert len(rows) == len({(model, width) for model, width, _ in found | from_logs}) == 13
    for row in rows:
        label, width, state, mean_std, seeds, steps, logs = _cells(row)
        family, width = labels[label], int(width)
        means[family, 128, width] = mean_std
        own = [found.get((family, width, seed)) or from_logs.get((family, width, seed)) for seed in (0, 1, 2)]
        accuracy = [seed[0] for seed in own if seed]
        if (family, width) in state_found:
            assert state == format_bytes(state_found[family, width])
        else:  # logs only: measured (a model's state, not trained; slow at large widths, so only here)
            model = build_model(FAMILIES[family][0], model_config(family, width, config, 128))
            assert state == format_bytes(state_bytes(model, 128, "cpu"))
        assert mean_std == (f"{statistics.fmean(accuracy):.3f} ± {statistics.stdev(accuracy):.3f}" if len(accuracy) == 3
                            else "–")  # fmt: skip
        assert seeds == ", ".join(f"{seed[0]:.3f}" if seed else "–" for seed in own)
        assert steps == ", ".join(str(seed[1]) if seed else "–" for seed in own)
        assert logs == (", ".join(str(s) for s in (0, 1, 2) if (family, width, s) in from_logs) or "–")

    text = " ".join(line.strip() for line in lines)
    # the first part's runs check the test set, the later ones a validation set; the third's and fourth's named in
    # their logs
    first = [k for k, r in by_key.items() if "valid_accuracy" not in r]
    second = [k for k, r in by_key.items() if "valid_accuracy" in r and k not in third | fourth]
    assert all("valid_accuracy" in by_key[k] for k in third | fourth)

    def count(keys, seq_len):
        return sum(t == seq_len for _, t, _, _ in keys)

    shortest_point = [k for k in by_key if k[1] == 64]
    assert count(first, 64) + count(third, 64) == len(shortest_point) and count(second, 64) == count(fourth, 64) == 0
    assert f"but the study's MLP cell at width 512 ({len(shortest_point)} runs)" in text
    assert {m for m, t, _, _ in third if t == 64} == {"new_llm_mlp"}
    assert f"the prototype cell's seeds 0 and 2 ({len(longer)} runs)" in text
    # what finished at 128 tokens: three families whole but TinyGPT2's width 512 seed 2, the prototype's seeds 0 and 2
    whole = {(m, w, s) for m in ("lstm", "mamba2", "tinygpt2") for w in (64, 256, 512) for s in (0, 1, 2)}
    assert set(found) == whole - {("tinygpt2", 512, 2)} | {("new_llm", w, s) for w in (64, 256, 512) for s in (0, 2)}
    longest = [k for k in by_key if k[1] == 256]
    assert sorted(longest) == sorted(k for k in fourth if k[1] == 256) == [("lstm", 256, 256, 0), ("mamba2", 256, 256, 0)]
    assert len(shortest_point) + len(longer) + len(longest) == len(runs)
    assert f"width 256's seed 0 for the LSTM and Mamba-2 ({len(longest)} runs)" in text
    assert f"The first part's {len(first)} runs" in text
    assert (f"the later parts' {len(second) + len(third) + len(fourth)} ({len(second)}, {len(third)} and "
            f"{len(fourth)}) check") in text  # fmt: skip
    assert f"their deadlines cut {len(cut_third)} and {len(cut_fourth)} runs in progress" in text
    assert gpt2_text in text
    # the figure: the recall.json's runs
    assert {s for m, t, w, s in by_key if (m, t) == ("new_llm", 128)} == {0, 2}
    assert {s for m, t, w, s in by_key if (m, t, w) == ("tinygpt2", 128, 512)} == {0, 1}
    assert {(t, w) for m, t, w, s in by_key if m == "new_llm_mlp"} == {(64, 64), (64, 256)}
    # the MLP cell's two widths: the same test accuracy in each seed, their validation apart at 1 to 2 evaluations
    for seed in (0, 1, 2):
        narrow, wide = (by_key["new_llm_mlp", 64, w, seed] for w in (64, 256))
        assert narrow["accuracy"] == wide["accuracy"] and len(narrow["history"]) == len(wide["history"]) == 8
        assert 1 <= sum(a[1] != b[1] for a, b in zip(narrow["history"], wide["history"])) <= 2
    shortest = _logged_runs(folder / "cut_resumed", 256)
    assert sorted(shortest) == [(m, 64, 0) for m in ("lstm", "mamba2", "new_llm")]
    assert (f"the prototype cell {shortest['new_llm', 64, 0][0]:.3f}, the LSTM {shortest['lstm', 64, 0][0]:.3f}, "
            f"Mamba-2 {shortest['mamba2', 64, 0][0]:.3f}") in text  # fmt: skip
    lstm, mamba2 = (by_key[m, 256, 256, 0] for m in ("lstm", "mamba2"))
    assert lstm["keyless"] == mamba2["keyless"] == 0.0625 and "Nothing ran at 512 tokens" in text
    assert (f"the LSTM {lstm['accuracy']:.3f} after {lstm['steps']:,} steps, Mamba-2 {mamba2['accuracy']:.3f} after "
            f"{mamba2['steps']:,} (keyless {lstm['keyless']})") in text  # fmt: skip
    assert f"tokens** ({mamba2['accuracy']:.3f}, its one finished seed)" in text
    assert f"chance in its one finished seed ({lstm['accuracy']:.3f}, keyless {lstm['keyless']})" in text
    recalled = [r for r in runs if r["model"] == "mamba2" and r["width"] in (256, 512)]
    assert all(r["reached_target"] for r in recalled)
    assert f"within {min(r['steps'] for r in recalled):,}–{max(r['steps'] for r in recalled):,} steps" in text
    assert (f"width: {means['lstm', 128, 64]}, {means['lstm', 128, 256]} and {means['lstm', 128, 512]}. At 256 "
            "tokens") in text  # fmt: skip
    gpt2_128 = [r["accuracy"] for r in longer if r["model"] == "tinygpt2"]
    assert f"keyless 0.125 ({min(gpt2_128):.3f}–{max(gpt2_128):.3f})" in text
    assert {r["model"] for r in runs} == set(FAMILIES)
    assert (f"scores {means['lstm', 64, 64]} at 64 tokens and {means['lstm', 128, 64]} at 128, against New-LLM's "
            f"{means['new_llm', 64, 256]} and {means['new_llm', 128, 256]}") in text  # 1 KiB each  # fmt: skip
    losses = [r["final_loss"] for r in runs if r["model"] == "new_llm"]
    assert f"final training loss is {min(losses):.2f}–{max(losses):.2f}" in text
    alone = {(r["model"], r["seq_len"]): r["ms_per_step"] for r in
             json.loads((folder / "step_times_alone.json").read_text(encoding="utf-8"))["rows"]}  # fmt: skip
    slow = {family: [r["ms_per_step"] / alone[family, 64] for r in runs
                     if (r["model"], r["width"], r["seq_len"]) == (family, 256, 64)] for family in ("mamba2", "tinygpt2")}  # fmt: skip
    assert f"{min(slow['mamba2']):.1f} (Mamba-2) to {max(slow['tinygpt2']):.1f} (TinyGPT2) times slower" in text
    fastest, slowest = (sorted((ms, family) for (family, seq_len), ms in alone.items() if seq_len == 64)[i] for i in (0, -1))
    assert f"{fastest[0]:.1f} ms (TinyGPT2) to {slowest[0]:.1f} ms (Mamba-2)" in text
    assert (fastest[1], slowest[1]) == ("tinygpt2", "mamba2")

    # what is left: every run of the config not in the recall.json, at the step alone (linear in the length)
    def hours(keys):
        return sum(alone[m, 64] + (alone[m, 512] - alone[m, 64]) * (t - 64) / 448 for m, t in keys) * 2 / 3600

    every = [(m, t, w, s) for m in FAMILIES for t, _ in config.settings() for w in config.widths for s in (0, 1, 2)]
    done = {(r["model"], r["seq_len"], r["width"], r["seed"]) for r in runs}
    left = [(m, t) for m, t, w, s in every if (m, t, w, s) not in done]
    assert f"What it leaves is {len(left)} of the sweep's {len(every)} runs" in text
    assert f"What finished: {len(runs)} of the sweep's {len(every)} runs." in text
    assert f"about {hours(left):.1f} hours of one GPU alone" in text and f"{hours(left) / 1.5:.1f} hours at 1.5 times" in text
    summary = " ".join((DEFAULT_CONFIG.parents[2] / "docs" / "results.md").read_text(encoding="utf-8").split())
    assert (f"The rest, {len(left)} of the {len(every)} runs, needs about {hours(left):.1f} hours of one GPU alone "
            f"({hours(left) / 1.5:.1f} side by side)") in summary  # results.md repeats it  # fmt: skip
    assert f"and 16 pairs at width 256 in its one seed ({by_key['mamba2', 256, 256, 0]['accuracy']:.3f})" in summary
    did = hours([(m, t) for m, t, _, _ in every]) - hours(left)
    assert f"did about {did:.1f} hours of that work" in text
    # the parts' deadlines, in their commands: 1,409, 1,539, 900 and 420 s; the rate they achieved and the 25-minute
    # windows the rest needs
    parts = text.index("in four parts, each with a deadline")
    commands = text[parts: text.index("**What finished:", parts)]
    windows = [int(w) for w in re.findall(r"DEADLINE=\$\(\( \$\(date \+%s\) \+ (\d+) \)\)", commands)]
    assert windows == [1409, 1539, 900, 420] and f"in their {sum(windows):,} s" in text
    assert (f"did {hours([(m, t) for m, t, _, _ in third]):.1f} hours in {windows[2]} s and "
            f"{hours([(m, t) for m, t, _, _ in fourth]):.2f} in {windows[3]} s") in text  # fmt: skip
    assert f"the fourth part, with {windows[3]} s, left it out" in text
    # the runs cut past step 1,750 of 2,000 in the last two parts: the MLP cell's four in the third, three in the fourth
    last_third = {(m, t, w, s): int(re.findall(r"step (\d+):", (folder / "cut_third" / f"{m}_T{t}_p{t // 16}_s{s}_w{w}.log")
                                              .read_text(encoding="utf-8"))[-1]) for m, t, w, s in cut_third}  # fmt: skip
    late = [k for k, step in last_third.items() if step >= 1750] + [k for k, step in last_step.items() if step >= 1750]
    assert furthest == 1750 and sorted(k for k in late if k in cut_third and k not in cut_fourth) == [
        ("new_llm_mlp", 64, 512, s) for s in (0, 1, 2)] + [("new_llm_mlp", 128, 256, 0)]  # fmt: skip
    words = dict(enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                           "fifteen sixteen".split()))  # fmt: skip
    assert f"{words[len(late)]} of them past step {furthest:,} of 2,000" in text
    # the runs left that ESTIMATE (the recall.json's step times) would never start in a window like the second's
    need = {(m, t, w): estimated_seconds(runs, m, t, w, config.steps) for m, t, w, s in every if (m, t, w, s) not in done}
    too_long = {key: seconds for key, seconds in need.items() if seconds > windows[1]}
    assert set(too_long) == ({("new_llm", 512, w) for w in (64, 256, 512)} | {("new_llm_mlp", t, w) for t in (256, 512)
                             for w in (64, 256, 512)} | {("mamba2", 256, 512), ("mamba2", 512, 512), ("tinygpt2", 512, 512)})  # fmt: skip

    def span(keys):
        return f"{min(too_long[k] for k in keys):,.0f}–{max(too_long[k] for k in keys):,.0f} s"

    assert f"window of {windows[1]:,} s at 14 side by side" in text
    assert f"the prototype cell's at 512 tokens ({span([k for k in too_long if k[0] == 'new_llm'])})" in text
    assert f"the MLP cell's from 256 tokens ({span([k for k in too_long if k[0] == 'new_llm_mlp'])})" in text
    assert (f"Mamba-2's and TinyGPT2's width 512 at 512 tokens ({too_long['mamba2', 512, 512]:,.0f} and "
            f"{too_long['tinygpt2', 512, 512]:,.0f} s) and Mamba-2's at 256 ({too_long['mamba2', 256, 512]:,.0f} s)") in text
    assert f"width 512 at 64 tokens is judged {need['new_llm_mlp', 64, 512]:,.0f} s" in text
    assert min(ms) * 2 > 1.3 * need["new_llm_mlp", 64, 512]  # its cut runs' steps: about 15 minutes
    rate = did / (sum(windows) / 3600)  # hours of work an hour
    assert rate < 1.5 / 2 and "under half of what 1.5 times would give" in text
    assert f"in {words[len(windows)]} parts, each with a deadline" in text
    assert f"The {words[len(windows)]} parts did about" in text
    window = 25 / 60
    assert (f"the rest needs about {words[math.ceil(hours(left) / 1.5 / window)]} more windows of 25 minutes, and "
            f"{words[math.ceil(hours(left) / rate / window)]} at the rate achieved so far") in text  # fmt: skip


def _cells(row):
    """A Markdown table row's cells, stripped."""
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _recall_doc(results_folder):
    """docs/recall.md's lines and the recall.json of docs/results/<results_folder>."""
    docs = DEFAULT_CONFIG.parents[2] / "docs"
    lines = (docs / "recall.md").read_text(encoding="utf-8").splitlines()
    return lines, json.loads((docs / "results" / results_folder / "recall.json").read_text(encoding="utf-8"))


def _seed_cells(runs):
    """A table's last two cells for one variant's runs, seeds in order: "mean ± std | acc0, acc1, acc2"."""
    return f"{_mean_std(runs)} | {_per_seed(runs, 'accuracy')}"


def _per_seed(runs, key, digits=3):
    """One value of every run, seeds in order, as the tables write them: "acc0, acc1, acc2"."""
    return ", ".join(f"{r[key]:.{digits}f}" for r in sorted(runs, key=lambda r: r["seed"]))


def _mean_std(runs):
    """A variant's accuracy over its seeds as the docs write it: "mean ± std"."""
    accuracy = [r["accuracy"] for r in runs]
    return f"{statistics.fmean(accuracy):.3f} ± {statistics.stdev(accuracy):.3f}"


def _rate(lr):
    return f"{lr:.0e}".replace("e-0", "e-")  # 3e-3, as the tables write it


def _by(runs, key):
    """Runs grouped by key(run), in order of first appearance."""
    groups = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return groups


def _mean(runs):
    return statistics.fmean(r["accuracy"] for r in runs)


def _same_task(part, base, also=()):
    """Whether two recall.json files ran one task: configs equal but for what the commands set per run (and the
    config fields in `also`)."""
    varied = dict.fromkeys(("models", "lr", "options", *also))  # each row records these
    return part["parts"][0]["config"] | varied == base["parts"][0]["config"] | varied


def _change_rows(lines, results, change):
    """A table of the MLP cell at 1e-3, one row per set of options (`change` names each): every row against the
    JSON's runs, 3 seeds each. Returns the runs grouped by their options."""
    assert all((run["model"], run["lr"]) == ("new_llm_mlp", 1e-3) for run in results["runs"])
    variants = _by(results["runs"], lambda r: tuple(sorted(r["options"].items())))
    assert set(variants) == set(change)
    for options, runs in variants.items():
        assert sorted(r["seed"] for r in runs) == [0, 1, 2], options
        expected = (f"| {results['labels']['new_llm_mlp']} | 1e-3 | {change[options]} | {runs[0]['parameters']:,} | "
                    f"{runs[0]['state_bytes']:,} B | {_seed_cells(runs)} |")  # fmt: skip
        assert expected in lines, expected
    return variants


def test_the_equal_state_table_in_recall_md_is_its_json():
    """docs/recall.md's equal-state table, one row per family and learning rate, every number against
    docs/results/recall_cpu_equal_state/recall.json; the target's distance takes each family at its best rate."""
    lines, results = _recall_doc("recall_cpu_equal_state")
    assert results["seeds"] == [0, 1, 2]
    groups = _by(results["runs"], lambda r: (r["model"], r["lr"]))
    assert {lr for _, lr in groups} == {1e-3, 3e-3}
    assert {model for model, _ in groups} == set(results["labels"])
    mean = {}
    for (family, lr), runs in groups.items():
        assert sorted(r["seed"] for r in runs) == [0, 1, 2], (family, lr)
        assert all(r["steps"] == results["parts"][0]["config"]["steps"] for r in runs)
        mean[family, lr] = _mean(runs)
        run = runs[0]
        expected = (f"| {results['labels'][family]} | {_rate(lr)} | {run['width']} | {run['parameters']:,} | "
                    f"{run['state_bytes']:,} B | {_seed_cells(runs)} |")  # fmt: skip
        assert expected in lines, expected
    # the states the section compares are equal to within Mamba-2's convolution window
    states = {r["model"]: r["state_bytes"] for r in results["runs"]}
    assert states["new_llm"] == states["new_llm_mlp"] == states["lstm"] == 2048 < states["mamba2"] <= 2304
    best_lr = {f: max((lr for family, lr in groups if family == f), key=lambda lr: mean[f, lr]) for f in results["labels"]}
    best = {f: mean[f, lr] for f, lr in best_lr.items()}
    distance = max(best["lstm"], best["mamba2"]) - max(best["new_llm"], best["new_llm_mlp"])
    assert re.search(rf"missed\*\* by\s+{distance:.3f}", "\n".join(lines))
    # results.md repeats each family's best mean with its spread, and the distance
    summary = (DEFAULT_CONFIG.parents[2] / "docs" / "results.md").read_text(encoding="utf-8")
    for family, lr in best_lr.items():
        assert _mean_std(groups[family, lr]) in summary, family
    assert re.search(rf"missed by\s+{distance:.3f}", summary)


def test_the_two_pair_table_in_recall_md_is_its_json():
    """docs/recall.md's two-pair table: one row per model, learning rate and option, every number from its JSON."""
    lines, results = _recall_doc("recall_cpu_two_pairs")
    # the study's MLP cell, run later with the same config: as it is, then one lever changed at a time
    later = [_recall_doc(folder)[1] for folder in ("recall_cpu_two_pairs_mlp", "recall_cpu_two_pairs_mlp_levers")]
    runs = list(results["runs"])
    for part in later:
        assert _same_task(part, results)
        results["labels"].update(part["labels"])
        runs += part["runs"]
    change = {(): "none", (("forget_bias", 3),): "forget-gate bias 3",
              (("candidate", "linear"), ("context_clamp", 10)): "the prototype's update: linear Δ, clamp 10",
              (("final_norm", False),): "no final norm", (("tie_embeddings", False),): "its own head, not tied"}
    variants = _by(runs, lambda r: (r["model"], r["lr"], tuple(sorted(r["options"].items()))))
    assert len(variants) == 13
    for (model, lr, options), runs in variants.items():
        assert sorted(r["seed"] for r in runs) == [0, 1, 2], (model, lr, options)
        expected = (f"| {results['labels'][model]} | {_rate(lr)} | {change[options]} | "
                    f"{runs[0]['state_bytes']:,} B | {_seed_cells(runs)} |")  # fmt: skip
        assert expected in lines, expected


def test_the_levers_together_table_in_recall_md_is_its_json():
    """docs/recall.md's table of the MLP cell's levers together: the two-pair task's config, one row per change,
    every number from docs/results/recall_cpu_two_pairs_mlp_combined/recall.json, and the summary's gap."""
    lines, results = _recall_doc("recall_cpu_two_pairs_mlp_combined")
    assert _same_task(results, _recall_doc("recall_cpu_two_pairs")[1])
    update = (("candidate", "linear"), ("context_clamp", 10))
    change = {(("block", "linear"),): "Linear → ReLU blocks",
              (*update, ("final_norm", False)): "the prototype's update, no final norm",
              (*update, ("tie_embeddings", False)): "the prototype's update, its own head",
              (("final_norm", False), ("tie_embeddings", False)): "no final norm, its own head",
              (*update, ("final_norm", False), ("tie_embeddings", False)):
                  "all three: the prototype's update, no final norm, its own head"}  # fmt: skip
    variants = _change_rows(lines, results, change)
    pair = variants[(("final_norm", False), ("tie_embeddings", False))]
    assert f"reaches {_mean_std(pair)}" in "\n".join(lines)


def test_the_pair_rates_table_in_recall_md_is_its_json():
    """The MLP cell without final norm and with its own head at the LSTM's other two rates: the two-pair task's
    config, its rows, and the gap to the LSTM at its best rate that the text states."""
    lines, results = _recall_doc("recall_cpu_two_pairs_mlp_pair_rates")
    _, two_pairs = _recall_doc("recall_cpu_two_pairs")
    assert _same_task(results, two_pairs)
    by_lr = _by(results["runs"], lambda r: r["lr"])
    assert sorted(by_lr) == [3e-3, 1e-2]
    for lr, runs in by_lr.items():
        assert all(r["options"] == {"final_norm": False, "tie_embeddings": False} for r in runs)
        assert sorted(r["seed"] for r in runs) == [0, 1, 2]
        expected = (f"| {results['labels']['new_llm_mlp']} | {_rate(lr)} | no final norm, its own head | "
                    f"{runs[0]['parameters']:,} | {runs[0]['state_bytes']:,} B | {_seed_cells(runs)} |")  # fmt: skip
        assert expected in lines, expected
    lstm = _by([r for r in two_pairs["runs"] if r["model"] == "lstm"], lambda r: r["lr"])
    best_lstm = max(lstm.values(), key=_mean)
    best = max(by_lr.values(), key=_mean)
    text = " ".join(" ".join(lines).split())  # the sentences as read, line breaks and indents gone
    assert f"reaches {_mean_std(best)}; the LSTM at its best" in text
    assert f"{_mean_std(best_lstm)} with 2 KiB" in text
    assert f"The gap, {_mean(best_lstm) - _mean(best):.3f}" in text


def test_the_stream_update_table_in_recall_md_is_its_json():
    """The MLP cell whose update reads h_L before the final norm (update_input="stream"), tied and untied: the
    two-pair task's config, every number from docs/results/recall_cpu_two_pairs_mlp_stream/recall.json."""
    lines, results = _recall_doc("recall_cpu_two_pairs_mlp_stream")
    assert _same_task(results, _recall_doc("recall_cpu_two_pairs")[1])
    stream = (("update_input", "stream"),)
    change = {stream: "the update reads h_L, the head LN(h_L)",
              (("tie_embeddings", False), *stream): "the update reads h_L, the head LN(h_L), its own head"}  # fmt: skip
    variants = _change_rows(lines, results, change)
    untied = variants[(("tie_embeddings", False), *stream)]
    assert f"it falls to {_mean_std(untied)}" in " ".join(lines)


def test_the_pair_at_equal_state_table_in_recall_md_is_its_json():
    """The MLP cell without final norm and with its own head on the equal-state task: its rows and the target's
    distance against the best peer of the equal-state table (each at its better rate)."""
    lines, results = _recall_doc("recall_cpu_equal_state_mlp_pair")
    _, equal = _recall_doc("recall_cpu_equal_state")
    assert _same_task(results, equal)
    for run in results["runs"]:
        assert run["model"] == "new_llm_mlp" and run["state_bytes"] == 2048
        assert run["options"] == {"context_size": 512, "final_norm": False, "tie_embeddings": False}
    by_lr = _by(results["runs"], lambda r: r["lr"])
    assert sorted(by_lr) == [1e-3, 3e-3]
    for lr, runs in by_lr.items():
        assert sorted(r["seed"] for r in runs) == [0, 1, 2]
        expected = (f"| {results['labels']['new_llm_mlp']} | {_rate(lr)} | no final norm, its own head | "
                    f"{runs[0]['parameters']:,} | 2,048 B | {_seed_cells(runs)} |")  # fmt: skip
        assert expected in lines, expected
    peers = _by(equal["runs"], lambda r: (r["model"], r["lr"]))
    best_peer = max(_mean(runs) for (model, _), runs in peers.items() if model in ("lstm", "mamba2"))
    distance = best_peer - max(_mean(runs) for runs in by_lr.values())
    assert f"still **missed**, by {distance:.3f}" in "\n".join(lines)


@pytest.mark.parametrize("name", ["cpu_two_pairs", "cpu_equal_state", "cpu_small"])
def test_each_hidden_answer_config_is_its_shown_one_with_the_answers_hidden(name):
    shown = load_recall_config(DEFAULT_CONFIG.parent / f"{name}.toml")
    hidden = load_recall_config(DEFAULT_CONFIG.parent / f"{name}_hidden.toml")
    assert not shown.hide_answers and hidden.hide_answers
    assert dataclasses.replace(hidden, hide_answers=False) == shown  # the same task and training otherwise


def _variant_label(run, labels):
    """The tables' model cell: the family, and the levers a run took off (the final norm, the tied head)."""
    off = [text for option, text in (("final_norm", "no final norm"), ("tie_embeddings", "its own head"))
           if run["options"].get(option) is False]  # fmt: skip
    return ", ".join([labels[run["model"]], *off])


def _variants(results):
    return _by(results["runs"], lambda r: (r["seq_len"], r["pairs"], r["model"], tuple(sorted(r["options"].items())), r["lr"]))


def test_the_splits_table_in_recall_md_is_its_json():
    # accuracy by query, the seeds' mean, beside the keyless score of each task: every row from its JSON
    lines, results = _recall_doc("recall_cpu_splits")
    variants = _variants(results)
    assert len(variants) == 4
    for (seq_len, pairs, _, _, lr), runs in variants.items():
        assert sorted(r["seed"] for r in runs) == [0, 1, 2]
        by_query = " / ".join(f"{statistics.fmean(v):.3f}" for v in zip(*(r["accuracy_by"]["query"] for r in runs)))
        expected = (f"| {pairs} pairs in {seq_len} | {_variant_label(runs[0], results['labels'])} | {_rate(lr)} | "
                    f"{_mean_std(runs)} | {by_query} | {keyless_accuracy(pairs):.3f} |")  # fmt: skip
        assert expected in lines, expected


def test_the_hidden_answers_table_in_recall_md_is_its_json():
    lines, two = _recall_doc("recall_cpu_two_pairs_hidden")
    equal = _recall_doc("recall_cpu_equal_state_hidden")[1]
    rows = 0
    for results in (two, equal):
        assert all(part["config"]["hide_answers"] for part in results["parts"])
        for (seq_len, pairs, _, _, lr), runs in _variants(results).items():
            assert sorted(r["seed"] for r in runs) == [0, 1, 2]
            expected = (f"| {pairs} pairs in {seq_len} | {_variant_label(runs[0], results['labels'])} | {_rate(lr)} | "
                        f"{runs[0]['state_bytes']:,} B | {_seed_cells(runs)} | {1 / pairs:.3f} |")  # fmt: skip
            assert expected in lines, expected
            rows += 1
    assert rows == 10
    # the target's distance: the best recurrent peer's mean at equal state against the cell's
    mean = {run_model: _mean(runs) for (_, _, run_model, _, _), runs in _variants(equal).items()}
    assert re.search(rf"missed,\s+by\s+{mean['mamba2'] - mean['new_llm_mlp']:.3f}", "\n".join(lines))


def test_the_longer_equal_state_run_in_recall_md_is_its_json():
    lines, results = _recall_doc("recall_cpu_equal_state_hidden_8000")
    assert {run["steps"] for run in results["runs"]} == {8000} and results["parts"][0]["config"]["hide_answers"]
    text = " ".join(line.strip() for line in lines)
    assert f"(8,000), the cell without final norm and with its own head scores {_seed_cells(results['runs']).replace(' | ', ' (')})" in text


def test_every_family_at_equal_state_on_attentions_schedule_in_recall_md_is_its_json():
    # the table: each family's runs at 1e-3 and 12,000 steps (the MLP cell's pair from a JSON of its own), beside its
    # mean at 3e-3 and 4,000 from the equal-state table's JSON (the prototype's cell from its own); the target's
    # distance on this schedule
    lines, results = _recall_doc("recall_cpu_equal_state_hidden_1e-3_12000")
    pair = _recall_doc("recall_cpu_equal_state_hidden_pair_1e-3_12000")[1]
    equal = _recall_doc("recall_cpu_equal_state_hidden")[1]
    prototype = _recall_doc("recall_cpu_equal_state_hidden_prototype")[1]  # the prototype's cell on the table's schedule
    assert _same_task(prototype, equal, ("seeds",)) and {r["model"] for r in prototype["runs"]} == {"new_llm"}
    assert {(r["lr"], r["steps"]) for r in prototype["runs"]} == {(3e-3, 4000)}
    for longer in (results, pair):
        assert {(r["lr"], r["steps"]) for r in longer["runs"]} == {(1e-3, 12000)}
        assert all(_same_task({"parts": [part]}, equal, ("seeds", "steps", "widths")) for part in longer["parts"])
        assert longer["parts"][0]["config"]["hide_answers"]
    assert {(r["model"], r["options"]["final_norm"], r["options"]["tie_embeddings"]) for r in pair["runs"]} == {
        ("new_llm_mlp", False, False)}  # fmt: skip
    header = "| model | parameters | state | accuracy, mean ± std | seeds 0, 1, 2 | at 3e-3 in 4,000 steps"
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(header))
    shown = [line.strip() for line in lines[start + 2 : start + 6]]
    labels = results["labels"] | pair["labels"]
    variant = lambda r: (r["model"], tuple(sorted(r["options"].items())))  # noqa: E731
    expected, means = [], {}
    for (model, options), runs in _by(results["runs"] + pair["runs"], variant).items():
        assert sorted(r["seed"] for r in runs) == [0, 1, 2] and len({r["state_bytes"] for r in runs}) == 1
        before = [r for r in equal["runs"] + prototype["runs"] if variant(r) == (model, options)]
        means[_variant_label(runs[0], labels)] = _mean(runs)
        expected.append(f"| {_variant_label(runs[0], labels)} | {runs[0]['parameters']:,} | {runs[0]['state_bytes']:,} B | "
                        f"{_seed_cells(runs)} | {_mean_std(before) if before else 'not run'} |")  # fmt: skip
    assert sorted(shown) == sorted(expected) and len(means) == 4
    assert all(r["accuracy"] < r["keyless"] for r in results["runs"] + pair["runs"] if r["model"].startswith("new_llm"))
    new_llm = max(v for k, v in means.items() if k.startswith("New-LLM"))  # New-LLM's best mean: the prototype's cell
    assert new_llm == means[labels["new_llm"]]
    text = " ".join(line.strip() for line in lines)
    assert f"missed by {means['Mamba-2'] - new_llm:.3f} on this schedule ({new_llm:.3f} against Mamba-2's {means['Mamba-2']:.3f})" in text.replace("**", "")


def test_the_hidden_answer_norm_table_in_recall_md_is_its_json():
    """The final norm's two guesses, the answers hidden: the MLP cell with its own head whose update reads h_L
    before the norm, and the same head without weight decay. The hidden two-pair task's config, each row, and
    the means the text sets them against from their JSON."""
    lines, results = _recall_doc("recall_cpu_two_pairs_hidden_norm")
    hidden = _recall_doc("recall_cpu_two_pairs_hidden")[1]
    also = ("seeds", "weight_decay", "steps")  # two processes a variant, each row its weight decay and steps
    assert [_same_task({"parts": [part]}, hidden, also) for part in results["parts"]] == [True] * 10
    assert hidden["parts"][0]["config"]["hide_answers"]
    assert {(r["model"], r["lr"]) for r in results["runs"]} == {("new_llm_mlp", 3e-3)}
    variants = _by(results["runs"], lambda r: (tuple(sorted(r["options"].items())), r["weight_decay"], r["steps"]))
    six = hidden["parts"][0]["config"]["steps"]
    change = {((("tie_embeddings", False), ("update_input", "stream")), 0.1, six):
              "the update reads h_L, the head LN(h_L), its own head",
              ((("tie_embeddings", False),), 0.0, six): "its own head, no weight decay",
              ((("tie_embeddings", False),), 0.1, 12000): "its own head, 12,000 steps",
              ((("final_norm_type", "rms"), ("tie_embeddings", False)), 0.1, six):
              "the norm an RMSNorm (no centring), its own head",
              ((("final_norm_type", "center"), ("tie_embeddings", False)), 0.1, six):
              "the norm centring alone (no division), its own head",
              ((("final_norm_type", "center"), ("tie_embeddings", False)), 0.1, 12000):
              "the norm centring alone, its own head, 12,000 steps"}  # fmt: skip
    assert set(variants) == set(change)
    for key, runs in variants.items():
        assert sorted(r["seed"] for r in runs) == [0, 1, 2]
        expected = (f"| {results['labels']['new_llm_mlp']} | 3e-3 | {change[key]} | {runs[0]['parameters']:,} | 512 B | "
                    f"{_seed_cells(runs)} |")  # fmt: skip
        assert expected in lines, expected
    text = " ".join(" ".join(lines).split())
    stream, no_decay, longer, rms, center, center_longer = (variants[key] for key in change)
    losses = sorted(r["final_loss"] for r in stream)
    assert f"ln 64 ({losses[0]:.3f}–{losses[-1]:.3f})" in text
    losses = sorted(r["final_loss"] for r in longer)
    assert f"in every seed (loss {losses[0]:.2f}–{losses[-1]:.2f})" in text
    left = max(no_decay, key=lambda r: r["accuracy"])
    assert f"(loss {left['final_loss']:.2f} at step {left['steps']:,}, accuracy {left['accuracy']:.3f})" in text
    # which half of the norm: the RMSNorm at ln 64, centring alone at the keyless 0.5 (loss near ln 2)
    losses = sorted(r["final_loss"] for r in rms)
    assert f"its loss at ln 64 ({losses[0]:.3f}–{losses[-1]:.3f})" in text
    losses = sorted(r["final_loss"] for r in center)
    assert f"given ({_mean_std(center)}, loss {losses[0]:.2f}–{losses[-1]:.2f}, near ln 2" in text
    assert f"centring alone at 12,000 steps: {_mean_std(center_longer)}" in text
    shown = _variants(hidden)
    norm_own_head = shown[(32, 2, "new_llm_mlp", (("tie_embeddings", False),), 3e-3)]
    pair = shown[(32, 2, "new_llm_mlp", (("final_norm", False), ("tie_embeddings", False)), 3e-3)]
    assert f"norm in both paths ({_mean_std(norm_own_head)})" in text
    assert f"both paths gives {_mean_std(pair)}" in text
    assert f"the pair's {_mean(pair):.3f}" in text


def test_the_hidden_answer_small_sweep_table_in_recall_md_is_its_json():
    """The small CPU sweep with the answers hidden: every family at three widths and 3 seeds, each row's widths,
    parameters, state and accuracy (mean ± std per width) against docs/results/recall_cpu_small_hidden."""
    lines, results = _recall_doc("recall_cpu_small_hidden")
    assert all(part["config"]["hide_answers"] for part in results["parts"])
    header = "| model | width | parameters | state | accuracy, mean ± std (3 seeds) |"
    table = lines[lines.index(header) + 2:]
    table = table[:next(i for i, line in enumerate(table) if not line.startswith("|"))]
    families = _by(results["runs"], lambda r: r["model"])
    assert len(table) == len(families) == 5
    for model, runs in families.items():
        widths = _by(runs, lambda r: r["width"])
        assert sorted(widths) == [32, 64, 128] and all(sorted(r["seed"] for r in w) == [0, 1, 2] for w in widths.values())
        cells = [" / ".join(map(str, sorted(widths))),
                 " / ".join(f"{widths[w][0]['parameters']:,}" for w in sorted(widths)),
                 " / ".join(format_bytes(widths[w][0]["state_bytes"]) for w in sorted(widths)),
                 " / ".join(_mean_std(widths[w]) for w in sorted(widths))]
        assert f"| {results['labels'][model]} | {' | '.join(cells)} |" in table, model
    # the text's Mamba-2 numbers: its smallest and largest state, and the lone seed that stays at the keyless score
    text = " ".join(" ".join(lines).split())
    mamba = _by(families["mamba2"], lambda r: r["width"])
    for width in (32, 128):
        runs = mamba[width]
        assert f"{_mean_std(runs)} with {format_bytes(runs[0]['state_bytes'])}" in text, width
    assert f"the third stays at the keyless {min(r['accuracy'] for r in mamba[64]):.3f}" in text


def test_the_longer_tinygpt2_probe_in_recall_md_is_its_json():
    # TinyGPT2 at width 64, two rates on two schedule lengths, 3 seeds each: each row's mean ± std, accuracy and
    # final loss per seed, and the steps where each seed of the run that binds stops and leaves the plateau
    lines, results = _recall_doc("recall_cpu_small_hidden_tinygpt2_longer")
    assert all(r["model"] == "tinygpt2" and r["width"] == 64 for r in results["runs"])
    # one run per part (one seed, model and width each), in order: its part's config says the schedule it had
    assert len(results["parts"]) == len(results["runs"]) == 12
    schedules = {}
    for part, run in zip(results["parts"], results["runs"]):
        assert part["seeds"] == [run["seed"]] and part["config"]["lr"] == run["lr"]
        schedules.setdefault((_rate(run["lr"]), f"{part['config']['steps']:,}"), []).append(run)
    table = [line.strip() for line in lines if line.strip().startswith(("| 3e-3 |", "| 1e-3 |"))]
    assert len(table) == len(schedules) == 4
    for line in table:
        rate, steps, mean_std, accuracy, losses = (cell.strip() for cell in line.strip("|").split("|"))
        runs = sorted(schedules[(rate, steps)], key=lambda r: r["seed"])
        assert [r["seed"] for r in runs] == [0, 1, 2]
        assert mean_std.replace("**", "") == _mean_std(runs)
        assert mean_std.startswith("**") == all(r["reached_target"] for r in runs)
        assert accuracy == _per_seed(runs, "accuracy")
        assert losses == _per_seed(runs, "final_loss", 2)
    bound = sorted(schedules[("1e-3", "12,000")], key=lambda r: r["seed"])
    assert all(r["reached_target"] for r in bound)
    assert not any(r["reached_target"] for key, runs in schedules.items() if key != ("1e-3", "12,000") for r in runs)
    text = " ".join(" ".join(lines).split())
    assert f"(after {bound[0]['steps']:,}, {bound[1]['steps']:,} and {bound[2]['steps']:,} steps)" in text
    for run in bound:
        before, after = next((a, b) for a, b in zip(run["history"], run["history"][1:]) if b[1] > 0.5)
        steps = "steps " if run["seed"] == 0 else ""
        expected = f"seed {run['seed']} between {steps}{before[0]:,} and {after[0]:,} ({before[1]:.3f} to {after[1]:.3f})"
        assert expected in text, run["seed"]


def test_the_recurrent_models_on_attentions_schedule_in_recall_md_are_their_json():
    # every family at width 64 on the 1e-3, 12,000-step schedule, 3 seeds: parameters, state, mean ± std, each seed,
    # and the same width's 3-seed score of the 1,500-step sweep beside it
    lines, results = _recall_doc("recall_cpu_small_hidden_1e-3_12000")
    _, sweep = _recall_doc("recall_cpu_small_hidden")
    assert all(p["config"]["lr"] == 1e-3 and p["config"]["steps"] == 12000 and p["config"]["hide_answers"]
               for p in results["parts"])  # fmt: skip
    header = "| model | parameters | state | accuracy, mean ± std | seeds 0, 1, 2 | at 3e-3 in 1,500 steps (the table above) |"
    table = [line.strip() for line in lines[lines.index("  " + header) + 2:]]
    table = table[:next(i for i, line in enumerate(table) if not line.startswith("|"))]
    families = _by(results["runs"], lambda r: r["model"])
    assert len(table) == len(families) == 4
    for model, runs in families.items():
        assert all(r["width"] == 64 for r in runs) and sorted(r["seed"] for r in runs) == [0, 1, 2]
        before = [r for r in sweep["runs"] if r["model"] == model and r["width"] == 64]
        mean_std = _mean_std(runs)
        if all(r["reached_target"] for r in runs):
            mean_std = f"**{mean_std}**"
        row = (f"| {results['labels'][model]} | {runs[0]['parameters']:,} | {format_bytes(runs[0]['state_bytes'])} | "
               f"{mean_std} | {_per_seed(runs, 'accuracy')} | {_mean_std(before)} |")  # fmt: skip
        assert row in table, row
    text = " ".join(" ".join(lines).split())
    losses = {f"{r['final_loss']:.2f}" for r in families["new_llm_mlp"]}
    assert losses == {"4.16"} and "its loss at ln 64 (4.16) in every seed" in text


def test_the_wide_cell_at_equal_state_is_its_runs():
    """recall.md's width-512 prototype cell: the committed config is the one seed 0 ran with, only its width and
    CUDA graphs differ from the hidden equal-state task, and the bullet's accuracies are the seeds' printed ones."""
    folder = DEFAULT_CONFIG.parents[2] / "docs" / "results" / "recall_gpu_equal_state_wide"
    wide = load_recall_config(DEFAULT_CONFIG.parent / "gpu_equal_state_hidden_wide.toml")
    hidden = load_recall_config(DEFAULT_CONFIG.parent / "cpu_equal_state_hidden.toml")
    assert dataclasses.replace(wide, widths=hidden.widths, fast_path=hidden.fast_path) == hidden
    ran = json.loads((folder / "recall_s0.json").read_text(encoding="utf-8"))
    assert ran["device"] == "cuda" and ran["runs"][0]["state_bytes"] == 2048
    committed = json.loads(json.dumps(dataclasses.asdict(wide)))  # tuples as the JSON's lists
    assert committed.pop("points") == []  # a field added after the run: its default runs the product, as it ran
    assert committed.pop("valid_examples") is None  # added after the run, which checked and stopped on its test set
    assert {k: v for k, v in ran["config"].items() if k not in ("models", "seeds")} == {
        k: v for k, v in committed.items() if k not in ("models", "seeds")}
    accuracies = []
    for seed in range(3):
        line = (folder / f"s{seed}.log").read_text(encoding="utf-8").splitlines()[0]
        found = re.fullmatch(rf"\[newllm\] new_llm width 512, T=64, 4 pairs, seed {seed}: accuracy (\S+) after 4000 steps", line)
        accuracies.append(float(found.group(1)))
    assert f"{ran['runs'][0]['accuracy']:.3f}" == f"{accuracies[0]:.3f}"
    text = " ".join((DEFAULT_CONFIG.parents[2] / "docs" / "recall.md").read_text(encoding="utf-8").split())
    cells = ", ".join(f"{a:.3f}" for a in accuracies)
    assert f"scores {statistics.fmean(accuracies):.3f} ± {statistics.stdev(accuracies):.3f} ({cells})" in text
    assert f"{ran['runs'][0]['parameters']:,} parameters" in text
