"""`newllm recall`: how much multi-query associative recall (MQAR) each model buys with the state it carries.

Each model family is trained from scratch on MQAR (data/mqar.py) at several widths and scored on its
answers alone; the x-axis of the result is the bytes of state a sequence leaves behind, measured on
the model's own cache after a forward over one sequence: New-LLM's context vector, the LSTM's (h, c)
per layer, Mamba-2's conv and SSM states per layer, GPT-2's key/value cache at that length. As in Zoology (Arora et al. 2023, figure 2), attention
should solve the task at any width, and a recurrent model only once its state can hold the pairs.

A plain loop (AdamW, linear warm-up then cosine decay, early stop at `target` accuracy) rather than
the pipeline's Trainer: this is a diagnostic of the architectures, and the models are the project's
own classes, built through the registry.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import tomllib
import torch

from newllm.config import CONFIG_DIR, ConfigError, load_config, replace_fields
from newllm.data.mqar import IGNORE_INDEX, keyless_accuracy, mqar
from newllm.evaluation.decoding import cache_bytes, output_cache
from newllm.evaluation.speed import environment
from newllm.models.new_llm.modeling import FAST_PATHS
from newllm.models.registry import MODELS, build_model, count_parameters
from newllm.pipeline import device_from_name
from newllm.pipeline.setup import git_commit, utc_now

logger = logging.getLogger(__name__)

RESULTS_VERSION = 1
DEFAULT_CONFIG = CONFIG_DIR / "recall" / "sweep.toml"  # the GPU sweep
# Test and validation sets are drawn with seed + these, so no seed of a sweep draws a test or validation set that
# is another's training set, or one that is another's other held-out set.
TEST_SEED_OFFSET = 1_000_003
VALID_SEED_OFFSET = 2_000_003
# The New-LLM cell of the context-vector study (configs/study.toml), run beside the prototype's default cell.
STUDY_PRESET = "study"
# New-LLM fields that the sweep sets itself: the width, the depth, and no dropout (MQAR has no noise to regularise).
SWEPT_FIELDS = ("embedding_size", "context_size", "hidden_size", "num_hidden_layers", "dropout", "embedding_dropout",
                "context_dropout")  # fmt: skip
# The families: the registry's models, plus New-LLM once more with the study's cell.
FAMILIES = {
    "new_llm": ("new_llm", "New-LLM (prototype cell)"),
    "new_llm_mlp": ("new_llm", "New-LLM (study's MLP cell)"),
    **{name: (name, s.label) for name, s in MODELS.items() if name != "new_llm"},
}


@dataclass(frozen=True)
class RecallConfig:
    """The MQAR sweep: every family × width × valid (seq_len, pairs) × seed; configs/recall/sweep.toml sizes it."""

    models: tuple[str, ...] = tuple(FAMILIES)
    widths: tuple[int, ...] = (64, 128, 256)  # each model's width (New-LLM: embedding = context = hidden)
    layers: int = 2  # New-LLM's feed-forward layers, GPT-2's blocks, the LSTM's layers
    seq_lens: tuple[int, ...] = (64, 256)
    pairs: tuple[int, ...] = (4, 16)  # every seq_len × pairs with seq_len >= 4 × pairs is run
    # (seq_len, pairs) points run instead of seq_lens × pairs: Zoology's diagonal, more pairs in longer sequences.
    # --seq-lens and --pairs on the command line replace them with their product.
    points: tuple[tuple[int, int], ...] = ()
    vocab_size: int = 8192  # Zoology's: a large vocabulary keeps the keys from being memorised
    power_a: float = 0.01  # Zoology's query gaps (data/mqar.py)
    hide_answers: bool = False  # filler after each query instead of its value, as Zoology (data/mqar.py)
    steps: int = 1000  # the most optimizer steps; fewer once `target` is reached
    batch_size: int = 64
    train_examples: int = 20_000  # drawn once per setting and seed, cycled through in shuffled passes
    test_examples: int = 1000
    valid_examples: int | None = None  # what training checks and stops on; None: as many as test_examples
    eval_every: int = 100
    eval_batch_size: int = 250
    target: float = 0.99  # early stop at this query accuracy on the validation set
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: float = 0.1  # fraction of `steps`
    grad_clip: float = 1.0
    seeds: tuple[int, ...] = (0,)
    fast_path: str = "eager"  # New-LLM's training path on CUDA (NewLLMForCausalLM.set_fast_path); CPU is eager
    cpu_threads: int | None = None  # intra-op threads on CPU; tiny models lose time to more than one
    # Per family, config arguments that win over its width rule: {"new_llm": {"context_size": 512}} carries a
    # 2 KiB context at any width, {"mamba2": {"state_size": 4}} shrinks Mamba-2's state. A TOML file's
    # [options.<family>] tables; every run's row records them.
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        positive = ("layers", "vocab_size", "steps", "batch_size", "train_examples", "test_examples", "eval_every",
                    "eval_batch_size")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("widths", "seq_lens", "pairs", "models", "seeds"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: none given")
        for point in self.points:
            if len(point) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in point):
                raise ConfigError(f"points: expected [seq_len, pairs] pairs of positive integers, got {list(point)}")
            if point[0] < 4 * point[1]:
                raise ConfigError(f"points: seq_len {point[0]} is less than 4 × pairs for {point[1]} pairs")
        unknown = [m for m in self.models if m not in FAMILIES]
        if unknown:
            raise ConfigError(f"models: unknown model {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
        bad = [w for w in self.widths if w < 16 or w % 16]
        if bad:
            # GPT-2's builder works in steps of 16 (heads of 64, 32 or 16 dims)
            raise ConfigError(f"widths must be multiples of 16, got {bad[0]}")
        if not self.settings():
            raise ConfigError(f"no seq_len in {list(self.seq_lens)} is at least 4 × pairs for pairs {list(self.pairs)}")
        most = max(n for _, n in self.settings())
        if self.vocab_size // 2 - 1 < most:  # keys are tokens 1 … V/2 - 1 (data/mqar.py)
            raise ConfigError(f"vocab_size {self.vocab_size} has too few keys for {most} pairs")
        if not (self.lr > 0 and self.grad_clip > 0):
            raise ConfigError(f"lr and grad_clip must be positive, got {self.lr!r} and {self.grad_clip!r}")
        if not (self.weight_decay >= 0 and 0 <= self.warmup < 1):
            raise ConfigError(f"weight_decay must be >= 0 and warmup in [0, 1), got {self.weight_decay!r} and "
                              f"{self.warmup!r}")  # fmt: skip
        if self.valid_examples is not None and (isinstance(self.valid_examples, bool)
                                                or not isinstance(self.valid_examples, int) or self.valid_examples < 1):
            raise ConfigError(f"valid_examples must be a positive integer, got {self.valid_examples!r}")
        if not 0 < self.target <= 1:
            raise ConfigError(f"target must be in (0, 1], got {self.target!r}")
        if self.fast_path not in FAST_PATHS:
            raise ConfigError(f"fast_path: unknown {self.fast_path!r}; choose from {', '.join(FAST_PATHS)}")
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"seeds must be non-negative, got {list(self.seeds)}")
        for family, arguments in self.options.items():
            if family not in FAMILIES:
                raise ConfigError(f"options: unknown model {family!r}; choose from {', '.join(FAMILIES)}")
            if not isinstance(arguments, dict):
                raise ConfigError(f"options.{family}: expected a table of config arguments, got {arguments!r}")
            if family not in self.models:
                continue
            try:  # the family's config refuses a value it does not take
                built = model_config(family, self.widths[0], self, self.seq_lens[0])
            except (TypeError, ValueError) as err:
                raise ConfigError(f"options.{family}: {err}") from None
            # and an argument it does not know, which a PretrainedConfig would keep as a stray attribute
            known = set(type(built)().to_dict()) | set(type(built).attribute_map)
            unknown = sorted(set(arguments) - known)
            if unknown:
                raise ConfigError(f"options.{family}: {type(built).__name__} has no argument {unknown[0]!r}")

    def settings(self) -> list[tuple[int, int]]:
        """The (seq_len, pairs) points of the sweep: `points` if given, else each seq_len × pairs that fits (the pairs and
        their queries need 4 × pairs tokens)."""
        if self.points:
            return [(t, n) for t, n in self.points]
        return [(t, n) for t, n in itertools.product(self.seq_lens, self.pairs) if t >= 4 * n]


def quick_recall_config() -> RecallConfig:
    """Under a minute on one CPU thread: a small vocabulary, widths 32 and 64, 100 steps (what CI runs)."""
    return RecallConfig(
        widths=(32, 64), seq_lens=(32,), pairs=(2,), vocab_size=64, steps=100, batch_size=32, train_examples=3200,
        test_examples=256, eval_every=25, eval_batch_size=256, lr=3e-3, cpu_threads=1,
    )  # fmt: skip


def parse_option(text: str) -> tuple[str, str, object]:
    """`family.argument=value` (an --option flag) as its three parts, the value read as a TOML value (3, 0.5, true,
    "tanh"), a bare word as a string."""
    key, sep, raw = text.partition("=")
    family, dot, argument = key.strip().partition(".")
    if not (sep and dot and family and argument.strip() and raw.strip()):
        raise ConfigError(f"--option {text!r}: expected MODEL.ARGUMENT=VALUE, e.g. new_llm.context_size=512")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return family.strip(), argument.strip(), value


def load_recall_config(path: str | Path | None, quick: bool = False, overrides: dict | None = None,
                       options: list[str] | tuple[str, ...] = ()) -> RecallConfig:  # fmt: skip
    """The quick settings, or the defaults with a TOML file (configs/recall/sweep.toml) over them; then `overrides`
    (RecallConfig fields) and `options` (`family.argument=value`, over the file's [options.<family>] tables)."""
    config = quick_recall_config() if quick else RecallConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err})") from None
        tables = values.pop("options", None)  # a table of tables, which replace_fields does not type
        config = replace_fields(config, values)
        if tables is not None:
            if not isinstance(tables, dict):
                raise ConfigError(f"options: expected [options.<model>] tables, got {tables!r}")
            config = dataclasses.replace(config, options=tables)
    overrides = overrides or {}
    if any(overrides.get(name) is not None for name in ("seq_lens", "pairs")):
        config = dataclasses.replace(config, points=())  # the flags name the grid: their product
    config = replace_fields(config, overrides)
    if options:
        merged = {family: dict(arguments) for family, arguments in config.options.items()}
        for text in options:
            family, argument, value = parse_option(text)
            merged.setdefault(family, {})[argument] = value
        config = dataclasses.replace(config, options=merged)
    return config


