"""The speed benchmark's outputs from its results dict (bench.json): a plain-text table and PNG figures (no torch)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from newllm.reporting.plots import model_color, model_label, ordered_models, save_figure, three_significant, write_atomic

MISSING = "—"
SKIPPED = "skip"
FAILED = "error"
# A decoding mode keeps its marker: the graphed decoder's line beside the same model's forward line.
GEN_MARKERS = {"forward": "o", "graphed": "s"}
# A precision keeps its line style in every figure, as a model keeps its colour.
PRECISION_STYLES = {"fp32": "-", "bf16": "--"}


# ---------------------------------------------------------------- formatting


def _finite(value: Any) -> float | None:
    """A JSON number usable in arithmetic (finite, not bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def format_bytes(value: Any) -> str:
    """Bytes in binary units, three significant figures at most: 512 B, 1.5 KiB, 97.7 KiB, 8 GiB."""
    x = _finite(value)
    if x is None:
        return MISSING
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if abs(x) >= 1024**power:
            scaled = x / 1024**power
            # .3g drops the zeros of round binary sizes (8 KiB, not 8.00 KiB); past 999 it would go to 1e+03.
            return f"{scaled:.3g} {unit}" if abs(scaled) < 999.5 else f"{scaled:,.0f} {unit}"
    return f"{x:.0f} B"


def _rate(value: Any) -> str:
    """Tokens per second as a whole number with thousands separators."""
    x = _finite(value)
    return MISSING if x is None else f"{x:,.0f}"


def _ms(value: Any) -> str:
    x = _finite(value)
    return MISSING if x is None else three_significant(x)


def _ratio(value: Any) -> str:
    x = _finite(value)
    return MISSING if x is None else f"{x:.2f}×"


def _cell(row: Mapping[str, Any] | None, key: str, fmt) -> str:
    """A row's metric formatted, or why there is none: "skip", "error" or "—" (not run)."""
    if row is None:
        return MISSING
    if row.get("skipped"):
        return SKIPPED
    if row.get("error"):
        return FAILED
    return fmt(row.get(key))


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> list[str]:
    """Aligned plain-text table: the first `left` columns (the settings) flush left, the numbers flush right."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]

    def line(cells):
        parts = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _models(results: Mapping[str, Any]) -> list[str]:
    """Models in the results, in the fixed order (New-LLM first)."""
    names = list(results.get("params") or {})
    for section in ("training", "generation"):
        names += [r["model"] for r in results.get(section) or [] if r.get("model") not in names]
    return ordered_models(dict.fromkeys(names))


def _rows(results: Mapping[str, Any], section: str) -> list[Mapping[str, Any]]:
    return [r for r in results.get(section) or [] if isinstance(r, Mapping)]


def _index(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, Mapping[str, Any]]:
    """Rows by (*keys, model)."""
    return {(*(r.get(k) for k in keys), r.get("model")): r for r in rows}


def _heading(text: str) -> list[str]:
    return ["", text, "=" * len(text)]


def _environment_line(results: Mapping[str, Any]) -> str:
    env = results.get("environment") or {}
    device = results.get("device", "?")
    hardware = env.get("gpu") if str(device).startswith("cuda") else env.get("cpu")
    threads = env.get("threads") if not str(device).startswith("cuda") else None
    threads = f", {threads} CPU thread{'s' if threads != 1 else ''}" if threads else ""
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "transformers", "cuda") if env.get(k))
    return f"device {device} ({hardware or 'unknown hardware'}{threads}); {versions}"


def _training_lines(results: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    rows = _rows(results, "training")
    if not rows:
        return []
    keys = ("batch_size", "seq_len", "precision", "mode")
    by_setting = _index(rows, keys)
    ratios = {tuple(r.get(k) for k in keys): r.get("new_llm_over_tinygpt2") for r in results.get("ratios") or []}
    show_ratio = {"new_llm", "tinygpt2"} <= set(names)
    headers = ["batch", "seq", "precision", "mode", *(model_label(n) for n in names)]
    headers += ["New-LLM/TinyGPT2"] if show_ratio else []
    table = []
    settings = list(dict.fromkeys(tuple(r.get(k) for k in keys) for r in rows))
    # Grouped by shape (a stable sort keeps the bench's precision and mode order within one).
    for setting in sorted(settings, key=lambda s: (s[0], s[1])):
        cells = [str(v) for v in setting]
        cells += [_cell(by_setting.get((*setting, n)), "tokens_per_s", _rate) for n in names]
        cells += [_ratio(ratios.get(setting))] if show_ratio else []
        table.append(cells)
    lines = _heading("Training throughput: tokens_per_s of full AdamW steps (higher is faster)")
    lines += _text_table(headers, table, left=4)
    best = results.get("best") or []
    if best:
        headers = ["batch", "seq", *(model_label(n) for n in names)]
        headers += ["New-LLM/TinyGPT2"] if show_ratio else []
        table = []
        for entry in best:
            rates, settings = entry.get("tokens_per_s") or {}, entry.get("setting") or {}
            cells = [str(entry.get("batch_size")), str(entry.get("seq_len"))]
            cells += [
                f"{_rate(rates.get(n))} ({settings[n]})" if _finite(rates.get(n)) is not None else MISSING
                for n in names
            ]
            cells += [_ratio(entry.get("new_llm_over_tinygpt2"))] if show_ratio else []
            table.append(cells)
        lines += ["", "Best of each model over precisions and modes:"]
        lines += _text_table(headers, table, left=2)
    return lines


def _generation_lines(results: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    rows = _rows(results, "generation")
    if not rows:
        return []
    keys = ("precision", "mode", "batch_size", "context_len")  # mode: "forward" or "graphed" (None in old files)
    by_setting = _index(rows, keys)
    gen_tokens = next((r.get("gen_tokens") for r in rows if r.get("gen_tokens")), None)
    metrics = [
        ("ms_per_token", _ms, f"ms_per_token (greedy, cached, one token a step; {gen_tokens} steps timed)"),
        ("state_bytes", format_bytes, "state_bytes (the cache after the prompt)"),
    ]
    if any(_finite(r.get("peak_mem_bytes")) is not None for r in rows):
        metrics.append(("peak_mem_bytes", format_bytes, "peak_mem_bytes (device memory while decoding)"))
    lines = []
    for precision, mode in dict.fromkeys((r.get("precision"), r.get("mode")) for r in rows):
        settings = [s for s in dict.fromkeys(tuple(r.get(k) for k in keys) for r in rows) if s[:2] == (precision, mode)]
        if all(by_setting[(*s, n)].get("skipped") for s in settings for n in names if (*s, n) in by_setting):
            continue  # a precision or mode this device skipped entirely: said once in the notes, not as a table of "skip"
        for key, fmt, title in metrics:
            table = [
                [str(setting[2]), str(setting[3]), *(_cell(by_setting.get((*setting, n)), key, fmt) for n in names)]
                for setting in settings
            ]
            label = precision if mode is None else f"{precision}, {mode}"
            lines += _heading(f"Generation, {label}: {title}")
            lines += _text_table(["batch", "context", *(model_label(n) for n in names)], table, left=2)
    return lines


def _notes(results: Mapping[str, Any]) -> list[str]:
    """Each skip reason once with its row count, and every error with its row."""
    reasons: dict[str, int] = {}
    errors = []
    for section in ("training", "generation"):
        for r in _rows(results, section):
            if r.get("skipped"):
                reasons[r["skipped"]] = reasons.get(r["skipped"], 0) + 1
            if r.get("error"):
                setting = ", ".join(
                    f"{k} {r[k]}" for k in ("batch_size", "seq_len", "context_len", "precision", "mode") if k in r
                )
                errors.append(f"  {FAILED}: {model_label(r.get('model', '?'))} {section} ({setting}): {r['error']}")
    lines = [f"  {SKIPPED}: {reason} ({count} row{'s' if count > 1 else ''})" for reason, count in reasons.items()]
    return (["", "Notes:"] + lines + errors) if lines or errors else []


def new_llm_variant(config: Mapping[str, Any]) -> str | None:
    """Which New-LLM a bench measured, where it is not the prototype's cell: its preset ("preset study"), or, in
    results written before the bench took a preset, its cell options ("parallel cell, residual, ffn_norm")."""
    if config.get("preset", "full") != "full":
        return f"preset {config['preset']}"
    parts = [f"{config['cell']} cell"] if config.get("cell", "prototype") not in ("prototype", "seed") else []
    parts += [option for option in ("residual", "ffn_norm") if config.get(option)]
    return ", ".join(parts) or None


def format_bench_table(results: Mapping[str, Any]) -> str:
    """The bench results as plain-text tables: training throughput with ratios, then generation by context length."""
    names = _models(results)
    params = results.get("params") or {}
    lines = [f"newllm bench: {_environment_line(results)}"]
    if params:
        lines.append("parameters: " + ", ".join(f"{model_label(n)} {params[n]:,}" for n in names if n in params))
    variant = new_llm_variant(results.get("config") or {})
    if variant and "new_llm" in names:
        lines.append(f"New-LLM variant: {variant}")
    lines += _training_lines(results, names)
    lines += _generation_lines(results, names)
    lines += _notes(results)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures


def plot_bench_throughput(results: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Bars of tokens_per_s per (batch, seq), one panel per precision × mode; None if nothing was measured."""
    rows = [r for r in _rows(results, "training") if _finite(r.get("tokens_per_s")) is not None]
    if not rows:
        return None
    names = _models(results)
    panels = list(dict.fromkeys((r["precision"], r["mode"]) for r in rows))
    shapes = list(dict.fromkeys((r["batch_size"], r["seq_len"]) for r in rows))
    measured = {(r["precision"], r["mode"], r["batch_size"], r["seq_len"], r["model"]): r["tokens_per_s"] for r in rows}
    ratios = {
        (r.get("precision"), r.get("mode"), r.get("batch_size"), r.get("seq_len")): r.get("new_llm_over_tinygpt2")
        for r in results.get("ratios") or []
    }
    columns = min(2, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(max(6.0, 1.1 * len(shapes) * len(names)) * columns, 4.2 * lines), layout="constrained")
    # One y scale for all panels: a bar in the bf16 panel compares with its fp32 neighbour by eye.
    axes = fig.subplots(lines, columns, squeeze=False, sharey=True).ravel()
    width = 0.8 / len(names)
    for ax, (precision, mode) in zip(axes, panels):
        for i, name in enumerate(names):
            values = [measured.get((precision, mode, b, s, name)) for b, s in shapes]
            x = [j + (i - (len(names) - 1) / 2) * width for j in range(len(shapes))]
            bars = ax.bar(x, [v or 0 for v in values], width, color=model_color(name, i), label=model_label(name))
            ax.bar_label(bars, labels=[MISSING if v is None else three_significant(v) for v in values],
                         padding=2, fontsize=7, rotation=90)  # fmt: skip
        labels = []
        for b, s in shapes:
            ratio = _finite(ratios.get((precision, mode, b, s)))
            labels.append(f"B={b} T={s}" + ("" if ratio is None else f"\nNew-LLM/TinyGPT2 {ratio:.2f}×"))
        ax.set_xticks(range(len(shapes)), labels, fontsize=8)
        ax.set_yscale("log")  # the models differ by orders of magnitude; bars must all stay readable
        ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))  # 100,000, not 1e+05
        ax.margins(y=0.25)  # headroom for the value labels
        ax.set_ylabel("tokens_per_s (log)")
        ax.set_title(f"{precision}, {mode}")
        ax.grid(True, axis="y", which="both", alpha=0.2)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle(f"Training throughput, full AdamW step (higher is faster) — {results.get('device', '?')}")
    return save_figure(fig, path)


