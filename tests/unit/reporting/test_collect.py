"""`newllm collect`: runs' results.json into rows of mean ± sample std over seeds, tables and figures."""

import json
import statistics

import pytest

from newllm.cli import main
from newllm.reporting.collect import collect, markdown_table, plot_test, plot_validation


def _stage(val_ppls, stopped=False):
    """A training stage's section as step 3 writes it: the checkpoint's record and every epoch's."""
    per_epoch = [{"epoch": i + 1, "train_ppl": 2 * v, "val_ppl": v, "seconds": 1.5} for i, v in enumerate(val_ppls)]
    best = min(per_epoch, key=lambda row: row["val_ppl"])
    section = {"best_epoch": best["epoch"], "epochs_run": len(per_epoch), "best_val_ppl": best["val_ppl"],
               "per_epoch": per_epoch}  # fmt: skip
    return section | ({"stopped": "time_limit"} if stopped else {})


def _results(folder, preset, seed, word_ppl, params=1000, schema=2, model="new_llm", wikitext=None, dialog=None):
    folder.mkdir(parents=True)
    entry = {"params": params, "wikitext": {**(wikitext or {}), "test": {"word_ppl": word_ppl, "token_ppl": 9.0}}}
    if dialog is not None:
        entry["dailydialog"] = {**dialog, "test": {"token_ppl": 15.0, "response_ppl": 18.0}}
    results = {"preset": preset, "config": {"pretrain": {"seed": seed}}, "models": {model: entry}}
    if schema == 2:
        results |= {"schema": 2, "provenance": {"preset": preset, "seeds": {"pretrain": seed}, "commit": "abc"}}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_rows_average_over_seeds_with_the_sample_std(tmp_path):
    runs = [_results(tmp_path / f"s{seed}", "study", seed, ppl) for seed, ppl in ((2, 120.0), (0, 118.0), (1, 125.0))]
    runs.append(_results(tmp_path / "other", "full", 0, 150.0, schema=1))  # an older results.json: its config's seed
    summary = collect(runs)
    study, full = summary["rows"]
    assert (study["preset"], study["seeds"], study["params"]) == ("study", [0, 1, 2], 1000)
    stat = study["wikitext_test_word_ppl"]
    assert stat["mean"] == pytest.approx(121.0) and stat["std"] == pytest.approx(statistics.stdev([118, 120, 125]))
    assert (full["seeds"], full["wikitext_test_word_ppl"]["std"]) == ([0], None)
    assert "dailydialog_test_token_ppl" not in study  # measured by no run: absent, not zero
    table = markdown_table(summary)
    # no training record in these files: its cells are dashes, and no DailyDialog table
    assert "| `study` | New-LLM | 3 | 1,000 | – | – | 121.0 ± 3.6 | 9.00 ± 0.00 | – |" in table
    assert "| `full` | New-LLM | 1 | 1,000 | – | – | 150.0 | 9.00 | – |" in table
    assert "DailyDialog" not in table


def test_the_training_record_gives_best_validation_and_epochs_per_row(tmp_path):
    runs = [
        _results(tmp_path / "s0", "full", 0, 150.0, wikitext=_stage([90, 50, 60]), dialog=_stage([20, 18])),
        _results(tmp_path / "s1", "full", 1, 154.0, wikitext=_stage([80, 54, 55, 56]), dialog=_stage([19])),
        _results(tmp_path / "s2", "full", 2, 152.0),  # written before results.json kept the training record
    ]
    (row,) = collect(runs)["rows"]
    assert row["wikitext_best_val_ppl"]["mean"] == pytest.approx(52.0)
    assert row["wikitext_best_val_ppl"]["std"] == pytest.approx(statistics.stdev([50, 54]))
    assert (row["wikitext_epochs_run"]["mean"], row["wikitext_best_epoch"]["mean"]) == (3.5, 2.0)
    assert row["dailydialog_best_val_ppl"]["mean"] == pytest.approx(18.5)
    assert [sorted(run["per_epoch"]) for run in row["runs"]] == [["dailydialog", "wikitext"]] * 2 + [[]]
    wikitext, dialog = markdown_table({"rows": [row]}).split("\n\n**DailyDialog**\n\n")
    # two of the three seeds have a training record: their cells say so
    assert "| `full` | New-LLM | 3 | 1,000 | 3–4 (2) | 52.00 ± 2.83 (n=2) | 152.0 ± 2.0 | 9.00 ± 0.00 | – |" in wikitext
    assert "| `full` | New-LLM | 3 | 1–2 (1–2) | 18.50 ± 0.71 (n=2) | 15.00 ± 0.00 (n=2) | 18.00 ± 0.00 (n=2) |" in dialog


