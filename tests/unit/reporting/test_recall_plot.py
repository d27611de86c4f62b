"""recall.json → table and figure: seeds averaged per model × width × setting, one panel per setting."""

import json

import pytest

from newllm.cli import main
from newllm.reporting.recall_plot import (
    checked_set,
    choose_rates,
    format_rate_choice,
    format_recall_splits,
    format_recall_table,
    merge_recall_results,
    plot_recall,
    plot_recall_history,
    summarize,
    write_recall_outputs,
)


def _run(model, width, seq_len, pairs, seed, accuracy, state):
    return {"model": model, "width": width, "seq_len": seq_len, "pairs": pairs, "seed": seed, "accuracy": accuracy,
            "steps": 100 + seed, "parameters": 1000 * width, "state_bytes": state, "chance": 0.25}  # fmt: skip


RESULTS = {
    "labels": {"lstm": "LSTM", "tinygpt2": "TinyGPT2"},
    "seeds": [0, 1],
    "runs": [
        _run("tinygpt2", 32, 64, 4, 0, 1.0, 32768), _run("tinygpt2", 32, 64, 4, 1, 0.5, 32768),
        _run("lstm", 64, 64, 4, 0, 0.2, 1024), _run("lstm", 32, 64, 4, 0, 0.1, 512),
        _run("lstm", 32, 32, 2, 0, 0.3, 512),
    ],
}  # fmt: skip


def test_seeds_are_averaged_and_rows_ordered_by_setting_model_width():
    rows = summarize(RESULTS)
    keys = [(r["seq_len"], r["pairs"], r["model"], r["width"]) for r in rows]
    assert keys == [(32, 2, "lstm", 32), (64, 4, "lstm", 32), (64, 4, "lstm", 64), (64, 4, "tinygpt2", 32)]
    gpt2 = rows[-1]
    assert (gpt2["accuracy"], gpt2["accuracy_min"], gpt2["accuracy_max"], gpt2["seeds"]) == (0.75, 0.5, 1.0, 2)
    assert gpt2["accuracy_std"] == pytest.approx(0.5**0.5 / 2)  # sample std of 1.0 and 0.5
    assert rows[0]["accuracy_std"] is None  # one seed: no spread
    assert gpt2["steps"] == 100.5


def test_table_names_models_by_label_with_state_in_binary_units():
    table = format_recall_table(RESULTS)
    assert "| 64 | 4 | TinyGPT2 | 32 | 32,000 | 32 KiB | 0.750 ± 0.354 | 100 |" in table
    assert "| 64 | 4 | LSTM | 32 | 32,000 | 512 B | 0.100 | 100 |" in table  # one seed: no ± part
    assert "accuracy (mean ± std of 2 seeds)" in table and "0.250" in table
    assert "Values without" not in table  # results written before the score was recorded: no line


def test_table_gives_the_elimination_score_of_each_pair_count(tmp_path):
    results = {**RESULTS, "runs": [{**run, "keyless": {2: 0.75, 4: 25 / 48}[run["pairs"]]} for run in RESULTS["runs"]]}
    assert format_recall_table(results).endswith("(guessing among the values not yet asked for): 0.750 at 2 pairs, "
                                                 "0.521 at 4 pairs.")  # fmt: skip
    assert plot_recall(results, tmp_path / "lines.png").stat().st_size > 1000


def test_splits_table_averages_each_query_and_pair_over_seeds():
    assert format_recall_splits(RESULTS) == ""  # no run records its splits
    split = {0: {"query": [0.5, 1.0], "pair": [0.7, 0.8]}, 1: {"query": [0.4, 1.0], "pair": [0.8, 0.6]}}
    runs = [{**run, "accuracy_by": split[run["seed"]], "keyless": 0.75} for run in RESULTS["runs"] if run["model"] == "tinygpt2"]
    table = format_recall_splits({**RESULTS, "runs": runs}).splitlines()
    assert table[2] == "| 64 | 4 | TinyGPT2 | 32 | 0.750 | 0.450 / 1.000 | 0.750 / 0.700 | 0.750 |"
    assert len(table) == 3


def test_outputs_are_strict_json_and_a_png(tmp_path):
    paths = write_recall_outputs(RESULTS, tmp_path)
    assert [p.name for p in paths] == ["recall.json", "recall.png"]
    assert json.loads(paths[0].read_text()) == RESULTS
    assert paths[1].read_bytes()[:4] == b"\x89PNG"
    assert plot_recall(RESULTS, tmp_path / "again.png").stat().st_size > 1000


def _with_history(run, accuracies):
    return {**run, "history": [[100 * (i + 1), a, 4.0 - a] for i, a in enumerate(accuracies)]}