def _generation_series(rows, names, batch: int, key: str):
    """(name, precision, mode, [(context, value)]) for every series with a value at this batch size."""
    for i, name in enumerate(names):
        for precision, mode in dict.fromkeys((r.get("precision"), r.get("mode")) for r in rows):
            points = sorted(
                (r["context_len"], r[key])
                for r in rows
                if (r.get("model"), r.get("precision"), r.get("mode"), r.get("batch_size")) == (name, precision, mode, batch)
                and _finite(r.get(key)) is not None
            )
            if points:
                yield i, name, precision, mode, points


def _byte_ticks(values: Sequence[float]) -> list[float]:
    """Round binary sizes across values: powers of two (at most 8), with quarters between them if the span is narrow."""
    low, high = min(values), max(values)
    first, last = math.floor(math.log2(low)), math.ceil(math.log2(high))
    if last - first >= 3:
        stride = math.ceil((last - first + 1) / 8)
        return [2.0**k for k in range(first, last + 1, stride)]
    # Within a factor of 8 (a peak of 90–160 MiB, say) powers of two alone would leave one tick or none.
    ticks = [2.0**k * m for k in range(first, last + 1) for m in (1, 1.25, 1.5, 1.75)]
    return [t for t in ticks if low / 1.25 <= t <= high * 1.25]


