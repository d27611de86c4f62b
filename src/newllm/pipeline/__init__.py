"""The experiment: step 1 pre-train on WikiText-2, step 2 fine-tune on DailyDialog, step 3 evaluate.

Each step reads its settings from an `ExperimentConfig` and writes into one output folder, whose layout
`RunDir` (training/rundir.py) owns. What the steps share lives beside this file: setup.py (device and
precision, data, the tokenizer, the models' configs, experiment.json and the resume check), stage.py
(one model's training stage, the same for both training steps) and scores.py (step 3's numbers).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time

import torch
from transformers import set_seed

from newllm.config import ExperimentConfig
from newllm.data.batching import StreamLanes, StreamWindows
from newllm.data.tokenizer import special_ids
from newllm.data.wikitext import encode_text
from newllm.evaluation.diversity import measure_diversity
from newllm.evaluation.generation import respond_batch, sample_responses
from newllm.evaluation.speed import measure_speed
from newllm.models import (
    DROPOUT_FIELDS,
    build_model,
    carries_state,
    count_parameters,
    parameter_count,
)
from newllm.pipeline.scores import (
    architecture,
    check_evaluable,
    dialog_sets,
    evaluate_dialog,
    evaluate_wikitext,
    load_test_data,
    results_header,
    stage_summary,
)
from newllm.pipeline.setup import (
    RESUME_CHECKED,
    RESUME_SAFE,
    check_batches_fit,
    check_resume_settings,
    command_line,
    device_from_name,
    load_dialog_splits,
    load_wikitext_splits,
    model_configs,
    plan_tokenizer,
    prepare_tokenizer,
    runtime,
    warn_if_training_full_on_cpu,
    write_experiment,
)
from newllm.pipeline.stage import refuse_existing_runs, run_stage
from newllm.reporting.report import write_report
from newllm.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    write_json_atomic,
)
from newllm.training.distributed import is_main_process
from newllm.training.lock import folder_lock
from newllm.training.rundir import STAGES, RunDir

__all__ = [
    "RESUME_CHECKED", "RESUME_SAFE", "STAGES", "device_from_name", "evaluate", "finetune",
    "load_dialog_splits", "load_wikitext_splits", "model_configs", "prepare_tokenizer", "pretrain", "run_pipeline",
]  # fmt: skip

logger = logging.getLogger("newllm")


def _one_writer(step):
    """Run `step` holding the output folder's lock (training/lock.py); under torchrun rank 0 holds it."""

    @functools.wraps(step)
    def locked(config: ExperimentConfig, *args, **kwargs):
        if not is_main_process():
            return step(config, *args, **kwargs)
        with folder_lock(config.output_dir, command_line()):
            return step(config, *args, **kwargs)

    return locked


