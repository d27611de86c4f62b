"""docs/results.md's tables against the JSON files in docs/results/: numbers against the JSON, never sentences.

The full-schedule tables come from results/full_schedule_h200.json, which an earlier collector gathered from
run folders no longer kept: it is the data now, and each table line must be one of its rows' numbers. A line
is matched to its row by its numbers alone; its label only has to name that row's model (and its preset,
where it gives one in backticks).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from newllm.reporting.plots import MODEL_LABELS

DOCS = Path(__file__).resolve().parents[2] / "docs"
RESULTS = DOCS / "results.md"
# the prototype's preset, by the name the JSON records (its earlier one): per token of another vocabulary, so a
# table of its own
PROTOTYPE_PRESET = "seed"

# summary stat → where its values come from in a run ("runs") or its evaluation ("evaluations")
SOURCES = {
    "wikitext_best_val_ppl": ("runs", "wikitext", "best_val_ppl"),
    "wikitext_epochs_run": ("runs", "wikitext", "epochs_run"),
    "dialog_best_val_ppl": ("runs", "dialog", "best_val_ppl"),
    "test_token_ppl": ("evaluations", "wikitext_test", "token_ppl"),
    "test_word_ppl": ("evaluations", "wikitext_test", "word_ppl"),
    "test_bits_per_byte": ("evaluations", "wikitext_test", "bits_per_byte"),
    "test_stream_token_ppl": ("evaluations", "wikitext_test_stream", "token_ppl"),
    "test_stream_word_ppl": ("evaluations", "wikitext_test_stream", "word_ppl"),
    "dialog_test_token_ppl": ("evaluations", "dailydialog_test", "token_ppl"),
    "dialog_test_response_ppl": ("evaluations", "dailydialog_test", "response_ppl"),
    "dialog_distinct_1": ("evaluations", "dailydialog_responses", "distinct_1"),
    "dialog_distinct_2": ("evaluations", "dailydialog_responses", "distinct_2"),
}


@pytest.fixture(scope="module")
def schedule() -> dict:
    return json.loads((DOCS / "results" / "full_schedule_h200.json").read_text(encoding="utf-8"))


def table_after(doc: Path, header: str) -> list[str]:
    """The lines of the one Markdown table in doc whose header row starts with header: found by its columns, not its prose."""
    text = doc.read_text(encoding="utf-8")
    assert text.count(header) == 1, header
    table = text[text.index(header) :]
    return table[: table.index("\n\n")].splitlines() if "\n\n" in table else table.splitlines()


def cells(line: str) -> list[str]:
    """A table line's cells; an escaped \\| stays inside its cell."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def _stat(stat: dict, decimals: int, n: int | None = None) -> str:
    """'mean ± std', and '(n=k)' where fewer seeds than the row's n count in this cell."""
    if not stat["n"]:
        return "—"
    std = f" ± {stat['std']:.{decimals}f}" if stat["std"] is not None else ""
    fewer = f" (n={stat['n']})" if n is not None and stat["n"] != n else ""
    return f"{stat['mean']:.{decimals}f}{std}{fewer}"


def _epochs(runs: dict, names: list[str], stage: str, stopped: bool) -> str:
    """'28–30 (13–15)': epochs run and best epoch over the runs whose stage ended (or, for stopped lines, was stopped)."""
    done = [runs[n][stage] for n in names if runs[n][stage] and (stopped or runs[n][stage]["complete"])]
    if not done:
        return "—"
    return f"{_span([d['epochs_run'] for d in done])} ({_span([d['best_epoch'] for d in done])})"


def _span(values: list[int]) -> str:
    """'13' or '13–14': the range of epochs a cell gives."""
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}–{max(values)}"


def _params(row: dict) -> str:
    return ", ".join(f"{p:,}" for p in row["params"]) or "—"


def _escape(text: str | None) -> str:
    """A reply as a table cell holds it."""
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _bpe_rows(summary: dict) -> list[str]:
    return [key for key in summary if key.split("/")[0] != PROTOTYPE_PRESET]


def _expected(schedule: dict, stage: str, n_key: str, numbers, keep_empty: bool = False) -> dict:
    """A table's lines as the JSON gives them: number cells → (preset, model). A line per BPE row whose `n_key`
    has seeds (with `keep_empty`, every row not wholly stopped), and one per row whose `stage` its time limit
    stopped; `numbers(row, part, n, stopped)` gives the cells between the label and n."""
    summary, lines = schedule["summary"], {}
    for key in _bpe_rows(summary):
        row, preset_model = summary[key], tuple(key.split("/"))
        stopped, n = row.get(f"{stage}_stopped"), row[n_key]["n"]
        candidates = []
        if n or (keep_empty and not (stopped and not row["wikitext_best_val_ppl"]["n"])):
            candidates.append((*numbers(row, row, n, False), str(n)))
        if stopped:
            candidates.append((*numbers(row, stopped, None, True), str(len(stopped["runs"]))))
        for line in candidates:
            assert line not in lines, line  # two rows with the same numbers could not be told apart
            lines[line] = preset_model
    return lines


def assert_table_is(doc_lines: list[str], expected: dict) -> None:
    """Every line of the table is one expected line, and every expected line is in the table once; its label
    names the row's model, and its preset where it gives one."""
    shown = [cells(line) for line in doc_lines[2:]]
    assert Counter(tuple(line[1:]) for line in shown) == Counter(list(expected)), "table lines differ from the JSON"
    for label, *numbers in shown:
        preset, model = expected[tuple(numbers)]
        assert MODEL_LABELS[model] in label, (label, model)
        named = re.findall(r"`([a-z0-9_]+)`", label)
        assert named in ([], [preset]), (label, preset)


def test_the_json_summary_is_its_runs_means(schedule):
    # a number edited by hand in the summary fails here: each mean and std is its values', each value one of its runs'
    for key, row in schedule["summary"].items():
        for part in (row, row.get("wikitext_stopped"), row.get("dialog_stopped")):
            for name, stat in (part or {}).items():
                if name not in SOURCES:
                    continue
                values = stat["values"]
                assert stat["n"] == len(values), (key, name)
                if values:
                    assert stat["mean"] == pytest.approx(statistics.fmean(values)), (key, name)
                    assert stat["std"] == (pytest.approx(statistics.stdev(values)) if len(values) > 1 else None)
                where, *path = SOURCES[name]
                found = [schedule[where].get(run) for run in part["runs"]]
                for step in path:
                    found = [value.get(step) if isinstance(value, dict) else None for value in found]
                assert not Counter(values) - Counter(found), (key, name)


def test_the_wikitext_table_is_the_json(schedule):
    runs = schedule["runs"]
    expected = _expected(schedule, "wikitext", "wikitext_best_val_ppl", keep_empty=True, numbers=lambda row, part, n, stopped: (
        _params(row), _epochs(runs, part["runs"], "wikitext", stopped), _stat(part["wikitext_best_val_ppl"], 2),
        _stat(part["test_token_ppl"], 2, n), _stat(part["test_word_ppl"], 1, n), _stat(part["test_bits_per_byte"], 3, n),
    ))  # fmt: skip
    header = "| model | parameters | epochs run (best) | val token PPL | test token PPL | test word PPL | test bits/byte | n |"
    assert_table_is(table_after(RESULTS, header), expected)


def test_the_whole_stream_table_is_the_json(schedule):
    expected = _expected(schedule, "wikitext", "test_stream_word_ppl", numbers=lambda row, part, n, stopped: (
        _stat(part["test_token_ppl"], 2, n), _stat(part["test_stream_token_ppl"], 2), _stat(part["test_word_ppl"], 1, n),
        _stat(part["test_stream_word_ppl"], 1),
    ))  # fmt: skip
    header = "| model | test token PPL, reset every window | whole stream | test word PPL, reset | whole stream | n |"
    assert_table_is(table_after(RESULTS, header), expected)