def test_merged_results_keep_every_run_and_each_parts_provenance():
    a = {"version": 1, "labels": {"lstm": "LSTM"}, "seeds": [0], "commit": "abc", "command": "newllm recall --models lstm",
         "runs": [_run("lstm", 128, 64, 4, 0, 0.5, 2048)]}
    b = {"version": 1, "labels": {"mamba2": "Mamba-2"}, "seeds": [0, 1], "commit": "def", "command": "newllm recall ...",
         "runs": [_run("mamba2", 32, 64, 4, 0, 0.7, 2304), _run("mamba2", 32, 64, 4, 1, 0.6, 2304)]}  # fmt: skip
    merged = merge_recall_results([a, b])
    # the runs, each stamped with its part's options, learning rate and weight decay (none in these parts' configs)
    assert merged["runs"] == [{**run, "options": {}, "lr": None, "weight_decay": None} for run in a["runs"] + b["runs"]]
    assert merged["seeds"] == [0, 1]
    assert merged["labels"] == {"lstm": "LSTM", "mamba2": "Mamba-2"}
    assert [part["commit"] for part in merged["parts"]] == ["abc", "def"]
    assert all("runs" not in part for part in merged["parts"])
    assert [row["model"] for row in summarize(merged)] == ["lstm", "mamba2"]
    with pytest.raises(ValueError, match="different versions"):
        merge_recall_results([a, {**b, "version": 2}])
    # a merged file merged again with one more part: its parts join flat, its runs as they were
    c = {"version": 1, "labels": {"lstm": "LSTM"}, "seeds": [1], "commit": "ghi", "config": {"lr": 0.01},
         "runs": [_run("lstm", 128, 64, 4, 1, 0.6, 2048)]}  # fmt: skip
    again = merge_recall_results([merged, c])
    assert [part["commit"] for part in again["parts"]] == ["abc", "def", "ghi"]
    assert again["runs"] == merged["runs"] + [{**c["runs"][0], "options": {}, "lr": 0.01, "weight_decay": None}]


