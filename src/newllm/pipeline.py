"""The experiment: step 1 pre-train on WikiText-2, step 2 fine-tune on DailyDialog, step 3 evaluate.

Every output lands in `config.output_dir` under the prototype's names:

    tokenizer.json                              one tokenizer for every step and model
    experiment.json                             the resolved config of the last step run
    best_<model>_wikitext/, best_<model>_dialog/   Hugging Face model folders (+ tokenizer.json)
    <model>_wikitext/, <model>_dialog/          Trainer run folders: checkpoint-*/ (resume), history.json/.csv,
                                                complete.json once the stage's best checkpoint is saved
    <model>_wikitext_training_curves.png, <model>_dialog_training_curves.png
    results.json, report.md                     step 3
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import set_seed

from newllm.config import ExperimentConfig, ModelConfig
from newllm.data.batching import DialogWindows, StreamLanes, StreamWindows, collate
from newllm.data.dailydialog import DialogSplit, encode_dialogue, load_dailydialog
from newllm.data.tokenizer import (
    describe_tokenizer,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    tokenizer_fingerprint,
    train_tokenizer,
)
from newllm.data.wikitext import TextSplit, encode_text, load_wikitext
from newllm.evaluation.diversity import measure_diversity
from newllm.evaluation.generation import respond_batch, sample_responses
from newllm.evaluation.perplexity import evaluate_perplexity
from newllm.evaluation.speed import environment, measure_speed
from newllm.evaluation.stream import evaluate_stream, plan_stream
from newllm.models import (
    DROPOUT_FIELDS,
    MODEL_NAMES,
    BaselineShape,
    NewLLMConfig,
    build_model,
    carries_state,
    count_parameters,
    matched_configs,
    parameter_count,
    usable_positions,
)
from newllm.reporting.plots import plot_training_curves
from newllm.reporting.report import write_report
from newllm.training.checkpoint import CheckpointError, check_checkpoint, load_checkpoint, save_checkpoint, write_json_atomic
from newllm.training.distributed import barrier, is_main_process
from newllm.training.lock import folder_lock
from newllm.training.loop import RunExistsError, has_complete_checkpoint, train

logger = logging.getLogger("newllm")

STAGES = {"wikitext": "WikiText-2", "dialog": "DailyDialog"}
# Test dialogues whose context, reference and replies results.json and the report show (the first ones: deterministic).
DIALOG_SAMPLES = 10
STAGE_COMPLETE = "complete.json"  # in a run folder: the stage ended and its best checkpoint is saved


def checkpoint_dir(config: ExperimentConfig, model: str, stage: str) -> Path:
    return Path(config.output_dir) / f"best_{model}_{stage}"


def run_dir(config: ExperimentConfig, model: str, stage: str) -> Path:
    return Path(config.output_dir) / f"{model}_{stage}"


def curves_path(config: ExperimentConfig, model: str, stage: str) -> Path:
    return Path(config.output_dir) / f"{model}_{stage}_training_curves.png"


def device_from_name(name: str) -> str:
    """"auto" → cuda if there is one, else cpu; any other name checked here, before any work starts."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but PyTorch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but PyTorch sees {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    return name


def resolve_device(config: ExperimentConfig) -> str:
    return device_from_name(config.device)


def _warn_if_training_full_on_cpu(config: ExperimentConfig, device: str) -> None:
    if device == "cpu" and (config.preset or "").startswith("full"):
        logger.warning("training the %s preset on a CPU takes days (it is sized for a GPU); --preset quick "
                       "runs the whole experiment in minutes", config.preset)  # fmt: skip


def resolve_bf16(config: ExperimentConfig, device: str) -> bool:
    if config.precision == "auto":
        return device.startswith("cuda") and torch.cuda.is_bf16_supported()
    if config.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {config.precision!r}")
    return config.precision == "bf16"


def _sliced(split, n):
    return split if n is None else split.head(n)


