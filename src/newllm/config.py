"""Experiment settings: frozen dataclasses whose field defaults are the `full` preset.

A preset (`configs/<name>.toml`) holds only what differs from these defaults, and
`--set section.field=value` overrides one field, typed by its annotation. Unknown keys and
values of the wrong type are errors. Architecture lives in the Hugging Face configs saved beside
the weights; these dataclasses only say how to build, train and evaluate.

Stdlib only, but for New-LLM's options: `NewLLMConfig` is their one home, so `ModelConfig` reads their names,
types and defaults from it and checks them by building one. That imports torch and transformers (seconds, once)
where a preset or `--set` gives one of them; a refused value is still a one-line ConfigError naming the setting,
before any data is read or file written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# models/registry.py's MODEL_NAMES and DEFAULT_MODEL_NAMES, repeated here so that a misspelt --models fails
# before torch is imported (a test ties them to the registry)
MODEL_NAMES = ("new_llm", "tinygpt2", "lstm", "mamba2")
DEFAULT_MODEL_NAMES = ("new_llm", "tinygpt2", "lstm")


class ConfigError(ValueError):
    """A preset or override that does not fit the dataclasses."""


@dataclass(frozen=True)
class Bound:
    """The allowed values of a number setting: low <= value (or low < value), value < high (or <=), finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = True
    note: str = ""  # what a special value means, e.g. "0: no limit"

    def allows(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low == 0 and self.low_open:
            text = "a positive number"
        elif self.low is not None:
            text = f"greater than {self.low}" if self.low_open else f"at least {self.low}"
        else:
            text = "a finite number"
        return f"{text} ({self.note})" if self.note else text


def _one_of(choices) -> str:
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def check_limits(settings, limits: dict) -> None:
    """ConfigError naming the first field of dataclass `settings` outside its entry in `limits`.

    An entry is a Bound (numbers; None passes for optional fields) or a tuple of allowed strings; a list
    setting (a tuple) must hold at least one value, each within the entry. One table per dataclass instead
    of an if per field, so a test can check that every field has one.
    """
    for name, allowed in limits.items():
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, tuple):
            if not value:  # an empty grid would measure nothing and still write its results
                raise ConfigError(f"{name}: must list at least one value, got none")
            values = value
        else:
            values = (value,)
        for item in values:
            if isinstance(allowed, Bound):
                if not allowed.allows(item):
                    raise ConfigError(f"{name}: must be {allowed}, got {item}")
            elif item not in allowed:
                raise ConfigError(f"{name}: must be {_one_of(allowed)}, got {item!r}")


BPE_SMALLEST_VOCAB = 260  # data/tokenizer.py's floor, checked here before any data is read
POSITIVE_INT = Bound(1)
FRACTION = Bound(0, 1)  # [0, 1): dropout probabilities and such
# models/new_llm/modeling.py's FAST_PATHS but "eager" (which `compile = false` means), repeated here so that a
# TrainConfig is checked without importing the model (a test ties them); "compiled+graphed/autograd" trains the
# cell through autograd instead of its hand-written backward (the same function, a fallback and a comparison)
NEW_LLM_FAST_PATHS = ("compiled", "graphed", "compiled+graphed", "kernel", "kernel_loop", "auto",
                      "compiled+graphed/autograd")
# transformers' SchedulerType values that need no scheduler arguments beyond warmup and the step count
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")


