"""recall.json → table and figure: seeds averaged per model × width × setting, one panel per setting."""

import json

from newllm.reporting.recall_plot import (
    format_recall_table,
    plot_recall,
    summarize,
    write_recall_outputs,
)


def _run(model, width, seq_len, pairs, seed, accuracy, state):
    return {"model": model, "width": width, "seq_len": seq_len, "pairs": pairs, "seed": seed, "accuracy": accuracy,
            "steps": 100 + seed, "parameters": 1000 * width, "state_bytes": state, "chance": 0.25}  # fmt: skip


RESULTS = {
    "labels": {"lstm": "LSTM", "tinygpt2": "TinyGPT2"},
    "seeds": [0, 1],
    "runs": [
        _run("tinygpt2", 32, 64, 4, 0, 1.0, 32768), _run("tinygpt2", 32, 64, 4, 1, 0.5, 32768),
        _run("lstm", 64, 64, 4, 0, 0.2, 1024), _run("lstm", 32, 64, 4, 0, 0.1, 512),
        _run("lstm", 32, 32, 2, 0, 0.3, 512),
    ],
}  # fmt: skip


def test_seeds_are_averaged_and_rows_ordered_by_setting_model_width():
    rows = summarize(RESULTS)
    keys = [(r["seq_len"], r["pairs"], r["model"], r["width"]) for r in rows]
    assert keys == [(32, 2, "lstm", 32), (64, 4, "lstm", 32), (64, 4, "lstm", 64), (64, 4, "tinygpt2", 32)]
    gpt2 = rows[-1]
    assert (gpt2["accuracy"], gpt2["accuracy_min"], gpt2["accuracy_max"], gpt2["seeds"]) == (0.75, 0.5, 1.0, 2)
    assert gpt2["steps"] == 100.5


def test_table_names_models_by_label_with_state_in_binary_units():
    table = format_recall_table(RESULTS)
    assert "| 64 | 4 | TinyGPT2 | 32 | 32,000 | 32 KiB | 0.750 | 100 |" in table
    assert "accuracy (mean of 2 seeds)" in table and "0.250" in table


def test_outputs_are_strict_json_and_a_png(tmp_path):
    paths = write_recall_outputs(RESULTS, tmp_path)
    assert [p.name for p in paths] == ["recall.json", "recall.png"]
    assert json.loads(paths[0].read_text()) == RESULTS
    assert paths[1].read_bytes()[:4] == b"\x89PNG"
    assert plot_recall(RESULTS, tmp_path / "again.png").stat().st_size > 1000