def load_wikitext_splits(config: ExperimentConfig, names=("train", "valid")) -> dict[str, TextSplit]:
    data = config.data
    splits = {}
    for name in names:
        split = load_wikitext(name, variant=data.wikitext, data_dir=data.data_dir)
        splits[name] = _sliced(split, data.train_lines if name == "train" else data.eval_lines)
    return splits


def load_dialog_splits(config: ExperimentConfig, names=("train", "validation")) -> dict[str, DialogSplit]:
    data = config.data
    splits = {}
    for name in names:
        split = load_dailydialog(name, data_dir=data.data_dir)
        if split.skipped:
            logger.info("DailyDialog %s: skipped %d malformed lines", name, split.skipped)
        splits[name] = _sliced(split, data.train_dialogues if name == "train" else data.eval_dialogues)
    return splits


def _remove_runs_of_another_tokenizer(config: ExperimentConfig) -> None:
    """Everything in the output folder made with its tokenizer: every model's run folders, checkpoints and
    curves (MODEL_NAMES, not only this command's), the results, the report, the tokenizer itself."""
    out = Path(config.output_dir)
    removed = []
    for name in MODEL_NAMES:
        for stage in STAGES:
            for folder in (run_dir(config, name, stage), checkpoint_dir(config, name, stage)):
                if folder.is_dir():
                    shutil.rmtree(folder)
                    removed.append(folder.name)
            curves_path(config, name, stage).unlink(missing_ok=True)
    for file in ("results.json", "report.md", "experiment.json", "tokenizer.json"):
        if (out / file).is_file():
            (out / file).unlink()
            removed.append(file)
    logger.warning("--overwrite: %s held runs of another tokenizer; removed %s", out, ", ".join(removed))


def prepare_tokenizer(config: ExperimentConfig, train_split: TextSplit | None = None, overwrite: bool = False):
    """The experiment's one tokenizer: loaded from the output folder, or trained on WikiText-2 train once.

    With `overwrite` (step 1 started again) it is trained anew; where it differs from the folder's (another
    corpus, kind or size), every artefact made with the old one is removed: no run is left beside a
    tokenizer it was not trained with."""
    path = Path(config.output_dir) / "tokenizer.json"
    if overwrite and path.is_file() and train_split is not None:
        fresh = train_tokenizer(train_split.lines, kind=config.data.tokenizer, vocab_size=config.data.vocab_size)
        if tokenizer_fingerprint(fresh) == tokenizer_fingerprint(load_tokenizer(path)):
            return fresh
        if is_main_process():
            _remove_runs_of_another_tokenizer(config)
            save_tokenizer(fresh, config.output_dir)
        return fresh
    if path.is_file():
        tokenizer = load_tokenizer(path)
        described = describe_tokenizer(tokenizer)
        if (described["kind"], described["vocab_size"]) != (config.data.tokenizer, config.data.vocab_size):
            raise ValueError(
                f"{path} is a {described['kind']} tokenizer of {described['vocab_size']} entries but the config asks "
                f"for {config.data.tokenizer} with {config.data.vocab_size}: {_recorded_preset_hint(config)}"
                "use another --output-dir (the folder's tokenizer is kept: every checkpoint in it was trained on it)"
            )
        return tokenizer
    if train_split is None:
        raise FileNotFoundError(f"no tokenizer at {path}: run `newllm pretrain` (step 1) first")
    logger.info("training a %s tokenizer (%d entries) on %s", config.data.tokenizer, config.data.vocab_size, train_split.source)
    # under torchrun every rank trains it (deterministic: the same merges everywhere, tested) and rank 0 saves it;
    # no barrier needed, and none is possible yet: the Trainer starts the process group later
    tokenizer = train_tokenizer(train_split.lines, kind=config.data.tokenizer, vocab_size=config.data.vocab_size)
    if is_main_process():
        save_tokenizer(tokenizer, config.output_dir)
    return tokenizer