@dataclass(frozen=True)
class DataConfig:
    data_dir: str | None = None  # else $NEWLLM_DATA_DIR; if unset ./data, ../shared/data, then the Hub
    wikitext: str = "tokens"  # "tokens" (wikitext-2-v1, the literature's) or "raw"
    tokenizer: str = "bpe"  # "bpe" (byte-level BPE) or "prototype" (alias "seed": the prototype's 1,000 words)
    vocab_size: int = 8192
    block_size: int = 128  # WikiText window: tokens of context per training example
    dialog_block_size: int = 256  # DailyDialog window; longer dialogues are cut into several
    train_lines: int | None = None  # use only the first N lines of WikiText train (quick runs)
    eval_lines: int | None = None  # ... of valid and test; None = the full split
    train_dialogues: int | None = None
    eval_dialogues: int | None = None

    def __post_init__(self):
        if self.tokenizer == "seed":  # the prototype tokenizer's earlier name
            object.__setattr__(self, "tokenizer", "prototype")
        check_limits(self, DATA_LIMITS)
        if self.tokenizer == "bpe" and self.vocab_size < BPE_SMALLEST_VOCAB:
            raise ConfigError(
                f"vocab_size: a bpe tokenizer needs at least {BPE_SMALLEST_VOCAB} (256 bytes + 4 special tokens), "
                f"got {self.vocab_size}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Which models, New-LLM's options, and how the baselines are sized to New-LLM.

    New-LLM's options live in `NewLLMConfig` (models/new_llm/configuration.py), which declares, defaults, checks
    and documents each; `NewLLMConfig.options()` lists them. A preset's `[model]` table and `--set model.<option>=`
    set them by name beside the fields here (replace_fields), and `new_llm` keeps those that differ from
    NewLLMConfig's defaults, checked by building a NewLLMConfig. Read them with `new_llm_options()` (every option,
    by name) or hand them over with `new_llm_arguments()`; `to_dict()` flattens them as presets spell them.
    """

    names: tuple[str, ...] = DEFAULT_MODEL_NAMES  # the peers (mamba2) join where a preset or --models names them
    # New-LLM's options that differ from NewLLMConfig's defaults: (name, value) pairs in NewLLMConfig.options()'
    # order, the names as presets spell them (`num_layers`). Not a setting of its own: each option is set by name.
    new_llm: tuple[tuple[str, typing.Any], ...] = ()
    # The baselines are sized to New-LLM's parameter count.
    gpt2_layers: int = 4  # preferred depth; the width is solved for the budget
    gpt2_positions: int = 512  # must cover the longest window and prompt + response
    lstm_layers: int = 2
    mamba2_layers: int = 6  # preferred depth; the width is solved for the budget
    tolerance: float = 0.05  # baselines within ±5 % of New-LLM's parameters

    def __post_init__(self):
        # Checked when the config is built: an empty or misspelt --models fails before a tokenizer is trained.
        known = ", ".join(MODEL_NAMES)
        if not self.names:
            raise ConfigError(f"names: no model given; choose one or more of {known}")
        for i, name in enumerate(self.names):
            if name not in MODEL_NAMES:
                raise ConfigError(f"names: unknown model {name!r}; choose from {known}")
            if name in self.names[:i]:
                raise ConfigError(f"names: {name} is listed twice")
        check_limits(self, MODEL_LIMITS)
        if self.new_llm:  # none given: NewLLMConfig's defaults, nothing to check (and nothing imported)
            object.__setattr__(self, "new_llm", _checked_new_llm_options(dict(self.new_llm)))

    def new_llm_options(self) -> dict:
        """Every one of New-LLM's options by name (`num_layers`, as presets spell them): the value set here, else
        NewLLMConfig's default. What experiment.json records and what code reads (`["context_size"]`)."""
        return {name: option.default for name, option in new_llm_option_table().items()} | dict(self.new_llm)

    def new_llm_arguments(self, defaults: bool = False) -> dict:
        """New-LLM's options as `NewLLMConfig` arguments (all but the vocabulary and the special token ids): those
        set here, NewLLMConfig filling in its defaults for the rest; with `defaults`, every option."""
        table = new_llm_option_table()
        values = self.new_llm_options() if defaults else dict(self.new_llm)
        return {table[name].argument: value for name, value in values.items()}

    def baseline_shape(self) -> dict:
        """The arguments of models.registry.BaselineShape: how the baselines are shaped and sized to New-LLM."""
        shape = {name: getattr(self, name) for name in BASELINE_FIELDS[1:]}
        return {**shape, "dropout": self.new_llm_options()["dropout"]}  # the baselines train with New-LLM's dropout

    def to_dict(self) -> dict:
        """Flat, as presets spell it (the layout of experiment.json): names, every one of New-LLM's options, then
        the baselines' fields."""
        baselines = {name: getattr(self, name) for name in BASELINE_FIELDS[1:]}
        return {"names": self.names, **self.new_llm_options(), **baselines}