def test_the_dailydialog_table_is_the_json(schedule):
    runs = schedule["runs"]
    expected = _expected(schedule, "dialog", "dialog_best_val_ppl", numbers=lambda row, part, n, stopped: (
        _epochs(runs, part["runs"], "dialog", stopped), _stat(part["dialog_best_val_ppl"], 2),
        _stat(part["dialog_test_token_ppl"], 2, n), _stat(part["dialog_test_response_ppl"], 2, n),
        _stat(part["dialog_distinct_1"], 3, n), _stat(part["dialog_distinct_2"], 3, n),
    ))  # fmt: skip
    header = "| model | epochs run (best) | val token PPL | test token PPL | test response PPL | distinct-1 | distinct-2 | n |"
    lines = table_after(RESULTS, header)
    human = [line for line in lines[2:] if cells(line)[-1] == ""]  # the human replies: no seeds, no perplexity
    reference = schedule["evaluations"]["_reference_responses"]
    assert [cells(line)[1:] for line in human] == [
        ["", "", "", "", f"{reference['distinct_1']:.3f}", f"{reference['distinct_2']:.3f}", ""]
    ]
    assert_table_is([line for line in lines if line not in human], expected)


def test_the_sample_replies_are_seed_0s_in_the_json(schedule):
    summary, runs, evaluations = schedule["summary"], schedule["runs"], schedule["evaluations"]
    columns, first = {}, None  # each row's replies (a column) → (preset, model)
    for key in _bpe_rows(summary):
        if not (summary[key]["dialog_best_val_ppl"]["n"] or "dialog_stopped" in summary[key]):
            continue
        name = next((n for n in summary[key]["runs"] if runs[n]["seed"] == 0), None)
        samples = evaluations.get(name, {}).get("dialog_samples") if name else None
        if samples:
            columns[tuple(_escape(sample["reply"]) for sample in samples)] = tuple(key.split("/"))
            first = first or samples
    lines = [cells(line) for line in table_after(RESULTS, "| # | context (last two turns) | human |")]
    header, body = lines[0], lines[2:]
    assert [line[:3] for line in body] == [
        [str(i + 1), _escape(" / ".join(sample["context"][-2:])), _escape(sample["reference"])]
        for i, sample in enumerate(first)
    ]
    shown = {tuple(line[j] for line in body): header[j] for j in range(3, len(header))}
    assert sorted(shown) == sorted(columns)
    for replies, label in shown.items():
        preset, model = columns[replies]
        assert MODEL_LABELS[model] in label and re.findall(r"`([a-z0-9_]+)`", label) in ([], [preset]), label


def test_the_prototype_protocol_table_is_the_json_best_first(schedule):
    summary, runs = schedule["summary"], schedule["runs"]
    keys = [key for key in summary if key.split("/")[0] == PROTOTYPE_PRESET and summary[key]["wikitext_best_val_ppl"]["n"]]
    keys.sort(key=lambda key: summary[key]["wikitext_best_val_ppl"]["mean"])
    lines = [cells(line) for line in table_after(RESULTS, "| model | parameters | epochs run (best) | val PPL | n |")[2:]]
    assert [line[1:] for line in lines] == [
        [_params(summary[key]), _epochs(runs, summary[key]["runs"], "wikitext", False),
         _stat(summary[key]["wikitext_best_val_ppl"], 2), str(summary[key]["wikitext_best_val_ppl"]["n"])]
        for key in keys
    ]  # fmt: skip
    assert all(MODEL_LABELS[key.split("/")[1]] in line[0] for key, line in zip(keys, lines))


def test_the_answer_table_is_the_json_best_first(schedule):
    # the hand-labelled summary table of the answer: one line per BPE row that has a test number,
    # each line's number and seed count that row's in the JSON, lowest perplexity first
    lines = table_after(RESULTS, "| model | test word PPL | seeds |")
    shown = [(line[1].strip("*"), int(line[2])) for line in map(cells, lines[2:])]
    stats = [schedule["summary"][key]["test_word_ppl"] for key in _bpe_rows(schedule["summary"])]
    measured = sorted((stat["mean"], _stat(stat, 1), stat["n"]) for stat in stats if stat["n"])
    assert shown == [(text, n) for _, text, n in measured]


def test_the_stopped_dailydialog_table_is_its_json():
    # the per-seed table of the stopped step 2, evaluated apart: every number from its JSON
    runs = json.loads((DOCS / "results" / "resd_dailydialog_h200.json").read_text(encoding="utf-8"))["runs"]
    lines = table_after(RESULTS, "| seed | epochs run (best) | val token PPL | test token PPL |")
    token = [run["test"]["token_ppl"] for run in runs.values()]
    for seed, run in enumerate(runs.values()):
        val = min(row["val_ppl"] for row in run["history"])
        assert (f"| {seed} | {run['epochs_run']} ({run['best_epoch']}) | {val:.2f} | {run['test']['token_ppl']:.2f} | "
                f"{run['test']['response_ppl']:.2f} | {run['responses']['distinct_1']:.3f} | "
                f"{run['responses']['distinct_2']:.3f} |") == lines[2 + seed]  # fmt: skip
    assert f"**{statistics.fmean(token):.2f} ± {statistics.stdev(token):.2f}**" in lines[-1]


def test_the_full_size_stateful_table_is_its_json():
    # every number of the table (validation per epoch, test from reset windows and as one stream) from the JSON
    runs = json.loads((DOCS / "results" / "stateful_stream_h200.json").read_text(encoding="utf-8"))["runs"]
    lines = table_after(RESULTS, "| cell | training |")[2:]
    assert len(lines) == len(runs) == 6
    for line in lines:
        row = cells(line)
        val, test, stream = row[2:6], float(row[6]), float(row[7])
        matches = [run for run in runs.values() if [f"{r['val_ppl']:.1f}" for r in run["history"]] == val]
        assert len(matches) == 1, line  # one run per line, found by its validation curve
        assert (test, stream) == (round(matches[0]["test"]["token_ppl"], 2), round(matches[0]["test_stream"]["token_ppl"], 2))


def _study(name: str) -> list[dict]:
    return json.loads((DOCS / "results" / name).read_text(encoding="utf-8"))["rows"]


def _ablation_runs(preset: str) -> list[dict]:
    """The runs of one preset of the ablation's JSON."""
    return next(row["runs"] for row in _study("study_ablation_h100.json") if row["preset"] == preset)


def _over_seeds(runs: list[dict], key, digits: int) -> str:
    """'mean ± sample std' of a value of every run, recomputed from the runs (a hand-edited summary fails)."""
    values = [key(run) if callable(key) else run[key] for run in runs]
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _by_model(lines: list[str], rows: list[dict]) -> list[tuple[list[str], dict]]:
    """Each table line (bold marks dropped) with the JSON row of its preset: every row shown once."""
    shown = [[cell.strip("*") for cell in cells(line)] for line in lines]
    by_preset = {f"`{row['preset']}`": row for row in rows}
    assert sorted(line[0] for line in shown) == sorted(by_preset)
    return [(line, by_preset[line[0]]) for line in shown]


def test_the_study_step_1_table_is_its_json():
    lines = table_after(RESULTS, "| preset | model | seeds | parameters | epochs run (best) | val token PPL | test word PPL |")
    for line, row in _by_model(lines[2:], _study("study_seeds_step1_h100.json")):
        runs = row["runs"]
        assert sorted(run["seed"] for run in runs) == [0, 1, 2]
        epochs = f"{_span([r['wikitext_epochs_run'] for r in runs])} ({_span([r['wikitext_best_epoch'] for r in runs])})"
        assert line[1:] == [MODEL_LABELS[row["model"]], "3", f"{row['params']:,}", epochs,
                            _over_seeds(runs, "wikitext_best_val_ppl", 2), _over_seeds(runs, "wikitext_test_word_ppl", 1),
                            _over_seeds(runs, "wikitext_test_token_ppl", 2),
                            _over_seeds(runs, "wikitext_test_bits_per_byte", 3)]  # fmt: skip


