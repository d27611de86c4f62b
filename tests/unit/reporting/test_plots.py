"""Tests for reporting.plots: valid PNGs, best-epoch marking, atomic writes."""

import math
import os
import struct

import pytest

from newllm.reporting import plots
from newllm.reporting.plots import best_epoch, plot_comparison, plot_speed, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_history(val_losses, train_losses=None, first_epoch=1):
    """A history.json-shaped list with perplexities consistent with the losses."""
    train_losses = train_losses or [v - 0.1 for v in val_losses]
    return [
        {
            "epoch": first_epoch + i,
            "train_loss": tr,
            "val_loss": va,
            "train_ppl": None if tr is None else math.exp(tr),
            "val_ppl": None if va is None else math.exp(va),
            "lr": 5e-4,
            "seconds": 1.0,
        }
        for i, (tr, va) in enumerate(zip(train_losses, val_losses))
    ]


def assert_png(path, min_bytes=5_000):
    """A complete PNG (signature, IHDR, IEND) of plausible size and dimensions."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 200
    assert data[-8:-4] == b"IEND", "truncated PNG"
    assert len(data) > min_bytes, "a figure with axes and text should not be this small"


def no_temp_files(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture
def captured_figures(monkeypatch):
    """Record each Figure passed to save_figure, while still writing the PNG."""
    figures = []
    real_save = plots.save_figure

    def save(fig, path):
        figures.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save_figure", save)
    return figures


# ---------------------------------------------------------------- best_epoch


def test_best_epoch_is_min_val_loss_epoch():
    assert best_epoch(make_history([5.0, 4.2, 4.0, 4.3, 4.5])) == 3


def test_best_epoch_uses_epoch_field_not_position():
    assert best_epoch(make_history([5.0, 4.0, 4.5], first_epoch=7)) == 8


def test_best_epoch_ties_pick_earliest():
    assert best_epoch(make_history([5.0, 4.0, 4.0, 4.1])) == 2


def test_best_epoch_ignores_missing_values():
    history = make_history([5.0, 4.5, 4.8])
    history[1]["val_loss"] = None
    history.append({"epoch": 4})  # no val_loss key at all
    assert best_epoch(history) == 3


def test_best_epoch_none_when_nothing_logged():
    assert best_epoch([]) is None
    assert best_epoch([{"epoch": 1, "val_loss": None}]) is None


# ---------------------------------------------------------------- training curves


def test_training_curves_png(tmp_path):
    out = plot_training_curves(make_history([5.0, 4.5, 4.2, 4.3]), tmp_path / "sub" / "curves.png", "New-LLM")
    assert out == tmp_path / "sub" / "curves.png"
    assert_png(out)
    assert no_temp_files(out.parent)


def test_training_curves_mark_best_val_epoch(tmp_path, captured_figures):
    history = make_history([5.0, 4.5, 4.2, 4.3, 4.6])
    plot_training_curves(history, tmp_path / "c.png", "t")
    loss_ax, ppl_ax = captured_figures[0].axes
    for ax, key in ((loss_ax, "val_loss"), (ppl_ax, "val_ppl")):
        stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
        assert len(stars) == 1
        assert list(stars[0].get_xdata()) == [3]
        assert stars[0].get_ydata()[0] == pytest.approx(history[2][key])
    assert ppl_ax.get_yscale() == "log"
    assert loss_ax.get_yscale() == "linear"


def test_training_curves_tolerate_null_train_loss(tmp_path):
    history = make_history([5.0, 4.5, 4.2], train_losses=[None, 4.6, 4.1])
    history[0]["train_ppl"] = None
    assert_png(plot_training_curves(history, tmp_path / "c.png", "t"))


def test_training_curves_single_epoch_without_train(tmp_path):
    history = [{"epoch": 1, "train_loss": None, "val_loss": 5.0, "train_ppl": None, "val_ppl": 148.4}]
    assert_png(plot_training_curves(history, tmp_path / "c.png", "t"))


def test_training_curves_reject_empty_history(tmp_path):
    with pytest.raises(ValueError, match="no epochs"):
        plot_training_curves([], tmp_path / "c.png", "New-LLM")
    assert not (tmp_path / "c.png").exists()


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "c.png"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        plot_training_curves(make_history([5.0, 4.0]), target, "t")
    assert target.read_bytes() == b"old"
    assert no_temp_files(tmp_path)


# ---------------------------------------------------------------- comparison and speed


def test_comparison_one_line_per_model(tmp_path, captured_figures):
    histories = {
        "lstm": make_history([5.5, 5.2]),
        "new_llm": make_history([5.0, 4.5, 4.4]),
        "tinygpt2": make_history([4.9, 4.3]),
        "empty": [],
    }
    out = plot_comparison(histories, tmp_path / "cmp.png", "WikiText-2")
    assert_png(out)
    ax = captured_figures[0].axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    # Fixed model order regardless of dict order; empty histories are left out.
    assert [label.split(" (")[0] for label in labels] == ["New-LLM", "TinyGPT2", "LSTM"]
    assert labels[0] == f"New-LLM (best {math.exp(4.4):.1f})"
    assert ax.get_yscale() == "log"


def test_a_log_axis_within_a_decade_has_several_labelled_ticks_among_the_lines(tmp_path, captured_figures):
    # validation perplexities of 117 to 480: a plain log axis labels only 200, 300 and 400
    histories = {"new_llm": make_history([math.log(345), math.log(212)]),
                 "tinygpt2": make_history([math.log(165), math.log(117)]),
                 "lstm": make_history([math.log(480), math.log(381)])}  # fmt: skip
    plot_comparison(histories, tmp_path / "c.png", "t")
    ax = captured_figures[0].axes[0]
    captured_figures[0].canvas.draw()
    low, high = ax.get_ylim()
    labelled = [t for t in ax.yaxis.get_major_ticks() if low <= t.get_loc() <= high and t.label1.get_text()]
    assert len(labelled) >= 5
    assert any(t.get_loc() < 165 for t in labelled)  # TinyGPT2's lines get a tick of their own


def test_comparison_of_losses_is_linear(tmp_path, captured_figures):
    plot_comparison({"new_llm": make_history([5.0, 4.5])}, tmp_path / "cmp.png", "t", metric="val_loss")
    assert captured_figures[0].axes[0].get_yscale() == "linear"


def test_comparison_needs_a_history(tmp_path):
    with pytest.raises(ValueError, match="no model"):
        plot_comparison({"new_llm": []}, tmp_path / "cmp.png", "t")


def test_speed_png_skips_models_without_speed(tmp_path, captured_figures):
    speed = {"batch_size": 32, "seq_len": 64, "generated_tokens": 64, "device": "cpu", "dtype": "float32"}
    results = {
        "models": {
            "new_llm": {"speed": {"ms_per_batch": 12.3, "ms_per_token": 0.8, **speed}},
            "tinygpt2": {"speed": {"ms_per_batch": 10.1, "ms_per_token": None, **speed}},
            "lstm": {"params": 1},
        }
    }
    assert_png(plot_speed(results, tmp_path / "speed.png"))
    batch_ax, token_ax = captured_figures[0].axes
    assert [t.get_text() for t in batch_ax.get_xticklabels()] == ["New-LLM", "TinyGPT2"]
    assert [t.get_text() for t in token_ax.texts] == ["0.800", "—"]


def test_speed_needs_a_speed_section(tmp_path):
    with pytest.raises(ValueError, match="speed"):
        plot_speed({"models": {"new_llm": {"params": 1}}}, tmp_path / "speed.png")
