"""Gather the runs of `benchmarks/full_schedule.sh` into one JSON summary, figures and Markdown tables.

    python benchmarks/collect_full_schedule.py runs/first runs/second --out docs/results/full_schedule_h200.json \
        --plot docs/results/full_schedule_val_ppl.png --plot-dialog docs/results/full_schedule_dialog_val_ppl.png \
        --plot-test docs/results/full_schedule_test_word_ppl.png --markdown tables.md

Reads each run folder `<row>_<model>_s<seed>/`: its log (timestamps, parameter count), its
history.json files and its results.json; an `eval_*/` folder of symbolic links to a run's
checkpoints counts for that run. Writes per run: parameters, epochs run, best epoch, best validation
perplexity, the per-epoch history, the timestamps and the test numbers. Per row (preset × model):
mean and sample standard deviation over the seeds whose stage ran to its end. A stage stopped
before that stays in the JSON with "complete": false and counts in no mean; one that its time limit
ended and that was then evaluated from its own model gets a line of its own in the tables.

Several folders (one per GPU session) are read in order; a run repeated in a later folder replaces
the earlier one, its evaluation included. A session's run folders go with its GPU machine and only the
summary is committed, so --previous starts from an earlier summary (its runs, evaluations and
launches) and the folders given are read on top of it:

    python benchmarks/collect_full_schedule.py --previous docs/results/full_schedule_h200.json runs/newest ...

An evaluation from before TinyGPT2's trained positions were recorded (its sliding window wider
than its training window) keeps its reset-window numbers but loses its stream number and its
replies: both read positions the model was never trained on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from newllm.reporting.plots import MODEL_LABELS, model_color, model_label, save_figure

# run-name prefix -> preset, as in full_schedule.sh
ROWS = {"full": "full", "par": "full_parallel", "res": "full_residual_norm", "seed": "seed",
        "pard": "full_parallel_dropout", "resd": "full_residual_norm_dropout"}  # as benchmarks/full_schedule.sh
# <row>_<model>_s<seed>: a row of ROWS, or any other preset's own name (full_schedule.sh takes both)
RUN_NAME = re.compile(r"^(?P<row>[a-z0-9_]+?)_(?P<model>new_llm|tinygpt2|lstm)_s(?P<seed>\d+)$")
SEED_PROTOCOL = "seed"  # the prototype's preset: its perplexities are per token of another vocabulary, so no BPE table
PARAMS = re.compile(r"step 1: \w+ on WikiText-2 \(([\d,]+) parameters")
HISTORY_KEYS = ("epoch", "train_ppl", "val_ppl", "seconds")
EVENTS = ("start", "pretrain_done", "finetune_done", "deadline", "evaluate_done", "all_done")


def _log_events(text: str) -> dict:
    """`start`, `*_done`, `deadline` and `exit` lines of full_schedule.sh's logs: Unix seconds (and the exit code)."""
    events = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in EVENTS:
            events[parts[0]] = int(parts[1])
        elif len(parts) == 3 and parts[0] == "exit":
            events["exit_code"], events["exit"] = int(parts[1]), int(parts[2])
    return events


def _stage(history_path: Path, complete: bool) -> dict | None:
    if not history_path.is_file():
        return None
    history = json.loads(history_path.read_text(encoding="utf-8"))
    if not history:
        return None
    best = min(history, key=lambda row: row["val_loss"])
    marker = history_path.parent / "complete.json"  # "stopped": "time_limit" when the time limit ended the stage
    stopped = json.loads(marker.read_text(encoding="utf-8")).get("stopped") if marker.is_file() else None
    return {
        # False: stopped before early stopping or the last epoch, killed or by its time limit (then `stopped`)
        "complete": complete and stopped is None,
        **({"stopped": stopped} if stopped else {}),
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "best_val_ppl": best["val_ppl"],
        "history": [{k: row.get(k) for k in HISTORY_KEYS} for row in history],
    }