def test_the_study_step_2_table_is_its_json_and_marks_the_stopped_row():
    lines = table_after(RESULTS, "| preset | model | seeds | epochs run (best) | val token PPL | test token PPL |")
    for line, row in _by_model(lines[2:], _study("study_seeds_h100.json")):
        runs = row["runs"]
        assert sorted(run["seed"] for run in runs) == [0, 1, 2]
        # a row whose step 2 a time limit stopped says so in its label
        assert ("stopped" in line[1]) == ("dailydialog" in row["stopped"]) and MODEL_LABELS[row["model"]] in line[1]
        epochs = f"{_span([r['dailydialog_epochs_run'] for r in runs])} ({_span([r['dailydialog_best_epoch'] for r in runs])})"
        assert line[2:] == ["3", epochs, _over_seeds(runs, "dailydialog_best_val_ppl", 2),
                            _over_seeds(runs, "dailydialog_test_token_ppl", 2),
                            _over_seeds(runs, "dailydialog_test_response_ppl", 2)]  # fmt: skip


def _dialog_val(epoch: int):
    def val(run):
        return next(e["val_ppl"] for e in run["per_epoch"]["dailydialog"] if e["epoch"] == epoch)

    return val


def test_the_study_equal_epochs_table_is_the_step_2_curves():
    # validation after epochs that every family ran (the header names them); the lowest of each column in bold
    rows = {MODEL_LABELS[row["model"]]: row for row in _study("study_seeds_h100.json")}
    table = table_after(RESULTS, "| model | val token PPL after epoch 1 | after epoch 2 |")
    epochs = [int(header.split()[-1]) for header in cells(table[0])[1:]]
    assert epochs[-1] == min(len(run["per_epoch"]["dailydialog"]) for row in rows.values() for run in row["runs"])
    lines = [cells(line) for line in table[2:]]
    assert sorted(line[0] for line in lines) == sorted(rows)
    for column, epoch in enumerate(epochs, start=1):
        shown = {}
        for line in lines:
            runs = rows[line[0]]["runs"]
            assert line[column].strip("*") == _over_seeds(runs, _dialog_val(epoch), 2), (line, epoch)
            shown[line[0]] = (statistics.fmean(map(_dialog_val(epoch), runs)), line[column].startswith("**"))
        assert [bold for _, bold in sorted(shown.values())] == [True] + [False] * (len(shown) - 1)


def test_the_study_step_2_grid_table_is_its_json():
    summary = json.loads((DOCS / "results" / "study_finetune_grid_h100.json").read_text(encoding="utf-8"))
    lines = [cells(line) for line in table_after(RESULTS, "| step-2 dropout | New-LLM | TinyGPT2 | LSTM |")[2:]]
    families = ["new_llm", "tinygpt2", "lstm"]
    points = {(p["family"], p["settings"]["finetune.dropout"]): p for p in summary["points"]}
    assert len(lines) * len(families) == len(points)
    for line in lines:
        for family, cell in zip(families, line[1:]):
            point = points[(family, float(line[0]))]
            stopped = "" if point["complete"] else ", stopped"
            text = f"{point['val_ppl']:.2f} ({point['epochs_run']}{stopped})"
            chosen = summary["chosen"][family] == point["name"]
            assert cell == (f"**{text}**" if chosen else text), (family, line[0])


def test_the_readme_table_is_the_study_json():
    # the README's summary: step 1's test numbers, step 2's validation after epochs 2 and 6 and its test after 8, the
    # best of each column bold; a stopped step 2 has no test cell
    rows = {MODEL_LABELS[row["model"]]: row for row in _study("study_seeds_h100.json")}
    lines = [cells(line) for line in table_after(DOCS.parent / "README.md", "| model | WikiText-2 test word PPL |")[2:]]
    best = "New-LLM, the ablation's best cell (linear candidate)"
    [peer] = _study("study_peers_h100.json")
    assert not peer["stopped"] and {run["dailydialog_epochs_run"] for run in peer["runs"]} == {8}
    peer_label = "Mamba-2, the attention-free peer"
    assert len(lines) == len(rows) + 2 and [line[0] for line in lines].count(best) == 1
    keys = [("wikitext_test_word_ppl", 1), ("wikitext_test_bits_per_byte", 3), (_dialog_val(2), 2), (_dialog_val(6), 2),
            ("dailydialog_test_token_ppl", 2)]  # fmt: skip
    for line in lines:
        if line[0] == best:
            runs = _study("study_best_cell_h100.json")[0]["runs"]
        elif line[0] == peer_label:
            # one run per seed through all three steps: step 1's numbers are those of the model step 2 started from
            runs = peer["runs"]
            assert sorted(run["seed"] for run in runs) == [0, 1, 2]
        else:
            row = next(row for name, row in rows.items() if line[0].startswith(name))
            runs = row["runs"]
            if "dailydialog" in row["stopped"]:
                assert line[-1] == f"– (stopped at {runs[0]['dailydialog_epochs_run']})"
                line = line[:-1]
        expected = [_over_seeds(runs, key, digits) for key, digits in keys[: len(line) - 1]]
        assert [cell.strip("*") for cell in line[1:]] == expected
    assert [line[0] for line in lines].count(peer_label) == 1
    for column in range(1, len(keys) + 1):  # the lowest mean of each column, and only it, in bold
        means = [float(line[column].strip("*").split()[0]) if not line[column].startswith("–") else math.inf for line in lines]
        assert [line[column].startswith("**") for line in lines] == [m == min(means) for m in means]


def test_the_peers_step_2_section_is_its_jsons():
    # results.md's step-2 grid of the peer (a column per seed) and its 3-step rows beside TinyGPT2's and the best cell's
    lines = [cells(line) for line in table_after(RESULTS, "| step-2 learning rate | seed 0 | seed 1 | seed 2 |")[2:]]
    grids = [json.loads((DOCS / "results" / name).read_text(encoding="utf-8")) for name in
             ("study_peers_finetune_grid_h100.json", "study_peers_finetune_grid_s1_h100.json",
              "study_peers_finetune_grid_s2_h100.json")]  # fmt: skip
    for seed, grid in enumerate(grids):
        assert grid["provenance"]["device"].startswith("NVIDIA H100")
        assert all(p.get("seed", seed) == seed for p in grid["points"])
    assert len(lines) == len(grids[0]["points"])
    for line in lines:
        for seed, (cell, grid) in enumerate(zip(line[1:], grids)):
            point = next(p for p in grid["points"] if p["settings"]["finetune.lr"] == float(line[0]))
            text = f"{point['val_ppl']:.2f} ({point['epochs_run']})" if "val_ppl" in point else "–"
            chosen = seed == 0 and grids[0]["chosen"]["mamba2"] == point["name"]
            assert cell == (f"**{text}**" if chosen else text), (line[0], seed)
    peer = _study("study_peers_h100.json")[0]["runs"]
    best = _study("study_best_cell_h100.json")[0]["runs"]
    table = [cells(line) for line in table_after(RESULTS, "| model | seeds | DailyDialog epochs | val token PPL after epoch 2 |")[2:]]
    by_model = {line[0]: line for line in table}
    tiny = next(row for row in _study("study_seeds_h100.json") if row["model"] == "tinygpt2")["runs"]
    keys = [(_dialog_val(2), 2), (_dialog_val(6), 2), ("dailydialog_test_token_ppl", 2), ("dailydialog_test_response_ppl", 2)]
    for label, runs in (("TinyGPT2", tiny), ("New-LLM, the ablation's best cell", best), ("Mamba-2", peer)):
        line = by_model[label]
        assert line[1] == str(len(runs)) and line[2] == "8" and all(r["dailydialog_epochs_run"] == 8 for r in runs)
        assert [cell.strip("*") for cell in line[3:]] == [_over_seeds(runs, key, d) for key, d in keys], label
    for column in range(3, 7):  # the lowest mean of each column in bold
        means = [float(line[column].strip("*").split()[0]) for line in table]
        assert [line[column].startswith("**") for line in table] == [m == min(means) for m in means]
    # the prose's distance, in the section and in the answer at the top
    test = [r["dailydialog_test_token_ppl"] for r in peer]
    gap = statistics.fmean(test) - statistics.fmean(r["dailydialog_test_token_ppl"] for r in best)
    percent = 100 * gap / statistics.fmean(test)
    text = " ".join(RESULTS.read_text(encoding="utf-8").split())
    assert f"against {_over_seeds(peer, 'dailydialog_test_token_ppl', 2)} test token PPL, {gap:.2f} lower ({percent:.1f} %)" in text
    assert f"against its {_over_seeds(peer, 'dailydialog_test_token_ppl', 2)}, {percent:.1f} % lower" in text
    # step 1 of the same run, the models step 2 started from
    step1 = _study("study_peers_step1_h100.json")[0]["runs"]
    assert sorted(r["wikitext_test_word_ppl"] for r in step1) == sorted(r["wikitext_test_word_ppl"] for r in peer)
    assert f"{_over_seeds(step1, 'wikitext_test_word_ppl', 1)} test word PPL, the H200's" in text


