"""Many runs' results.json into one table: a row per (preset, model), mean ± sample std over its seeds.

    newllm collect RUNS/*/ --out summary.json [--markdown table.md]

Reads nothing but results.json: which preset, seed and commit a run was is in its "provenance" (schema 2;
older files give their config's preset and seed). Two runs of one row with the same seed are an error, not
an average: the row would count one seed twice.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from newllm.reporting.plots import model_label
from newllm.reporting.report import load_results

# (name in the summary, path in a model's results entry, decimals in the table)
METRICS = (
    ("wikitext_test_word_ppl", ("wikitext", "test", "word_ppl"), 1),
    ("wikitext_test_token_ppl", ("wikitext", "test", "token_ppl"), 2),
    ("wikitext_test_bits_per_byte", ("wikitext", "test", "bits_per_byte"), 3),
    ("wikitext_valid_token_ppl", ("wikitext", "valid", "token_ppl"), 2),
    ("dailydialog_test_token_ppl", ("dailydialog", "test", "token_ppl"), 2),
    ("dailydialog_test_response_ppl", ("dailydialog", "test", "response_ppl"), 2),
)


def _dig(entry: Any, path: tuple[str, ...]):
    for key in path:
        if not isinstance(entry, dict):
            return None
        entry = entry.get(key)
    return entry if isinstance(entry, (int, float)) and not isinstance(entry, bool) and math.isfinite(entry) else None


def _results_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def _run(path: Path) -> dict:
    results = load_results(path)
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


def _stat(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def collect(paths) -> dict:
    """The summary of the runs at `paths` (run folders or results.json files)."""
    if not paths:
        raise ValueError("collect: name at least one run folder or results.json")
    runs = [_run(_results_path(p)) for p in paths]
    rows: dict[tuple[str, str], dict] = {}
    for run in runs:
        for model, entry in run["models"].items():
            row = rows.setdefault((run["preset"], model), {"preset": run["preset"], "model": model, "runs": []})
            if any(r["seed"] == run["seed"] for r in row["runs"]):
                other = next(r["path"] for r in row["runs"] if r["seed"] == run["seed"])
                raise ValueError(f"collect: {run['path']} and {other} are both {run['preset']}/{model} seed {run['seed']}")
            numbers = {name: _dig(entry, path) for name, path, _ in METRICS}
            row["runs"].append({"path": run["path"], "seed": run["seed"], "commit": run["commit"], "date": run["date"],
                                "device": run["device"], "params": entry.get("params"), **numbers})  # fmt: skip
    for row in rows.values():
        row["runs"].sort(key=lambda r: (r["seed"] is None, r["seed"]))
        row["seeds"] = [r["seed"] for r in row["runs"]]
        row["params"] = row["runs"][0]["params"]
        for name, _, _ in METRICS:
            values = [r[name] for r in row["runs"] if r[name] is not None]
            if values:
                row[name] = _stat(values)
    return {"rows": list(rows.values())}


def _cell(stat: dict | None, decimals: int) -> str:
    if not stat:
        return "–"
    text = f"{stat['mean']:,.{decimals}f}"
    return text + (f" ± {stat['std']:,.{decimals}f}" if stat["std"] is not None else "")


def markdown_table(summary: dict) -> str:
    """One line per row: the test numbers as mean ± sample std, and how many seeds stand behind them."""
    shown = [m for m in METRICS if m[0] != "wikitext_valid_token_ppl"]
    header = ["preset", "model", "seeds", "parameters"] + [name.replace("_", " ") for name, _, _ in shown]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | ---: | ---: |" + " ---: |" * len(shown)]
    for row in summary["rows"]:
        cells = [f"`{row['preset']}`", model_label(row["model"]), str(len(row["seeds"])),
                 f"{row['params']:,}" if isinstance(row["params"], int) else "–"]  # fmt: skip
        cells += [_cell(row.get(name), decimals) for name, _, decimals in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