# ModelConfig's fields that are not New-LLM's: which models run, and the baselines' shape and sizing.
BASELINE_FIELDS = ("names", "gpt2_layers", "gpt2_positions", "lstm_layers", "mamba2_layers", "tolerance")


def _new_llm_config():
    """The class `NewLLMConfig`, imported here, not at the top, so that importing this module stays cheap (torch and
    transformers load the first time New-LLM's options are read)."""
    from newllm.models.new_llm import configuration

    return configuration.NewLLMConfig


def new_llm_option_table() -> dict:
    """`NewLLMConfig.options()`: {name: Option(argument, type, default)} of every one of New-LLM's options."""
    return _new_llm_config().options()


def _checked_new_llm_options(given: dict) -> tuple:
    """`given` ({name: value}) typed by NewLLMConfig's annotations and checked by building a NewLLMConfig, as
    ModelConfig.new_llm keeps it: NewLLMConfig's spelling of each value ("seed" → "prototype" for the cell), the
    ones equal to its defaults left out; or a one-line ConfigError naming the setting."""
    new_llm_config = _new_llm_config()
    table = new_llm_config.options()
    for name in given:
        if name not in table:
            raise ConfigError(f"unknown setting {name!r}; New-LLM's options: {', '.join(table)}")
    values = {name: _coerce(value, table[name].type, name) for name, value in given.items()}
    try:
        built = new_llm_config(**{table[name].argument: value for name, value in values.items()})
    except (ValueError, TypeError) as err:
        raise ConfigError(_refusal(err, values, table)) from None
    kept = []
    for name, option in table.items():
        if name in values:
            value = getattr(built, option.argument, values[name])
            if value != option.default:
                kept.append((name, value))
    return tuple(kept)


def _refusal(err: Exception, values: dict, table: dict) -> str:
    """NewLLMConfig's refusal as `setting: reason`, on one line."""
    spelling = {option.argument: name for name, option in table.items()}
    argument, reason = getattr(err, "argument", None), getattr(err, "reason", None)
    if argument is not None and reason is not None:
        return f"{spelling.get(argument, argument)}: {reason}"
    message = " ".join(str(err).split())  # an error of another kind: name the first given option it mentions
    named = [name for name in values if re.search(rf"\b{re.escape(table[name].argument)}\b", message)]
    return f"{(named or list(values))[0]}: {message}"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    patience: int = 15  # epochs without a better validation loss before stopping
    batch_size: int = 64
    eval_batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.02  # fraction of all steps
    scheduler: str = "cosine"
    grad_clip: float = 1.0
    grad_accum: int = 1
    seed: int = 0
    max_steps: int = -1  # > 0 caps the optimizer steps (smoke tests)
    # CUDA speed: New-LLM's fast path (compiled steps + CUDA-graphed scan), torch.compile for the baselines;
    # ignored on CPU
    compile: bool = False
    # with compile: which of New-LLM's fast paths ("kernel": the Triton window kernels; "kernel_loop": the same
    # kernels as one program per SM with grid barriers; "auto": the window kernels where they apply, else
    # "compiled+graphed"). It changes the speed, not the function: a resume may change it.
    fast_path: str = "compiled+graphed"
    save_steps: int = 0  # > 0 also checkpoints (and logs) every N optimizer steps; eval stays per epoch
    # Truncated BPTT (pre-training, recurrent models): batch rows are lanes of the stream read in order,
    # and each row's state is carried from one batch to the next instead of reset every window
    stateful: bool = False
    # with stateful: every epoch cuts the lanes at a new random offset of the stream (drawn from seed, epoch)
    stateful_rotate: bool = False
    # with stateful: false reads the lanes in the same order but starts every window from a reset state
    # (a diagnostic: what the batch order alone costs, without the carried context)
    stateful_carry: bool = True
    # Each batch drawn from dialogues of similar length (transformers' group_by_length: a random permutation cut
    # into megabatches of 50 batches, each sorted by length), in an order fixed by (seed, epoch) so that a resumed
    # run reads the same batches (data/batching.py). DailyDialog's windows run from 2 to 257 tokens: a batch
    # padded to its longest is 48 % padding at random and 2 % grouped, and a recurrent model steps through every
    # padded position. Step 2 only (WikiText windows are all one length).
    group_by_length: bool = False
    on_nonfinite: str = "stop"  # NaN/inf loss: "stop" the run, or "skip" that optimizer step
    # > 0: seconds this process may train the stage (like Lightning's max_time). It stops after the epoch
    # whose successor would not end in time and keeps the best model so far, marked "stopped": "time_limit".
    time_limit: float = 0
    # finetune only: the dropout of step 2 (the fields model.dropout sets in each model's config); None keeps
    # the step-1 checkpoint's. The step-2 checkpoint's config.json records it.
    dropout: float | None = None
    # The Trainer's tracking integration: "none", "tensorboard" (events under the stage's run folder, runs/)
    # or "wandb". Tracking only: it may change on --resume.
    report_to: str = "none"

    def __post_init__(self):
        # Checked when the config is built, so a bad value fails before any data is read or file written.
        check_limits(self, TRAIN_LIMITS)
        if self.max_steps == 0:
            raise ConfigError("max_steps: must be -1 (no cap) or at least 1, got 0")
        if self.stateful_rotate and not self.stateful:
            raise ConfigError("stateful_rotate: rotates the lanes of stateful training; set stateful = true too")
        if not self.stateful_carry and not self.stateful:
            raise ConfigError("stateful_carry: applies to stateful training; set stateful = true too")
        if self.group_by_length and self.stateful:
            raise ConfigError("group_by_length: stateful training reads its lanes in order; set one of them to false")