# ---------------------------------------------------------------- models


def study_options() -> dict:
    """configs/study.toml's New-LLM cell (block, norms, candidate, tying ...), without its sizes and dropout: every
    option, the ones the preset leaves to NewLLMConfig's defaults included (results.json's `study_cell`)."""
    arguments = load_config(STUDY_PRESET).model.new_llm_arguments(defaults=True)
    return {key: value for key, value in arguments.items() if key not in SWEPT_FIELDS}


def model_config(family: str, width: int, config: RecallConfig, seq_len: int, options: dict | None = None):
    """The HF config of `family` at `width`: every model `config.layers` deep, no dropout, pad id 0 (each registry
    entry's `at_width` rule), then the study's cell (`options`, read from configs/study.toml if None) for
    new_llm_mlp, then `config.options[family]`."""
    name, _ = FAMILIES[family]
    special = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    cell = (options if options is not None else study_options()) if family == "new_llm_mlp" else {}
    rule = MODELS[name].at_width
    if rule is None:
        raise ValueError(f"model {name!r} has no width rule (ModelSpec.at_width) for the recall sweep")
    fields = cell | config.options.get(family, {})  # the rules let these win over their own choices
    return rule(config.vocab_size, width, config.layers, seq_len, **fields, **special)


@torch.no_grad()
def state_bytes(model, seq_len: int, device) -> int:
    """Bytes of the cache one sequence of `seq_len` tokens leaves behind (batch 1, the model's dtype)."""
    was_training = model.training
    model.eval()
    ids = torch.ones(1, seq_len, dtype=torch.long, device=device)
    try:
        size = cache_bytes(output_cache(model(input_ids=ids, use_cache=True)))
    finally:
        model.train(was_training)
    if size is None:
        raise RuntimeError(f"cannot size the cache of {model.config.model_type}")
    return size