NEW_LLM_OPTIONS = tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.name in inspect.signature(NewLLMConfig.__init__).parameters
)


def model_configs(config: ExperimentConfig, tokenizer) -> dict:
    """Configs of every model in the experiment, baselines sized to New-LLM's parameter count."""
    ids = special_ids(tokenizer)
    m = config.model
    # Every [model] setting that is a NewLLMConfig argument of the same name passes through as it is
    # (num_layers is num_hidden_layers there): a new option is a field in each, not a third edit here.
    options = {key: getattr(m, key) for key in NEW_LLM_OPTIONS}
    new_llm = NewLLMConfig(
        vocab_size=tokenizer.get_vocab_size(),
        num_hidden_layers=m.num_layers,
        bos_token_id=ids.end_of_text,
        eos_token_id=ids.end_of_text,
        pad_token_id=ids.pad,
        **options,
    )
    shape = BaselineShape(
        gpt2_layers=m.gpt2_layers,
        gpt2_positions=m.gpt2_positions,
        lstm_layers=m.lstm_layers,
        dropout=m.dropout,
        tolerance=m.tolerance,
    )
    longest = max(config.data.block_size, config.data.dialog_block_size) + 1
    if m.gpt2_positions < longest:
        raise ValueError(f"model.gpt2_positions ({m.gpt2_positions}) must cover the longest window ({longest})")
    return matched_configs(new_llm, names=("new_llm", *[n for n in m.names if n != "new_llm"]), shape=shape)


def _refuse_existing_runs(config: ExperimentConfig, stage: str, resume: bool, overwrite: bool) -> None:
    """RunExistsError before any training when a model's run folder already holds a run."""
    if resume or overwrite:
        return
    for name in config.model.names:
        folder = run_dir(config, name, stage)
        if any(folder.glob("checkpoint-*")):
            raise RunExistsError(
                f"{folder} already holds a run: pass --resume to continue it or --overwrite to start again"
            )


def _stage_start(config: ExperimentConfig, name: str, stage: str, resume: bool) -> bool | None:
    """How `--resume` treats one model's stage: None = finished earlier, skip it; True = continue it from
    its latest complete checkpoint (also when its time limit stopped it); False = start it (it never got
    that far). Without `--resume`: False."""
    folder = run_dir(config, name, stage)
    if not resume:
        return False
    marker = folder / STAGE_COMPLETE
    if marker.is_file() and "stopped" not in json.loads(marker.read_text(encoding="utf-8")):
        return None
    return has_complete_checkpoint(folder)


def _train_stage(experiment: ExperimentConfig, name, stage, resume, overwrite, **train_kwargs):
    """`train()` for one model's stage under the pipeline's --resume / --overwrite; None when skipped."""
    start = _stage_start(experiment, name, stage, resume)
    folder = run_dir(experiment, name, stage)
    if start is None:
        logger.info("%s/%s: finished earlier (%s); skipped", name, stage, folder / STAGE_COMPLETE)
        return None
    if is_main_process():
        (folder / STAGE_COMPLETE).unlink(missing_ok=True)
    # resuming a stage that never saved a complete checkpoint starts it again: only half-written folders to clear
    return train(run_dir=folder, resume=start, overwrite=overwrite or (resume and not start), **train_kwargs)


