"""PNG figures of training histories, speed and many runs side by side, drawn from plain dicts (no torch)."""

from __future__ import annotations

import io
import math
import os
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# The object API with an explicit Agg canvas, not pyplot: no global backend switch,
# no figure registry to leak, and callers that use pyplot themselves are unaffected.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator, NullFormatter, ScalarFormatter

MODEL_LABELS = {"new_llm": "New-LLM", "tinygpt2": "TinyGPT2", "lstm": "LSTM", "mamba2": "Mamba-2"}
# Okabe–Ito colours (colour-blind safe); a model keeps its colour in every figure.
MODEL_COLORS = {"new_llm": "#D55E00", "tinygpt2": "#0072B2", "lstm": "#009E73", "mamba2": "#CC79A7"}
_EXTRA_COLORS = ("#E69F00", "#56B4E9", "#000000", "#F0E442")
METRIC_LABELS = {
    "val_ppl": "validation perplexity (per token)",
    "train_ppl": "training perplexity (per token)",
    "val_loss": "validation loss (nats/token)",
    "train_loss": "training loss (nats/token)",
}
_DPI = 120
# Several rows of one model in a figure share its colour and differ in line style, in this order.
_LINE_STYLES = ("-", "--", ":", "-.")


def model_label(name: str) -> str:
    """Human name of a model key, e.g. "new_llm" → "New-LLM"."""
    return MODEL_LABELS.get(name, name)


def ordered_models(names: Iterable[str]) -> list[str]:
    """Known models in their fixed order (New-LLM first), then the rest as given."""
    names = list(names)
    return [n for n in MODEL_LABELS if n in names] + [n for n in names if n not in MODEL_LABELS]


def model_color(name: str, index: int) -> str:
    """Fixed colour for known models, a palette colour by position for others."""
    return MODEL_COLORS.get(name, _EXTRA_COLORS[index % len(_EXTRA_COLORS)])


