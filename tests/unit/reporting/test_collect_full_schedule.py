"""benchmarks/collect_full_schedule.py on a hand-made run tree: what counts as finished, the means."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

DOCS = Path(__file__).resolve().parents[3] / "docs"


@pytest.fixture(scope="module")
def collect():
    return load_benchmark("collect_full_schedule")


def table_after(doc: Path, header: str) -> list[str]:
    """The lines of the one Markdown table in doc whose header row starts with header: found by its columns, not its prose."""
    text = doc.read_text(encoding="utf-8")
    assert text.count(header) == 1, header
    table = text[text.index(header):]
    return table[: table.index("\n\n")].splitlines() if "\n\n" in table else table.splitlines()


def history(*val_ppls):
    return [
        {"epoch": i + 1, "val_loss": math.log(v), "val_ppl": v, "train_ppl": 2 * v, "seconds": 1.0}
        for i, v in enumerate(val_ppls)
    ]


def write_run(root: Path, name: str, model: str, log: str, wikitext=None, dialog=None, test_word_ppl=None):
    (root / f"{name}.log").write_text(log)
    for stage, rows in (("wikitext", wikitext), ("dialog", dialog)):
        if rows is not None:
            folder = root / name / f"{model}_{stage}"
            folder.mkdir(parents=True)
            (folder / "history.json").write_text(json.dumps(rows))
    if test_word_ppl is not None:
        results = {"models": {model: {"params": 7, "wikitext": {"test": {"word_ppl": test_word_ppl}}}}}
        (root / name / "results.json").write_text(json.dumps(results))


def test_only_finished_stages_enter_the_means(tmp_path, collect):
    step1 = "start 100\n[newllm] step 1: new_llm on WikiText-2 (7,482,112 parameters, cuda)\npretrain_done 200\n"
    write_run(tmp_path, "full_new_llm_s0", "new_llm", step1 + "finetune_done 300\nevaluate_done 350\nexit 0 350\n",
              history(90, 50, 60), history(20, 18), test_word_ppl=170.0)
    write_run(tmp_path, "full_new_llm_s1", "new_llm", step1 + "finetune_done 310\nevaluate_done 360\nexit 0 360\n",
              history(80, 54), history(19), test_word_ppl=174.0)
    write_run(tmp_path, "full_new_llm_s2", "new_llm", "start 100\nexit 143 150\n", history(99))  # stopped
    write_run(tmp_path, "eval_notes", "new_llm", "not a run\n")  # ignored: not <row>_<model>_s<seed>

    runs = collect.collect_runs(tmp_path)
    assert sorted(runs) == ["full_new_llm_s0", "full_new_llm_s1", "full_new_llm_s2"]
    assert runs["full_new_llm_s0"]["params"] == 7_482_112
    assert runs["full_new_llm_s0"]["log"] == {
        "start": 100, "pretrain_done": 200, "finetune_done": 300, "evaluate_done": 350, "exit_code": 0, "exit": 350,
    }
    assert runs["full_new_llm_s0"]["wikitext"]["best_epoch"] == 2
    assert runs["full_new_llm_s2"]["wikitext"]["complete"] is False

    evaluations = collect.collect_evaluations(tmp_path, runs)
    summary = collect.summarize(runs, evaluations)["full/new_llm"]
    assert summary["wikitext_best_val_ppl"]["values"] == [50, 54]  # not the stopped seed's 99
    assert summary["wikitext_best_val_ppl"]["mean"] == pytest.approx(52)
    assert summary["wikitext_best_val_ppl"]["std"] == pytest.approx(math.sqrt(8))
    assert summary["test_word_ppl"]["values"] == [170.0, 174.0]
    assert summary["dialog_best_val_ppl"]["values"] == [18, 19]

    table = collect.markdown_tables({"runs": runs, "summary": {"full/new_llm": summary}, "evaluations": evaluations})
    row = next(line for line in table.splitlines() if line.startswith("| New-LLM seed cell"))
    # epochs run 3 and 2, both best at epoch 2; the stopped seed counts nowhere
    assert row == "| New-LLM seed cell (`full`) | 7,482,112 | 2–3 (2) | 52.00 ± 2.83 | — | 172.0 ± 2.8 | — | 2 |"


def write_results(folder: Path, model: str, word_ppl: float, stream_window: int, block_size: int = 128):
    entry = {
        "params": 7,
        "wikitext": {"test": {"word_ppl": word_ppl},
                     "test_stream": {"method": "sliding_window", "window": stream_window, "word_ppl": word_ppl - 10}},
        "dailydialog": {"test": {"token_ppl": 14.0}, "responses": {"distinct_1": 0.1, "distinct_2": 0.3}},
    }  # fmt: skip
    results = {"config": {"data": {"block_size": block_size}}, "models": {model: entry},
               "dialog_samples": [{"dialogue": 0, "context": ["hi"], "reference": "hello", "replies": {model: "hey"}}]}
    (folder / "results.json").write_text(json.dumps(results))


def test_a_later_folder_replaces_a_run_and_its_evaluation(tmp_path, collect):
    old, new = tmp_path / "first", tmp_path / "second"
    done = "start 1\npretrain_done 2\nfinetune_done 3\nevaluate_done 4\nexit 0 4\n"
    for root, val in ((old, 43.0), (new, 42.0)):
        root.mkdir()
        write_run(root, "full_tinygpt2_s0", "tinygpt2", done, history(val), history(13))
    write_run(old, "full_tinygpt2_s1", "tinygpt2", done, history(42.5), history(13.5))
    write_results(old / "full_tinygpt2_s0", "tinygpt2", 130.0, stream_window=512)
    write_results(old / "full_tinygpt2_s1", "tinygpt2", 122.0, stream_window=512)
    write_results(new / "full_tinygpt2_s0", "tinygpt2", 121.0, stream_window=128)

    runs, evaluations, launches = collect.collect([old, new])
    assert [launch["root"] for launch in launches] == ["first", "second"]
    assert runs["full_tinygpt2_s0"]["root"] == "second" and runs["full_tinygpt2_s1"]["root"] == "first"
    summary = collect.summarize(runs, evaluations)["full/tinygpt2"]
    assert summary["wikitext_best_val_ppl"]["values"] == [42.0, 42.5]
    assert summary["test_word_ppl"]["values"] == [121.0, 122.0]  # the replaced run's 130 is gone
    # the old evaluation's window (512) ran past the 128 positions trained: its stream and replies are void
    assert summary["test_stream_word_ppl"]["values"] == [111.0]
    assert summary["dialog_distinct_2"]["values"] == [0.3]
    assert evaluations["full_tinygpt2_s1"]["void"].startswith("sliding window 512 > training window 128")
    assert evaluations["full_tinygpt2_s1"]["dialog_samples"] == []
    assert evaluations["full_tinygpt2_s0"]["dialog_samples"][0]["reply"] == "hey"

    out = {"runs": runs, "summary": collect.summarize(runs, evaluations), "evaluations": evaluations}
    table = collect.markdown_tables(out)
    assert "| TinyGPT2 | — | — | 121.5 ± 0.7 (n=2) | 111.0 | 1 |" in table  # the stream table: seed 0 only
    assert "| 1 | hi | hello | hey |" in table  # seed 0's replies, from the later folder


def run_main(collect, monkeypatch, *argv):
    monkeypatch.setattr("sys.argv", ["collect_full_schedule.py", *map(str, argv)])
    collect.main()


def test_previous_summary_plus_a_new_folder_is_both_folders_read_together(tmp_path, collect, monkeypatch):
    # run folders go with their GPU machine: the committed summary must stand in for them exactly
    old, new = tmp_path / "first", tmp_path / "second"
    done = "start 1\npretrain_done 2\nfinetune_done 3\nevaluate_done 4\nexit 0 4\n"
    for root, val in ((old, 43.0), (new, 42.0)):
        root.mkdir()
        (root / "launch.log").write_text(f"start {int(val)}\nall_done 99\n")
        write_run(root, "full_tinygpt2_s0", "tinygpt2", done, history(val), history(13))
        write_results(root / "full_tinygpt2_s0", "tinygpt2", val * 3, stream_window=128)
    write_run(old, "full_lstm_s1", "lstm", done, history(50.0), history(16.0))
    write_results(old / "full_lstm_s1", "lstm", 153.0, stream_window=128)

    run_main(collect, monkeypatch, old, "--out", tmp_path / "previous.json")
    run_main(collect, monkeypatch, "--previous", tmp_path / "previous.json", new, "--out", tmp_path / "stacked.json")
    run_main(collect, monkeypatch, old, new, "--out", tmp_path / "together.json")
    stacked = json.loads((tmp_path / "stacked.json").read_text())
    assert stacked == json.loads((tmp_path / "together.json").read_text())
    assert stacked["runs"]["full_tinygpt2_s0"]["root"] == "second"  # the new folder's run replaced the old
    assert stacked["evaluations"]["full_tinygpt2_s0"]["wikitext_test"]["word_ppl"] == 126.0
    assert stacked["summary"]["full/lstm"]["test_word_ppl"]["values"] == [153.0]  # kept from the summary
    # the same folder again replaces its launch instead of listing it twice
    run_main(collect, monkeypatch, "--previous", tmp_path / "stacked.json", new, "--out", tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == stacked


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_a_previous_summary_that_cannot_be_read_stops_with_one_line(tmp_path, collect, monkeypatch, content):
    previous = tmp_path / "previous.json"
    if content is not None:
        previous.write_text(content)
    with pytest.raises(SystemExit, match="--previous"):
        run_main(collect, monkeypatch, "--previous", previous, "--out", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_replies_of_a_run_stopped_before_step_2_are_not_dialogue_results(tmp_path, collect):
    step1 = "start 1\npretrain_done 2\nexit 143 3\n"  # step 2 stopped, then evaluated with the step-1 model
    write_run(tmp_path, "full_lstm_s1", "lstm", step1, history(50.0), history(30.0, 25.0))
    write_results(tmp_path / "full_lstm_s1", "lstm", 153.0, stream_window=128)
    results_path = tmp_path / "full_lstm_s1" / "results.json"
    results = json.loads(results_path.read_text())
    del results["models"]["lstm"]["dailydialog"]["test"]  # what evaluate writes without best_lstm_dialog/
    results_path.write_text(json.dumps(results))

    runs, evaluations, _ = collect.collect([tmp_path])
    summary = collect.summarize(runs, evaluations)["full/lstm"]
    assert summary["test_word_ppl"]["values"] == [153.0]  # step 1's numbers count
    assert summary["dialog_distinct_2"]["values"] == []  # the step-1 model's replies do not
    assert summary["dialog_best_val_ppl"]["values"] == []  # nor the unfinished step 2
    assert evaluations["full_lstm_s1"]["dialog_samples"] == []


def test_the_zoom_reaches_below_the_best_recurrent_run_but_not_down_to_tinygpt2(tmp_path, collect, monkeypatch):
    done = "start 1\npretrain_done 2\nexit 0 3\n"
    write_run(tmp_path, "full_tinygpt2_s0", "tinygpt2", done, history(60.0, 42.0))
    write_run(tmp_path, "full_lstm_s0", "lstm", done, history(60.0, 50.0))
    axes = []
    monkeypatch.setattr(collect, "save_figure", lambda fig, path: axes.extend(fig.axes) or path)
    collect.plot_validation(collect.collect_runs(tmp_path), tmp_path / "val.png")
    assert axes[1].get_ylim() == (48, 58)  # the usual window while every recurrent run stays above it
    write_run(tmp_path, "resd_new_llm_s0", "new_llm", done, history(60.0, 47.2))
    axes.clear()
    collect.plot_validation(collect.collect_runs(tmp_path), tmp_path / "val.png")
    assert axes[1].get_ylim() == (46, 58)


def test_plot_has_one_line_per_finished_bpe_run(tmp_path, collect, monkeypatch):
    done = "start 1\npretrain_done 2\nexit 0 3\n"
    for name, model in (("full_new_llm_s0", "new_llm"), ("res_new_llm_s0", "new_llm"), ("pard_new_llm_s0", "new_llm"),
                        ("seed_lstm_s0", "lstm")):  # fmt: skip
        write_run(tmp_path, name, model, done, history(60.0, 55.0))
    write_run(tmp_path, "full_lstm_s0", "lstm", "start 1\nexit 143 2\n", history(99.0))  # step 1 stopped
    drawn = []
    monkeypatch.setattr(collect, "save_figure", lambda fig, path: drawn.extend(fig.axes[0].get_lines()) or path)

    collect.plot_validation(collect.collect_runs(tmp_path), tmp_path / "val.png")
    assert sorted((line.get_label(), line.get_linestyle()) for line in drawn) == [
        ("New-LLM parallel + residual + norm, more dropout (full_parallel_dropout)", "--"),
        ("New-LLM seed cell (full)", "-"),
        ("New-LLM seed cell + residual + norm (full_residual_norm)", "-"),
    ]  # not the seed protocol (another vocabulary), not the stopped run; more dropout dashed


def test_a_run_stopped_at_the_deadline_keeps_its_step_1(tmp_path, collect):
    log = "start 1\npretrain_done 2\ndeadline 3\nevaluate_done 4\nexit 124 4\n"  # full_schedule.sh with DEADLINE
    write_run(tmp_path, "res_new_llm_s0", "new_llm", log, history(60.0, 51.0), history(20.0, 17.0), test_word_ppl=155.0)
    runs, evaluations, _ = collect.collect([tmp_path])
    run = runs["res_new_llm_s0"]
    assert run["log"] == {"start": 1, "pretrain_done": 2, "deadline": 3, "evaluate_done": 4, "exit_code": 124, "exit": 4}
    assert (run["wikitext"]["complete"], run["dialog"]["complete"]) == (True, False)
    summary = collect.summarize(runs, evaluations)["full_residual_norm/new_llm"]
    assert summary["test_word_ppl"]["values"] == [155.0] and summary["dialog_best_val_ppl"]["values"] == []


def test_a_step_2_ended_by_its_time_limit_is_a_line_of_its_own_in_no_mean(tmp_path, collect):
    done = "start 1\npretrain_done 2\nfinetune_done 3\nevaluate_done 4\nexit 0 4\n"  # a time limit ends a step cleanly
    for seed, (dialog, token_ppl) in enumerate([((20.0, 17.0), 18.0), ((20.0, 16.0), 17.0), ((19.0, 16.5, 16.4), 17.5)]):
        name = f"res_new_llm_s{seed}"
        write_run(tmp_path, name, "new_llm", done, history(60.0, 51.0), history(*dialog), test_word_ppl=155.0)
        results = json.loads((tmp_path / name / "results.json").read_text())
        results["models"]["new_llm"]["dailydialog"] = {
            "test": {"token_ppl": token_ppl, "response_ppl": token_ppl + 4},
            "responses": {"distinct_1": 0.05, "distinct_2": 0.1 + seed / 100},
        }
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    for seed in (1, 2):
        marker = {"stage": "dialog", "stopped": "time_limit"}
        (tmp_path / f"res_new_llm_s{seed}" / "new_llm_dialog" / "complete.json").write_text(json.dumps(marker))
    runs, evaluations, _ = collect.collect([tmp_path])
    assert runs["res_new_llm_s1"]["dialog"]["stopped"] == "time_limit"
    assert not runs["res_new_llm_s1"]["dialog"]["complete"] and runs["res_new_llm_s1"]["wikitext"]["complete"]
    summary = collect.summarize(runs, evaluations)["full_residual_norm/new_llm"]
    assert summary["dialog_test_token_ppl"]["values"] == [18.0]  # the seed whose step 2 ran to its end
    assert summary["test_word_ppl"]["values"] == [155.0] * 3  # their step 1 did
    stopped = summary["dialog_stopped"]
    assert stopped["runs"] == ["res_new_llm_s1", "res_new_llm_s2"]
    assert stopped["dialog_test_token_ppl"]["values"] == [17.0, 17.5]
    assert stopped["dialog_best_val_ppl"]["values"] == [16.0, 16.4]
    table = collect.markdown_tables({"runs": runs, "summary": {"full_residual_norm/new_llm": summary},
                                     "evaluations": evaluations})  # fmt: skip
    line = next(line for line in table.splitlines() if "stopped by its time limit" in line)
    assert line == ("| New-LLM seed cell + residual + norm (`full_residual_norm`), step 2 stopped by its time limit "
                    "| 2–3 (2–3) | 16.20 ± 0.28 | 17.25 ± 0.35 | 21.25 ± 0.35 | 0.050 ± 0.000 | 0.115 ± 0.007 | 2 |")


def test_the_replies_of_a_step_2_ended_by_its_time_limit_are_a_column_that_says_so(tmp_path, collect):
    done = "start 1\npretrain_done 2\nfinetune_done 3\nevaluate_done 4\nexit 0 4\n"
    for name, model in (("full_lstm_s0", "lstm"), ("resd_new_llm_s0", "new_llm")):
        write_run(tmp_path, name, model, done, history(60.0, 50.0), history(20.0, 16.0))
        write_results(tmp_path / name, model, 150.0, stream_window=128)
    marker = {"stage": "dialog", "stopped": "time_limit"}
    (tmp_path / "resd_new_llm_s0" / "new_llm_dialog" / "complete.json").write_text(json.dumps(marker))
    runs, evaluations, _ = collect.collect([tmp_path])
    summary = collect.summarize(runs, evaluations)
    samples = collect.markdown_tables({"runs": runs, "summary": summary, "evaluations": evaluations}).split("\n\n")[3]
    assert samples.splitlines()[0] == (
        "| # | context (last two turns) | human | LSTM | New-LLM seed cell + residual + norm, more dropout "
        "(`full_residual_norm_dropout`), step 2 stopped by its time limit |"
    )
    assert samples.splitlines()[2] == "| 1 | hi | hello | hey | hey |"


def test_a_step_1_ended_by_its_time_limit_is_a_line_of_its_own_in_no_mean(tmp_path, collect, monkeypatch):
    done = "start 1\npretrain_done 2\nevaluate_done 3\nexit 0 3\n"  # FINETUNE=0; the time limit ends step 1 cleanly
    write_run(tmp_path, "full_residual_norm_dropout3_new_llm_s0", "new_llm", done, history(60.0, 49.0, 48.5))
    write_run(tmp_path, "full_lstm_s0", "lstm", done, history(60.0, 50.0))
    for name, model, word_ppl in (("full_residual_norm_dropout3_new_llm_s0", "new_llm", 144.6), ("full_lstm_s0", "lstm", 152.9)):
        write_results(tmp_path / name, model, word_ppl, stream_window=128)
    marker = {"stage": "wikitext", "stopped": "time_limit"}
    (tmp_path / "full_residual_norm_dropout3_new_llm_s0" / "new_llm_wikitext" / "complete.json").write_text(json.dumps(marker))
    runs, evaluations, _ = collect.collect([tmp_path])
    summary = collect.summarize(runs, evaluations)
    row = summary["full_residual_norm_dropout3/new_llm"]
    assert row["test_word_ppl"]["n"] == 0 and row["wikitext_best_val_ppl"]["n"] == 0  # in no mean
    assert row["wikitext_stopped"]["runs"] == ["full_residual_norm_dropout3_new_llm_s0"]
    assert row["wikitext_stopped"]["test_word_ppl"]["values"] == [144.6]
    assert row["wikitext_stopped"]["test_stream_word_ppl"]["values"] == [pytest.approx(134.6)]
    assert "wikitext_stopped" not in summary["full/lstm"] and "dialog_stopped" not in row

    wikitext, _, stream, *_ = collect.markdown_tables({"runs": runs, "summary": summary, "evaluations": evaluations}).split("\n\n")
    label = "| New-LLM seed cell + residual + norm, dropout 0.3 (`full_residual_norm_dropout3`)"
    assert [line for line in wikitext.splitlines() if line.startswith(label)] == [  # no empty row beside it
        f"{label}, step 1 stopped by its time limit | — | 3 (3) | 48.50 | — | 144.6 | — | 1 |"
    ]
    assert f"{label}, step 1 stopped by its time limit | — | — | 144.6 | 134.6 | 1 |" in stream.splitlines()

    axes = []
    monkeypatch.setattr(collect, "save_figure", lambda fig, path: axes.extend(fig.axes) or path)
    collect.plot_validation(runs, tmp_path / "val.png")
    labelled = [line.get_label() for line in axes[0].get_lines() if not line.get_label().startswith("_")]
    assert labelled == ["LSTM", "New-LLM seed cell + residual + norm, dropout 0.3 (full_residual_norm_dropout3), stopped (×)"]
    for ax in axes:  # the cross at its last epoch, on the whole run and the zoom
        crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
        assert len(crosses) == 1 and list(crosses[0].get_xydata()[0]) == [3, 48.5]


def test_the_dropout_rows_are_rows_of_their_own(tmp_path, collect):
    done = "start 1\npretrain_done 2\nevaluate_done 3\nexit 0 3\n"  # FINETUNE=0: no step 2
    write_run(tmp_path, "resd_new_llm_s0", "new_llm", done, history(60.0, 50.0), test_word_ppl=150.0)
    write_run(tmp_path, "res_new_llm_s0", "new_llm", done, history(60.0, 51.0), test_word_ppl=155.0)
    runs, evaluations, _ = collect.collect([tmp_path])
    summary = collect.summarize(runs, evaluations)
    assert summary["full_residual_norm_dropout/new_llm"]["test_word_ppl"]["values"] == [150.0]
    assert summary["full_residual_norm/new_llm"]["test_word_ppl"]["values"] == [155.0]
    assert runs["resd_new_llm_s0"]["dialog"] is None or not runs["resd_new_llm_s0"]["dialog"]["complete"]


def test_any_other_preset_is_a_row_named_after_it(tmp_path, collect, monkeypatch):
    done = "start 1\npretrain_done 2\nevaluate_done 3\nexit 0 3\n"
    write_run(tmp_path, "full_residual_norm_ctx_new_llm_s0", "new_llm", done, history(60.0, 49.0), test_word_ppl=148.0)
    write_run(tmp_path, "full_lstm_s0", "lstm", done, history(60.0, 50.0), test_word_ppl=153.0)
    write_run(tmp_path, "seed_new_llm_s0", "new_llm", done, history(30.0, 21.0))  # another vocabulary
    runs, evaluations, _ = collect.collect([tmp_path])
    assert runs["full_residual_norm_ctx_new_llm_s0"]["preset"] == "full_residual_norm_ctx"
    summary = collect.summarize(runs, evaluations)
    assert summary["full_residual_norm_ctx/new_llm"]["test_word_ppl"]["values"] == [148.0]

    tables = collect.markdown_tables({"runs": runs, "evaluations": evaluations, "summary": summary})
    labels = [line.split(" | ")[0] for line in tables.split("\n\n")[0].splitlines()[2:]]
    assert labels == ["| LSTM", "| New-LLM (`full_residual_norm_ctx`)"]  # the known rows first; no seed protocol
    seed_protocol = tables.strip().split("\n\n")[-1].splitlines()
    assert seed_protocol[0].startswith("| model | parameters | epochs run (best) | val PPL |")
    assert seed_protocol[2:] == ["| New-LLM seed cell | — | 2 (2) | 21.00 | 1 |"]  # its own table

    drawn = []
    monkeypatch.setattr(collect, "save_figure", lambda fig, path: drawn.extend(fig.axes[0].get_lines()) or path)
    collect.plot_validation(runs, tmp_path / "val.png")
    assert sorted(line.get_label() for line in drawn) == ["LSTM", "New-LLM (full_residual_norm_ctx)"]


def test_the_tables_of_docs_results_are_the_collectors_output_of_the_committed_json(collect):
    # docs/results.md must show what docs/results/full_schedule_h200.json holds, and the JSON's means must be
    # its runs' means: a number edited by hand in either place fails here
    out = json.loads((DOCS / "results" / "full_schedule_h200.json").read_text(encoding="utf-8"))
    assert collect.summarize(out["runs"], out["evaluations"]) == out["summary"]
    results = (DOCS / "results.md").read_text(encoding="utf-8")
    tables = collect.markdown_tables(out).strip().split("\n\n")
    assert len(tables) == 5  # WikiText-2, DailyDialog, whole stream, sample replies, seed protocol
    for table in tables:
        assert table in results, table.splitlines()[0]


def test_the_answer_table_of_docs_results_is_the_committed_json_best_first(collect):
    # the hand-labelled summary table of results.md's answer: one line per BPE row that has a test number,
    # each line's number and seed count that row's in the JSON, lowest perplexity first
    out = json.loads((DOCS / "results" / "full_schedule_h200.json").read_text(encoding="utf-8"))
    lines = table_after(DOCS / "results.md", "| model | test word PPL | seeds |")
    shown = [(cells[1].strip("*"), int(cells[2])) for cells in (line.strip("| ").split(" | ") for line in lines[2:])]
    rows = [out["summary"][row]["test_word_ppl"] for row in collect.bpe_rows(out["summary"])]
    measured = sorted((stat["mean"], collect._stat(stat, 1), stat["n"]) for stat in rows if stat["n"])
    assert shown == [(text, n) for _, text, n in measured]


def test_the_stopped_dailydialog_table_of_docs_results_is_its_json():
    # the per-seed table of the stopped step 2, evaluated apart: every number from its JSON
    runs = json.loads((DOCS / "results" / "resd_dailydialog_h200.json").read_text(encoding="utf-8"))["runs"]
    lines = table_after(DOCS / "results.md", "| seed | epochs run (best) | val token PPL | test token PPL |")
    token = [run["test"]["token_ppl"] for run in runs.values()]
    for seed, run in enumerate(runs.values()):
        val = min(row["val_ppl"] for row in run["history"])
        assert (f"| {seed} | {run['epochs_run']} ({run['best_epoch']}) | {val:.2f} | {run['test']['token_ppl']:.2f} | "
                f"{run['test']['response_ppl']:.2f} | {run['responses']['distinct_1']:.3f} | "
                f"{run['responses']['distinct_2']:.3f} |") == lines[2 + seed]  # fmt: skip
    assert f"**{statistics.fmean(token):.2f} ± {statistics.stdev(token):.2f}**" in lines[-1]


def test_dialog_plot_has_a_line_per_step_2_and_marks_the_stopped_ones(tmp_path, collect, monkeypatch):
    done = "start 1\npretrain_done 2\nfinetune_done 3\nevaluate_done 4\nexit 0 4\n"
    killed = "start 1\npretrain_done 2\ndeadline 3\nevaluate_done 4\nexit 124 4\n"
    write_run(tmp_path, "full_lstm_s0", "lstm", done, history(60.0, 50.0), history(20.0, 16.0))
    write_run(tmp_path, "resd_new_llm_s0", "new_llm", killed, history(60.0, 50.0), history(19.0, 16.5, 16.2))
    write_run(tmp_path, "full_new_llm_s0", "new_llm", done, history(60.0, 52.0))  # no step 2: no line
    runs, _, _ = collect.collect([tmp_path])
    axes = []
    monkeypatch.setattr(collect, "save_figure", lambda fig, path: axes.extend(fig.axes) or path)
    collect.plot_dialog_validation(runs, tmp_path / "dialog.png")
    lines = axes[0].get_lines()
    labelled = [line.get_label() for line in lines if not line.get_label().startswith("_")]
    assert labelled == ["LSTM", "New-LLM seed cell + residual + norm, more dropout (full_residual_norm_dropout), stopped (×)"]
    crosses = [line for line in lines if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xydata()[0]) == [3, 16.2]  # at the stopped run's last epoch


def test_the_full_size_stateful_table_of_docs_results_is_its_json():
    # every number of the table (validation per epoch, test from reset windows and as one stream) from the JSON
    runs = json.loads((DOCS / "results" / "stateful_stream_h200.json").read_text(encoding="utf-8"))["runs"]
    lines = table_after(DOCS / "results.md", "| cell | training |")[2:]
    assert len(lines) == len(runs) == 6
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        val, test, stream = cells[2:6], float(cells[6]), float(cells[7])
        matches = [run for run in runs.values() if [f"{row['val_ppl']:.1f}" for row in run["history"]] == val]
        assert len(matches) == 1, line  # one run per line, found by its validation curve
        assert (test, stream) == (round(matches[0]["test"]["token_ppl"], 2), round(matches[0]["test_stream"]["token_ppl"], 2))


def test_test_plot_puts_the_best_row_at_the_top_and_draws_stopped_runs_hollow(tmp_path, collect, monkeypatch):
    done = "start 1\npretrain_done 2\nevaluate_done 3\nexit 0 3\n"
    for name, model, word_ppls in (("full_lstm", "lstm", (153.0, 152.0)), ("full_tinygpt2", "tinygpt2", (122.0, 123.0)),
                                   ("full_residual_norm_dropout3_new_llm", "new_llm", (144.6,))):  # fmt: skip
        for seed, word_ppl in enumerate(word_ppls):
            write_run(tmp_path, f"{name}_s{seed}", model, done, history(60.0, 50.0))
            write_results(tmp_path / f"{name}_s{seed}", model, word_ppl, stream_window=128)
    marker = {"stage": "wikitext", "stopped": "time_limit"}
    (tmp_path / "full_residual_norm_dropout3_new_llm_s0" / "new_llm_wikitext" / "complete.json").write_text(json.dumps(marker))
    runs, evaluations, _ = collect.collect([tmp_path])
    axes = []
    monkeypatch.setattr(collect, "save_figure", lambda fig, path: axes.extend(fig.axes) or path)
    collect.plot_test(collect.summarize(runs, evaluations), tmp_path / "test.png")
    labels = [tick.get_text() for tick in axes[0].get_yticklabels()]
    assert labels == [  # from the bottom: the worst first, the best at the top
        "LSTM (n=2)", "New-LLM seed cell + residual + norm, dropout 0.3, step 1 stopped by its time limit (n=1)",
        "TinyGPT2 (n=2)",
    ]
    dots = [line for line in axes[0].get_lines() if line.get_marker() == "o"]
    assert [sorted(line.get_xdata()) for line in dots] == [[152.0, 153.0], [144.6], [122.0, 123.0]]
    assert [line.get_markerfacecolor() == "none" for line in dots] == [False, True, False]  # the stopped run hollow