# What --resume compares with the run's experiment.json, per step; and the settings in them that may
# change on a resume because they do not change what is trained.
RESUME_CHECKED = {"pretrain": ("precision", "data", "model", "pretrain"), "finetune": ("precision", "data", "model", "finetune")}
RESUME_SAFE = ("data.data_dir", "model.names", "pretrain.time_limit", "finetune.time_limit", "pretrain.report_to",
               "finetune.report_to")  # fmt: skip


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def _check_resume_settings(config: ExperimentConfig, step: str) -> None:
    """--resume continues the same run: a setting that changes training (learning rate, schedule, sizes,
    data, model, seed, precision) differing from the run's experiment.json is refused, naming it."""
    path = Path(config.output_dir) / "experiment.json"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["config"]
    except FileNotFoundError:
        return  # nothing recorded: a run from before experiment.json, or one that never started
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--resume: cannot read the run's settings from {path} ({err})") from None
    current = config.to_dict()
    old = _flat({key: recorded.get(key) for key in RESUME_CHECKED[step]})
    new = _flat({key: current[key] for key in RESUME_CHECKED[step]})
    changed = [key for key in new if key not in RESUME_SAFE and old.get(key, new[key]) != new[key]]
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more: {', '.join(changed[1:])})" if len(changed) > 1 else ""
        raise ValueError(
            f"--resume: {path.parent} was trained with {key}={old[key]!r}, this command says {new[key]!r}{more}; "
            "resume with the run's settings, or start again with --overwrite"
        )