def test_a_stage_its_time_limit_ended_is_a_row_of_its_own(tmp_path):
    runs = [
        _results(tmp_path / "s0", "full", 0, 150.0, wikitext=_stage([60, 50]), dialog=_stage([20, 17])),
        _results(tmp_path / "s1", "full", 1, 151.0, wikitext=_stage([60, 51]), dialog=_stage([20, 16], stopped=True)),
    ]
    whole, stopped = collect(runs)["rows"]
    assert (whole["seeds"], whole["stopped"], stopped["seeds"], stopped["stopped"]) == ([0], [], [1], ["dailydialog"])
    assert stopped["dailydialog_best_val_ppl"]["mean"] == 16  # in no mean with seed 0's
    assert "| `full` | New-LLM, step 2 stopped by its time limit | 1 |" in markdown_table({"rows": [whole, stopped]})
    with pytest.raises(ValueError, match="both full/new_llm seed 1"):  # a seed is one run, stopped or not
        collect([*runs, _results(tmp_path / "again", "full", 1, 152.0, wikitext=_stage([60, 52]))])


def test_one_seed_twice_in_a_row_is_an_error_not_an_average(tmp_path):
    runs = [_results(tmp_path / "a", "study", 0, 120.0), _results(tmp_path / "b", "study", 0, 130.0)]
    with pytest.raises(ValueError, match="both study/new_llm seed 0"):
        collect(runs)


def test_the_figures_have_a_line_per_seed_and_a_dot_per_seed(tmp_path, monkeypatch):
    runs = [
        _results(tmp_path / "a0", "full", 0, 150.0, model="lstm", wikitext=_stage([60, 50]), dialog=_stage([20, 16])),
        _results(tmp_path / "a1", "full", 1, 152.0, model="lstm", wikitext=_stage([61, 51]), dialog=_stage([21, 17])),
        _results(tmp_path / "b0", "full", 0, 122.0, model="tinygpt2", wikitext=_stage([50, 42], stopped=True)),
        _results(tmp_path / "c0", "study", 0, 140.0, wikitext=_stage([70, 48])),
        _results(tmp_path / "d0", "study", 1, 141.0),  # no training record: no line, still a dot
    ]
    summary = collect(runs)
    figures = []
    monkeypatch.setattr("newllm.reporting.plots.save_figure", lambda fig, path: figures.append(fig) or path)
    plot_validation(summary, tmp_path / "val.png")
    step1, step2 = figures[0].axes
    assert (len(step1.get_lines()), len(step2.get_lines())) == (4 + 1, 2)  # a line per seed, a cross for the stopped
    assert sorted(text.get_text() for text in figures[0].legends[0].get_texts()) == [
        "LSTM (full)", "New-LLM (study)", "TinyGPT2 (full), step 1 stopped by its time limit"]  # fmt: skip
    plot_test(summary, tmp_path / "test.png")
    ax = figures[1].axes[0]
    assert [tick.get_text() for tick in ax.get_yticklabels()] == [  # the worst at the bottom, the best at the top
        "LSTM (full) (n=2)", "New-LLM (study) (n=2)", "TinyGPT2 (full), step 1 stopped by its time limit (n=1)"]  # fmt: skip
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert [sorted(line.get_xdata()) for line in dots] == [[150.0, 152.0], [140.0, 141.0], [122.0]]