def test_history_is_drawn_where_runs_record_it(tmp_path):
    with pytest.raises(ValueError, match="no run records its history"):
        plot_recall_history(RESULTS, tmp_path / "none.png")
    results = {**RESULTS, "runs": [_with_history(r, [0.1, 0.4, r["accuracy"]]) for r in RESULTS["runs"]]}
    paths = write_recall_outputs(results, tmp_path)
    assert [p.name for p in paths] == ["recall.json", "recall.png", "recall_history.png"]
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_recall_collect_merges_files_and_refuses_a_missing_one(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"version": 1, "labels": {"lstm": "LSTM"}, "runs": RESULTS["runs"][2:]}))
    second.write_text(json.dumps({"version": 1, "labels": {"tinygpt2": "TinyGPT2"}, "runs": RESULTS["runs"][:2]}))
    out = tmp_path / "out"
    assert main(["recall-collect", str(first), str(second), "--out", str(out)]) == 0
    merged = json.loads((out / "recall.json").read_text())
    assert len(merged["runs"]) == 5 and (out / "recall.png").is_file()
    assert "| 64 | 4 | TinyGPT2 | 32 |" in capsys.readouterr().out
    assert main(["recall-collect", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out2")]) == 1
    assert "missing.json: no such recall.json" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_variants_of_one_model_are_rows_and_lines_of_their_own(tmp_path):
    def part(lr, options, accuracies):
        runs = [_with_history(_run("new_llm", 128, 32, 2, seed, a, 512), [0.02, a]) for seed, a in enumerate(accuracies)]
        return {"version": 1, "labels": {"new_llm": "New-LLM"}, "config": {"lr": lr, "options": {"new_llm": options}},
                "runs": runs}  # fmt: skip

    merged = merge_recall_results([part(3e-3, {}, [0.1, 0.2]), part(3e-3, {"forget_bias": 3}, [0.4, 0.6]),
                                   part(1e-2, {}, [0.3, 0.3])])  # fmt: skip
    rows = summarize(merged)
    assert [(r["variant"], r["accuracy"]) for r in rows] == [
        pytest.approx(("forget_bias=3, lr=0.003", 0.5)), pytest.approx(("lr=0.003", 0.15)), pytest.approx(("lr=0.01", 0.3))]
    table = format_recall_table(merged)
    assert "| 32 | 2 | New-LLM, forget_bias=3, lr=0.003 | 128 |" in table and "| New-LLM, lr=0.01 |" in table
    # one learning rate throughout: only the options set a run apart
    same_lr = merge_recall_results([part(3e-3, {}, [0.1, 0.2]), part(3e-3, {"forget_bias": 3}, [0.4, 0.6])])
    assert [r["variant"] for r in summarize(same_lr)] == ["", "forget_bias=3"]
    # runs recorded with their own weight decay: a row of their own where it differs
    no_decay = part(3e-3, {}, [0.7, 0.9])
    no_decay["runs"] = [{**run, "weight_decay": 0.0} for run in no_decay["runs"]]
    decayed = {**part(3e-3, {}, [0.1, 0.2]), "config": {"lr": 3e-3, "weight_decay": 0.1}}
    rows = summarize(merge_recall_results([decayed, no_decay]))
    assert [(r["variant"], r["accuracy"]) for r in rows] == [
        pytest.approx(("weight decay=0", 0.8)), pytest.approx(("weight decay=0.1", 0.15))]
    assert len(write_recall_outputs(merged, tmp_path)) == 3


def _rated(lr, width, seed, valid, test):
    return {**_run("lstm", width, 64, 4, seed, test, 1024), "lr": lr, "weight_decay": 0.1, "options": {},
            "valid_accuracy": valid}  # fmt: skip


def test_the_rate_is_chosen_on_validation_per_width_and_point_and_the_test_set_takes_no_part():
    runs = [_rated(1e-3, 64, 0, 0.50, 0.90), _rated(1e-3, 64, 1, 0.60, 0.95),  # better on test, worse on validation
            _rated(3e-3, 64, 0, 0.70, 0.20), _rated(3e-3, 64, 1, 0.80, 0.30),
            _rated(1e-3, 128, 0, 0.40, 0.40), _rated(3e-3, 128, 0, 0.40, 0.90)]  # a tie: the lower rate
    chosen = choose_rates({"version": 1, "labels": {"lstm": "LSTM"}, "seeds": [0, 1], "runs": runs})
    assert [(r["width"], r["lr"], r["seed"]) for r in chosen["runs"]] == [(64, 3e-3, 0), (64, 3e-3, 1), (128, 1e-3, 0)]
    assert [(c["width"], c["lr"]) for c in chosen["rates_chosen"]] == [(64, 3e-3), (128, 1e-3)]
    assert chosen["rates_chosen"][0]["valid_accuracy"] == pytest.approx({"0.001": 0.55, "0.003": 0.75})
    # one line per model although the chosen rates differ between widths
    assert [r["variant"] for r in summarize(chosen)] == ["", ""]
    table = format_rate_choice(chosen)
    assert "| 64 | 4 | LSTM | 64 | 0.003 | 0.001: 0.550, **0.003: 0.750** |" in table
    with pytest.raises(ValueError, match="1 of 6 runs record no valid_accuracy"):
        choose_rates({"runs": runs[:-1] + [{k: v for k, v in runs[-1].items() if k != "valid_accuracy"}]})
    with pytest.raises(ValueError, match=r"the rates ran different seeds \(0.001: \[0, 1\], 0.003: \[0\]\)"):
        choose_rates({"runs": runs[:3]})


def test_recall_collect_best_rate_writes_the_choice(tmp_path, capsys):
    files = []
    for lr, valid in ((1e-3, 0.2), (3e-3, 0.6)):
        files.append(tmp_path / f"{lr:g}.json")
        files[-1].write_text(json.dumps({"version": 1, "labels": {"lstm": "LSTM"},
                                         "runs": [_rated(lr, 64, s, valid, 0.5) for s in (0, 1)]}))  # fmt: skip
    out = tmp_path / "out"
    assert main(["recall-collect", *map(str, files), "--out", str(out), "--best-rate"]) == 0
    written = json.loads((out / "recall.json").read_text())
    assert {r["lr"] for r in written["runs"]} == {3e-3} and written["rates_chosen"][0]["lr"] == 3e-3
    every = json.loads((out / "all_rates" / "recall.json").read_text())  # what a later sweep resumes from
    assert sorted(r["lr"] for r in every["runs"]) == [1e-3, 1e-3, 3e-3, 3e-3] and "rates_chosen" not in every
    assert "**0.003: 0.600**" in capsys.readouterr().out
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"version": 1, "runs": [_run("lstm", 64, 64, 4, 0, 0.5, 1024)]}))
    assert main(["recall-collect", str(old), "--out", str(tmp_path / "out2"), "--best-rate"]) == 1
    assert "record no valid_accuracy" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_the_history_says_which_set_its_checks_read():
    old, new = _run("lstm", 64, 64, 4, 0, 0.5, 1024), _rated(1e-3, 64, 0, 0.5, 0.5)
    assert (checked_set([new]), checked_set([old]), checked_set([old, new])) == (
        "validation set", "test set", "validation or test set")