def _recorded_preset_hint(config: ExperimentConfig) -> str:
    """'this folder was run with --preset quick; ' where experiment.json names another preset than `config`'s."""
    try:
        recorded = json.loads((Path(config.output_dir) / "experiment.json").read_text(encoding="utf-8"))["config"]["preset"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"this folder was run with --preset {recorded}; or " if recorded and recorded != config.preset else ""


def _write_experiment(config: ExperimentConfig, step: str) -> None:
    if not is_main_process():
        return
    write_json_atomic(
        Path(config.output_dir) / "experiment.json",
        {"step": step, "command": _command_line(), "config": config.to_dict()},
    )


def _command_line() -> str:
    # `python -m newllm.cli` leaves argv[0] = ".../newllm/cli.py": the same command as `newllm`
    program = Path(sys.argv[0]).name
    return " ".join(shlex.quote(arg) for arg in ["newllm" if program == "cli.py" else program, *sys.argv[1:]])


def _finish_stage(config, name, stage, result, tokenizer, parent=None) -> None:
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
        planned = (config.pretrain if stage == "wikitext" else config.finetune).epochs
        logger.warning("%s/%s: its time limit stopped it after epoch %d of %d", name, stage, result.epochs_run, planned)
    path = checkpoint_dir(config, name, stage)
    if usable_positions(result.model) is not None:
        # position embeddings past the training windows never get a gradient: generation, chat and the
        # sliding-window evaluation stop at the longest window any stage trained on (usable_positions)
        window = config.data.block_size if stage == "wikitext" else config.data.dialog_block_size
        result.model.config.trained_positions = max(window, getattr(result.model.config, "trained_positions", 0) or 0)
    if is_main_process():  # every rank holds the same best model (DDP); one writes it
        save_checkpoint(result.model, tokenizer, path, metadata)
        write_json_atomic(run_dir(config, name, stage) / STAGE_COMPLETE, metadata | {"checkpoint": path.name})
        if result.history:
            plot_training_curves(
                result.history, curves_path(config, name, stage), f"{name} on {STAGES[stage]} ({config.preset})"
            )
    barrier()  # step 2 on every rank loads this checkpoint
    logger.info("%s/%s: best epoch %s of %s -> %s", name, stage, result.best_epoch, result.epochs_run, path)


def _one_writer(step):
    """Run `step` holding the output folder's lock (training/lock.py); under torchrun rank 0 holds it."""

    @functools.wraps(step)
    def locked(config: ExperimentConfig, *args, **kwargs):
        if not is_main_process():
            return step(config, *args, **kwargs)
        with folder_lock(config.output_dir, _command_line()):
            return step(config, *args, **kwargs)

    return locked


@_one_writer
def pretrain(config: ExperimentConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> None:
    """Step 1: train every model of `config.model.names` on WikiText-2 from scratch."""
    device = resolve_device(config)
    _warn_if_training_full_on_cpu(config, device)
    bf16 = resolve_bf16(config, device)
    # Every input is checked before anything is written: the data, then every model's run folder.
    splits = load_wikitext_splits(config)
    _refuse_existing_runs(config, "wikitext", resume, overwrite)
    if resume:
        _check_resume_settings(config, "pretrain")
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    tokenizer = prepare_tokenizer(config, splits["train"], overwrite=overwrite)
    _write_experiment(config, "pretrain")
    streams = {name: encode_text(tokenizer, split) for name, split in splits.items()}
    sources = {name: split.source for name, split in splits.items()}  # named if too short for one window
    train_set = StreamWindows(streams["train"], config.data.block_size, drop_last=True, source=sources["train"])
    lanes_set = None
    if config.pretrain.stateful:  # truncated BPTT: one lane of the stream per batch row, read in order
        rotation = config.pretrain.seed if config.pretrain.stateful_rotate else None
        lanes_set = StreamLanes(
            streams["train"], config.data.block_size, config.pretrain.batch_size, rotation, source=sources["train"]
        )
    valid_set = StreamWindows(streams["valid"], config.data.block_size, drop_last=False, source=sources["valid"])
    # a stream's first token (end-of-text) is read, never predicted: these are the scored tokens
    logger.info("WikiText-2 (%s): %d train tokens, %d valid tokens", config.data.wikitext,
                len(streams["train"]) - 1, len(streams["valid"]) - 1)  # fmt: skip
    configs = model_configs(config, tokenizer)
    for name in config.model.names:
        logger.info("%-9s %s parameters", name, f"{parameter_count(name, configs[name]):,}")
    pad = special_ids(tokenizer).pad
    for name in config.model.names:
        set_seed(config.pretrain.seed)
        model = build_model(name, configs[name])
        logger.info("step 1: %s on WikiText-2 (%s parameters, %s)", name, f"{count_parameters(model):,}", device)
        train_config, windows = config.pretrain, train_set
        if lanes_set is not None:
            if carries_state(model):
                windows = lanes_set
            else:  # a transformer has no state to carry: it keeps shuffled windows
                logger.info("%s: stateful training is for the recurrent models; shuffled windows instead", name)
                train_config = dataclasses.replace(train_config, stateful=False)
        result = _train_stage(
            config,
            name,
            "wikitext",
            resume,
            overwrite,
            model=model,
            train_dataset=windows,
            eval_dataset=valid_set,
            collator=lambda batch: collate(batch, pad),
            config=train_config,
            device=device,
            bf16=bf16,
            progress=progress,
        )
        if result is not None:
            _finish_stage(config, name, "wikitext", result, tokenizer)


def _dialog_sets(config: ExperimentConfig, tokenizer, names=("train", "validation")):
    splits = load_dialog_splits(config, names)
    return {
        name: DialogWindows([encode_dialogue(tokenizer, d) for d in split.dialogues], config.data.dialog_block_size)
        for name, split in splits.items()
    }, splits


@_one_writer
def finetune(config: ExperimentConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> None:
    """Step 2: continue each step-1 checkpoint on DailyDialog with the same tokenizer."""
    if config.finetune.stateful:
        raise ValueError("finetune.stateful: dialogues are independent, so there is no stream to carry a state along")
    device = resolve_device(config)
    _warn_if_training_full_on_cpu(config, device)
    bf16 = resolve_bf16(config, device)
    tokenizer = prepare_tokenizer(config)
    # Check every starting point before training anything: never train from scratch by accident.
    parents = {name: checkpoint_dir(config, name, "wikitext") for name in config.model.names}
    models = {}
    for name, parent in parents.items():
        if not parent.exists():
            raise CheckpointError(
                f"fine-tuning {name} starts from its step-1 checkpoint {parent}, which does not exist: "
                "run `newllm pretrain` (or scripts/train_wikitext.py) with the same preset and output dir first"
            )
        dropout = config.finetune.dropout
        changes = {} if dropout is None else {field: dropout for field in DROPOUT_FIELDS[name]}
        models[name], _ = load_checkpoint(parent, name, expected_tokenizer=tokenizer, **changes)
    sets, _ = _dialog_sets(config, tokenizer)
    _refuse_existing_runs(config, "dialog", resume, overwrite)
    if resume:
        _check_resume_settings(config, "finetune")
    _write_experiment(config, "finetune")
    pad = special_ids(tokenizer).pad
    for name, model in models.items():
        set_seed(config.finetune.seed)
        logger.info("step 2: %s on DailyDialog from %s", name, parents[name])
        result = _train_stage(
            config,
            name,
            "dialog",
            resume,
            overwrite,
            model=model,
            train_dataset=sets["train"],
            eval_dataset=sets["validation"],
            collator=lambda batch: collate(batch, pad),
            config=config.finetune,
            device=device,
            bf16=bf16,
            progress=progress,
        )
        if result is not None:
            _finish_stage(config, name, "dialog", result, tokenizer, parent=parents[name])


def _stage_summary(config: ExperimentConfig, name: str, stage: str) -> dict:
    """Training facts of a stage for results.json, with paths relative to the output folder."""
    meta_path = checkpoint_dir(config, name, stage) / "newllm.json"
    summary = {
        "history": f"{name}_{stage}/history.json",
        "curves": curves_path(config, name, stage).name,
        "checkpoint": checkpoint_dir(config, name, stage).name,
    }
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        summary.update({k: meta.get(k) for k in ("best_epoch", "epochs_run", "train_seconds")})
        if "stopped" in meta:
            summary["stopped"] = meta["stopped"]
    return summary


@dataclasses.dataclass
class _TestData:
    """Step 3's data, read and encoded once for every model."""

    wiki: dict[str, TextSplit]  # "valid", "test"
    wiki_windows: dict[str, StreamWindows]  # each split in block_size windows
    wiki_test_stream: list[int]  # the test split as one token stream, for the stateful evaluation
    dialog_split: DialogSplit  # the (sliced) test split
    dialog_windows: DialogWindows
    replied: list[tuple[int, list[str]]]  # (index, dialogue) of the test dialogues the models reply to


def _check_evaluable(config: ExperimentConfig, tokenizer) -> None:
    """Every model's checkpoints, checked before minutes of work on the first."""
    for name in config.model.names:
        folders = [checkpoint_dir(config, name, stage) for stage in STAGES]
        if not any(folder.exists() for folder in folders):  # else an empty report would replace the folder's
            raise CheckpointError(
                f"no checkpoint of {name} to evaluate: neither {folders[0]} nor {folders[1]} exists; "
                f"run `newllm pretrain` with this output dir first or leave {name} out of --models"
            )
        for folder in folders:
            if folder.exists():
                check_checkpoint(folder, name, expected_tokenizer=tokenizer)


def _load_test_data(config: ExperimentConfig, tokenizer) -> _TestData:
    e = config.eval
    if e.response_dialogues is not None and e.response_dialogues < 0:
        raise ValueError(f"eval.response_dialogues must be >= 0 or none, got {e.response_dialogues}")
    wiki = load_wikitext_splits(config, ("valid", "test"))
    streams = {name: encode_text(tokenizer, split) for name, split in wiki.items()}
    dialog_sets, dialog_splits = _dialog_sets(config, tokenizer, ("test",))
    # Each model replies to every test dialogue minus its last turn, which is the human reference reply.
    replied = [
        (index, dialogue)
        for index, dialogue in enumerate(_sliced(dialog_splits["test"], e.response_dialogues).dialogues)
        if len(dialogue) >= 2  # a one-turn dialogue leaves no context to reply to
    ]
    return _TestData(
        wiki=wiki,
        wiki_windows={
            name: StreamWindows(stream, config.data.block_size, drop_last=False) for name, stream in streams.items()
        },
        wiki_test_stream=streams["test"],
        dialog_split=dialog_splits["test"],
        dialog_windows=dialog_sets["test"],
        replied=replied,
    )


def _results_header(config: ExperimentConfig, device: str, tokenizer, data: _TestData) -> dict:
    """results.json before any model: what was run, on what, and the human replies to compare with."""
    return {
        "preset": config.preset,
        "command": _command_line(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device,
        "environment": environment(),
        "tokenizer": describe_tokenizer(tokenizer),
        "data": {
            "wikitext": {
                "variant": config.data.wikitext,
                "source": data.wiki["test"].source,
                "test_words": data.wiki["test"].n_words,
                "test_bytes": data.wiki["test"].n_bytes,
                "test_tokens": None,  # filled in by the first model evaluated
                "block_size": config.data.block_size,
                "sliced": config.data.eval_lines is not None or config.data.train_lines is not None,
            },
            "dailydialog": {
                "source": data.dialog_split.source,
                "test_dialogues": len(data.dialog_split.dialogues),
                "block_size": config.data.dialog_block_size,
                "sliced": config.data.eval_dialogues is not None or config.data.train_dialogues is not None,
            },
        },
        "config": config.to_dict(),
        "models": {},
        "reference_responses": dataclasses.asdict(measure_diversity([dialogue[-1] for _, dialogue in data.replied])),
        "dialog_samples": [
            {
                "dialogue": index,  # position in the (sliced) test split
                "context_turns": len(dialogue) - 1,
                "context": list(dialogue[-3:-1]),  # the last two turns are enough to follow the reply
                "reference": dialogue[-1],
                "replies": {},
            }
            for index, dialogue in data.replied[:DIALOG_SAMPLES]
        ],
    }


def _wikitext_numbers(ppl, split: TextSplit) -> dict:
    return {
        "loss": ppl.loss,
        "token_ppl": ppl.token_ppl,
        "word_ppl": ppl.word_ppl(split.n_words),
        "bits_per_byte": ppl.bits_per_byte(split.n_bytes),
        "tokens": ppl.tokens,
        "words": split.n_words,
        "bytes": split.n_bytes,
    }


def _evaluate_wikitext(
    model, name: str, config: ExperimentConfig, data: _TestData, pad: int, device: str, dtype, progress: bool
) -> dict:
    """Validation and test perplexity window by window, then the test split again as one stream."""
    e = config.eval
    numbers = {}
    for split_name, dataset in data.wiki_windows.items():
        logger.info("step 3: %s on WikiText-2 %s", name, split_name)
        ppl = evaluate_perplexity(model, dataset, pad, e.batch_size, device=device, dtype=dtype, progress=progress)
        numbers[split_name] = _wikitext_numbers(ppl, data.wiki[split_name])
    # The same test tokens again, with context across windows: carried state or sliding window.
    plan = plan_stream(model, e.stream_window, e.stream_stride, e.stream_lanes, config.data.block_size)
    logger.info("step 3: %s on WikiText-2 test, %s", name, plan.method.replace("_", " "))
    ppl = evaluate_stream(
        model,
        data.wiki_test_stream,
        window=plan.window,
        stride=plan.stride,
        lanes=e.stream_lanes,
        batch_size=e.batch_size,
        device=device,
        dtype=dtype,
        progress=progress,
    )
    numbers["test_stream"] = {**dataclasses.asdict(plan), **_wikitext_numbers(ppl, data.wiki["test"])}
    return numbers


def _evaluate_dialog(
    model, name: str, config: ExperimentConfig, data: _TestData, pad: int, device: str, dtype, progress: bool
) -> dict:
    logger.info("step 3: %s on DailyDialog test", name)
    ppl = evaluate_perplexity(
        model, data.dialog_windows, pad, config.eval.batch_size, device=device, dtype=dtype, progress=progress
    )
    return {
        "loss": ppl.loss,
        "token_ppl": ppl.token_ppl,
        "response_ppl": ppl.response_ppl,
        "tokens": ppl.tokens,
        "response_tokens": ppl.response_tokens,
    }


@_one_writer
def evaluate(config: ExperimentConfig, progress: bool = True) -> dict:
    """Step 3: test perplexities, replies and speed for every model; writes results.json and report.md."""
    if not is_main_process():  # under torchrun: one process evaluates, the others stop here (docs/distributed.md)
        logger.info("step 3 runs on rank 0 only")
        return {}
    device = resolve_device(config)
    bf16 = resolve_bf16(config, device)
    dtype = torch.bfloat16 if bf16 else None
    tokenizer = prepare_tokenizer(config)
    _check_evaluable(config, tokenizer)
    pad = special_ids(tokenizer).pad
    data = _load_test_data(config, tokenizer)
    contexts = [dialogue[:-1] for _, dialogue in data.replied]
    results = _results_header(config, device, tokenizer, data)
    e = config.eval
    for name in config.model.names:
        entry: dict = {}
        results["models"][name] = entry
        wiki_ckpt = checkpoint_dir(config, name, "wikitext")
        dialog_ckpt = checkpoint_dir(config, name, "dialog")
        if wiki_ckpt.exists():
            model, _ = load_checkpoint(wiki_ckpt, name, expected_tokenizer=tokenizer, device=device)
            entry["params"] = count_parameters(model)
            entry["architecture"] = _architecture(model.config)
            entry["wikitext"] = {
                **_stage_summary(config, name, "wikitext"),
                **_evaluate_wikitext(model, name, config, data, pad, device, dtype, progress),
            }
            results["data"]["wikitext"]["test_tokens"] = entry["wikitext"]["test"]["tokens"]
        else:
            logger.warning("no step-1 checkpoint %s: WikiText-2 results for %s are left out", wiki_ckpt, name)
        if dialog_ckpt.exists():
            model, _ = load_checkpoint(dialog_ckpt, name, expected_tokenizer=tokenizer, device=device)
            entry.setdefault("params", count_parameters(model))
            entry.setdefault("architecture", _architecture(model.config))
            test = _evaluate_dialog(model, name, config, data, pad, device, dtype, progress)
            entry["dailydialog"] = {**_stage_summary(config, name, "dialog"), "test": test}
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
        samples = sample_responses(
            model,
            tokenizer,
            list(e.prompts),
            max_new_tokens=e.max_new_tokens,
            temperature=e.temperature,
            top_k=e.top_k,
            top_p=e.top_p,
            device=device,
        )
        entry["samples"] = [dataclasses.asdict(sample) for sample in samples]
        logger.info("step 3: %s speed", name)
        speed = measure_speed(
            model,
            model.config.vocab_size,
            batch_size=e.speed_batch_size,
            seq_len=e.speed_seq_len,
            new_tokens=e.speed_new_tokens,
            repeats=e.speed_repeats,
            device=device,
            dtype=torch.bfloat16 if bf16 else torch.float32,
        )
        entry["speed"] = dataclasses.asdict(speed)
        del model
    out = Path(config.output_dir)
    write_json_atomic(out / "results.json", results)
    report = write_report(results, out)
    logger.info("wrote %s and %s", out / "results.json", report)
    return results


def _architecture(model_config) -> dict:
    keys = ("embedding_size", "context_size", "hidden_size", "num_hidden_layers", "n_head", "n_positions")
    return {k: getattr(model_config, k) for k in keys if hasattr(model_config, k)}


@_one_writer
def run_pipeline(config: ExperimentConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Steps 1, 2 and 3 in order."""
    start = time.perf_counter()
    pretrain(config, resume=resume, overwrite=overwrite, progress=progress)
    finetune(config, resume=resume, overwrite=overwrite, progress=progress)
    results = evaluate(config, progress=progress)
    logger.info("pipeline finished in %.0f s", time.perf_counter() - start)
    return results