def test_the_best_cell_through_step_2_is_its_jsons():
    # results.md's best-cell section: its step-2 grid, its 3-seed row beside TinyGPT2's, the equal-epoch validation
    grid = json.loads((DOCS / "results" / "study_best_cell_finetune_grid_h100.json").read_text(encoding="utf-8"))
    assert grid["provenance"]["device"].startswith("NVIDIA H100")
    lines = [cells(line) for line in table_after(RESULTS, "| step-2 dropout | best cell:")[2:]]
    assert len(lines) == len(grid["points"]) == 3
    for line in lines:
        point = next(p for p in grid["points"] if p["settings"]["finetune.dropout"] == float(line[0]))
        text = f"{point['val_ppl']:.2f} ({point['epochs_run']})"
        assert point["complete"] and line[1] == (f"**{text}**" if grid["chosen"]["new_llm"] == point["name"] else text)
    [best] = _study("study_best_cell_h100.json")
    assert best["preset"] == "study_without_tanh" and not best["stopped"]
    chosen = next(p for p in grid["points"] if p["name"] == grid["chosen"]["new_llm"])
    assert all(f"/{chosen['name']}/" in run["path"] for run in best["runs"])  # each seed's run of the chosen point
    gpt2 = next(row for row in _study("study_seeds_h100.json") if row["model"] == "tinygpt2")
    keys = [("dailydialog_best_val_ppl", 2), ("dailydialog_test_token_ppl", 2), ("dailydialog_test_response_ppl", 2)]
    table = [cells(line) for line in table_after(RESULTS, "| model | preset | seeds | epochs run (best) |")[2:]]
    assert [line[1] for line in table] == [f"`{best['preset']}`", f"`{gpt2['preset']}`"]
    for line, row in zip(table, (best, gpt2)):
        runs = row["runs"]
        assert sorted(run["seed"] for run in runs) == [0, 1, 2]
        epochs = f"{_span([r['dailydialog_epochs_run'] for r in runs])} ({_span([r['dailydialog_best_epoch'] for r in runs])})"
        assert [cell.strip("*") for cell in line[2:]] == ["3", epochs] + [_over_seeds(runs, k, d) for k, d in keys]
    curves = [cells(line) for line in table_after(RESULTS, "| model (8 epochs each) |")]
    epochs = [int(header.split()[-1]) for header in curves[0][1:]]
    for line, row in zip(curves[2:], (best, gpt2)):
        assert [cell.strip("*") for cell in line[1:]] == [_over_seeds(row["runs"], _dialog_val(e), 2) for e in epochs]
    # the targets table's line for the best cell, and the answer's claim of a tie within the spread on test
    stat = {name: [run["dailydialog_test_token_ppl"] for run in row["runs"]] for name, row in (("best", best), ("gpt2", gpt2))}
    gap = statistics.fmean(stat["best"]) - statistics.fmean(stat["gpt2"])
    assert abs(gap) < max(statistics.stdev(v) for v in stat.values())
    targets = {cells(line)[0]: cells(line)[1:] for line in table_after(RESULTS, "| target | measured | met? |\n| --- | --- | --- |\n| parameters")[2:]}
    assert targets["the same, the ablation's best cell"][1].startswith(f"level: {gap:+.2f}".replace("-", "−"))


def test_the_study_targets_table_is_its_json():
    # each target's distance is the 3-seed mean's, New-LLM's and TinyGPT2's means as the step-1 table gives them
    rows = {row["model"]: row for row in _study("study_seeds_step1_h100.json")}
    new_llm, gpt2 = (rows[m]["runs"] for m in ("new_llm", "tinygpt2"))
    word = statistics.fmean(run["wikitext_test_word_ppl"] for run in new_llm)
    lines = {cells(line)[0]: cells(line)[1:] for line in table_after(RESULTS, "| target | measured | met? |\n| --- | --- | --- |\n| parameters")[2:]}
    assert lines["parameters ≤ TinyGPT2's"] == [f"{new_llm[0]['params']:,} against {gpt2[0]['params']:,}", "yes"]
    base = statistics.fmean(run["wikitext_test_word_ppl"] for run in gpt2)
    assert lines["test word PPL below the tuned TinyGPT2, beyond the spread"] == [
        f"{_over_seeds(new_llm, 'wikitext_test_word_ppl', 1)} against {_over_seeds(gpt2, 'wikitext_test_word_ppl', 1)}",
        f"no, +{word - base:.1f} (+{100 * (word / base - 1):.1f} %)"]  # fmt: skip
    for target, bound in [("test word PPL ≤ 110 (stretch)", 110), ("test word PPL ≤ 96 (moonshot)", 96)]:
        assert lines[target] == [_over_seeds(new_llm, "wikitext_test_word_ppl", 1), f"no, +{word - bound:.1f}"]
    # the ablation's best cell, from its own JSON
    best = _ablation_runs("study_without_tanh")
    best_word = statistics.fmean(run["wikitext_test_word_ppl"] for run in best)
    cell = "the same, the ablation's best cell"
    assert lines[f"{cell} (linear candidate): below the tuned TinyGPT2"] == [
        f"{_over_seeds(best, 'wikitext_test_word_ppl', 1)} against {_over_seeds(gpt2, 'wikitext_test_word_ppl', 1)}",
        f"no, +{best_word - base:.1f} (+{100 * (best_word / base - 1):.1f} %)"]  # fmt: skip
    for target, bound in [("≤ 110 (stretch)", 110), ("≤ 96 (moonshot)", 96)]:
        assert lines[f"{cell}: {target}"] == [_over_seeds(best, "wikitext_test_word_ppl", 1), f"no, +{best_word - bound:.1f}"]


def test_the_peer_grid_table_is_its_json():
    summary = json.loads((DOCS / "results" / "study_peers_grid_h200.json").read_text(encoding="utf-8"))
    points = {(p["settings"]["pretrain.lr"], p["settings"]["pretrain.weight_decay"]): p for p in summary["points"]}
    assert all(p["complete"] for p in points.values()) and len(points) == 6
    lines = table_after(RESULTS, "| learning rate | weight decay 0 | weight decay 0.1 |")[2:]
    for line in lines:
        lr, *by_decay = cells(line)
        for decay, cell in zip((0.0, 0.1), by_decay):
            point = points[(float(lr), decay)]
            bold = point["name"] == summary["chosen"]["mamba2"]
            assert cell == ("**{}**" if bold else "{}").format(f"{point['val_ppl']:.2f} ({point['best_epoch']})")
    assert len(lines) == 3


