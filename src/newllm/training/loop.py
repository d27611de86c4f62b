"""Training on the Hugging Face Trainer: one call per model and stage.

The Trainer brings AdamW, warm-up + decay, clipping, bf16, gradient accumulation, multi-GPU and
resume; this module only chooses its settings, stops on a non-finite loss, and turns its log into a
per-epoch history (history.json / history.csv in the run folder, rewritten after every epoch).
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset
from transformers import EarlyStoppingCallback, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from newllm.config import TrainConfig
from newllm.training.checkpoint import write_json_atomic

HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "train_ppl", "val_ppl", "lr", "seconds")


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class RunExistsError(FileExistsError):
    """The run folder already holds checkpoints and neither resume nor overwrite was asked for."""


@dataclass(frozen=True)
class TrainResult:
    model: PreTrainedModel  # the best model by validation loss
    history: list[dict]
    best_epoch: int | None
    epochs_run: int
    seconds: float


def _ppl(loss):
    return None if loss is None else math.exp(min(loss, 50.0))  # exp(50) already says "diverged"


def history_from_log(log_history: list[dict], seconds_per_epoch: dict[int, float] | None = None) -> list[dict]:
    """One row per evaluated epoch from `trainer.state.log_history`."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        epoch = int(round(entry["epoch"]))
        row = rows.setdefault(epoch, dict.fromkeys(HISTORY_FIELDS) | {"epoch": epoch})
        if "loss" in entry:
            row["train_loss"] = entry["loss"]
            row["train_ppl"] = _ppl(entry["loss"])
            row["lr"] = entry.get("learning_rate")
        if "eval_loss" in entry:
            row["val_loss"] = entry["eval_loss"]
            row["val_ppl"] = _ppl(entry["eval_loss"])
    for epoch, seconds in (seconds_per_epoch or {}).items():
        if epoch in rows:
            rows[epoch]["seconds"] = seconds
    return [rows[e] for e in sorted(rows) if rows[e]["val_loss"] is not None]


def write_history(history: list[dict], run_dir: Path) -> None:
    write_json_atomic(run_dir / "history.json", history)
    tmp = run_dir / ".history.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(run_dir / "history.csv")


class HistoryCallback(TrainerCallback):
    """Times epochs, writes the history after each evaluation, and stops on a non-finite loss."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.seconds: dict[int, float] = {}
        self._epoch_start = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._epoch_start is not None:
            self.seconds[int(round(state.epoch))] = time.perf_counter() - self._epoch_start

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingDivergedError(
                f"training loss became {loss} at epoch {state.epoch:.2f} (step {state.global_step}); "
                "lower the learning rate; the best checkpoint so far is untouched"
            )

    def on_evaluate(self, args, state, control, **kwargs):
        write_history(history_from_log(state.log_history, self.seconds), self.run_dir)


def _has_checkpoints(run_dir: Path) -> bool:
    return any(run_dir.glob("checkpoint-*"))


def train(
    model: PreTrainedModel,
    train_dataset: Dataset,
    eval_dataset: Dataset,
    collator,
    config: TrainConfig,
    run_dir,
    *,
    device: str = "cpu",
    bf16: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train with early stopping on validation loss; returns the best model and the per-epoch history."""
    run_dir = Path(run_dir)
    if _has_checkpoints(run_dir) and not resume:
        if not overwrite:
            raise RunExistsError(
                f"{run_dir} already holds a run: pass --resume to continue it or --overwrite to start again"
            )
        for old in run_dir.glob("checkpoint-*"):
            shutil.rmtree(old)
    if resume and not _has_checkpoints(run_dir):
        raise FileNotFoundError(f"nothing to resume in {run_dir}: it holds no checkpoint-* folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup,
        lr_scheduler_type=config.scheduler,
        max_grad_norm=config.grad_clip,
        seed=config.seed,
        bf16=bf16,
        use_cpu=device == "cpu",
        torch_compile=config.compile,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        logging_nan_inf_filter=False,  # a NaN must reach HistoryCallback, not be averaged away
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_total_limit=2,  # the best and the latest: enough to resume and to restore the best
        prediction_loss_only=True,  # evaluation needs the loss only, not (B, T, V) logits
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=not progress,
    )
    history_callback = HistoryCallback(run_dir)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        callbacks=[history_callback, EarlyStoppingCallback(early_stopping_patience=config.patience)],
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - start
    history = history_from_log(trainer.state.log_history, history_callback.seconds)
    write_history(history, run_dir)
    best = min(history, key=lambda row: row["val_loss"]) if history else None
    return TrainResult(
        model=trainer.model,
        history=history,
        best_epoch=best["epoch"] if best else None,
        epochs_run=len(history),
        seconds=seconds,
    )