@dataclass(frozen=True)
class EvalConfig:
    prompts: tuple[str, ...] = (
        "hello how are you",
        "what do you do for a living ?",
        "can you help me find a good restaurant ?",
        "i am so tired today .",
        "do you like music ?",
    )
    max_new_tokens: int = 40
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    # DailyDialog test: each model's greedy reply to every dialogue minus its last turn, scored by distinct-1/2.
    # None = every test dialogue (after data.eval_dialogues); N = only the first N (generation is the slow part).
    response_dialogues: int | None = None
    batch_size: int = 32  # also the number of replies generated together
    speed_batch_size: int = 32  # the prototype's teacher-forced ms/batch
    speed_seq_len: int = 64
    speed_new_tokens: int = 64  # tokens generated to time ms/token
    speed_repeats: int = 5
    # WikiText-2 test scored again with context across windows (evaluation/stream.py), beside the
    # reset-every-window numbers: the recurrent models carry their state, TinyGPT2 slides its window.
    stream_window: int | None = None  # tokens per forward; None = data.block_size for TinyGPT2 (its trained positions), 512 for the recurrent models
    # TinyGPT2: tokens newly scored per window, each with >= window - stride tokens before it; None = window // 2
    stream_stride: int | None = None
    # Recurrent models: the stream cut into this many parts run side by side, each from a reset state. 8 costs
    # 7 resets in the full split's 323k tokens and makes the step loop 8x shorter; 1 = the whole stream in one.
    stream_lanes: int = 8

    def __post_init__(self):
        check_limits(self, EVAL_LIMITS)
        if self.stream_window is not None and self.stream_stride is not None and self.stream_stride >= self.stream_window:
            raise ConfigError(
                f"stream_stride: must be less than stream_window ({self.stream_window}), got {self.stream_stride}"
            )
        for i, prompt in enumerate(self.prompts):
            if not prompt.strip():
                raise ConfigError(f"prompts: prompt {i + 1} is empty")