# ---------------------------------------------------------------- training


@torch.no_grad()
def _answers(model, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int, device):
    """Per batch, in eval mode: the token ids and, at each position t (which predicts t+1), whether the argmax
    prediction is the label and whether t is scored (a query key whose value follows)."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(input_ids), batch_size):
            ids = input_ids[start : start + batch_size].to(device)
            target = labels[start : start + batch_size, 1:].to(device)  # (B, T-1): position t predicts t+1
            hit = model(input_ids=ids).logits[:, :-1].argmax(-1) == target  # (B, T-1)
            yield ids, hit, target != IGNORE_INDEX
    finally:
        model.train(was_training)


def query_accuracy(model, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int, device) -> float:
    """Share of answer positions whose argmax prediction (after reading the query key) is the value."""
    correct = total = 0
    for _, hit, scored in _answers(model, input_ids, labels, batch_size, device):
        correct += hit[scored].sum().item()
        total += scored.sum().item()
    return correct / total


def accuracy_by_pair(model, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int, device) -> dict:
    """Query accuracy split two ways, each a list over i = 1 … N: "pair", the queries of the i-th pair in
    the order the pairs were given; "query", the i-th query of each sequence. Where a model stalls, these say
    what it holds: all of the last pair and none of the first, or the first answer but not the later ones."""
    pairs = int((labels[0] != IGNORE_INDEX).sum())  # every key is queried once
    by_pair, by_query = torch.zeros(pairs), torch.zeros(pairs)
    for ids, hit, scored in _answers(model, input_ids, labels, batch_size, device):
        keys = ids[:, 0 : 2 * pairs : 2]  # (B, N), in the order given
        pair = (ids[:, :-1, None] == keys[:, None, :]).int().argmax(-1)  # (B, T-1): the pair a query key asks for
        query = scored.cumsum(1) - 1  # (B, T-1): the how-many-th query of its sequence
        by_pair.index_add_(0, pair[scored].cpu(), hit[scored].float().cpu())
        by_query.index_add_(0, query[scored].cpu(), hit[scored].float().cpu())
    count = len(input_ids)
    return {"pair": (by_pair / count).tolist(), "query": (by_query / count).tolist()}


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero: the learning rate's factor at `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_recall(model, train, valid, test, config: RecallConfig, device, seed: int) -> dict:
    """Train on `train` until `config.target` accuracy on `valid` or `config.steps`, then read `test` once: the
    checks, the test accuracy and the cost. The test set decides nothing, not even when to stop."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, round(config.warmup * config.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, config.steps, warmup))
    model.to(device).train()
    order = torch.empty(0, dtype=torch.long)
    valid_accuracy, loss, train_seconds = 0.0, float("nan"), 0.0
    history = []  # [step, validation accuracy, training loss] at each check: where a plateau ends
    for step in range(1, config.steps + 1):
        if len(order) < config.batch_size:  # a new shuffled pass over the training set
            order = torch.cat([order, torch.randperm(len(train.input_ids), generator=generator)])
        index, order = order[: config.batch_size], order[config.batch_size :]
        start = time.perf_counter()
        ids, labels = train.input_ids[index].to(device), train.labels[index].to(device)
        output = model(input_ids=ids, labels=labels)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = output.loss.item()  # also waits for the GPU, so the time below is the step's
        train_seconds += time.perf_counter() - start
        if step % config.eval_every == 0 or step == config.steps:
            valid_accuracy = query_accuracy(model, valid.input_ids, valid.labels, config.eval_batch_size, device)
            history.append([step, valid_accuracy, loss])
            logger.info("step %d: validation accuracy %.3f, training loss %.3f, %.1f ms a step", step,
                        valid_accuracy, loss, 1000 * train_seconds / step)  # fmt: skip
            if valid_accuracy >= config.target:
                break
    return {"accuracy": query_accuracy(model, test.input_ids, test.labels, config.eval_batch_size, device),
            "valid_accuracy": valid_accuracy, "steps": step, "reached_target": valid_accuracy >= config.target,
            "final_loss": loss, "train_seconds": train_seconds, "ms_per_step": 1000 * train_seconds / step,
            "history": history,
            "accuracy_by": accuracy_by_pair(model, test.input_ids, test.labels, config.eval_batch_size, device)}  # fmt: skip