def test_the_peer_step_1_table_is_the_three_jsons():
    # Mamba-2 from its own JSON; the others from the study's and the ablation's, as their own tables give them
    rows = {row["preset"]: row["runs"] for row in _study("study_seeds_step1_h100.json")}
    rows["study_mamba2"] = _study("study_peers_step1_h200.json")[0]["runs"]
    rows["study_without_tanh"] = _ablation_runs("study_without_tanh")
    lines = table_after(RESULTS, "| model | preset | epochs run (best) | val token PPL | test word PPL | test bits/byte |")[2:]
    shown = {cells(line)[1].strip("`"): [cell.strip("*") for cell in cells(line)[2:]] for line in lines}
    assert sorted(shown) == ["study_mamba2", "study_new_llm", "study_tinygpt2", "study_without_tanh"]
    for preset, line in shown.items():
        runs = rows[preset]
        assert sorted(run["seed"] for run in runs) == [0, 1, 2]
        epochs = f"{_span([r['wikitext_epochs_run'] for r in runs])} ({_span([r['wikitext_best_epoch'] for r in runs])})"
        assert line == [epochs, _over_seeds(runs, "wikitext_best_val_ppl", 2), _over_seeds(runs, "wikitext_test_word_ppl", 1),
                        _over_seeds(runs, "wikitext_test_bits_per_byte", 3)]  # fmt: skip
    # the prose's distances: New-LLM's two cells against Mamba-2, in word PPL and per cent
    text = RESULTS.read_text(encoding="utf-8")
    peer = statistics.fmean(run["wikitext_test_word_ppl"] for run in rows["study_mamba2"])
    for preset in ("study_without_tanh", "study_new_llm"):
        word = statistics.fmean(run["wikitext_test_word_ppl"] for run in rows[preset])
        assert f"{peer - word:.1f} word PPL ({100 * (1 - word / peer):.1f} % lower)" in text or \
            f"{peer - word:.1f} ({100 * (1 - word / peer):.1f} %)" in text  # fmt: skip


def test_the_ablation_table_is_its_json():
    lines = table_after(RESULTS, "| preset | lever removed | seeds | parameters |")
    every = {f"`{row['preset']}`": row for row in _study("study_ablation_h100.json")}
    rows = {preset: row for preset, row in every.items() if not row["stopped"]}  # stopped runs: equal epochs only
    assert len(rows) < len(every)
    shown = [[cell.strip("*") for cell in cells(line)] for line in lines[2:]]
    assert sorted(line[0] for line in shown) == sorted(rows)
    means = []
    for line in shown:
        runs = rows[line[0]]["runs"]

        def stat(key, digits, runs=runs):  # a single seed shows its value alone
            return _over_seeds(runs, key, digits) if len(runs) > 1 else f"{runs[0][key]:.{digits}f}"

        epochs = f"{_span([r['wikitext_epochs_run'] for r in runs])} ({_span([r['wikitext_best_epoch'] for r in runs])})"
        assert line[2:] == [str(len(runs)), f"{rows[line[0]]['params']:,}", epochs, stat("wikitext_best_val_ppl", 2),
                            stat("wikitext_test_word_ppl", 1), stat("wikitext_test_bits_per_byte", 3)]  # fmt: skip
        means.append(statistics.fmean(r["wikitext_test_word_ppl"] for r in runs))
    assert means == sorted(means)  # best first
    # the text's claim: three complete runs of every lever but the MLP blocks, whose runs were all stopped
    assert all(len(row["runs"]) == 3 for row in rows.values())
    assert [preset for preset, row in every.items() if row["stopped"]] == ["`study_without_mlp_blocks`"]
    assert "Every lever has three\ncomplete runs but the MLP blocks" in RESULTS.read_text(encoding="utf-8")


@pytest.mark.parametrize("preset, rerun_json", [("study_new_llm", "study_new_llm_step1_rerun_h100.json"),
                                                ("study_without_tanh", "study_best_cell_step1_h100.json")])
def test_a_rerun_of_an_ablation_cell_reproduced_its_step_1_exactly(preset, rerun_json):
    # results.md calls training deterministic: a rerun at a later commit gives the same numbers, epoch by epoch
    first = {run["seed"]: run for run in _ablation_runs(preset)}
    rerun = _study(rerun_json)[0]["runs"]
    assert sorted(run["seed"] for run in rerun) == sorted(first) == [0, 1, 2]
    for run in rerun:
        before = first[run["seed"]]
        assert run["commit"] != before["commit"]
        assert run["per_epoch"]["wikitext"] and [e["val_ppl"] for e in run["per_epoch"]["wikitext"]] == [
            e["val_ppl"] for e in before["per_epoch"]["wikitext"]]  # fmt: skip
        assert run["wikitext_test_word_ppl"] == before["wikitext_test_word_ppl"]


def test_the_ablations_equal_epoch_table_is_its_jsons_per_epoch_curves():
    # every preset of the JSON, stopped or not, its validation after epochs 11, 14 and 16 over the seeds that got
    # there (a dash where none did), best first at epoch 11, the lowest of each column in bold
    lines = table_after(RESULTS, "| preset | lever removed | seeds | val token PPL after epoch 11 |")
    rows = {f"`{row['preset']}`": row for row in _study("study_ablation_h100.json")}
    shown = [cells(line) for line in lines[2:]]
    assert sorted(line[0] for line in shown) == sorted(rows)
    for line in shown:
        runs = rows[line[0]]["runs"]
        expected = [str(len(runs))]
        for epoch in (11, 14, 16):
            reached = [r for r in runs if len(r["per_epoch"]["wikitext"]) >= epoch]

            def val(run, epoch=epoch):
                return run["per_epoch"]["wikitext"][epoch - 1]["val_ppl"]

            expected.append("–" if not reached else f"{val(reached[0]):.2f}" if len(reached) == 1
                            else _over_seeds(reached, val, 2))  # fmt: skip
        assert [cell.strip("*") for cell in line[2:]] == expected
    for column in (3, 4, 5):
        means = [float(line[column].strip("*").split()[0]) if line[column] != "–" else math.inf for line in shown]
        assert [line[column].startswith("**") for line in shown] == [m == min(means) for m in means]
    assert [line[3] for line in shown] == sorted((line[3] for line in shown), key=lambda c: float(c.strip("*").split()[0]))


@pytest.mark.parametrize("name", ["study_step_time_mamba2_scan_h100.json", "study_step_time_mamba2_h100.json"])
def test_the_mamba2_step_time_tables_are_their_jsons(name):
    # performance.md's tables of the peer's training step (our scan, transformers' scan): every row of the JSON, in
    # its order, with its numbers
    text = (DOCS / "performance.md").read_text(encoding="utf-8")
    link = f"(performance/{name})):\n\n"
    assert text.count(link) == 1
    table = [line.strip() for line in text[text.index(link) + len(link) :].split("\n\n")[0].splitlines()[2:]]
    rows = json.loads((DOCS / "performance" / name).read_text(encoding="utf-8"))["rows"]
    assert len(table) == len(rows)
    for line, row in zip(table, rows):
        model, path, ms, tokens, epoch = cells(line)
        assert model.startswith({"new_llm": "New-LLM", "tinygpt2": "TinyGPT2", "mamba2": "Mamba-2"}[row["model"]])
        assert ("compile" in path) == ("compiled" in row["mode"]), (path, row["mode"])
        assert [ms, tokens, epoch] == [f"{row['ms_per_step']:.2f}", f"{row['tokens_per_s'] / 1e6:.2f} M", f"{row['epoch_s']:.1f}"]


def test_the_mamba2_scan_speedup_is_its_jsons():
    def step(name, model, mode):
        rows = json.loads((DOCS / "performance" / name).read_text(encoding="utf-8"))["rows"]
        return next(r["ms_per_step"] for r in rows if r["model"] == model and r["mode"] == mode)

    ours, theirs = step("study_step_time_mamba2_scan_h100.json", "mamba2", "compiled"), step("study_step_time_mamba2_h100.json", "mamba2", "compiled")
    new_llm = step("study_step_time_mamba2_scan_h100.json", "new_llm", "compiled+graphed")
    text = (DOCS / "performance.md").read_text(encoding="utf-8")
    assert f"our scan's step is {theirs / ours:.1f} times shorter ({ours:.2f} against {theirs:.2f} ms)" in text
    assert f"Mamba-2 trains {new_llm / ours:.2f} times faster than New-LLM here** ({ours:.2f} against {new_llm:.2f} ms" in text


