"""`newllm recall`'s outputs from its results dict (recall.json): a plain-text table and Zoology's figure (no torch)."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from newllm.reporting.bench_report import format_bytes
from newllm.reporting.plots import model_color, save_figure, write_atomic

MARKERS = "osD^vP"
LINESTYLES = ("-", "--", ":", "-.")  # variants of one model (recall-collect): its colour, another line


def _settings(runs) -> list[tuple[int, int]]:
    """(seq_len, pairs) in the sweep, shortest and fewest first."""
    return sorted({(r["seq_len"], r["pairs"]) for r in runs})


def _models(results: Mapping[str, Any]) -> list[str]:
    return list(dict.fromkeys([*(results.get("labels") or {}), *(r["model"] for r in results["runs"])]))


def variant(run: Mapping[str, Any], runs: list[Mapping[str, Any]]) -> str:
    """What sets `run` apart from the others of its model in `runs`: its config options (`forget_bias=3`) and, where
    the runs differ in them, its learning rate and weight decay; "" for none (a sweep's only variant)."""
    parts = [f"{key}={value}" for key, value in sorted((run.get("options") or {}).items())]
    for key, name in (("lr", "lr"), ("weight_decay", "weight decay")):
        if key == "lr" and run.get("rate_chosen"):  # chosen per width and point (choose_rates): not a variant
            continue
        if len({r.get(key) for r in runs if r["model"] == run["model"]}) > 1:
            parts.append(f"{name}={run.get(key):g}")
    return ", ".join(parts)


def run_label(run: Mapping[str, Any], runs: list[Mapping[str, Any]], labels: Mapping[str, str]) -> str:
    name, extra = labels.get(run["model"], run["model"]), variant(run, runs)
    return f"{name}, {extra}" if extra else name


def _mean_split(runs: list[Mapping[str, Any]], split: str) -> list[float] | None:
    """The seeds' mean accuracy at each query (split "query") or of each pair ("pair"); None where a run lacks it."""
    if not all(run.get("accuracy_by") for run in runs):
        return None
    return [statistics.fmean(values) for values in zip(*(run["accuracy_by"][split] for run in runs))]


def summarize(results: Mapping[str, Any]) -> list[dict]:
    """One row per model × variant × width × setting: state bytes, parameters, and accuracy and steps averaged over
    seeds."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    all_runs = results["runs"]
    for run in all_runs:
        groups.setdefault((run["model"], variant(run, all_runs), run["width"], run["seq_len"], run["pairs"]), []).append(run)
    order = {name: i for i, name in enumerate(_models(results))}
    rows = []
    for model, kind, width, seq_len, pairs in sorted(groups, key=lambda k: (k[3], k[4], order[k[0]], k[1], k[2])):
        runs = groups[model, kind, width, seq_len, pairs]
        rows.append({
            "model": model, "variant": kind, "width": width, "seq_len": seq_len, "pairs": pairs, "seeds": len(runs),
            "parameters": runs[0]["parameters"], "state_bytes": runs[0]["state_bytes"],
            "accuracy": statistics.fmean(r["accuracy"] for r in runs),
            "accuracy_std": statistics.stdev(r["accuracy"] for r in runs) if len(runs) > 1 else None,
            "accuracy_min": min(r["accuracy"] for r in runs), "accuracy_max": max(r["accuracy"] for r in runs),
            "steps": statistics.fmean(r["steps"] for r in runs), "chance": runs[0]["chance"],
            "keyless": runs[0].get("keyless"),  # absent from results written before it was recorded
            "by_query": _mean_split(runs, "query"), "by_pair": _mean_split(runs, "pair"),
        })  # fmt: skip
    return rows


def _row_label(row: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """A summary row's model cell: its label, and its variant where it has one."""
    return labels.get(row["model"], row["model"]) + (f", {row['variant']}" if row["variant"] else "")


def format_recall_table(results: Mapping[str, Any]) -> str:
    """Markdown table: accuracy at the query positions against the state each model carries."""
    labels = results.get("labels") or {}
    seeds = len(results.get("seeds") or [None])
    accuracy = "accuracy" if seeds == 1 else f"accuracy (mean ± std of {seeds} seeds)"
    lines = [f"| seq_len | pairs | model | width | parameters | state | {accuracy} | steps |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in summarize(results):
        name = _row_label(r, labels)
        lines.append(
            f"| {r['seq_len']} | {r['pairs']} | {name} | {r['width']} | "
            f"{r['parameters']:,} | {format_bytes(r['state_bytes'])} | {r['accuracy']:.3f}"
            + ("" if r["accuracy_std"] is None else f" ± {r['accuracy_std']:.3f}") + f" | {r['steps']:.0f} |"
        )
    chance = {r["chance"] for r in results["runs"]}
    if len(chance) == 1:
        lines.append(f"\nChance (a uniform guess among the values): {chance.pop():.3f}.")
    keyless = {(r["pairs"], r.get("keyless")) for r in results["runs"] if r.get("keyless") is not None}
    if keyless:
        scores = ", ".join(f"{score:.3f} at {pairs} pairs" for pairs, score in sorted(keyless))
        lines.append(f"Values without their keys (guessing among the values not yet asked for): {scores}.")
    return "\n".join(lines)


def format_recall_splits(results: Mapping[str, Any]) -> str:
    """Markdown table of where each model's answers are right: by the order the queries come in and by the order
    the pairs were given, each the mean over seeds; "" where no run records it (results written before)."""
    labels = results.get("labels") or {}
    rows = [r for r in summarize(results) if r["by_query"] is not None]
    if not rows:
        return ""
    lines = ["| seq_len | pairs | model | width | accuracy | by query (first … last) | by pair (first given … last) | "
             "values without keys |", "| ---: | ---: | --- | ---: | ---: | --- | --- | ---: |"]  # fmt: skip
    for r in rows:
        name = _row_label(r, labels)
        keyless = "—" if r["keyless"] is None else f"{r['keyless']:.3f}"
        lines.append(f"| {r['seq_len']} | {r['pairs']} | {name} | {r['width']} | {r['accuracy']:.3f} | "
                     f"{' / '.join(f'{a:.3f}' for a in r['by_query'])} | {' / '.join(f'{a:.3f}' for a in r['by_pair'])} | "
                     f"{keyless} |")  # fmt: skip
    return "\n".join(lines)


def _keyless_line(ax, score: float | None) -> None:
    """Where a model lands that holds the values but not their keys (mqar.keyless_accuracy)."""
    if score is not None:
        ax.axhline(score, color="grey", linestyle="--", linewidth=1, label="values without keys")


def plot_recall(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Accuracy against bytes of state on log-x, one panel per (seq_len, pairs), one line per model (Zoology's fig. 2)."""
    rows = summarize(results)
    settings = _settings(rows)
    labels = results.get("labels") or {}
    lines = list(dict.fromkeys((r["model"], r["variant"]) for r in rows))
    ncols = max(1, len(settings) // 2)
    # the legend below the panels, as tall as its entries (the lines, chance, values without keys) need
    fig = Figure(figsize=(max(6.4, 4.2 * len(settings)), 3.8 + 0.22 * math.ceil((len(lines) + 2) / ncols)),
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    for ax, (seq_len, pairs) in zip(axes, settings):
        for n, (model, kind) in enumerate(lines):
            i = _models(results).index(model)
            points = sorted((r["state_bytes"], r["accuracy"]) for r in rows
                            if (r["model"], r["variant"], r["seq_len"], r["pairs"]) == (model, kind, seq_len, pairs))  # fmt: skip
            if points:
                xs, ys = zip(*points)
                # translucent: two New-LLM cells of one width carry the same state and often overlap
                name = labels.get(model, model) + (f", {kind}" if kind else "")
                ax.plot(xs, ys, marker=MARKERS[n % len(MARKERS)], color=model_color(model, i), alpha=0.8,
                        label=name)  # fmt: skip
        chance = next(r["chance"] for r in rows if (r["seq_len"], r["pairs"]) == (seq_len, pairs))
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
        _keyless_line(ax, next(r["keyless"] for r in rows if (r["seq_len"], r["pairs"]) == (seq_len, pairs)))
        ax.set_xscale("log", base=4)  # ticks at 256 B, 1 KiB, 4 KiB ...: round binary sizes
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_bytes(x)))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"sequence {seq_len}, {pairs} pairs")
        ax.set_xlabel("state carried per sequence")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("MQAR accuracy at the queries")
    entries = {}  # every panel's lines, each name once
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=ncols, fontsize="small")
    return save_figure(fig, path)


def checked_set(runs: list[Mapping[str, Any]]) -> str:
    """Which set the runs' history checked: the validation set, or the test set where a run records no
    valid_accuracy (written before runs had a validation set)."""
    validated = ["valid_accuracy" in run for run in runs]
    if all(validated):
        return "validation set"
    return "validation or test set" if any(validated) else "test set"


def plot_recall_history(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Accuracy at each check against training step, one panel per (seq_len, pairs), a line per run (model colour,
    a marker per width): where each model leaves chance, or does not. The checks read the validation set, or the
    test set in runs recorded before they had one (no valid_accuracy)."""
    runs = [r for r in results["runs"] if r.get("history")]
    if not runs:
        raise ValueError("no run records its history (recall.json written before `history` was added)")
    settings = _settings(runs)
    labels = results.get("labels") or {}
    fig = Figure(figsize=(4.6 * len(settings), 3.8), layout="constrained")
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    models = _models(results)
    for ax, (seq_len, pairs) in zip(axes, settings):
        shown = set()
        for run in runs:
            if (run["seq_len"], run["pairs"]) != (seq_len, pairs):
                continue
            i = models.index(run["model"])
            kinds = list(dict.fromkeys(variant(r, runs) for r in runs if r["model"] == run["model"]))
            k = kinds.index(variant(run, runs))
            steps, accuracy = zip(*((step, acc) for step, acc, *_ in run["history"]))
            label = f"{run_label(run, runs, labels)} ({format_bytes(run['state_bytes'])})"
            ax.plot(steps, accuracy, color=model_color(run["model"], i), alpha=0.7, linewidth=1.2,
                    linestyle=LINESTYLES[k % len(LINESTYLES)], marker=MARKERS[(i + k) % len(MARKERS)], markersize=3,
                    label=None if label in shown else label)  # fmt: skip
            shown.add(label)
        chance = next(r["chance"] for r in runs if (r["seq_len"], r["pairs"]) == (seq_len, pairs))
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
        _keyless_line(ax, next(r.get("keyless") for r in runs if (r["seq_len"], r["pairs"]) == (seq_len, pairs)))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"sequence {seq_len}, {pairs} pairs")
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"MQAR accuracy at the queries ({checked_set(runs)})")
    # below the panels, not on them: the lines of a slow learner run through every corner
    handles, names = axes[-1].get_legend_handles_labels()
    ncols = len(settings)  # one column per panel keeps the legend as wide as the figure
    fig.set_figheight(3.8 + 0.2 * -(-len(names) // ncols))
    fig.legend(handles, names, loc="outside lower center", ncols=ncols, fontsize="small")
    return save_figure(fig, path)


def merge_recall_results(parts: list[Mapping[str, Any]]) -> dict:
    """Several recall.json as one (a sweep run a family at a time, each at its own width): the runs one after
    another, the labels together, and each part's provenance (command, config, commit, date ...) under `parts`.
    A part may itself be a merged recall.json: its runs and its parts join the others'."""
    if not parts:
        raise ValueError("no recall.json to merge")
    versions = {part.get("version") for part in parts}
    if len(versions) != 1:
        raise ValueError(f"recall.json files of different versions: {sorted(map(str, versions))}")
    runs, labels, provenance = [], {}, []
    for part in parts:
        config = part.get("config") or {}
        for run in part["runs"]:  # runs written before rows recorded their options, lr and weight decay: the config's
            recorded = {"options": (config.get("options") or {}).get(run["model"], {}), "lr": config.get("lr"),
                        "weight_decay": config.get("weight_decay")}  # fmt: skip
            runs.append(run | {key: value for key, value in recorded.items() if key not in run})
        labels.update(part.get("labels") or {})
        # a merged file's parts stand as they are: more runs added to it later nest nothing
        provenance += part["parts"] if "parts" in part else [{key: value for key, value in part.items() if key != "runs"}]
    return {"version": versions.pop(), "labels": labels, "seeds": sorted({run["seed"] for run in runs}), "runs": runs,
            "parts": provenance}


def choose_rates(results: Mapping[str, Any]) -> dict:
    """Equal tuning breadth: of the runs of a model (with its options and weight decay) at one width and point,
    those at the learning rate whose seeds have the best mean validation accuracy; the test accuracy takes no part.
    Ties go to the lower rate. Every rate must have run the same seeds, and every run must record valid_accuracy.
    `rates_chosen` lists each choice and every rate's validation score."""
    runs = results["runs"]
    unchecked = sum("valid_accuracy" not in run for run in runs)
    if unchecked:
        raise ValueError(f"{unchecked} of {len(runs)} runs record no valid_accuracy (they checked the test set): "
                         f"no rate can be chosen for them on validation")  # fmt: skip
    groups: dict[tuple, dict[float, list]] = {}
    for run in runs:
        key = (run["model"], json.dumps(run.get("options") or {}, sort_keys=True), run.get("weight_decay"),
               run["width"], run["seq_len"], run["pairs"])  # fmt: skip
        groups.setdefault(key, {}).setdefault(run["lr"], []).append(run)
    kept, chosen = set(), []
    for (model, options, weight_decay, width, seq_len, pairs), by_rate in groups.items():
        seeds = {lr: sorted(run["seed"] for run in rate_runs) for lr, rate_runs in by_rate.items()}
        if len({tuple(s) for s in seeds.values()}) > 1:
            raise ValueError(f"{model} at width {width}, {seq_len} tokens, {pairs} pairs: the rates ran different seeds "
                             f"({', '.join(f'{lr:g}: {s}' for lr, s in sorted(seeds.items()))})")  # fmt: skip
        scores = {lr: statistics.fmean(run["valid_accuracy"] for run in rate_runs) for lr, rate_runs in by_rate.items()}
        best = max(sorted(scores), key=scores.__getitem__)  # the first maximum of the rates in rising order
        kept.update(id(run) for run in by_rate[best])
        chosen.append({"model": model, "options": json.loads(options), "weight_decay": weight_decay, "width": width,
                       "seq_len": seq_len, "pairs": pairs, "lr": best,
                       "valid_accuracy": {f"{lr:g}": scores[lr] for lr in sorted(scores)}})  # fmt: skip
    return {**results, "runs": [run | {"rate_chosen": True} for run in runs if id(run) in kept], "rates_chosen": chosen}


def format_rate_choice(results: Mapping[str, Any]) -> str:
    """Markdown table of choose_rates' choices: each rate's mean validation accuracy, the chosen one in bold."""
    labels = results.get("labels") or {}
    lines = ["| seq_len | pairs | model | width | rate | validation accuracy at each rate |",
             "| ---: | ---: | --- | ---: | ---: | --- |"]  # fmt: skip
    for c in sorted(results["rates_chosen"], key=lambda c: (c["seq_len"], c["pairs"], c["model"], c["width"])):
        name = labels.get(c["model"], c["model"]) + "".join(f", {k}={v}" for k, v in sorted(c["options"].items()))
        chosen = f"{c['lr']:g}"  # valid_accuracy's keys are the rates written the same way
        scores = ", ".join((f"**{lr}: {a:.3f}**" if lr == chosen else f"{lr}: {a:.3f}")
                           for lr, a in c["valid_accuracy"].items())  # fmt: skip
        lines.append(f"| {c['seq_len']} | {c['pairs']} | {name} | {c['width']} | {c['lr']:g} | {scores} |")
    return "\n".join(lines)


def write_recall_json(results: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """recall.json under `out_dir`, replaced whole (a reader never sees half a file)."""
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    return write_atomic(Path(out_dir) / "recall.json", text.encode("utf-8"))


def write_recall_outputs(results: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """recall.json and recall.png under `out_dir`."""
    out_dir = Path(out_dir)
    paths = [write_recall_json(results, out_dir), plot_recall(results, out_dir / "recall.png")]
    if any(run.get("history") for run in results["runs"]):
        paths.append(plot_recall_history(results, out_dir / "recall_history.png"))
    return paths