# ---------------------------------------------------------------- the sweep


def with_keyless(results: dict) -> dict:
    """A recall.json whose runs all give their task's keyless score: runs written before it was recorded take it
    from their pairs and their config's hide_answers."""
    hidden = bool((results.get("config") or {}).get("hide_answers", False))
    runs = [{"keyless": keyless_accuracy(run["pairs"], hidden), **run} for run in results["runs"]]
    return {**results, "runs": runs}


# A process's start, data, checks and test beyond its training steps: 23-31 s a run in the GPU sweep's logs
# (docs/results/recall_gpu_sweep/sweep_third.log and sweep_fourth.log against the runs' train_seconds).
START_SECONDS = 30


def estimated_seconds(runs: list[dict], model: str, seq_len: int, width: int, steps: int) -> float | None:
    """How long a process of one run of `steps` steps takes, judged from earlier runs' `ms_per_step` as they ran
    (on their device, beside what they ran beside): the median step of `model` at `width` and the nearest sequence
    length, scaled by the length (each step of a scan walks every position), plus START_SECONDS. Without a run of
    that width, the model's slowest width at that length stands in; None without a run of the model.

    Every step is counted, though a run that reaches its target stops sooner. recall_sweep.sh starts no run whose
    estimate is longer than the time left before its deadline (ESTIMATE)."""
    own = [r for r in runs if r.get("model") == model and r.get("ms_per_step")]
    if not own:
        return None
    pool = [r for r in own if r["width"] == width] or own
    nearest = min({r["seq_len"] for r in pool}, key=lambda t: (abs(math.log(seq_len / t)), -t))
    at = [r for r in pool if r["seq_len"] == nearest]
    # each width's median step there (the run's own width only, where it has runs), the slowest of them
    ms = max(statistics.median(r["ms_per_step"] for r in at if r["width"] == w) for w in {r["width"] for r in at})
    return steps * ms * seq_len / nearest / 1000 + START_SECONDS