def collect_runs(root: Path) -> dict:
    runs = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        match = RUN_NAME.match(folder.name)
        if not match:
            continue
        model = match["model"]
        log = root / f"{folder.name}.log"
        text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
        params = PARAMS.search(text)
        events = _log_events(text)
        runs[folder.name] = {
            "row": match["row"],
            "preset": ROWS.get(match["row"], match["row"]),
            "model": model,
            "seed": int(match["seed"]),
            "params": int(params[1].replace(",", "")) if params else None,
            "log": events,
            "wikitext": _stage(folder / f"{model}_wikitext" / "history.json", "pretrain_done" in events),
            "dialog": _stage(folder / f"{model}_dialog" / "history.json", "finetune_done" in events),
        }
    return runs


def _evaluated_run(folder: Path, model: str) -> str | None:
    """The run a results.json belongs to: its own folder, or where an eval folder's links point."""
    if RUN_NAME.match(folder.name):
        return folder.name
    link = folder / f"best_{model}_wikitext"
    if link.is_symlink():
        return Path(os.readlink(link)).parent.name
    return None


def _untrained_positions(results: dict, entry: dict) -> str | None:
    """Why this evaluation's stream number and replies are void, or None.

    A sliding window wider than the training window marks an evaluation made before checkpoints
    recorded `trained_positions`: then the window and the reply prompts both ran past the
    positions TinyGPT2 was trained on.
    """
    stream = entry["wikitext"].get("test_stream") or {}
    trained = _dig(results, "config", "data", "block_size")
    if stream.get("method") == "sliding_window" and trained and stream.get("window", 0) > trained:
        return f"sliding window {stream['window']} > training window {trained}: untrained positions read"
    return None


def collect_evaluations(root: Path, runs: dict) -> dict:
    evaluations = {}
    for path in sorted(root.glob("*/results.json")):
        results = json.loads(path.read_text(encoding="utf-8"))
        for model, entry in results["models"].items():
            run = _evaluated_run(path.parent, model)
            if run is None or "wikitext" not in entry or "test" not in entry["wikitext"]:
                continue
            dialog = entry.get("dailydialog", {})
            void = _untrained_positions(results, entry)
            # A run stopped before step 2 was evaluated with its step-1 model: those are not DailyDialog replies.
            step1_replies = "test" not in dialog
            evaluations[run] = {
                "eval_folder": path.parent.name,
                "params": entry.get("params"),
                "wikitext_test": entry["wikitext"]["test"],
                "wikitext_test_stream": None if void else entry["wikitext"].get("test_stream"),
                "dailydialog_test": dialog.get("test"),
                "dailydialog_responses": None if void or step1_replies else dialog.get("responses"),
                "samples": entry.get("samples"),
                "dialog_samples": [] if void or step1_replies else [
                    {**{k: s[k] for k in ("dialogue", "context", "reference")}, "reply": s["replies"].get(model)}
                    for s in results.get("dialog_samples", [])
                ],
                **({"void": void} if void else {}),
            }
            if run in runs:
                runs[run]["evaluated"] = True
        evaluations.setdefault("_reference_responses", results.get("reference_responses"))
        evaluations.setdefault("_tokenizer", results.get("tokenizer"))
        evaluations.setdefault("_environment", results.get("environment"))
    return evaluations


def collect(roots: list[Path], previous: dict | None = None) -> tuple[dict, dict, list[dict]]:
    """(runs, evaluations, launches) of several run folders, read in order: later runs replace earlier ones.

    `previous` is an earlier output of this script: its runs, evaluations and launches come first.
    """
    previous = previous or {}
    runs, evaluations = dict(previous.get("runs", {})), dict(previous.get("evaluations", {}))
    read_again = {root.name for root in roots}  # a folder read again replaces its launch
    launches = [launch for launch in previous.get("launches", []) if launch["root"] not in read_again]
    for root in roots:
        root_runs = collect_runs(root)
        root_evaluations = collect_evaluations(root, root_runs)
        for name, run in root_runs.items():
            run["root"] = root.name
            evaluations.pop(name, None)  # an evaluation of the replaced run must not outlive it
        runs.update(root_runs)
        for key, value in root_evaluations.items():
            if key.startswith("_"):  # reference replies, tokenizer, environment: the first folder's
                evaluations.setdefault(key, value)
            elif key in root_runs:
                evaluations[key] = value
        launch = root / "launch.log"
        launches.append({"root": root.name, **(_log_events(launch.read_text()) if launch.is_file() else {})})
    return runs, evaluations, launches


