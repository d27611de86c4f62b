"""What every step sets up from the config: device and precision, data, the tokenizer, the models' configs,
experiment.json, the resume check, and the provenance that results.json records."""

from __future__ import annotations

import datetime
import logging
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from newllm.config import (
    PRESET_ALIASES,
    ExperimentConfig,
    TrainConfig,
    load_config,
    preset_path,
)
from newllm.data.dailydialog import DialogSplit, load_dailydialog
from newllm.data.tokenizer import (
    KIND_ALIASES,
    describe_tokenizer,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    tokenizer_fingerprint,
    train_tokenizer,
)
from newllm.data.wikitext import TextSplit, load_wikitext
from newllm.models import MODEL_NAMES, BaselineShape, NewLLMConfig, matched_configs
from newllm.models.new_llm.configuration import CELL_ALIASES
from newllm.training.checkpoint import write_json_atomic
from newllm.training.distributed import is_main_process
from newllm.training.rundir import RunDir

logger = logging.getLogger("newllm")


# --- device and precision: resolved once per step, checked before any work starts ---------------------------


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


@dataclass(frozen=True)
class Runtime:
    """Where a step runs: the device and whether it trains and evaluates in bf16."""

    device: str
    bf16: bool

    @property
    def dtype(self):
        return torch.bfloat16 if self.bf16 else None


def runtime(config: ExperimentConfig) -> Runtime:
    device = device_from_name(config.device)
    if config.precision == "auto":
        bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    elif config.precision in ("fp32", "bf16"):
        bf16 = config.precision == "bf16"
    else:
        raise ValueError(f"precision must be auto, fp32 or bf16, got {config.precision!r}")
    return Runtime(device, bf16)


def warn_if_training_full_on_cpu(config: ExperimentConfig, device: str) -> None:
    if device == "cpu" and (config.preset or "").startswith("full"):
        logger.warning("training the %s preset on a CPU takes days (it is sized for a GPU); --preset quick "
                       "runs the whole experiment in minutes", config.preset)  # fmt: skip


# --- data ------------------------------------------------------------------------------------------------------


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


# --- the tokenizer ---------------------------------------------------------------------------------------------


def prepare_tokenizer(config: ExperimentConfig, train_split: TextSplit | None = None, overwrite: bool = False):
    """The experiment's one tokenizer: loaded from the output folder, or trained on WikiText-2 train once."""
    tokenizer, write = plan_tokenizer(config, train_split, overwrite)
    write()
    return tokenizer


def plan_tokenizer(config: ExperimentConfig, train_split: TextSplit | None = None, overwrite: bool = False):
    """The tokenizer `prepare_tokenizer` returns and a function that writes it; nothing is written before it is called.

    Step 1 calls it once every input is checked, so a refused step leaves the folder as it was. With `overwrite`
    (step 1 started again) the tokenizer is trained anew; where it differs from the folder's (another corpus,
    kind or size), the write removes every artefact made with the old one: no run is left beside a tokenizer
    it was not trained with."""
    folder = RunDir(config.output_dir)
    path = folder.tokenizer
    data = config.data

    def nothing():
        pass

    if overwrite and path.is_file() and train_split is not None:
        fresh = train_tokenizer(train_split.lines, kind=data.tokenizer, vocab_size=data.vocab_size, source=train_split.source)
        if tokenizer_fingerprint(fresh) == tokenizer_fingerprint(load_tokenizer(path)):
            return fresh, nothing

        def replace():
            if is_main_process():
                # every model's runs (MODEL_NAMES, not only this command's): all were trained with the old tokenizer
                removed = folder.remove_runs(MODEL_NAMES)
                logger.warning("--overwrite: %s held runs of another tokenizer; removed %s", folder.root, ", ".join(removed))
                save_tokenizer(fresh, config.output_dir)

        return fresh, replace
    if path.is_file():
        tokenizer = load_tokenizer(path)
        described = describe_tokenizer(tokenizer)
        if (described["kind"], described["vocab_size"]) != (data.tokenizer, data.vocab_size):
            raise ValueError(
                f"{path} is a {described['kind']} tokenizer of {described['vocab_size']} entries but the config asks "
                f"for {data.tokenizer} with {data.vocab_size}: {_recorded_preset_hint(config)}"
                "use another --output-dir (the folder's tokenizer is kept: every checkpoint in it was trained on it)"
            )
        return tokenizer, nothing
    if train_split is None:
        raise FileNotFoundError(f"no tokenizer at {path}: run `newllm pretrain` (step 1) first")
    logger.info("training a %s tokenizer (%d entries) on %s", data.tokenizer, data.vocab_size, train_split.source)
    # under torchrun every rank trains it (deterministic: the same merges everywhere, tested) and rank 0 saves it;
    # no barrier needed, and none is possible yet: the Trainer starts the process group later
    tokenizer = train_tokenizer(train_split.lines, kind=data.tokenizer, vocab_size=data.vocab_size, source=train_split.source)

    def save():
        if is_main_process():
            save_tokenizer(tokenizer, config.output_dir)

    return tokenizer, save


