"""Plots and a Markdown report of a run, read from results JSON (no torch)."""

from newllm.reporting.plots import best_epoch, plot_comparison, plot_speed, plot_training_curves
from newllm.reporting.report import load_history, load_results, render_report, write_report

__all__ = [
    "best_epoch",
    "load_history",
    "load_results",
    "plot_comparison",
    "plot_speed",
    "plot_training_curves",
    "render_report",
    "write_report",
]