def _mean_std(values: list[float]) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def summarize(runs: dict, evaluations: dict) -> dict:
    rows: dict[str, dict] = {}
    for name, run in runs.items():
        rows.setdefault(f"{run['preset']}/{run['model']}", []).append(name)
    summary = {}
    for row, names in sorted(rows.items()):
        def field(get):
            return _mean_std([get(n) for n in names])

        def ev(n, *keys):  # a test number of a stage that ran to its end
            stage = "dialog" if keys[0].startswith("dailydialog") else "wikitext"
            return _dig(evaluations.get(n), *keys) if _finished(runs[n], stage) else None

        summary[row] = {
            "runs": names,
            "params": sorted({runs[n]["params"] for n in names if runs[n]["params"]}),
            # only stages that ran to their end: a run stopped early is in `runs`, not in these means
            "wikitext_best_val_ppl": field(lambda n: _complete(runs[n], "wikitext", "best_val_ppl")),
            "wikitext_epochs_run": field(lambda n: _complete(runs[n], "wikitext", "epochs_run")),
            "dialog_best_val_ppl": field(lambda n: _complete(runs[n], "dialog", "best_val_ppl")),
            "test_token_ppl": field(lambda n: ev(n, "wikitext_test", "token_ppl")),
            "test_word_ppl": field(lambda n: ev(n, "wikitext_test", "word_ppl")),
            "test_bits_per_byte": field(lambda n: ev(n, "wikitext_test", "bits_per_byte")),
            "test_stream_token_ppl": field(lambda n: ev(n, "wikitext_test_stream", "token_ppl")),
            "test_stream_word_ppl": field(lambda n: ev(n, "wikitext_test_stream", "word_ppl")),
            "dialog_test_token_ppl": field(lambda n: ev(n, "dailydialog_test", "token_ppl")),
            "dialog_test_response_ppl": field(lambda n: ev(n, "dailydialog_test", "response_ppl")),
            "dialog_distinct_1": field(lambda n: ev(n, "dailydialog_responses", "distinct_1")),
            "dialog_distinct_2": field(lambda n: ev(n, "dailydialog_responses", "distinct_2")),
        }
        for stage, fields in STOPPED_FIELDS.items():
            # a stage ended by its time limit and evaluated: its own line, in no mean above
            stopped = [n for n in names if _stopped(runs[n], evaluations.get(n), stage)]
            if stopped:
                got = lambda n, *keys: _dig(evaluations[n], *keys)  # noqa: E731
                summary[row][f"{stage}_stopped"] = {
                    "runs": stopped,
                    f"{stage}_best_val_ppl": _mean_std([runs[n][stage]["best_val_ppl"] for n in stopped]),
                    **{key: _mean_std([got(n, *path) for n in stopped]) for key, path in fields.items()},
                }
    return summary


STOPPED_FIELDS = {  # per stage: the test numbers of its stopped runs' own line
    "wikitext": {
        "test_token_ppl": ("wikitext_test", "token_ppl"),
        "test_word_ppl": ("wikitext_test", "word_ppl"),
        "test_bits_per_byte": ("wikitext_test", "bits_per_byte"),
        "test_stream_token_ppl": ("wikitext_test_stream", "token_ppl"),
        "test_stream_word_ppl": ("wikitext_test_stream", "word_ppl"),
    },
    "dialog": {
        "dialog_test_token_ppl": ("dailydialog_test", "token_ppl"),
        "dialog_test_response_ppl": ("dailydialog_test", "response_ppl"),
        "dialog_distinct_1": ("dailydialog_responses", "distinct_1"),
        "dialog_distinct_2": ("dailydialog_responses", "distinct_2"),
    },
}


def _time_limited(run: dict, stage: str) -> bool:
    """Whether the run's stage was ended by its time limit (then it has its best model so far)."""
    return bool(_dig(run, stage, "stopped"))


def _stopped(run: dict, evaluation: dict | None, stage: str) -> bool:
    """Whether the stage was ended by its time limit and its model evaluated. Step 2's test numbers must be
    its own model's (after a kill in step 2 the evaluation used step 1's and has no DailyDialog test)."""
    tested = _dig(evaluation, "dailydialog_test" if stage == "dialog" else "wikitext_test")
    return _time_limited(run, stage) and bool(tested)


def _finished(run: dict, stage: str) -> bool:
    """Whether the run's stage ran to its end (early stopping or its last epoch)."""
    return bool(run[stage] and run[stage]["complete"])