@dataclass(frozen=True)
class ExperimentConfig:
    preset: str = "full"
    output_dir: str = "checkpoints"
    device: str = "auto"  # "auto" = cuda when available
    precision: str = "auto"  # "auto" = bf16 on CUDA, fp32 on CPU; or "fp32", "bf16"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=50, patience=10, lr=5e-4, batch_size=32)
    )
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        check_limits(self, EXPERIMENT_LIMITS)
        # The device's name is checked here, before any work; whether this machine has it is checked where
        # the step starts (pipeline.setup.runtime), with torch.
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device: unknown device {self.device!r}: use auto, cpu, cuda or cuda:N")
        if not self.output_dir.strip():
            raise ConfigError("output_dir: must name a folder, got ''")
        if self.pretrain.dropout is not None:
            raise ConfigError("pretrain.dropout: step 1's dropout is model.dropout; this setting is step 2's (finetune.dropout)")

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["model"] = self.model.to_dict()  # New-LLM's options flat, as presets spell them
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# The allowed values of every setting that has a meaningful range (New-LLM's options: NewLLMConfig's checks).
# tests/unit/test_config.py checks that every number and string field is here or in FREE_FIELDS, so a new field
# cannot skip validation silently.
DATA_LIMITS = {
    "wikitext": ("tokens", "raw"),
    "tokenizer": ("bpe", "prototype"),
    "vocab_size": POSITIVE_INT,  # and, for BPE, BPE_SMALLEST_VOCAB
    "block_size": POSITIVE_INT,
    "dialog_block_size": POSITIVE_INT,
    "train_lines": POSITIVE_INT,
    "eval_lines": POSITIVE_INT,
    "train_dialogues": POSITIVE_INT,
    "eval_dialogues": POSITIVE_INT,
}
MODEL_LIMITS = {  # the baselines' fields; New-LLM's options are checked by NewLLMConfig
    "gpt2_layers": POSITIVE_INT,
    "gpt2_positions": Bound(2),  # one token of context and one to predict
    "lstm_layers": POSITIVE_INT,
    "mamba2_layers": POSITIVE_INT,
    "tolerance": Bound(0, 1, low_open=True),
}
TRAIN_LIMITS = {
    "epochs": POSITIVE_INT,
    "patience": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "lr": Bound(0, low_open=True),
    "weight_decay": Bound(0),
    "warmup": Bound(0, 1, note="a fraction of all steps"),
    "scheduler": SCHEDULERS,
    "grad_clip": Bound(0, note="0: no clipping"),
    "grad_accum": POSITIVE_INT,
    "seed": Bound(0, 2**32, note="NumPy's seed range"),
    "max_steps": Bound(-1, note="-1: no cap"),
    "save_steps": Bound(0, note="0: only at each epoch's end"),
    "on_nonfinite": ("stop", "skip"),
    "time_limit": Bound(0, note="seconds; 0: no limit"),
    "dropout": FRACTION,
    "report_to": ("none", "tensorboard", "wandb"),
    "fast_path": NEW_LLM_FAST_PATHS,
}
EVAL_LIMITS = {
    "max_new_tokens": POSITIVE_INT,
    "temperature": Bound(0, low_open=True),
    "top_k": Bound(0, note="0: all tokens"),
    "top_p": Bound(0, 1, low_open=True, high_open=False),
    "response_dialogues": Bound(0, note="0: no replies generated"),
    "batch_size": POSITIVE_INT,
    "speed_batch_size": POSITIVE_INT,
    "speed_seq_len": POSITIVE_INT,
    "speed_new_tokens": POSITIVE_INT,
    "speed_repeats": POSITIVE_INT,
    "stream_window": Bound(2),  # one token read, one scored
    "stream_stride": POSITIVE_INT,
    "stream_lanes": POSITIVE_INT,
}
EXPERIMENT_LIMITS = {"precision": ("auto", "fp32", "bf16")}
# Free-form, or checked where they are used: paths, the preset's name, the device (its name in
# ExperimentConfig, its presence in pipeline.setup.runtime) and the prompts (EvalConfig checks each is not empty).
FREE_FIELDS = {"data_dir", "output_dir", "preset", "device", "prompts", "names"}