def check_batches_fit(windows, train: TrainConfig, step: str, source: str) -> None:
    """Refuse a batch larger than the training windows: the epoch would hold no full batch, and the Trainer would
    take one step on the partial one (at warmup's learning rate of 0) or none at all, so nothing is trained."""
    per_step = train.batch_size * train.grad_accum
    if per_step <= len(windows):
        return
    setting = f"{step}.batch_size={train.batch_size}"
    if train.grad_accum > 1:
        setting += f" × {step}.grad_accum={train.grad_accum}"
    raise ValueError(
        f"{setting}: must be at most the {len(windows)} training windows of {source}, got {per_step}; "
        "use a smaller batch or more text"
    )


# --- the models ------------------------------------------------------------------------------------------------

def model_configs(config: ExperimentConfig, tokenizer) -> dict:
    """Configs of every model in the experiment, baselines sized to New-LLM's parameter count."""
    ids = special_ids(tokenizer)
    m = config.model
    new_llm = NewLLMConfig(
        vocab_size=tokenizer.get_vocab_size(),
        bos_token_id=ids.end_of_text,
        eos_token_id=ids.end_of_text,
        pad_token_id=ids.pad,
        **m.new_llm_arguments(),
    )
    shape = BaselineShape(**m.baseline_shape())
    longest = max(config.data.block_size, config.data.dialog_block_size) + 1
    if m.gpt2_positions < longest:
        raise ValueError(f"model.gpt2_positions ({m.gpt2_positions}) must cover the longest window ({longest})")
    return matched_configs(new_llm, names=("new_llm", *[n for n in m.names if n != "new_llm"]), shape=shape)


# --- experiment.json and the resume check ----------------------------------------------------------------------

# What --resume compares with the run's experiment.json, per step; and the settings in them that may
# change on a resume because they do not change what is trained.
RESUME_CHECKED = {"pretrain": ("precision", "data", "model", "pretrain"), "finetune": ("precision", "data", "model", "finetune")}
RESUME_SAFE = ("data.data_dir", "model.names", "pretrain.time_limit", "finetune.time_limit", "pretrain.report_to",
               "finetune.report_to", "pretrain.fast_path", "finetune.fast_path")  # fmt: skip
