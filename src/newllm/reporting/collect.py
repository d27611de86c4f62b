"""Many runs' results.json into one table: a row per (preset, model), mean ± sample std over its seeds.

    newllm collect RUNS/*/ --out summary.json [--markdown tables.md] [--plot val.png] [--plot-test test.png]

Reads nothing but results.json, or the summaries this writes (`--out`), whose runs it takes as recorded.
Which preset, seed and commit a run was is in its "provenance" (schema 2; older files give their config's
preset and seed), what each training stage did (epochs run, best epoch, best validation PPL, each epoch's
perplexities) in the model's stage sections. Two runs of one row with the same seed are an error, not an
average: the row would count one seed twice. A run whose stage its time limit ended is a row of its own, so
that no mean mixes shortened schedules with whole ones.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from newllm.reporting.plots import model_label, plot_seed_curves, plot_seed_dots
from newllm.reporting.report import load_results

# results.json's training stages, in order: (data set, step)
STAGES = {"wikitext": ("WikiText-2", "step 1"), "dailydialog": ("DailyDialog", "step 2")}
# (name in the summary, path in a model's results entry, decimals in the tables)
METRICS = (
    ("wikitext_test_word_ppl", ("wikitext", "test", "word_ppl"), 1),
    ("wikitext_test_token_ppl", ("wikitext", "test", "token_ppl"), 2),
    ("wikitext_test_bits_per_byte", ("wikitext", "test", "bits_per_byte"), 3),
    ("wikitext_valid_token_ppl", ("wikitext", "valid", "token_ppl"), 2),
    ("wikitext_best_val_ppl", ("wikitext", "best_val_ppl"), 2),  # the Trainer's, at the best epoch
    ("wikitext_epochs_run", ("wikitext", "epochs_run"), 0),
    ("wikitext_best_epoch", ("wikitext", "best_epoch"), 0),
    ("dailydialog_test_token_ppl", ("dailydialog", "test", "token_ppl"), 2),
    ("dailydialog_test_response_ppl", ("dailydialog", "test", "response_ppl"), 2),
    ("dailydialog_best_val_ppl", ("dailydialog", "best_val_ppl"), 2),
    ("dailydialog_epochs_run", ("dailydialog", "epochs_run"), 0),
    ("dailydialog_best_epoch", ("dailydialog", "best_epoch"), 0),
)
DECIMALS = {name: decimals for name, _, decimals in METRICS}
# The tables' columns after preset, model, seeds: (header, metric); "epochs" is epochs run (best epoch) as spans.
TABLES = {
    "WikiText-2": (("parameters", "params"), ("epochs run (best)", "wikitext_epochs"),
                   ("val token PPL", "wikitext_best_val_ppl"), ("test word PPL", "wikitext_test_word_ppl"),
                   ("test token PPL", "wikitext_test_token_ppl"), ("test bits/byte", "wikitext_test_bits_per_byte")),
    "DailyDialog": (("epochs run (best)", "dailydialog_epochs"), ("val token PPL", "dailydialog_best_val_ppl"),
                    ("test token PPL", "dailydialog_test_token_ppl"),
                    ("test response PPL", "dailydialog_test_response_ppl")),
}  # fmt: skip


def _dig(entry: Any, path: tuple[str, ...]):
    for key in path:
        if not isinstance(entry, dict):
            return None
        entry = entry.get(key)
    return entry if isinstance(entry, (int, float)) and not isinstance(entry, bool) and math.isfinite(entry) else None


def _results_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def _run(path: Path, results: dict) -> dict:
    provenance = results.get("provenance") if isinstance(results.get("provenance"), dict) else {}
    config = results.get("config") if isinstance(results.get("config"), dict) else {}
    seed = (provenance.get("seeds") or {}).get("pretrain", (config.get("pretrain") or {}).get("seed"))
    return {
        "path": str(path),
        "preset": provenance.get("preset", results.get("preset")),
        "seed": seed,
        "commit": provenance.get("commit"),
        "date": provenance.get("date", results.get("created")),
        "device": provenance.get("device", results.get("device")),
        "models": results.get("models", {}),
    }


def _stage(entry: dict, stage: str) -> dict:
    """A model's section of one training stage; empty where the stage did not run."""
    return entry[stage] if isinstance(entry.get(stage), dict) else {}