def _coerce(value, annotation, where: str):
    """`value` as `annotation` (a resolved type hint), or ConfigError naming `where`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(item, args[0], where) for item in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {annotation!r}")


def replace_fields(obj, values: dict, where: str = ""):
    """A copy of dataclass `obj` with `values` (nested dicts for nested dataclasses) applied. In a ModelConfig,
    a key that is none of its fields is one of New-LLM's options (NewLLMConfig.options()), kept in `new_llm`."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    model = isinstance(obj, ModelConfig)
    if model:
        names.discard("new_llm")  # set option by option, by name
    changes, options = {}, {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            if not model:
                raise ConfigError(f"unknown setting {path!r}; valid here: {', '.join(sorted(names))}")
            options[key] = value  # typed and checked by ModelConfig, by NewLLMConfig's annotations and checks
            continue
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a table of settings, got {value!r}")
            changes[key] = replace_fields(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    if options:
        # ModelConfig's own fields first: a misspelt --models fails before NewLLMConfig (torch) is imported
        _replaced(obj, changes, where)
        table = new_llm_option_table()
        for key in options:
            if key not in table:
                path = f"{where}.{key}" if where else key
                raise ConfigError(f"unknown setting {path!r}; valid here: {', '.join(sorted(names | set(table)))}")
        changes["new_llm"] = tuple((dict(obj.new_llm) | options).items())
    return _replaced(obj, changes, where)


def _replaced(obj, changes: dict, where: str):
    try:
        return dataclasses.replace(obj, **changes)
    except ConfigError as err:  # a dataclass's own check: name the section
        raise ConfigError(f"{where}.{err}" if where else str(err)) from None


def parse_overrides(pairs: list[str]) -> dict:
    """["pretrain.lr=3e-4", ...] → {"pretrain": {"lr": "3e-4"}} (typed later by the dataclasses)."""
    tree: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form section.field=value")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value.strip()
    return tree


# Presets renamed, by their earlier names: commands, scripts and results.json files in the wild still say these.
PRESET_ALIASES = {"seed": "prototype"}


def preset_path(preset: str) -> Path:
    """A preset name (`quick`) or a path to a TOML file; an earlier name (PRESET_ALIASES), or a path to an
    earlier name's file in configs/ (`configs/ablation/seed.toml`), finds the file under its present name."""
    path = Path(preset)
    if path.suffix == ".toml":
        if path.is_file():
            return path
        renamed = path.with_name(f"{PRESET_ALIASES.get(path.stem, path.stem)}.toml")
        if renamed != path and renamed.is_file() and renamed.resolve().is_relative_to(CONFIG_DIR.resolve()):
            return renamed
        raise ConfigError(f"config file {path} does not exist")
    candidate = CONFIG_DIR / f"{PRESET_ALIASES.get(preset, preset)}.toml"
    if not candidate.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(known) or 'none'} (or pass a .toml path)")
    return candidate


def _merged(base: dict, values: dict) -> dict:
    """`values` over `base`, table by table."""
    out = dict(base)
    for key, value in values.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def preset_values(preset: str, _seen: tuple[Path, ...] = ()) -> dict:
    """A preset's settings as a dict; `base = "other"` in a preset starts from that preset's settings,
    so that a variant holds only what it changes (its own `preset` name is never inherited)."""
    path = preset_path(preset)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    values.setdefault("preset", path.stem)
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a preset name or a .toml path, got {base!r}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: base presets form a cycle ({' -> '.join(p.stem for p in _seen)} -> {path.stem})")
    inherited = preset_values(base, _seen + (path.resolve(),))
    inherited.pop("preset")
    return _merged(inherited, values)


def load_config(preset: str = "full", overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The defaults, then the preset's TOML (over its `base` preset's, if it names one), then
    `section.field=value` overrides: applied together, so each section is checked once, as it ends up."""
    return replace_fields(ExperimentConfig(), _merged(preset_values(preset), parse_overrides(list(overrides))), "")


def config_from_dict(values: dict) -> ExperimentConfig:
    """Rebuild a resolved config saved with `to_json` (unknown keys are errors)."""
    return replace_fields(ExperimentConfig(), values, "")