def run_recall(config: RecallConfig, device: str = "cpu", command: str | None = None, on_run=None) -> dict:
    """Every run of the sweep, as one JSON-ready results dict (provenance at the top, one row per run).

    `on_run(results)` is called after each run but the last with the runs so far, marked "complete": false. The
    CLI writes them, so a sweep that is stopped (Ctrl-C, a deadline's `timeout`) keeps the runs it finished."""
    device = device_from_name(device)
    options = study_options() if "new_llm_mlp" in config.models else {}
    header = {
        "version": RESULTS_VERSION,
        "command": command,
        "config": dataclasses.asdict(config),
        "study_cell": options,
        "labels": {family: FAMILIES[family][1] for family in config.models},
        "seeds": list(config.seeds),
        "commit": git_commit(),
        "device": device,
        "environment": environment(),
    }
    total = len(config.seeds) * len(config.settings()) * len(config.models) * len(config.widths)
    before = torch.get_num_threads()
    if config.cpu_threads is not None and torch.device(device).type == "cpu":
        torch.set_num_threads(config.cpu_threads)
    runs = []
    try:
        for seed, (seq_len, pairs) in itertools.product(config.seeds, config.settings()):
            train = mqar(config.vocab_size, pairs, seq_len, config.train_examples, seed, config.power_a,
                         config.hide_answers)  # fmt: skip
            test = mqar(config.vocab_size, pairs, seq_len, config.test_examples, seed + TEST_SEED_OFFSET,
                        config.power_a, config.hide_answers)  # fmt: skip
            valid = mqar(config.vocab_size, pairs, seq_len, config.valid_examples or config.test_examples,
                         seed + VALID_SEED_OFFSET, config.power_a, config.hide_answers)  # fmt: skip
            for family, width in itertools.product(config.models, config.widths):
                torch.manual_seed(seed)
                name = FAMILIES[family][0]
                model = build_model(name, model_config(family, width, config, seq_len, options)).to(device)
                if name == "new_llm":
                    model.set_fast_path(config.fast_path)
                row = {"model": family, "width": width, "seq_len": seq_len, "pairs": pairs, "seed": seed,
                       "parameters": count_parameters(model), "state_bytes": state_bytes(model, seq_len, device),
                       "chance": 1 / (config.vocab_size - config.vocab_size // 2),
                       "keyless": keyless_accuracy(pairs, config.hide_answers),
                       # what sets this run apart from another of its family in a merged sweep (recall-collect)
                       "options": config.options.get(family, {}), "lr": config.lr,
                       "weight_decay": config.weight_decay}  # fmt: skip
                row.update(train_recall(model, train, valid, test, config, device, seed))
                logger.info("%s width %d, T=%d, %d pairs, seed %d: accuracy %.3f after %d steps (validation %.3f)",
                            family, width, seq_len, pairs, seed, row["accuracy"], row["steps"],
                            row["valid_accuracy"])  # fmt: skip
                runs.append(row)
                del model
                if on_run is not None and len(runs) < total:
                    on_run({**header, "date": utc_now(), "complete": False, "runs": list(runs)})
    finally:
        torch.set_num_threads(before)
    return {**header, "date": utc_now(), "complete": True, "runs": runs}