# Settings renamed since: an experiment.json written before says "seed" for the prototype's cell and tokenizer.
EARLIER_SPELLINGS = {"model.cell": CELL_ALIASES, "data.tokenizer": KIND_ALIASES}


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def check_resume_settings(config: ExperimentConfig, step: str) -> None:
    """--resume continues the same run: a setting that changes training (learning rate, schedule, sizes,
    data, model, seed, precision) differing from the run's experiment.json is refused, naming it."""
    folder = RunDir(config.output_dir)
    path = folder.experiment
    try:
        recorded = folder.read_experiment()
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--resume: cannot read the run's settings from {path} ({err})") from None
    if recorded is None:
        return  # nothing recorded: a run from before experiment.json, or one that never started
    sections = RESUME_CHECKED[step]
    if step == "finetune" and folder.last_step() == "pretrain":
        # Step 2 has not run here yet: it must start from what step 1 trained (data, model, precision), and its
        # own settings are new, a tuned step-2 dropout included.
        sections = tuple(section for section in sections if section != "finetune")
    current = config.to_dict()
    old = _flat({key: recorded.get(key) for key in sections})
    old = {key: _present_spelling(key, value) for key, value in old.items()}
    new = _flat({key: current[key] for key in sections})
    changed = [key for key in new if key not in RESUME_SAFE and old.get(key, new[key]) != new[key]]
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more: {', '.join(changed[1:])})" if len(changed) > 1 else ""
        raise ValueError(
            f"--resume: {path.parent} was trained with {key}={old[key]!r}, this command says {new[key]!r}{more}; "
            "resume with the run's settings, or start again with --overwrite"
        )


def _present_spelling(key: str, value):
    """`value` of setting `key` under its present name ("seed" -> "prototype" for model.cell)."""
    return EARLIER_SPELLINGS[key].get(value, value) if key in EARLIER_SPELLINGS and isinstance(value, str) else value


def _recorded_preset_hint(config: ExperimentConfig) -> str:
    """'this folder was run with --preset quick; ' where experiment.json names another preset than `config`'s
    (a preset's earlier name is the same preset)."""
    try:
        recorded = RunDir(config.output_dir).read_experiment()["preset"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if not recorded or not isinstance(recorded, str) or PRESET_ALIASES.get(recorded, recorded) == config.preset:
        return ""
    return f"this folder was run with --preset {recorded}; or "


def write_experiment(config: ExperimentConfig, step: str) -> None:
    if is_main_process():
        write_json_atomic(RunDir(config.output_dir).experiment, {"step": step, "command": command_line(), "config": config.to_dict()})


def command_line() -> str:
    # `python -m newllm.cli` leaves argv[0] = ".../newllm/cli.py": the same command as `newllm`
    program = Path(sys.argv[0]).name
    return " ".join(shlex.quote(arg) for arg in ["newllm" if program == "cli.py" else program, *sys.argv[1:]])


# --- provenance ------------------------------------------------------------------------------------------------


def utc_now() -> str:
    """The time a result was made, as results JSONs record it: UTC, ISO 8601, whole seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the newllm checkout running, with "+changes" where its tracked files differ; None where newllm
    is not a checkout's tracked source (an installed copy, even one inside somebody else's repository)."""
    source = Path(__file__).resolve().parent

    def git(*args) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=10, check=False)

    try:
        if git("ls-files", "--error-unmatch", Path(__file__).name).returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty else "") if head.returncode == 0 else None


def changed_settings(config: ExperimentConfig) -> dict | None:
    """The settings in which `config` differs from its preset as committed (the --set overrides and the command's
    flags), flat; None where the preset cannot be read again."""
    try:
        preset = load_config(config.preset)
    except (ValueError, OSError):  # a preset file since moved or renamed: the full config is in results.json anyway
        return None
    ours, theirs = _flat(config.to_dict()), _flat(preset.to_dict())
    return {key: value for key, value in ours.items() if theirs.get(key) != value}


def provenance(config: ExperimentConfig, device: str, environment: dict) -> dict:
    """What a number in results.json came from: enough to run it again and to tell runs apart."""
    try:
        config_file = str(preset_path(config.preset))
    except (ValueError, OSError):
        config_file = None
    return {
        "preset": config.preset,
        "config_file": config_file,
        "changed_settings": changed_settings(config),
        "seeds": {"pretrain": config.pretrain.seed, "finetune": config.finetune.seed},
        "command": command_line(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": environment.get("gpu") or environment.get("cpu") or device,
        "output_dir": str(config.output_dir),
        "packages": {key: environment.get(key) for key in ("python", "torch", "transformers", "cuda")},
    }
