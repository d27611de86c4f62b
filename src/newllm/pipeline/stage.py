"""One model's training stage, the same for step 1 and step 2: train under --resume / --overwrite, then save
the best model, its metadata, the completion marker and the curves."""

from __future__ import annotations

import functools
import logging

from newllm.config import ExperimentConfig, TrainConfig
from newllm.data.batching import collate
from newllm.data.tokenizer import special_ids
from newllm.models import count_parameters, usable_positions
from newllm.pipeline.setup import Runtime
from newllm.reporting.plots import plot_training_curves
from newllm.training.checkpoint import save_checkpoint, write_json_atomic
from newllm.training.distributed import barrier, is_main_process
from newllm.training.loop import RunExistsError, train
from newllm.training.rundir import STAGES, RunDir, StageState

logger = logging.getLogger("newllm")


def refuse_existing_runs(config: ExperimentConfig, stage: str, resume: bool, overwrite: bool) -> None:
    """RunExistsError before any training when a model's run folder already holds a run."""
    if resume or overwrite:
        return
    folder = RunDir(config.output_dir)
    for name in config.model.names:
        if folder.has_run(name, stage):
            raise RunExistsError(
                f"{folder.stage(name, stage)} already holds a run: pass --resume to continue it or --overwrite to start again"
            )


# With group_by_length every batch is padded up to a multiple of this, at most to the window: DailyDialog's
# grouped batches then come in 10 shapes instead of about 180, and the CUDA-graphed scan captures one graph
# per shape (docs/performance.md). It costs 10 % more steps than padding to the longest alone.
LENGTH_BUCKET = 32


def stage_collator(train_config: TrainConfig, pad_id: int, train_dataset):
    """The batches' collate function: right padding, in LENGTH_BUCKET steps when batches are grouped by length."""
    if not train_config.group_by_length:
        return functools.partial(collate, pad_id=pad_id)
    window = getattr(train_dataset, "block_size", None)
    return functools.partial(collate, pad_id=pad_id, pad_to_multiple_of=LENGTH_BUCKET,
                             max_length=None if window is None else window + 1)  # fmt: skip


def run_stage(
    config: ExperimentConfig,
    name: str,
    stage: str,
    *,
    model,
    train_dataset,
    eval_dataset,
    train_config: TrainConfig,
    tokenizer,
    runtime: Runtime,
    resume: bool,
    overwrite: bool,
    progress: bool,
    parent=None,
) -> None:
    """Train `model` on one stage and save its best checkpoint; a stage `--resume` finds done is skipped.

    Resuming continues from the stage's latest complete checkpoint (also when a time limit stopped it);
    a stage that never saved one starts again, its half-written folder cleared."""
    folder = RunDir(config.output_dir)
    pad_id = special_ids(tokenizer).pad
    state = folder.state(name, stage) if resume else StageState.FRESH
    if state is StageState.DONE:
        logger.info("%s/%s: finished earlier (%s); skipped", name, stage, folder.complete(name, stage))
        return
    if is_main_process():
        folder.complete(name, stage).unlink(missing_ok=True)
    result = train(
        model=model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        collator=stage_collator(train_config, pad_id, train_dataset),
        config=train_config,
        run_dir=folder.stage(name, stage),
        device=runtime.device,
        bf16=runtime.bf16,
        progress=progress,
        resume=state is StageState.RESUMABLE,
        overwrite=overwrite or (resume and state is StageState.FRESH),  # only a half-written folder to clear
    )
    _save_best(config, folder, name, stage, result, tokenizer, train_config.epochs, parent)


def _save_best(config, folder: RunDir, name, stage, result, tokenizer, planned_epochs, parent) -> None:
    metadata = {
        "model": name,
        "stage": stage,
        "preset": config.preset,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.seconds, 1),
        "parameters": count_parameters(result.model),
    }
    if parent is not None:
        metadata["initialised_from"] = str(parent)
    if result.stopped_by_time_limit:  # the best model of a shortened schedule, not of the whole one
        metadata["stopped"] = "time_limit"
        logger.warning("%s/%s: its time limit stopped it after epoch %d of %d", name, stage, result.epochs_run, planned_epochs)
    path = folder.checkpoint(name, stage)
    if usable_positions(result.model) is not None:
        # position embeddings past the training windows never get a gradient: generation, chat and the
        # sliding-window evaluation stop at the longest window any stage trained on (usable_positions)
        window = config.data.block_size if stage == "wikitext" else config.data.dialog_block_size
        result.model.config.trained_positions = max(window, getattr(result.model.config, "trained_positions", 0) or 0)
    if is_main_process():  # every rank holds the same best model (DDP); one writes it
        save_checkpoint(result.model, tokenizer, path, metadata)
        write_json_atomic(folder.complete(name, stage), metadata | {"checkpoint": path.name})
        if result.history:
            plot_training_curves(result.history, folder.curves(name, stage), f"{name} on {STAGES[stage]} ({config.preset})")
    barrier()  # step 2 on every rank loads this checkpoint
    logger.info("%s/%s: best epoch %s of %s -> %s", name, stage, result.best_epoch, result.epochs_run, path)