def three_significant(x: float) -> str:
    """A number to three significant figures without scientific notation: 0.800, 12.3, 1,234."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    return f"{x:,.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to path via a temporary file and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target so os.replace is a rename, never a cross-device copy:
    # readers see the old file or the new one, never half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode open() would, so others can read the report.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Render a figure to PNG bytes and write them atomically."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=_DPI)
    return write_atomic(path, buf.getvalue())


def _value(record: Mapping[str, Any], key: str) -> float:
    """A history value as float; NaN for missing, null or non-finite (a gap in the line)."""
    v = record.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return math.nan
    return float(v)


def _epochs(history: Sequence[Mapping[str, Any]]) -> list[int]:
    """Epoch numbers, falling back to 1-based position when a record has none."""
    return [int(r.get("epoch", i + 1)) for i, r in enumerate(history)]


def best_epoch(history: Sequence[Mapping[str, Any]]) -> int | None:
    """Epoch with the lowest val_loss (earliest on ties), or None if none is logged."""
    best, best_loss = None, math.inf
    for epoch, record in zip(_epochs(history), history):
        loss = _value(record, "val_loss")
        # Strict < keeps the earliest of equal losses, as early stopping does.
        if loss < best_loss:
            best, best_loss = epoch, loss
    return best


def _use_log_y(ax, values: Sequence[float]) -> None:
    """Log y with plain-number tick labels, if any value can be drawn on a log axis."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    if not positive:
        return
    ax.set_yscale("log")
    if max(positive) / min(positive) < 30:
        # Perplexities often span less than a decade and a half: a log axis then has one or two labelled
        # ticks at most, so put ~8 plain-number ticks ("150", "200", "250") where the lines are.
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8))
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _style(ax, xlabel: str, ylabel: str) -> None:
    """Shared axis styling: integer epochs, light grid, legend if anything is labelled."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False)


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """Loss (left) and log-perplexity (right) per epoch, best validation epoch marked."""
    if not history:
        raise ValueError(f"cannot plot training curves for {title!r}: the history has no epochs")
    epochs = _epochs(history)
    best = best_epoch(history)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_ppl = fig.subplots(1, 2)
    panels = ((ax_loss, "loss", "loss (nats/token)"), (ax_ppl, "ppl", "perplexity (per token)"))
    for ax, suffix, ylabel in panels:
        train = [_value(r, f"train_{suffix}") for r in history]
        val = [_value(r, f"val_{suffix}") for r in history]
        # Markers, so a single epoch or an epoch isolated by nulls is still visible.
        ax.plot(epochs, train, "o--", color="#0072B2", markersize=3, label="train")
        ax.plot(epochs, val, "o-", color="#D55E00", markersize=3, label="validation")
        if best is not None:
            best_val = val[epochs.index(best)]
            ax.axvline(best, color="0.5", linestyle=":", linewidth=1)
            ax.plot([best], [best_val], "*", color="black", markersize=12, zorder=3,
                    label=f"best val: epoch {best} ({best_val:,.{3 if suffix == 'loss' else 1}f})")
        if suffix == "ppl":
            _use_log_y(ax, train + val)
        _style(ax, "epoch", ylabel)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_comparison(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    title: str,
    metric: str = "val_ppl",
) -> Path:
    """One line per model of a history metric against epoch (log y for perplexities)."""
    present = {name: histories[name] for name in ordered_models(histories) if histories[name]}
    if not present:
        raise ValueError(f"cannot plot {title!r}: no model has a non-empty history")
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    drawn: list[float] = []
    for i, (name, history) in enumerate(present.items()):
        values = [_value(r, metric) for r in history]
        drawn += values
        finite = [v for v in values if math.isfinite(v)]
        best = f" (best {min(finite):,.{3 if 'loss' in metric else 1}f})" if finite else " (no values)"
        ax.plot(_epochs(history), values, "o-", markersize=3, color=model_color(name, i),
                label=model_label(name) + best)
    # Losses are already logarithmic; only perplexities need a log axis.
    if metric.endswith("ppl"):
        _use_log_y(ax, drawn)
    _style(ax, "epoch", METRIC_LABELS.get(metric, metric))
    ax.set_title(title)
    return save_figure(fig, path)


def _speed_setup(speed: Mapping[str, Any]) -> str:
    """One line describing how a model was timed, leaving out unknown settings."""
    parts = []
    if speed.get("batch_size") is not None or speed.get("seq_len") is not None:
        parts.append(f"batch {speed.get('batch_size', '?')} × seq {speed.get('seq_len', '?')}")
    if speed.get("generated_tokens") is not None:
        parts.append(f"{speed['generated_tokens']} generated tokens")
    device = " ".join(str(speed[k]) for k in ("device", "dtype") if speed.get(k) is not None)
    if device:
        parts.append(device)
    return ", ".join(parts)


def plot_speed(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Bars of ms_per_batch and ms_per_token for each model with a speed section."""
    models = results.get("models") or {}
    speeds = {
        name: m["speed"]
        for name, m in models.items()
        if isinstance(m, Mapping) and isinstance(m.get("speed"), Mapping)
    }
    if not speeds:
        raise ValueError("cannot plot speed: no model in the results has a 'speed' section")
    names = ordered_models(speeds)
    colors = [model_color(n, i) for i, n in enumerate(names)]
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    panels = (
        ("ms_per_batch", "time per batch (ms)"),
        ("ms_per_token", "time per token (ms)"),
    )
    for ax, (key, ylabel) in zip(fig.subplots(1, 2), panels):
        values = [_value(speeds[n], key) for n in names]
        bars = ax.bar([model_label(n) for n in names], [0 if math.isnan(v) else v for v in values],
                      color=colors)
        labels = ["—" if math.isnan(v) else three_significant(v) for v in values]
        ax.bar_label(bars, labels=labels, padding=2)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.15)  # headroom for the value labels
    setups = {_speed_setup(s) for s in speeds.values()}
    if len(setups) == 1:
        setup = next(iter(setups))
    else:
        # Different setups make the bars incomparable; say so rather than hide it.
        setup = "models timed with different settings; see the report table"
    fig.suptitle("Speed (lower is faster)" + (f"\n{setup}" if setup else ""))
    return save_figure(fig, path)