def _complete(run: dict, stage: str, key: str):
    return run[stage][key] if _finished(run, stage) else None


def _dig(obj, *keys):
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


ROW_LABELS = {
    "full/tinygpt2": "TinyGPT2",
    "full/lstm": "LSTM",
    "full/new_llm": "New-LLM seed cell (`full`)",
    "full_residual_norm/new_llm": "New-LLM seed cell + residual + norm (`full_residual_norm`)",
    "full_parallel/new_llm": "New-LLM parallel + residual + norm (`full_parallel`)",
    "full_residual_norm_dropout/new_llm": "New-LLM seed cell + residual + norm, more dropout (`full_residual_norm_dropout`)",
    "full_parallel_dropout/new_llm": "New-LLM parallel + residual + norm, more dropout (`full_parallel_dropout`)",
    "full_residual_norm_dropout3/new_llm": "New-LLM seed cell + residual + norm, dropout 0.3 (`full_residual_norm_dropout3`)",
    "full_residual_norm_dropout_ctx/new_llm": "New-LLM seed cell + residual + norm, more dropout + context dropout (`full_residual_norm_dropout_ctx`)",
    "full_parallel_dropout4/new_llm": "New-LLM parallel + residual + norm, dropout 0.4 (`full_parallel_dropout4`)",
    "full_residual_norm_dropout4/new_llm": "New-LLM seed cell + residual + norm, dropout 0.4 (`full_residual_norm_dropout4`)",
    "full_residual_norm_dropout5/new_llm": "New-LLM seed cell + residual + norm, dropout 0.5 (`full_residual_norm_dropout5`)",
    "full_tied_deep_dropout4/new_llm": "New-LLM tied, 8 layers + residual + norm, dropout 0.4 (`full_tied_deep_dropout4`)",
    "full_residual_norm_dropout4_finetune_dropout1/new_llm": "New-LLM seed cell + residual + norm, dropout 0.4, step 2 dropout 0.1 (`full_residual_norm_dropout4_finetune_dropout1`)",
}
ROW_COLORS = {  # the New-LLM variants; a variant with more dropout is drawn dashed in its base's colour
    "full_parallel/new_llm": "#CC79A7", "full_residual_norm/new_llm": "#E69F00",
    "full_parallel_dropout/new_llm": "#CC79A7", "full_residual_norm_dropout/new_llm": "#E69F00",
    "full_residual_norm_dropout3/new_llm": "#000000", "full_residual_norm_dropout_ctx/new_llm": "#56B4E9",
    "full_parallel_dropout4/new_llm": "#882255", "full_residual_norm_dropout4/new_llm": "#999999",
    "full_residual_norm_dropout5/new_llm": "#DDCC77", "full_tied_deep_dropout4/new_llm": "#332288",
    "full_residual_norm_dropout4_finetune_dropout1/new_llm": "#44AA99",
}


def _line_style(run: dict) -> dict:
    """A run's line in the figures: its row's colour, dashed for a row with more dropout."""
    row = f"{run['preset']}/{run['model']}"
    return {"color": ROW_COLORS.get(row, model_color(run["model"], 0)), "linestyle": "--" if "dropout" in row else "-",
            "linewidth": 1.2}  # fmt: skip


def _table_order(runs: dict) -> list[dict]:
    """The runs in the tables' row order (labelled rows first, then by preset), each row's by name: the legends' order."""
    order = {row: i for i, row in enumerate(ROW_LABELS)}
    key = lambda item: (order.get(f"{item[1]['preset']}/{item[1]['model']}", len(order)), item[1]["preset"], item[0])  # noqa: E731
    return [run for _, run in sorted(runs.items(), key=key)]


def row_label(row: str) -> str:
    """A table's or legend's name for `preset/model`: its label above, or the model and the preset."""
    preset, model = row.split("/")
    return ROW_LABELS.get(row) or f"{MODEL_LABELS[model]} (`{preset}`)"


def bpe_rows(summary: dict) -> list[str]:
    """The rows of the BPE tables: those labelled above in their order, then other presets' by name; not the
    seed protocol's, whose perplexities are per token of another vocabulary."""
    others = sorted(row for row in summary if row not in ROW_LABELS and row.split("/")[0] != SEED_PROTOCOL)
    return [row for row in ROW_LABELS if row in summary] + others


