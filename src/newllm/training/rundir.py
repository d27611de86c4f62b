"""An experiment's output folder: every path and marker file in it has its name here, and only here.

    tokenizer.json                                  one tokenizer for every step and model
    experiment.json                                 the resolved config of the last step run
    best_<model>_<stage>/                           Hugging Face model folders (+ tokenizer.json, newllm.json)
    <model>_<stage>/                                Trainer run folders: checkpoint-*/ (resume), history.json/.csv,
                                                    complete.json once the stage's best checkpoint is saved
    <model>_<stage>_training_curves.png
    results.json, report.md                         step 3

Stages are "wikitext" (step 1) and "dialog" (step 2).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from newllm.training.loop import has_complete_checkpoint

STAGES = {"wikitext": "WikiText-2", "dialog": "DailyDialog"}


class StageState(Enum):
    """Where one model's stage stands in a folder, as `--resume` sees it."""

    DONE = "done"  # ended by its schedule (or early stopping), best checkpoint saved: nothing to do
    RESUMABLE = "resumable"  # a complete Trainer checkpoint to continue from (also after a time limit stopped it)
    FRESH = "fresh"  # nothing a resume could start from: train it from the start


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))  # a str is welcome too

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def experiment(self) -> Path:
        return self.root / "experiment.json"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def checkpoint(self, model: str, stage: str) -> Path:
        """The stage's best model, a Hugging Face folder."""
        return self.root / f"best_{model}_{stage}"

    def stage(self, model: str, stage: str) -> Path:
        """The Trainer's folder of the stage: checkpoints to resume from, the history."""
        return self.root / f"{model}_{stage}"

    def history(self, model: str, stage: str) -> Path:
        return self.stage(model, stage) / "history.json"

    def complete(self, model: str, stage: str) -> Path:
        """Written once the stage's best checkpoint is saved; holds the stage's metadata."""
        return self.stage(model, stage) / "complete.json"

    def curves(self, model: str, stage: str) -> Path:
        return self.root / f"{model}_{stage}_training_curves.png"

    def has_run(self, model: str, stage: str) -> bool:
        return any(self.stage(model, stage).glob("checkpoint-*"))

    def state(self, model: str, stage: str) -> StageState:
        marker = self.complete(model, stage)
        if marker.is_file() and "stopped" not in json.loads(marker.read_text(encoding="utf-8")):
            return StageState.DONE
        return StageState.RESUMABLE if has_complete_checkpoint(self.stage(model, stage)) else StageState.FRESH

    def read_experiment(self) -> dict | None:
        """The config the folder's last step ran with (experiment.json's "config"); None if there is none."""
        try:
            return json.loads(self.experiment.read_text(encoding="utf-8"))["config"]
        except FileNotFoundError:
            return None

    def last_step(self) -> str | None:
        """The step experiment.json was written by ("pretrain" or "finetune"); None without one."""
        try:
            return json.loads(self.experiment.read_text(encoding="utf-8")).get("step")
        except FileNotFoundError:
            return None

    def remove_runs(self, models) -> list[str]:
        """Every artefact of the runs of `models` and the folder's step-level files; the names removed."""
        removed = []
        for model in models:
            for stage in STAGES:
                for folder in (self.stage(model, stage), self.checkpoint(model, stage)):
                    if folder.is_dir():
                        shutil.rmtree(folder)
                        removed.append(folder.name)
                self.curves(model, stage).unlink(missing_ok=True)
        for file in (self.results, self.report, self.experiment, self.tokenizer):
            if file.is_file():
                file.unlink()
                removed.append(file.name)
        return removed