def plot_seed_curves(panels: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, title: str,
                     metric: str = "val_ppl") -> Path:  # fmt: skip
    """Panels side by side (title → curves), one line per run: each curve a dict of "label" (the legend names
    each label once), "model" (its colour), "style" (its line style, by index), "history" (per-epoch records),
    "stopped" (a cross at its last epoch)."""
    panels = {name: curves for name, curves in panels.items() if curves}
    if not panels:
        raise ValueError(f"cannot plot {title!r}: no run has a per-epoch record")
    models = ordered_models(dict.fromkeys(curve["model"] for curves in panels.values() for curve in curves))
    fig = Figure(figsize=(6.5 * len(panels), 5), layout="constrained")
    labelled: set[str] = set()
    for ax, (name, curves) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        drawn: list[float] = []
        for curve in curves:
            epochs, values = _epochs(curve["history"]), [_value(r, metric) for r in curve["history"]]
            drawn += values
            color = model_color(curve["model"], models.index(curve["model"]))
            ax.plot(epochs, values, color=color, linestyle=_LINE_STYLES[curve["style"] % len(_LINE_STYLES)],
                    linewidth=1.2, label=None if curve["label"] in labelled else curve["label"])  # fmt: skip
            labelled.add(curve["label"])
            if curve["stopped"]:
                ax.plot(epochs[-1:], values[-1:], "x", color=color, markersize=7)
        if metric.endswith("ppl"):
            _use_log_y(ax, drawn)
        ax.set_xlabel("epoch")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(name)
    fig.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)  # below: inside it hides lines
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_seed_dots(entries: Sequence[tuple[str, str, Sequence[float]]], path: str | os.PathLike, xlabel: str,
                   title: str, decimals: int = 1) -> Path:  # fmt: skip
    """A line per (label, model, values), the lowest mean at the top: a dot per value (a seed each), a tick at the
    mean with the sample std as its whisker, and the two written beside it to `decimals`. Dots, not bars: the
    axis need not start at 0, so seeds a few tenths apart stay apart."""
    entries = [(label, model, [v for v in values if math.isfinite(v)]) for label, model, values in entries]
    entries = sorted((e for e in entries if e[2]), key=lambda e: -statistics.fmean(e[2]))
    if not entries:
        raise ValueError(f"cannot plot {title!r}: no value to draw")
    models = ordered_models(dict.fromkeys(model for _, model, _ in entries))
    fig = Figure(figsize=(9, 0.45 * len(entries) + 1.6), layout="constrained")
    ax = fig.subplots()
    for y, (_, model, values) in enumerate(entries):
        color = model_color(model, models.index(model))
        mean = statistics.fmean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        ax.errorbar(mean, y, xerr=spread, fmt="|", markersize=14, color=color, capsize=3, linewidth=1.2)
        ax.plot(values, [y] * len(values), "o", color=color, markersize=5, alpha=0.8)
        text = f"{mean:,.{decimals}f}" + (f" ± {spread:,.{decimals}f}" if len(values) > 1 else "")
        ax.annotate(text, (mean + spread, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize="small")
    ax.set_yticks(range(len(entries)), [f"{label} (n={len(values)})" for label, _, values in entries], fontsize="small")
    ax.set_ylim(-0.6, len(entries) - 0.4)
    left, right = ax.get_xlim()
    ax.set_xlim(left, right + 0.25 * (right - left))  # room for the written mean ± std
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title)
    return save_figure(fig, path)