def plot_validation(runs: dict, path: Path) -> Path:
    """WikiText-2 validation perplexity per epoch: one colour per BPE row, one line per seed that finished step 1
    or was stopped by its time limit (its line ends in a cross).

    Left the whole run on a log scale; right the same lines from epoch 10 on a linear scale around
    the best New-LLM rows and the LSTM, where the curves crowd together on the left.
    """
    fig = Figure(figsize=(12, 5), layout="constrained")
    ax, zoom = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    labelled, lowest = set(), 48.0  # the zoom's floor: 48, or below the best recurrent run when one goes lower
    for run in _table_order(runs):
        row = f"{run['preset']}/{run['model']}"
        stopped = _time_limited(run, "wikitext")
        if run["preset"] == SEED_PROTOCOL or not (_finished(run, "wikitext") or stopped):
            continue
        history, style = run["wikitext"]["history"], _line_style(run)
        if run["model"] != "tinygpt2":  # TinyGPT2 (~42) would stretch the zoom over the gap to it
            lowest = min(lowest, math.floor(min(r["val_ppl"] for r in history) - 0.3))
        label = row_label(row).replace("`", "") + (", stopped (×)" if stopped else "")
        epochs, ppl = [r["epoch"] for r in history], [r["val_ppl"] for r in history]
        ax.plot(epochs, ppl, label=None if label in labelled else label, **style)
        zoom.plot(epochs, ppl, **style)
        if stopped:
            for axes in (ax, zoom):
                axes.plot(epochs[-1:], ppl[-1:], "x", color=style["color"], markersize=7)
        labelled.add(label)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_ylabel("WikiText-2 validation perplexity (per token)")
    ax.legend(fontsize="small")
    ax.set_title("Full schedule on one H200: one line per seed")
    zoom.set_xlim(left=10)
    zoom.set_ylim(lowest, 58)
    zoom.set_title("from epoch 10, linear scale")
    for axes in (ax, zoom):
        axes.set_xlabel("epoch")
        axes.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)


def plot_dialog_validation(runs: dict, path: Path) -> Path:
    """DailyDialog validation perplexity per epoch of step 2: one colour per BPE row, one line per seed.

    A step 2 stopped before its end (a kill at the deadline, or its time limit) ends in a cross.
    """
    fig = Figure(figsize=(9, 8), layout="constrained")
    ax = fig.subplots()
    labelled = set()
    for run in _table_order(runs):
        row = f"{run['preset']}/{run['model']}"
        if run["preset"] == SEED_PROTOCOL or not run["dialog"]:
            continue
        history, complete = run["dialog"]["history"], run["dialog"]["complete"]
        label = row_label(row).replace("`", "") + ("" if complete else ", stopped (×)")
        epochs, ppl = [r["epoch"] for r in history], [r["val_ppl"] for r in history]
        style = _line_style(run)
        ax.plot(epochs, ppl, label=None if label in labelled else label, **style)
        if not complete:
            ax.plot(epochs[-1:], ppl[-1:], "x", color=style["color"], markersize=7)
        labelled.add(label)
    ax.set_ylim(top=22)  # the first epochs (up to ~30) would squeeze the part where the rows differ
    ax.set_xlabel("epoch of step 2")
    ax.set_ylabel("DailyDialog validation perplexity (per token)")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", fontsize="small")  # below: inside, it hid the rows' ends
    ax.set_title("Step 2 on DailyDialog, from each seed's step-1 model")
    return save_figure(fig, path)