def test_the_linear_candidate_leads_the_chosen_cell_at_every_epoch_and_in_every_seed():
    # results.md: ahead in validation at every epoch (the mean over seeds) and in every seed's best
    best, chosen = _ablation_runs("study_without_tanh"), _ablation_runs("study_new_llm")

    def mean_at(runs, epoch):
        return statistics.fmean(r["per_epoch"]["wikitext"][epoch - 1]["val_ppl"] for r in runs)

    assert all(mean_at(best, e) < mean_at(chosen, e) for e in range(1, 17))
    worst, first = max(r["wikitext_best_val_ppl"] for r in best), min(r["wikitext_best_val_ppl"] for r in chosen)
    assert worst < first
    assert f"its worst seed, {worst:.2f}, below the chosen cell's best, {first:.2f}" in RESULTS.read_text(encoding="utf-8")


def _decode_ms(name: str) -> dict:
    """ms per token of a committed H100 decode bench, by (model, precision, mode, batch, context); None where skipped."""
    results = json.loads((DOCS / "performance" / name).read_text(encoding="utf-8"))
    assert results["environment"]["gpu"].startswith("NVIDIA H100") and results["commit"]
    return {(r["model"], r["precision"], r["mode"], r["batch_size"], r["context_len"]): r.get("ms_per_token")
            for r in results["generation"]}  # fmt: skip


def test_the_decode_kernel_table_is_its_json():
    # performance.md's decoding table: every New-LLM graphed row of both JSONs, with the kernel's and TinyGPT2's time
    # beside it (a dash where that row was skipped), and the ratios the text draws from them
    text = (DOCS / "performance.md").read_text(encoding="utf-8")
    header = "| cell | precision | batch | context | New-LLM graphed | New-LLM decode kernels | TinyGPT2 graphed |"
    lines = [line.strip() for line in table_after(DOCS / "performance.md", header)[2:]]

    def timings(name):
        return _decode_ms(f"{name}_h100.json")

    expected, times, first = [], {}, {}
    for cell, name in (("prototype", "decode_kernel_bench"), ("study (MLP blocks)", "decode_kernel_bench_study")):
        ms = times[cell] = timings(name.replace("decode_kernel_bench", "decode_kernel_bench_one_row"))
        first[cell] = timings(name)  # the first version's: tl.dot tiles at every batch size
        for (model, precision, mode, batch, context), value in ms.items():
            if model == "new_llm" and mode == "graphed":
                others = [ms[("new_llm", precision, "kernel", batch, context)], ms[("tinygpt2", precision, "graphed", batch, context)]]
                shown = ["–" if v is None else f"{v:.3f}" for v in (value, *others)]
                expected.append(f"| {cell} | {precision} | {batch} | {context:,} | {' | '.join(shown)} |")
    assert sorted(lines) == sorted(expected)
    flat = " ".join(text.replace("**", "").split())
    for cell, ms in times.items():  # fp32, 128 tokens of context
        graphed, kernel = ms[("new_llm", "fp32", "graphed", 1, 128)], ms[("new_llm", "fp32", "kernel", 1, 128)]
        assert kernel < graphed  # batch 1: the kernels win
        assert f"({kernel:.3f} against {graphed:.3f} ms)" in flat and f"{graphed / kernel:.1f} times" in flat, cell
        old = first[cell][("new_llm", "fp32", "kernel", 1, 128)]
        assert f"{old:.3f}" in flat and f"{old / kernel:.1f}" in flat.split("reading each row at once gave")[1][:12], cell
        graphed, kernel = ms[("new_llm", "fp32", "graphed", 32, 128)], ms[("new_llm", "fp32", "kernel", 32, 128)]
        assert kernel > graphed  # batch 32: they lose
        assert f"({kernel:.3f} against {graphed:.3f} ms)" in flat and f"{kernel / graphed:.1f} times" in flat, cell
    proto = times["prototype"]
    graphed, kernel = proto[("new_llm", "fp32", "graphed", 1, 128)], proto[("new_llm", "fp32", "kernel", 1, 128)]
    gpt2 = proto[("tinygpt2", "fp32", "graphed", 1, 128)]
    assert f"{gpt2 / graphed:.1f} times faster at batch 1 in fp32 ({graphed:.3f} against {gpt2:.3f} ms)" in flat
    assert f"{gpt2 / kernel:.1f} times faster than TinyGPT2 ({kernel:.3f} against {gpt2:.3f} ms)" in flat
    assert f"missed by {kernel / 0.02:.1f} times ({kernel:.3f} ms" in flat
    assert f"{1000 * kernel / 8:.1f} µs each on average" in flat


def test_the_batch_32_tiles_are_their_jsons():
    # performance.md's sentence on the finer batch-32 tiles: both cells' kernel and graphed times from one run each
    flat = " ".join((DOCS / "performance.md").read_text(encoding="utf-8").replace("**", "").split())
    kernel, graphed, slower, one_kernel, one_graphed = {}, {}, {}, {}, {}
    for cell, name in (("prototype", "decode_kernel_bench_tiles_h100.json"), ("study", "decode_kernel_bench_tiles_study_h100.json")):
        results = json.loads((DOCS / "performance" / name).read_text(encoding="utf-8"))
        assert results["environment"]["gpu"].startswith("NVIDIA H100") and results["commit"]
        ms = {(r["mode"], r["batch_size"], r["context_len"]): r["ms_per_token"] for r in results["generation"]
              if r["model"] == "new_llm"}  # fmt: skip
        kernel[cell], graphed[cell] = ms[("kernel", 32, 128)], ms[("graphed", 32, 128)]
        one_kernel[cell], one_graphed[cell] = ms[("kernel", 1, 128)], ms[("graphed", 1, 128)]
        assert kernel[cell] > graphed[cell]  # the text says they still lose
        slower[cell] = f"{kernel[cell] / graphed[cell]:.1f}"
    p, s = "prototype", "study"
    assert (f"they cut batch 32 to {kernel[p]:.3f} ms for the prototype's cell and {kernel[s]:.3f} ms for the study's, "
            f"and still lose: {slower[p]} and {slower[s]} times slower than the graph there ({graphed[p]:.3f} and "
            f"{graphed[s]:.3f} ms)") in flat  # fmt: skip
    assert (f"Batch 1 reads the same as above ({one_kernel[p]:.3f} and {one_kernel[s]:.3f} ms against the graph's "
            f"{one_graphed[p]:.3f} and {one_graphed[s]:.3f})") in flat  # fmt: skip


def test_the_five_launch_decode_table_is_its_jsons():
    # performance.md's table of the fused decode kernels: each New-LLM graphed row of the fused run, with that run's
    # kernel and TinyGPT2 times and the tiles run's kernel time beside it, and the sentences drawn from them
    text = (DOCS / "performance.md").read_text(encoding="utf-8")
    header = "| cell | batch | context | New-LLM graphed | decode kernels, 5 / 9 launches | before, 8 / 16 launches |"
    lines = [line.strip() for line in table_after(DOCS / "performance.md", header)[2:]]

    def timings(name):  # fp32 runs, the only precision the kernels run in
        rows = _decode_ms(name)
        assert {precision for _, precision, *_ in rows} == {"fp32"}
        return {(model, mode, batch, context): ms for (model, _, mode, batch, context), ms in rows.items()}

    def shown(value):
        return "–" if value is None else f"{value:.3f}"

    expected, fused, before = [], {}, {}
    for cell, suffix in (("prototype", ""), ("study (MLP blocks)", "_study")):
        ms = fused[cell] = timings(f"decode_kernel_bench_fused{suffix}_h100.json")
        old = before[cell] = timings(f"decode_kernel_bench_tiles{suffix}_h100.json")
        for (model, mode, batch, context), value in ms.items():
            if model == "new_llm" and mode == "graphed":
                row = [value, ms[("new_llm", "kernel", batch, context)], old.get(("new_llm", "kernel", batch, context)),
                       ms[("tinygpt2", "graphed", batch, context)]]  # fmt: skip
                expected.append(f"| {cell} | {batch} | {context:,} | {' | '.join(shown(v) for v in row)} |")
    assert sorted(lines) == sorted(expected)
    flat = " ".join(text.replace("**", "").split())
    p, s = fused["prototype"], fused["study (MLP blocks)"]
    kernel, graphed, gpt2 = p[("new_llm", "kernel", 1, 128)], p[("new_llm", "graphed", 1, 128)], p[("tinygpt2", "graphed", 1, 128)]
    assert kernel < graphed and max(p[("new_llm", "kernel", 1, c)] for c in (128, 4096, 65536)) < 1.05 * kernel  # flat
    assert f"{graphed / kernel:.1f} times faster than the graph it replaces ({kernel:.3f} against {graphed:.3f} ms)" in flat
    assert f"{gpt2 / kernel:.1f} times faster than TinyGPT2's static-cache graph ({kernel:.3f} against {gpt2:.3f} ms)" in flat
    assert f"target was missed by {kernel / 0.02:.1f} times ({kernel:.3f} ms" in flat
    assert f"five dependent launches take {1000 * kernel / 5:.1f} µs each" in flat
    k32, g32, ks32, gs32 = (m[("new_llm", mode, 32, 128)] for m in (p, s) for mode in ("kernel", "graphed"))
    assert k32 > g32 and ks32 > gs32  # the text says batch 32 still loses
    assert f"{k32:.3f} against {g32:.3f} ms for the prototype's cell ({k32 / g32:.1f} times slower)" in flat
    assert f"{ks32:.3f} against {gs32:.3f} for the study's ({ks32 / gs32:.1f} times)" in flat