@_one_writer
def pretrain(config: ExperimentConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> None:
    """Step 1: train every model of `config.model.names` on WikiText-2 from scratch."""
    run = runtime(config)
    warn_if_training_full_on_cpu(config, run.device)
    # Every input is checked before anything is written: the data, then every model's run folder.
    splits = load_wikitext_splits(config)
    refuse_existing_runs(config, "wikitext", resume, overwrite)
    if resume:
        check_resume_settings(config, "pretrain")
    tokenizer, write_tokenizer = plan_tokenizer(config, splits["train"], overwrite=overwrite)
    streams = {name: encode_text(tokenizer, split) for name, split in splits.items()}
    sources = {name: split.source for name, split in splits.items()}  # named if too short for one window
    train_set = StreamWindows(streams["train"], config.data.block_size, drop_last=True, source=sources["train"])
    check_batches_fit(train_set, config.pretrain, "pretrain", sources["train"])
    lanes_set = None
    if config.pretrain.stateful:  # truncated BPTT: one lane of the stream per batch row, read in order
        rotation = config.pretrain.seed if config.pretrain.stateful_rotate else None
        lanes_set = StreamLanes(
            streams["train"], config.data.block_size, config.pretrain.batch_size, rotation, source=sources["train"]
        )
    valid_set = StreamWindows(streams["valid"], config.data.block_size, drop_last=False, source=sources["valid"])
    # once the data is known to fit: a refused step leaves the folder as it was, its tokenizer and record included
    RunDir(config.output_dir).root.mkdir(parents=True, exist_ok=True)
    write_tokenizer()
    write_experiment(config, "pretrain")
    # a stream's first token (end-of-text) is read, never predicted: these are the scored tokens
    logger.info("WikiText-2 (%s): %d train tokens, %d valid tokens", config.data.wikitext,
                len(streams["train"]) - 1, len(streams["valid"]) - 1)  # fmt: skip
    configs = model_configs(config, tokenizer)
    for name in config.model.names:
        logger.info("%-9s %s parameters", name, f"{parameter_count(name, configs[name]):,}")
    for name in config.model.names:
        set_seed(config.pretrain.seed)
        model = build_model(name, configs[name])
        logger.info("step 1: %s on WikiText-2 (%s parameters, %s)", name, f"{count_parameters(model):,}", run.device)
        train_config, windows = config.pretrain, train_set
        if lanes_set is not None:
            if carries_state(model):
                windows = lanes_set
            else:  # a transformer has no state to carry: it keeps shuffled windows
                logger.info("%s: stateful training is for the recurrent models; shuffled windows instead", name)
                train_config = dataclasses.replace(train_config, stateful=False)
        run_stage(config, name, "wikitext", model=model, train_dataset=windows, eval_dataset=valid_set,
                  train_config=train_config, tokenizer=tokenizer, runtime=run,
                  resume=resume, overwrite=overwrite, progress=progress)  # fmt: skip


# Config fields that are no part of the architecture: how transformers saved the model, and what step 3 reads
UNCOMPARED_FIELDS = {"use_cache", "dtype", "torch_dtype", "_name_or_path", "architectures", "transformers_version",
                     "trained_positions"}  # fmt: skip


def check_same_architecture(loaded, config, name: str, where) -> None:
    """A CheckpointError unless the config of the checkpoint `loaded` from `where` has the architecture this
    experiment's config gives `name`: every field both hold, but the dropout rates (step 2 may change them) and
    UNCOMPARED_FIELDS. Both as config.json spells them (lists, infinities)."""
    saved, wanted = (json.loads(c.to_json_string(use_diff=False)) for c in (loaded, config))
    compared = {k for k in wanted.keys() & saved.keys() - UNCOMPARED_FIELDS - set(DROPOUT_FIELDS[name])
                if "dropout" not in k and "pdrop" not in k}  # fmt: skip
    differ = sorted(k for k in compared if wanted[k] != saved[k])
    if differ:
        shown = ", ".join(f"{k} = {saved[k]!r} there, {wanted[k]!r} here" for k in differ[:3])
        raise CheckpointError(
            f"{where} is not the {name} this config builds ({shown}{', ...' if len(differ) > 3 else ''}): "
            "fine-tune with the preset and settings step 1 ran with, or run `newllm pretrain --overwrite` first"
        )


@_one_writer
def finetune(config: ExperimentConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> None:
    """Step 2: continue each step-1 checkpoint on DailyDialog with the same tokenizer."""
    if config.finetune.stateful:
        raise ValueError("finetune.stateful: dialogues are independent, so there is no stream to carry a state along")
    run = runtime(config)
    warn_if_training_full_on_cpu(config, run.device)
    tokenizer = prepare_tokenizer(config)
    # Check every starting point before training anything: never train from scratch by accident, nor from a model
    # of another config or one a step 1 now under way is replacing.
    folder = RunDir(config.output_dir)
    parents = {name: folder.checkpoint(name, "wikitext") for name in config.model.names}
    expected = model_configs(config, tokenizer)
    models = {}
    for name, parent in parents.items():
        if not parent.exists():
            raise CheckpointError(
                f"fine-tuning {name} starts from its step-1 checkpoint {parent}, which does not exist: "
                "run `newllm pretrain` (or scripts/train_wikitext.py) with the same preset and output dir first"
            )
        if folder.stage(name, "wikitext").is_dir() and not folder.complete(name, "wikitext").is_file():
            raise CheckpointError(
                f"step 1 of {name} has not finished in {folder.stage(name, 'wikitext')} (no complete.json), so "
                f"{parent} may be an earlier run's: finish it with `newllm pretrain --resume` first"
            )
        dropout = config.finetune.dropout
        changes = {} if dropout is None else {field: dropout for field in DROPOUT_FIELDS[name]}
        models[name], _ = load_checkpoint(parent, name, expected_tokenizer=tokenizer, **changes)
    sets, splits = dialog_sets(config, tokenizer)
    check_batches_fit(sets["train"], config.finetune, "finetune", splits["train"].source)
    for name, parent in parents.items():
        check_same_architecture(models[name].config, expected[name], name, parent)
    refuse_existing_runs(config, "dialog", resume, overwrite)
    if resume:
        check_resume_settings(config, "finetune")
    write_experiment(config, "finetune")
    for name, model in models.items():
        set_seed(config.finetune.seed)
        logger.info("step 2: %s on DailyDialog from %s", name, parents[name])
        run_stage(config, name, "dialog", model=model, train_dataset=sets["train"], eval_dataset=sets["validation"],
                  train_config=config.finetune, tokenizer=tokenizer, runtime=run,
                  resume=resume, overwrite=overwrite, progress=progress, parent=parents[name])  # fmt: skip


@_one_writer
def evaluate(config: ExperimentConfig, progress: bool = True) -> dict:
    """Step 3: test perplexities, replies and speed for every model; writes results.json and report.md."""
    if not is_main_process():  # under torchrun: one process evaluates, the others stop here (docs/distributed.md)
        logger.info("step 3 runs on rank 0 only")
        return {}
    run = runtime(config)
    device, dtype = run.device, run.dtype
    folder = RunDir(config.output_dir)
    tokenizer = prepare_tokenizer(config)
    check_evaluable(config, tokenizer)
    pad = special_ids(tokenizer).pad
    data = load_test_data(config, tokenizer)
    contexts = [dialogue[:-1] for _, dialogue in data.replied]
    results = results_header(config, device, tokenizer, data)
    e = config.eval
    for name in config.model.names:
        entry: dict = {}
        results["models"][name] = entry
        wiki_ckpt, dialog_ckpt = folder.checkpoint(name, "wikitext"), folder.checkpoint(name, "dialog")
        if wiki_ckpt.exists():
            model, _ = load_checkpoint(wiki_ckpt, name, expected_tokenizer=tokenizer, device=device)
            entry["params"] = count_parameters(model)
            entry["architecture"] = architecture(model.config)
            entry["wikitext"] = {
                **stage_summary(config, name, "wikitext"),
                **evaluate_wikitext(model, name, config, data, pad, device, dtype, progress),
            }
            results["data"]["wikitext"]["test_tokens"] = entry["wikitext"]["test"]["tokens"]
        else:
            logger.warning("no step-1 checkpoint %s: WikiText-2 results for %s are left out", wiki_ckpt, name)
        if dialog_ckpt.exists():
            model, _ = load_checkpoint(dialog_ckpt, name, expected_tokenizer=tokenizer, device=device)
            entry.setdefault("params", count_parameters(model))
            entry.setdefault("architecture", architecture(model.config))
            test = evaluate_dialog(model, name, config, data, pad, device, dtype, progress)
            entry["dailydialog"] = {**stage_summary(config, name, "dialog"), "test": test}
            results["data"]["dailydialog"]["test_tokens"] = test["tokens"]
            results["data"]["dailydialog"]["test_response_tokens"] = test["response_tokens"]
        else:  # checked above: the step-1 checkpoint exists
            logger.warning("no step-2 checkpoint %s: dialogue results for %s use the step-1 model", dialog_ckpt, name)
        logger.info("step 3: %s replies to %d DailyDialog test contexts", name, len(contexts))
        replies = respond_batch(
            model, tokenizer, contexts, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, device=device
        )
        entry.setdefault("dailydialog", {})["responses"] = {
            **dataclasses.asdict(measure_diversity(replies)),
            "checkpoint": (dialog_ckpt if dialog_ckpt.exists() else wiki_ckpt).name,  # step 1's when step 2 is missing
        }
        for sample, reply in zip(results["dialog_samples"], replies):
            sample["replies"][name] = reply
        samples = sample_responses(model, tokenizer, list(e.prompts), max_new_tokens=e.max_new_tokens,
                                   temperature=e.temperature, top_k=e.top_k, top_p=e.top_p, device=device)  # fmt: skip
        entry["samples"] = [dataclasses.asdict(sample) for sample in samples]
        logger.info("step 3: %s speed", name)
        speed = measure_speed(model, model.config.vocab_size, batch_size=e.speed_batch_size, seq_len=e.speed_seq_len,
                              new_tokens=e.speed_new_tokens, repeats=e.speed_repeats, device=device,
                              dtype=torch.bfloat16 if run.bf16 else torch.float32)  # fmt: skip
        entry["speed"] = dataclasses.asdict(speed)
        del model
    write_json_atomic(folder.results, results)
    report = write_report(results, folder.root)
    logger.info("wrote %s and %s", folder.results, report)
    return results


@_one_writer
def run_pipeline(config: ExperimentConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Steps 1, 2 and 3 in order."""
    start = time.perf_counter()
    pretrain(config, resume=resume, overwrite=overwrite, progress=progress)
    finetune(config, resume=resume, overwrite=overwrite, progress=progress)
    results = evaluate(config, progress=progress)
    logger.info("pipeline finished in %.0f s", time.perf_counter() - start)
    return results