def plot_test(summary: dict, path: Path, target: float = 96.0) -> Path:
    """WikiText-2 test word perplexity per BPE row, best at the top: a dot per seed, a tick at the mean with the
    seed spread as a whisker, the target as a dashed line. A row whose step 1 its time limit ended is
    hollow and says so. Dots, not bars: the axis does not start at 0."""
    entries = []  # (label, values, stopped, colour)
    for row in bpe_rows(summary):
        colour = ROW_COLORS.get(row, model_color(row.split("/")[1], 0))
        name = re.sub(r" \(`[^`]*`\)$", "", row_label(row))  # the figure leaves the preset to the tables
        for stat, stopped in ((summary[row]["test_word_ppl"], False),
                              (summary[row].get("wikitext_stopped", {}).get("test_word_ppl"), True)):  # fmt: skip
            if stat and stat["n"]:
                label = f"{name}{', step 1 stopped by its time limit' if stopped else ''} (n={stat['n']})"
                entries.append((label, stat["values"], stopped, colour))
    entries.sort(key=lambda entry: -statistics.fmean(entry[1]))  # the best at the top
    fig = Figure(figsize=(11, 0.4 * len(entries) + 1.4), layout="constrained")
    ax = fig.subplots()
    for y, (_, values, stopped, colour) in enumerate(entries):
        mean = statistics.fmean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        ax.errorbar(mean, y, xerr=spread, fmt="|", markersize=14, color=colour, capsize=3, linewidth=1.2)
        ax.plot(values, [y] * len(values), "o", color=colour, markerfacecolor="none" if stopped else colour,
                markersize=5, alpha=0.8)  # fmt: skip
        ax.annotate(f"{mean:.1f}", (mean + spread, y), xytext=(6, 0), textcoords="offset points", va="center",
                    fontsize="small")  # fmt: skip
    ax.axvline(target, color="0.4", linestyle="--", linewidth=1)
    ax.annotate(f"target ≤ {target:g}", (target, len(entries) - 0.5), xytext=(4, 0), textcoords="offset points",
                fontsize="small", color="0.3", va="center")  # fmt: skip
    ax.set_yticks(range(len(entries)), [entry[0] for entry in entries], fontsize="small")
    ax.set_ylim(-0.6, len(entries) - 0.2)
    ax.set_xlabel("WikiText-2 test word perplexity, reset every 128-token window (lower is better)")
    fig.suptitle("Full schedule on an H200, about 7.5 M parameters each: a dot per seed, mean ± std", fontsize="medium")
    ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path)


def _stat(stat: dict, decimals: int, n: int | None = None) -> str:
    """'mean ± std', and '(n=k)' where fewer seeds than the row's n count in this cell."""
    if not stat["n"]:
        return "—"
    std = f" ± {stat['std']:.{decimals}f}" if stat["std"] is not None else ""
    fewer = f" (n={stat['n']})" if n is not None and stat["n"] != n else ""
    return f"{stat['mean']:.{decimals}f}{std}{fewer}"


def _params(summary_row: dict) -> str:
    return ", ".join(f"{p:,}" for p in summary_row["params"]) or "—"


def _epochs(runs: dict, names: list[str], stage: str, stopped: bool = False) -> str:
    """'28–30 (13–15)': epochs run and best epoch over the runs whose stage ended (or was stopped)."""
    done = [runs[n][stage] for n in names if runs[n][stage] and (stopped or _finished(runs[n], stage))]
    if not done:
        return "—"

    def span(values):
        return f"{min(values)}" if min(values) == max(values) else f"{min(values)}–{max(values)}"

    return f"{span([d['epochs_run'] for d in done])} ({span([d['best_epoch'] for d in done])})"


def _summary_table(header: str, align: str, out: dict, rows: list[str], n_key: str, cells, keep_empty=False) -> list[str]:
    """One Markdown table of the summary: a line per row, `cells(summary_row, n)` between the label and n.

    n is how many seeds count in `n_key`'s stat; rows where that is 0 are left out unless `keep_empty`.
    """
    lines = [header, align]
    for row in rows:
        s = out["summary"][row]
        n = s[n_key]["n"]
        if n or keep_empty:
            lines.append(f"| {row_label(row)} | {' | '.join(cells(s, n))} | {n} |")
    return lines