def _per_epoch(entry: dict) -> dict:
    """Each stage's per-epoch record (epoch, train_ppl, val_ppl, seconds), where results.json has one."""
    stages = {stage: _stage(entry, stage).get("per_epoch") for stage in STAGES}
    return {stage: rows for stage, rows in stages.items() if isinstance(rows, list) and rows}


def _stat(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def _entries(path: str | os.PathLike):
    """(preset, model, stopped stages, run record) of each model of one run, or of each run of a summary."""
    path = _results_path(path)
    results = load_results(path)  # a run's results.json or a summary: one read either way
    if "rows" in results and "models" not in results:  # an earlier collection: its runs as they were recorded
        rows, keys = results["rows"], ("preset", "model", "stopped", "runs")
        if not isinstance(rows, list) or not all(isinstance(row, dict) and all(k in row for k in keys) for row in rows):
            raise ValueError(f"collect: {path} has rows but is not a summary of `newllm collect --out`")
        for row in rows:
            for record in row["runs"]:
                yield row["preset"], row["model"], list(row["stopped"]), dict(record)
        return
    run = _run(path, results)
    for model, entry in run["models"].items():
        stopped = [stage for stage in STAGES if _stage(entry, stage).get("stopped")]
        numbers = {name: _dig(entry, dig) for name, dig, _ in METRICS}
        yield run["preset"], model, stopped, {
            "path": run["path"], "seed": run["seed"], "commit": run["commit"], "date": run["date"],
            "device": run["device"], "params": entry.get("params"), **numbers, "per_epoch": _per_epoch(entry),
        }  # fmt: skip


def collect(paths, replace: bool = False) -> dict:
    """The summary of the runs at `paths`: run folders, results.json files, or summaries `collect --out` wrote
    (their runs are taken as recorded, e.g. from machines whose run folders are gone).

    Two runs of one preset, model and seed are an error, unless `replace`: then the run named later replaces
    the earlier one (a family rerun after an earlier summary), and the summary lists what it replaced.
    """
    if not paths:
        raise ValueError("collect: name at least one run folder, results.json or summary")
    rows: dict[tuple, dict] = {}
    seen: dict[str, tuple] = {}  # "preset/model seed N" → (its row's key, its record)
    replaced = []
    for path in paths:
        for preset, model, stopped, record in _entries(path):
            run_name = f"{preset}/{model} seed {record['seed']}"
            if run_name in seen:  # stopped or not: one seed is one run
                key, earlier = seen[run_name]
                if not replace:
                    raise ValueError(f"collect: {record['path']} and {earlier['path']} are both {run_name}")
                rows[key]["runs"].remove(earlier)
                replaced.append({"run": run_name, "path": earlier["path"], "by": record["path"]})
            key = (preset, model, *stopped)
            rows.setdefault(key, {"preset": preset, "model": model, "stopped": stopped, "runs": []})
            rows[key]["runs"].append(record)
            seen[run_name] = (key, record)
    rows = {key: row for key, row in rows.items() if row["runs"]}
    for row in rows.values():
        row["runs"].sort(key=lambda r: (r["seed"] is None, r["seed"]))
        row["seeds"] = [r["seed"] for r in row["runs"]]
        row["params"] = row["runs"][0]["params"]
        for name, _, _ in METRICS:
            values = [r[name] for r in row["runs"] if r.get(name) is not None]
            if values:
                row[name] = _stat(values)
    return {"rows": list(rows.values()), **({"replaced": replaced} if replaced else {})}


def row_label(row: dict, preset: bool = False) -> str:
    """The model's name, its preset if asked, and which step its time limit ended if one did:
    "LSTM (full), step 2 stopped by its time limit"."""
    name = model_label(row["model"]) + (f" ({row['preset']})" if preset else "")
    steps = " and ".join(STAGES[stage][1] for stage in row["stopped"])
    return name + (f", {steps} stopped by its time limit" if steps else "")


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}–{max(values)}"