def _launch_rows(name: str) -> dict:
    """A committed H100 run of benchmarks/decode_launches.py, its rows by (preset, batch size)."""
    results = json.loads((DOCS / "performance" / name).read_text(encoding="utf-8"))
    assert results["environment"]["gpu"].startswith("NVIDIA H100") and results["environment"]["commit"]
    return {(r["preset"], r["batch_size"]): r for r in results["rows"]}


def _flat_rows(bench: dict, mode: str) -> list:
    """New-LLM's fp32 batch-1 ms per token in `mode` at 128, 4,096 and 65,536 tokens of context (_decode_ms's)."""
    return [bench[("new_llm", "fp32", mode, 1, context)] for context in (128, 4096, 65536)]


def test_the_four_launch_decode_table_is_its_jsons():
    # performance.md's four-launch table: decode_launches.py's rows (graph, five launches, four), the tokens of both
    # kernel variants equal to the graph's, the repeat run within the stated spread, and the bench's sentences
    first, repeat = _launch_rows("decode_launches_h100.json"), _launch_rows("decode_launches_repeat_h100.json")
    assert all(r["split_same_tokens"] and r["tail_same_tokens"] for r in [*first.values(), *repeat.values()])
    header = "| cell | batch | graph | 5 / 9 launches | 4 / 8 launches |"
    lines = [line.strip() for line in table_after(DOCS / "performance.md", header)[2:]]
    cells = {"full": "prototype", "study": "study (MLP blocks)"}
    expected = [f"| {cells[preset]} | {batch} | {r['graph']:.4f} | {r['split']:.4f} | {r['tail']:.4f} |"
                for (preset, batch), r in first.items()]  # fmt: skip
    assert sorted(lines) == sorted(expected)
    spread = max(abs(repeat[key][way] / r[way] - 1) for key, r in first.items() for way in ("graph", "split", "tail"))
    flat = " ".join((DOCS / "performance.md").read_text(encoding="utf-8").replace("**", "").split())
    assert spread < 0.013 and "within 1.3 % of it in every cell" in flat
    p1, s1 = first[("full", 1)], first[("study", 1)]
    assert p1["tail"] < p1["split"] and s1["tail"] < s1["split"]  # one launch fewer is faster at batch 1
    saved = (1000 * (p1["split"] - p1["tail"]), 1000 * (s1["split"] - s1["tail"]))
    assert f"saves {saved[0]:.1f} µs a token for the prototype's cell and {saved[1]:.1f} µs for the study's" in flat
    assert f"less than the {1000 * p1['split'] / 5:.1f} µs an average launch took at five" in flat
    assert f"Four dependent launches take {1000 * p1['tail'] / 4:.1f} µs each on average" in flat
    bench = _decode_ms("decode_kernel_bench_tail_h100.json")
    kernel, graphed = _flat_rows(bench, "kernel"), _flat_rows(bench, "graphed")
    gpt2 = bench[("tinygpt2", "fp32", "graphed", 1, 128)]
    assert max(kernel) < 1.05 * min(kernel)  # flat to 65,536
    assert f"{kernel[0]:.4f}, {kernel[1]:.4f} and {kernel[2]:.4f} ms a token" in flat
    assert f"against {graphed[0]:.4f}, {graphed[1]:.4f} and {graphed[2]:.4f} for the graphed decoder" in flat
    assert f"{gpt2:.3f} for TinyGPT2's static-cache graph at 128 ({gpt2 / kernel[0]:.1f} times)" in flat
    assert f"target is missed by {kernel[0] / 0.02:.1f} times ({kernel[0]:.4f} ms" in flat
    readme = " ".join((DOCS.parent / "README.md").read_text(encoding="utf-8").split())
    assert f"takes {kernel[0]:.3f} ms a token (fp32, batch 1, H100)" in readme
    assert f"{gpt2 / kernel[0]:.1f} times faster than TinyGPT2's static-cache graph and {kernel[0] / 0.02:.1f} times" in readme


def test_the_bf16_head_table_is_its_jsons():
    # performance.md's bf16-head table: decode_launches.py's rows, the repeat within the stated spread, the saving
    # and the tie with the target as the text gives them
    first = _launch_rows("decode_launches_bf16_head_h100.json")
    repeat = _launch_rows("decode_launches_bf16_head_repeat_h100.json")
    header = "| cell | batch | graph | 4 / 8 launches, fp32 head | bf16 head | bf16 head's tokens = graph's |"
    lines = [line.strip() for line in table_after(DOCS / "performance.md", header)[2:]]
    cells = {"full": "prototype", "study": "study (MLP blocks)"}
    expected = [f"| {cells[preset]} | {batch} | {r['graph']:.4f} | {r['tail']:.4f} | {r['tail_bf16_head']:.4f} | "
                f"{'yes' if r['tail_bf16_head_same_tokens'] else 'no'} |" for (preset, batch), r in first.items()]  # fmt: skip
    assert sorted(lines) == sorted(expected)
    spread = max(abs(repeat[key][way] / r[way] - 1) for key, r in first.items()
                 for way in ("graph", "tail", "tail_bf16_head"))  # fmt: skip
    flat = " ".join((DOCS / "performance.md").read_text(encoding="utf-8").replace("**", "").split())
    assert spread < 0.013 and "is within 1.3 % of it in every cell" in flat
    p1, s1, p32 = first[("full", 1)], first[("study", 1)], first[("full", 32)]
    assert p1["tail_bf16_head_same_tokens"] and s1["tail_bf16_head_same_tokens"]
    assert (f"saves {1000 * (p1['tail'] - p1['tail_bf16_head']):.1f} µs a token for the prototype's cell "
            f"({p1['tail'] / p1['tail_bf16_head']:.2f} times faster) and {1000 * (s1['tail'] - s1['tail_bf16_head']):.1f} "
            f"µs for the study's ({s1['tail'] / s1['tail_bf16_head']:.2f} times)") in flat  # fmt: skip
    under = 100 * (1 - p1["tail_bf16_head"] / 0.02)
    assert 0 < under < 100 * spread  # under the target, by less than the runs' spread: a tie, as the text says
    assert f"{p1['tail_bf16_head']:.4f} ms meets the ≤ 0.02 ms target, by {under:.1f} %" in flat
    assert f"took {p32['tail_bf16_head'] / p32['tail']:.1f} times longer ({p32['tail_bf16_head']:.3f} against" in flat
    # the bench's rows: flat to 65,536, the fp32 head, the graph and TinyGPT2 beside it in the same run
    bench = _decode_ms("decode_kernel_bench_bf16_head_h100.json")
    bf16, fp32, graphed = (_flat_rows(bench, mode) for mode in ("kernel_bf16_head", "kernel", "graphed"))
    gpt2 = bench[("tinygpt2", "fp32", "graphed", 1, 128)]
    assert max(bf16) < 1.05 * min(bf16) and max(bf16) < min(fp32)
    assert f"it misses, by {bf16[0] / 0.02:.1f} times: {bf16[0]:.4f}, {bf16[1]:.4f} and {bf16[2]:.4f} ms a token" in flat
    assert f"the fp32 head took {fp32[0]:.4f}, {fp32[1]:.4f} and {fp32[2]:.4f} ms" in flat
    assert f"the graphed decoder {graphed[0]:.4f}, {graphed[1]:.4f} and {graphed[2]:.4f}" in flat
    assert f"TinyGPT2's static-cache graph {gpt2:.3f} at 128 ({gpt2 / bf16[0]:.1f} times the bf16 head's time)" in flat
    readme = " ".join((DOCS.parent / "README.md").read_text(encoding="utf-8").split())
    assert f"{bf16[0]:.3f} ms ({bf16[0] / 0.02:.1f} times) with its output head read in bf16" in readme
    assert f"the bf16 head now gives the fp32 head's time ({bench[('new_llm', 'fp32', 'kernel_bf16_head', 32, 128)]:.3f} ms, against" in flat
    assert abs(bench[("new_llm", "fp32", "kernel_bf16_head", 32, 128)] / bench[("new_llm", "fp32", "kernel", 32, 128)] - 1) < 0.1