def test_the_command_writes_the_summary_and_the_figures_and_fails_in_one_line(tmp_path, capsys):
    run = _results(tmp_path / "s0", "study", 0, 120.0, wikitext=_stage([60, 50]))
    out, val, test = tmp_path / "summary.json", tmp_path / "val.png", tmp_path / "test.png"
    assert main(["collect", str(run), "--out", str(out), "--plot", str(val), "--plot-test", str(test)]) == 0
    assert json.loads(out.read_text())["rows"][0]["seeds"] == [0]
    assert val.stat().st_size > 0 and test.stat().st_size > 0
    assert "120.0" in capsys.readouterr().out
    assert main(["collect", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("newllm: error: results file not found") and "\n" not in err


def test_a_validation_figure_without_any_training_record_is_a_one_line_error(tmp_path, capsys):
    run = _results(tmp_path / "s0", "study", 0, 120.0)  # written before results.json kept the training record
    assert main(["collect", str(run), "--plot", str(tmp_path / "val.png")]) == 1
    assert "no run's results.json has a per-epoch record" in capsys.readouterr().err
    assert not (tmp_path / "val.png").exists()
    assert plot_test(collect([run]), tmp_path / "test.png").stat().st_size > 0  # its test number still is


def test_an_earlier_summary_is_read_back_and_a_rerun_replaces_its_seeds_only_when_asked(tmp_path, capsys):
    # an earlier collection whose run folders are gone: a baseline and a family whose step 2 was cut short
    earlier = [_results(tmp_path / f"g{seed}", "study_g", seed, 115.0 + seed, model="tinygpt2",
                        wikitext=_stage([50, 40]), dialog=_stage([20, 15])) for seed in (0, 1)]  # fmt: skip
    earlier += [_results(tmp_path / f"n{seed}", "study_n", seed, 121.0 + seed, wikitext=_stage([52, 41]),
                         dialog=_stage([22], stopped=True)) for seed in (0, 1)]  # fmt: skip
    summary_path = tmp_path / "summary.json"
    assert main(["collect", *map(str, earlier), "--out", str(summary_path)]) == 0
    rerun = [_results(tmp_path / f"r{seed}", "study_n", seed, 122.0 + seed, wikitext=_stage([52, 41]),
                      dialog=_stage([22, 16, 14])) for seed in (0, 1)]  # fmt: skip
    with pytest.raises(ValueError, match="both study_n/new_llm seed 0"):
        collect([summary_path, *rerun])
    summary = collect([summary_path, *rerun], replace=True)
    rows = {(row["model"], tuple(row["stopped"])): row for row in summary["rows"]}
    assert sorted(rows) == [("new_llm", ()), ("tinygpt2", ())]  # the cut row is gone, not averaged in
    assert rows[("tinygpt2", ())]["wikitext_test_word_ppl"]["mean"] == pytest.approx(115.5)  # as recorded
    assert rows[("tinygpt2", ())]["runs"][1]["per_epoch"]["dailydialog"][-1]["val_ppl"] == 15
    assert rows[("new_llm", ())]["dailydialog_best_val_ppl"]["mean"] == 14
    assert [(entry["run"], entry["by"]) for entry in summary["replaced"]] == [
        ("study_n/new_llm seed 0", str(rerun[0] / "results.json")),
        ("study_n/new_llm seed 1", str(rerun[1] / "results.json"))]  # fmt: skip
    assert main(["collect", str(summary_path), *map(str, rerun), "--replace"]) == 0
    assert "replaced study_n/new_llm seed 1" in capsys.readouterr().out


def test_a_json_with_rows_that_is_no_summary_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"rows": [{"name": "not a summary row"}]}))
    assert main(["collect", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert "is not a summary of `newllm collect --out`" in err and "\n" not in err
