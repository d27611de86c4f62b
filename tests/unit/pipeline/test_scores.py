"""Step 3's training record in results.json: what each stage's checkpoint and history say, nothing read later."""

import dataclasses
import json
import math

from newllm.config import load_config
from newllm.pipeline.scores import stage_summary
from newllm.reporting.report import load_results
from newllm.training.rundir import RunDir


def _stage(folder: RunDir, meta: dict | None, history: list | str | None):
    """A stage as run_stage leaves it: the best checkpoint's newllm.json and the Trainer folder's history.json."""
    if meta is not None:
        folder.checkpoint("lstm", "wikitext").mkdir(parents=True)
        (folder.checkpoint("lstm", "wikitext") / "newllm.json").write_text(json.dumps(meta))
    if history is not None:
        folder.stage("lstm", "wikitext").mkdir(parents=True)
        text = history if isinstance(history, str) else json.dumps(history)
        folder.history("lstm", "wikitext").write_text(text)


def _history(*val_ppls):
    return [{"epoch": i + 1, "train_loss": 5.0, "val_loss": math.log(v), "train_ppl": 2 * v, "val_ppl": v, "lr": 1e-3,
             "seconds": 3.0} for i, v in enumerate(val_ppls)]  # fmt: skip


def test_a_stage_keeps_its_best_validation_and_every_epoch(tmp_path):
    config = dataclasses.replace(load_config("quick"), output_dir=str(tmp_path))
    meta = {"best_epoch": 2, "epochs_run": 3, "train_seconds": 9.0, "stopped": "time_limit"}
    _stage(RunDir(tmp_path), meta, _history(90.0, 50.0, 60.0))
    summary = stage_summary(config, "lstm", "wikitext")
    assert summary["history"] == "lstm_wikitext/history.json"
    assert (summary["best_epoch"], summary["epochs_run"], summary["stopped"]) == (2, 3, "time_limit")
    assert summary["best_val_ppl"] == 50.0
    assert summary["per_epoch"][0] == {"epoch": 1, "train_ppl": 180.0, "val_ppl": 90.0, "seconds": 3.0}
    assert len(summary["per_epoch"]) == 3
    # a results.json holding it loads as schema 2, and so does one without it
    for entry in (summary, {k: v for k, v in summary.items() if k not in ("best_val_ppl", "per_epoch")}):
        (tmp_path / "results.json").write_text(json.dumps({"schema": 2, "models": {"lstm": {"wikitext": entry}}}))
        assert load_results(tmp_path / "results.json")["models"]["lstm"]["wikitext"] == entry


def test_a_checkpoint_without_its_history_or_with_a_broken_one_is_still_scored(tmp_path, caplog):
    config = dataclasses.replace(load_config("quick"), output_dir=str(tmp_path))
    _stage(RunDir(tmp_path), {"best_epoch": 1, "epochs_run": 1}, None)  # copied here without its Trainer folder
    summary = stage_summary(config, "lstm", "wikitext")
    assert summary["best_epoch"] == 1 and "per_epoch" not in summary and "best_val_ppl" not in summary
    _stage(RunDir(tmp_path), None, "{not json")
    assert "per_epoch" not in stage_summary(config, "lstm", "wikitext")
    assert "per-epoch record is left out" in caplog.text