def _epochs(row: dict, stage: str) -> str:
    """Epochs run and best epoch over the row's seeds as spans: "28–30 (13–15)"."""
    pairs = [(r[f"{stage}_epochs_run"], r[f"{stage}_best_epoch"]) for r in row["runs"]]
    pairs = [(run, best) for run, best in pairs if run is not None and best is not None]
    if not pairs:
        return "–"
    return f"{_span([run for run, _ in pairs])} ({_span([best for _, best in pairs])})"


def _cell(row: dict, column: str) -> str:
    """A table cell: parameters, epoch spans or mean ± sample std ("(n=k)" where fewer seeds than the row's count)."""
    if column == "params":
        return f"{row['params']:,}" if isinstance(row["params"], int) else "–"
    if column.endswith("_epochs"):
        return _epochs(row, column.removesuffix("_epochs"))
    stat, decimals = row.get(column), DECIMALS[column]
    if not stat:
        return "–"
    text = f"{stat['mean']:,.{decimals}f}"
    text += f" ± {stat['std']:,.{decimals}f}" if stat["std"] is not None else ""
    return text + (f" (n={stat['n']})" if stat["n"] != len(row["seeds"]) else "")


def markdown_table(summary: dict) -> str:
    """A WikiText-2 table and, where any run has step-2 numbers, a DailyDialog one: a line per row."""
    tables = []
    for title, columns in TABLES.items():
        shown = [row for row in summary["rows"] if any(row.get(metric) for _, metric in columns)]
        if not shown:
            continue
        header = ["preset", "model", "seeds"] + [name for name, _ in columns]
        align = "| --- | --- | ---: |" + "".join(" --- |" if "epochs" in m else " ---: |" for _, m in columns)
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", align]
        for row in shown:
            cells = [f"`{row['preset']}`", row_label(row), str(len(row["seeds"]))] + [_cell(row, m) for _, m in columns]
            lines.append("| " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"


def plot_validation(summary: dict, path: str | os.PathLike) -> Path:
    """Validation PPL per epoch of every run, a panel per training stage: a line per seed, a colour per model, a
    line style per preset of that model; a stage its time limit ended stops at a cross."""
    panels: dict[str, list] = {f"{data}, {step}": [] for data, step in STAGES.values()}
    presets: dict[str, list] = {}  # per model, its presets in order of appearance
    for row in summary["rows"]:
        styles = presets.setdefault(row["model"], [])
        styles += [] if row["preset"] in styles else [row["preset"]]
        for run in row["runs"]:
            for stage, history in run["per_epoch"].items():
                panels[", ".join(STAGES[stage])].append({
                    "label": row_label(row, preset=True), "model": row["model"], "style": styles.index(row["preset"]),
                    "history": history, "stopped": stage in row["stopped"],
                })  # fmt: skip
    if not any(panels.values()):
        raise ValueError("collect --plot: no run's results.json has a per-epoch record; `newllm evaluate` writes one")
    return plot_seed_curves(panels, path, "Validation per epoch: one line per seed")


def plot_test(summary: dict, path: str | os.PathLike) -> Path:
    """WikiText-2 test word PPL per row: a dot per seed, mean ± sample std."""
    entries = [(row_label(row, preset=True), row["model"],
                [r["wikitext_test_word_ppl"] for r in row["runs"] if r["wikitext_test_word_ppl"] is not None])
               for row in summary["rows"]]  # fmt: skip
    return plot_seed_dots(entries, path, "WikiText-2 test word perplexity (lower is better)",
                          "A dot per seed, mean ± sample std")  # fmt: skip