def markdown_tables(out: dict) -> str:
    """The tables of docs/results.md, from the summary: the BPE rows' (WikiText-2, DailyDialog, whole stream,
    samples), then the seed protocol's."""
    runs = out["runs"]
    rows = bpe_rows(out["summary"])
    # a row whose every step 1 was stopped has only its stopped line, not an empty one too
    unstopped = [row for row in rows if not (out["summary"][row].get("wikitext_stopped")
                                             and not out["summary"][row]["wikitext_best_val_ppl"]["n"])]  # fmt: skip
    wikitext = _summary_table(
        "| model | parameters | epochs run (best) | val token PPL | test token PPL | test word PPL | test bits/byte | n |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        out, unstopped, "wikitext_best_val_ppl", keep_empty=True,
        cells=lambda s, n: [
            _params(s), _epochs(runs, s["runs"], "wikitext"),
            _stat(s["wikitext_best_val_ppl"], 2), _stat(s["test_token_ppl"], 2, n), _stat(s["test_word_ppl"], 1, n),
            _stat(s["test_bits_per_byte"], 3, n),
        ],
    )  # fmt: skip
    dialog = _summary_table(
        "| model | epochs run (best) | val token PPL | test token PPL | test response PPL | distinct-1 | distinct-2 | n |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        out, rows, "dialog_best_val_ppl",
        cells=lambda s, n: [
            _epochs(runs, s["runs"], "dialog"), _stat(s["dialog_best_val_ppl"], 2), _stat(s["dialog_test_token_ppl"], 2, n),
            _stat(s["dialog_test_response_ppl"], 2, n), _stat(s["dialog_distinct_1"], 3, n),
            _stat(s["dialog_distinct_2"], 3, n),
        ],
    )  # fmt: skip
    wikitext += _stopped_lines(out, rows, "wikitext", lambda s, stopped: [
        _params(s), _epochs(runs, stopped["runs"], "wikitext", stopped=True),
        _stat(stopped["wikitext_best_val_ppl"], 2), _stat(stopped["test_token_ppl"], 2),
        _stat(stopped["test_word_ppl"], 1), _stat(stopped["test_bits_per_byte"], 3),
    ])  # fmt: skip
    dialog += _stopped_lines(out, rows, "dialog", lambda s, stopped: [
        _epochs(runs, stopped["runs"], "dialog", stopped=True), _stat(stopped["dialog_best_val_ppl"], 2),
        *(_stat(stopped[key], 2 if "ppl" in key else 3) for key in STOPPED_FIELDS["dialog"]),
    ])  # fmt: skip
    reference = out["evaluations"].get("_reference_responses")
    if reference:  # the human row goes first, under the header
        dialog.insert(2, f"| human replies | | | | | {reference['distinct_1']:.3f} | {reference['distinct_2']:.3f} | |")
    stream = _summary_table(
        "| model | test token PPL, reset every window | whole stream | test word PPL, reset | whole stream | n |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        out, rows, "test_stream_word_ppl",
        cells=lambda s, n: [
            _stat(s["test_token_ppl"], 2, n), _stat(s["test_stream_token_ppl"], 2), _stat(s["test_word_ppl"], 1, n),
            _stat(s["test_stream_word_ppl"], 1),
        ],
    )  # fmt: skip
    stream += _stopped_lines(out, rows, "wikitext", lambda s, stopped: [
        _stat(stopped[key], 2 if "token" in key else 1)
        for key in ("test_token_ppl", "test_stream_token_ppl", "test_word_ppl", "test_stream_word_ppl")
    ])  # fmt: skip
    with_dialog = [row for row in rows if out["summary"][row]["dialog_best_val_ppl"]["n"] or "dialog_stopped" in out["summary"][row]]
    tables = [wikitext, dialog, stream, _sample_table(out, with_dialog), _seed_protocol_table(out)]
    return "\n\n".join("\n".join(table) for table in tables if table) + "\n"


def _seed_protocol_table(out: dict) -> list[str]:
    """The seed protocol's step 1 (validation PPL per token of its 1,000-word vocabulary), best row first."""
    summary = out["summary"]
    rows = [row for row in summary if row.split("/")[0] == SEED_PROTOCOL and summary[row]["wikitext_best_val_ppl"]["n"]]
    rows.sort(key=lambda row: summary[row]["wikitext_best_val_ppl"]["mean"])
    labels = {**MODEL_LABELS, "new_llm": "New-LLM seed cell"}  # the prototype's cell is the protocol's only New-LLM
    lines = ["| model | parameters | epochs run (best) | val PPL | n |", "| --- | ---: | --- | ---: | ---: |"]
    for row in rows:
        s = summary[row]
        epochs = _epochs(out["runs"], s["runs"], "wikitext")
        val = _stat(s["wikitext_best_val_ppl"], 2)
        lines.append(f"| {labels[row.split('/')[1]]} | {_params(s)} | {epochs} | {val} | {s['wikitext_best_val_ppl']['n']} |")
    return lines if rows else []