def test_the_peers_step_2_memory_is_its_json():
    # performance.md's peak memory of a step-2 step, and the peer grid's gb_per_run, which allows twice Mamba-2's peak
    results = json.loads((DOCS / "performance" / "step2_memory_mamba2_h100.json").read_text(encoding="utf-8"))
    assert results["environment"]["gpu"].startswith("NVIDIA H100")
    peak = {r["model"]: r["peak_mem_bytes"] / 1e9 for r in results["training"]
            if (r["precision"], r["mode"], r["batch_size"], r["seq_len"]) == ("bf16", "eager", 32, 256)}  # fmt: skip
    flat = " ".join((DOCS / "performance.md").read_text(encoding="utf-8").split())
    assert (f"now peaks at {peak['mamba2']:.1f} GB of allocated memory, beside New-LLM's {peak['new_llm']:.1f} and "
            f"TinyGPT2's {peak['tinygpt2']:.1f}") in flat  # fmt: skip
    grid = (DOCS.parent / "configs" / "grids" / "study_finetune_peers.toml").read_text(encoding="utf-8")
    gb_per_run = float(re.search(r"^gb_per_run = (\S+)", grid, re.M).group(1))
    assert gb_per_run >= 2 * peak["mamba2"] and f"bf16 is {peak['mamba2']:.1f} GB" in grid


def test_the_loop_launch_timings_in_performance_md_are_their_jsons():
    # the table of the training kernels' loop launch: each row's four step times from its JSON, the best against the
    # best; the per-phase costs and what the step spends outside the two kernels, from the same JSONs' profiles
    header = "| cell, batch × window | New-LLM graphed | New-LLM loop launch | TinyGPT2 compiled |"
    lines = [line.strip() for line in table_after(DOCS / "performance.md", header)[2:]]
    names = {"prototype (`full`), 256 × 64": "256x64", "prototype (`full`), 64 × 128": "64x128",
             "MLP blocks (`study`), 64 × 128": "study"}  # fmt: skip
    flat = " ".join((DOCS / "performance.md").read_text(encoding="utf-8").split())
    assert len(lines) == 3
    # phases a step, forward and backward: the window × (layers + 2) each way for the prototype's 3 layers; the
    # MLP-block cell's 3 blocks, 3 a block and 4 more forward, 4 a block and 4 more backward
    phases = {"256x64": (64 * 5, 64 * 5), "64x128": (128 * 5, 128 * 5), "study": (128 * 13, 128 * 16)}
    cost, took = {}, {}
    for line in lines:
        label, graphed, loop, compiled, graphs, ratio = cells(line)
        rows = json.loads((DOCS / "performance" / f"loop_step_time_{names[label]}_h100.json").read_text())["rows"]
        ms = {(r["model"], r["mode"]): r["ms_per_step"] for r in rows}
        expected = [ms["new_llm", "compiled+graphed"], ms["new_llm", "kernel_loop"], ms["tinygpt2", "compiled"],
                    ms["tinygpt2", "reduce-overhead"]]  # fmt: skip
        assert [graphed.strip("*"), loop, compiled, graphs] == [f"{v:.2f} ms" for v in expected]
        best = min(ms["new_llm", m] for m in ("compiled+graphed", "kernel_loop"))
        assert ratio.startswith(f"{min(ms['tinygpt2', m] for m in ('compiled', 'reduce-overhead')) / best:.2f}×")
        kernels = {p["kernel"]: p["us_per_step"] for p in next(r for r in rows if r["mode"] == "kernel_loop")["profile"]}
        forward = next(v for k, v in kernels.items() if k.endswith("forward_kernel"))
        backward = next(v for k, v in kernels.items() if k.endswith("backward_kernel"))
        cost[names[label]] = (forward / phases[names[label]][0], backward / phases[names[label]][1])
        took[names[label]] = f"{forward / 1000:.2f} and {backward / 1000:.2f} ms"
    assert (f"Its phases cost {cost['256x64'][0]:.1f} µs forward and {cost['256x64'][1]:.1f} µs backward at 256 × 64 "
            f"(the two kernels take {took['256x64']} for 320 phases each), {cost['64x128'][0]:.1f} and "
            f"{cost['64x128'][1]:.1f} µs at 64 × 128, and {cost['study'][0]:.1f} and {cost['study'][1]:.1f} µs for the "
            f"MLP-block cell ({took['study']} for 1,664 and 2,048 phases)") in flat  # fmt: skip
    rows = json.loads((DOCS / "performance" / "loop_step_time_256x64_h100.json").read_text())["rows"]
    loop = next(r for r in rows if r["mode"] == "kernel_loop")
    inside = sum(p["us_per_step"] for p in loop["profile"] if p["kernel"] in ("_forward_kernel", "_backward_kernel"))
    assert f"spends {loop['ms_per_step'] - inside / 1000:.2f} ms outside its two kernels" in flat


def test_the_loss_shift_timings_in_performance_md_are_their_json():
    runs = json.loads((DOCS / "performance" / "loss_shift_ab_h100.json").read_text())["runs"]
    flat = " ".join((DOCS / "performance.md").read_text(encoding="utf-8").split())
    ms = {}
    for run in runs:
        for row in run["rows"]:
            ms.setdefault((run["loss"].split()[0], row["model"], row["mode"]), []).append(row["ms_per_step"])
    new, old = ms["labels", "new_llm", "compiled+graphed"], ms["logits", "new_llm", "compiled+graphed"]
    assert f"the graphed scan {new[0]:.2f} and {new[1]:.2f} ms a step against {old[0]:.2f} and {old[1]:.2f}" in flat
    assert f"({100 * (1 - statistics.fmean(new) / statistics.fmean(old)):.0f} % faster)" in flat
    loop_new, loop_old = ms["labels", "new_llm", "kernel_loop"], ms["logits", "new_llm", "kernel_loop"]
    assert f"the loop launch {loop_new[0]:.2f} and {loop_new[1]:.2f} against {loop_old[0]:.2f} and {loop_old[1]:.2f}" in flat
    gpt2 = ms["labels", "tinygpt2", "reduce-overhead"] + ms["logits", "tinygpt2", "reduce-overhead"]
    assert f"TinyGPT2 with CUDA graphs {min(gpt2):.2f}–{max(gpt2):.2f} throughout" in flat
    best = lambda version: statistics.fmean(ms[version, "tinygpt2", "reduce-overhead"]) / min(  # noqa: E731
        statistics.fmean(ms[version, "new_llm", m]) for m in ("compiled+graphed", "kernel_loop"))
    assert f"Best against best {best('labels'):.2f}× on that H100, up from {best('logits'):.2f}×" in flat