def _position_limit_line(ax, results: Mapping[str, Any]) -> None:
    """Dotted line at the longest context GPT-2 can still decode after, if GPT-2 was in the bench."""
    config = results.get("config") or {}
    positions, gen_tokens = _finite(config.get("gpt2_positions")), _finite(config.get("gen_tokens"))
    if "tinygpt2" in (config.get("models") or []) and positions and gen_tokens and positions > gen_tokens:
        ax.axvline(positions - gen_tokens, color="0.4", linestyle=":", linewidth=1,
                   label=f"GPT-2's last context ({positions:.0f} positions)")  # fmt: skip


def plot_bench_generation(
    results: Mapping[str, Any], path: str | os.PathLike, metrics: Sequence[tuple[str, str]], title: str
) -> Path | None:
    """Lines of each metric against context length (log x), one column per generation batch size."""
    rows = _rows(results, "generation")
    names = _models(results)
    metrics = [(k, label) for k, label in metrics if any(_finite(r.get(k)) is not None for r in rows)]
    drawable = [r for r in rows if any(_finite(r.get(k)) is not None for k, _ in metrics)]
    batches = list(dict.fromkeys(r.get("batch_size") for r in drawable))
    contexts = sorted({r["context_len"] for r in drawable})
    if not metrics or not batches:
        return None
    fig = Figure(figsize=(5.0 * len(batches) + 2.2, 4.2 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(batches), squeeze=False)
    legend: dict[str, Any] = {}
    for row_axes, (key, ylabel) in zip(axes, metrics):
        for ax, batch in zip(row_axes, batches):
            drawn = []
            for i, name, precision, mode, points in _generation_series(rows, names, batch, key):
                contexts, values = zip(*points)
                drawn += values
                label = f"{model_label(name)} {precision}" + (f" {mode}" if mode and mode != "forward" else "")
                ax.plot(contexts, values, PRECISION_STYLES.get(precision, ":"), marker=GEN_MARKERS.get(mode, "o"),
                        markersize=4, color=model_color(name, i), label=label)  # fmt: skip
            _position_limit_line(ax, results)
            ax.set_xscale("log", base=2)
            # Ticks at the measured lengths, written out: "8,192" reads better than 2^13.
            ax.set_xticks(contexts, [f"{c:,}" for c in contexts])
            ax.xaxis.set_minor_locator(NullLocator())
            if key.endswith("_bytes"):
                # Bytes span from a context vector (hundreds) to a key/value cache (gigabytes); powers of two
                # put the ticks on round binary sizes (1 KiB, 8 KiB, 64 KiB).
                ax.set_yscale("log", base=2)
                if drawn:
                    ax.yaxis.set_major_locator(FixedLocator(_byte_ticks(drawn)))
                ax.yaxis.set_minor_locator(NullLocator())
                ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: format_bytes(x)))
            else:
                ax.set_ylim(bottom=0)  # from zero: a flat line must look flat
            ax.set_xlabel("context length (tokens before decoding)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"batch {batch}")
            ax.grid(True, which="major", alpha=0.3)
            legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    # One legend for the figure, beside the panels: every panel has the same series, and inside one it hid points.
    fig.legend(list(legend.values()), list(legend), loc="outside right upper", frameon=False, fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def write_bench_outputs(results: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write bench.json and the three PNGs under out_dir; a figure with nothing measured to draw is left out."""
    out_dir = Path(out_dir)
    # allow_nan=False: strict JSON that any reader parses; the bench writes null, never NaN, for a missing number.
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    written = [write_atomic(out_dir / "bench.json", text.encode("utf-8"))]
    figures = [
        plot_bench_throughput(results, out_dir / "bench_throughput.png"),
        plot_bench_generation(
            results, out_dir / "bench_latency.png", [("ms_per_token", "ms_per_token")],
            "Decoding latency after a prompt (lower is faster; flat = no cost for context)",
        ),
        plot_bench_generation(
            results, out_dir / "bench_memory.png",
            [("state_bytes", "cache after the prompt (state_bytes)"),
             ("peak_mem_bytes", "peak while decoding (peak_mem_bytes)")],
            "Memory against context length (log–log)",
        ),
    ]  # fmt: skip
    return written + [p for p in figures if p is not None]