def _stopped_lines(out: dict, rows: list[str], stage: str, cells) -> list[str]:
    """A table's lines for the runs whose `stage` its time limit stopped, one per row that has them:
    `cells(summary_row, its_stopped_summary)` between the label and n."""
    step = {"wikitext": "step 1", "dialog": "step 2"}[stage]
    lines = []
    for row in rows:
        stopped = out["summary"][row].get(f"{stage}_stopped")
        if stopped:
            line = " | ".join(cells(out["summary"][row], stopped))
            lines.append(f"| {row_label(row)}, {step} stopped by its time limit | {line} | {len(stopped['runs'])} |")
    return lines


def _sample_table(out: dict, rows: list[str], seed: int = 0) -> list[str]:
    """The test dialogues' replies side by side: each row's run of `seed`, the human reply first. A run whose
    step 2 its time limit ended replies with its own best step-2 model, and its column says so."""
    samples, labels = {}, {}
    for row in rows:
        name = next((n for n in out["summary"][row]["runs"] if out["runs"][n]["seed"] == seed), None)
        replies = _dig(out["evaluations"], name, "dialog_samples") if name else None
        if replies:
            samples[row] = replies
            stopped = _time_limited(out["runs"][name], "dialog")
            labels[row] = row_label(row) + (", step 2 stopped by its time limit" if stopped else "")
    if not samples:
        return []
    cell = lambda text: (text or "").replace("|", "\\|").replace("\n", " ")  # noqa: E731
    first = next(iter(samples.values()))
    lines = [
        "| # | context (last two turns) | human | " + " | ".join(labels.values()) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in samples) + " |",
    ]
    for i, sample in enumerate(first):
        replies = [cell(samples[row][i]["reply"]) if i < len(samples[row]) else "" for row in samples]
        lines.append(
            f"| {i + 1} | {cell(' / '.join(sample['context'][-2:]))} | {cell(sample['reference'])} | " + " | ".join(replies) + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", type=Path, nargs="*", metavar="root",
                        help="the folders full_schedule.sh wrote into, oldest first")
    parser.add_argument("--previous", type=Path, help="an earlier summary this script wrote: its runs come first")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path, help="the figure of WikiText-2 validation per epoch")
    parser.add_argument("--plot-dialog", type=Path, help="the figure of DailyDialog validation per epoch")
    parser.add_argument("--plot-test", type=Path, help="the figure of WikiText-2 test word perplexity per row")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown tables: WikiText-2, DailyDialog, whole stream, sample replies, seed protocol")
    args = parser.parse_args()
    missing = [str(root) for root in args.roots if not root.is_dir()]
    if missing:
        raise SystemExit(f"collect_full_schedule: no such folder: {', '.join(missing)}")
    previous = None
    if args.previous:
        try:
            previous = json.loads(args.previous.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SystemExit(f"collect_full_schedule: cannot read --previous {args.previous}: {error}") from None
        if not isinstance(previous, dict) or not isinstance(previous.get("runs"), dict):
            raise SystemExit(f"collect_full_schedule: --previous {args.previous} is not a summary this script wrote")
    runs, evaluations, launches = collect(args.roots, previous)
    if not runs:
        raise SystemExit(f"collect_full_schedule: no <row>_<model>_s<seed> run folders in {', '.join(map(str, args.roots))}")
    out = {"launches": launches, "summary": summarize(runs, evaluations), "runs": runs, "evaluations": evaluations}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if args.plot:
        print(f"wrote {plot_validation(runs, args.plot)}")
    if args.plot_dialog:
        print(f"wrote {plot_dialog_validation(runs, args.plot_dialog)}")
    if args.plot_test:
        print(f"wrote {plot_test(out['summary'], args.plot_test)}")
    if args.markdown:
        args.markdown.write_text(markdown_tables(out), encoding="utf-8")
        print(f"wrote {args.markdown}")
    for row, numbers in out["summary"].items():
        cells = []
        for key in ("wikitext_best_val_ppl", "test_word_ppl", "dialog_test_token_ppl"):
            stat = numbers[key]
            if stat["n"]:
                std = f" ± {stat['std']:.2f}" if stat["std"] is not None else ""
                cells.append(f"{key} {stat['mean']:.2f}{std} (n={stat['n']})")
        print(f"{row:24s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
