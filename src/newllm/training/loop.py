"""Training on the Hugging Face Trainer: one call per model and stage.

The Trainer brings AdamW, warm-up + decay, clipping, bf16, gradient accumulation, multi-GPU and
resume; this module only chooses its settings, stops on a non-finite loss, and turns its log into a
per-epoch history (history.json / history.csv in the run folder, rewritten after every epoch).

Resume is exact (docs/reliability.md): a checkpoint holds weights, optimizer, scheduler, RNG states,
data position, early-stopping counter and log history, and a checkpoint folder half-written when the
process died is deleted before the Trainer picks the latest one.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, SequentialSampler
from transformers import EarlyStoppingCallback, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from newllm.config import TrainConfig
from newllm.data.batching import IGNORE_INDEX, LengthGroupedSampler
from newllm.training.checkpoint import check_trainer_checkpoint, write_json_atomic
from newllm.models.recurrent import RecurrentCache
from newllm.models.registry import carries_state, compiles_any_length
from newllm.training.distributed import any_rank, barrier, is_main_process, world_size

logger = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "train_ppl", "val_ppl", "lr", "seconds")
# What the Trainer writes into checkpoint-N, trainer_state.json last (Trainer._save_checkpoint), and
# the RNG state: rng_state.pth from one process, rng_state_<rank>.pth from each rank under torchrun/accelerate
# report_to → the packages that serve it (the first is the one to install)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
RNG_STATE_FILES = ("rng_state.pth", "rng_state_*.pth")


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
    seconds: float  # training time of the run, every process's when it was resumed
    skipped_steps: int = 0  # optimizer steps dropped for a non-finite gradient (on_nonfinite="skip")
    stopped_by_time_limit: bool = False  # TrainConfig.time_limit ended the stage before its schedule did


def _ppl(loss):
    return None if loss is None else math.exp(min(loss, 50.0))  # exp(50) already says "diverged"


def history_from_log(log_history: list[dict], seconds_per_epoch: dict | None = None) -> list[dict]:
    """One row per evaluated epoch from `trainer.state.log_history`."""
    rows: dict[int, dict] = {}
    losses: dict[int, list[tuple[float, int]]] = {}  # epoch → (mean loss, optimizer steps it covers)
    last_step = 0
    for entry in log_history:
        if "epoch" not in entry:
            continue
        # a log at epoch 1.375 (a save_steps log) belongs to the 2nd epoch; epoch ends log whole numbers
        epoch = max(1, math.ceil(entry["epoch"] - 1e-6))
        row = rows.setdefault(epoch, dict.fromkeys(HISTORY_FIELDS) | {"epoch": epoch})
        if "loss" in entry:
            step = entry.get("step", last_step + 1)
            losses.setdefault(epoch, []).append((entry["loss"], max(step - last_step, 1)))
            last_step = step
            row["lr"] = entry.get("learning_rate")
        if "eval_loss" in entry:
            row["val_loss"] = entry["eval_loss"]
            row["val_ppl"] = _ppl(entry["eval_loss"])
    for epoch, parts in losses.items():
        if len(parts) == 1:
            loss = parts[0][0]
        else:  # each log is the mean since the previous one: weight by the steps it covers
            loss = sum(value * steps for value, steps in parts) / sum(steps for _, steps in parts)
        rows[epoch]["train_loss"] = loss
        rows[epoch]["train_ppl"] = _ppl(loss)
    for epoch, seconds in (seconds_per_epoch or {}).items():
        if int(epoch) in rows:  # keys are strings once restored from trainer_state.json
            rows[int(epoch)]["seconds"] = seconds
    return [rows[e] for e in sorted(rows) if rows[e]["val_loss"] is not None]


def write_history(history: list[dict], run_dir: Path) -> None:
    write_json_atomic(run_dir / "history.json", history)
    tmp = run_dir / ".history.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(run_dir / "history.csv")


class SaveEveryCallback(TrainerCallback):
    """Checkpoints every `save_steps` optimizer steps on top of the per-epoch ones (train.save_steps)."""

    def __init__(self, save_steps: int):
        self.save_steps = save_steps

    def on_step_end(self, args, state, control, **kwargs):
        # logging at the same steps keeps the loss averages identical after a resume (the Trainer
        # averages the loss since its last log, and a resumed run has not seen the earlier steps)
        if state.global_step % self.save_steps == 0:
            control.should_save = True
            control.should_log = True


class HistoryCallback(TrainerCallback, ExportableState):
    """Times epochs, writes the history after each evaluation, and stops on a non-finite loss."""

    def __init__(self):
        self.seconds: dict[int, float] = {}
        self.timed_here: set[int] = set()  # epochs this process timed (the rest came from a checkpoint)
        self._epoch_start = None

    def earlier_seconds(self) -> float:
        """Training time of the epochs earlier processes ran (restored on resume), for totals across resumes."""
        return sum(s for epoch, s in self.seconds.items() if int(epoch) not in self.timed_here)

    def state(self) -> dict:
        # saved in trainer_state.json so a resumed run's history keeps the earlier epochs' timings;
        # no constructor args: the Trainer rebuilds the callback from them on resume
        return {"args": {}, "attributes": {"seconds": {str(epoch): s for epoch, s in self.seconds.items()}}}

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._epoch_start is not None:
            epoch = int(round(state.epoch))
            self.seconds[epoch] = time.perf_counter() - self._epoch_start
            self.timed_here.add(epoch)

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingDivergedError(
                f"training loss became {loss} at epoch {state.epoch:.2f} (step {state.global_step}); "
                "lower the learning rate; the best checkpoint so far is untouched"
            )

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # under torchrun every rank runs this; one writes (docs/distributed.md)
            write_history(history_from_log(state.log_history, self.seconds), Path(args.output_dir))


class TimeLimitCallback(TrainerCallback):
    """Stops training after the epoch whose successor would end past `seconds` (TrainConfig.time_limit).

    Timed at each epoch's evaluation, assuming the next epoch takes as long as the last one, evaluation
    included; decided when that epoch is saved, once every callback's on_evaluate has run. So early
    stopping has had its say whatever the callbacks' order (a resumed Trainer puts the callbacks that
    keep state, early stopping among them, last), and a run that ends anyway is not marked. The epoch
    it stops after is saved; the Trainer then restores the best model.
    """

    def __init__(self, seconds: float, clock=time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self.stopped = False
        self._start = self._last = None
        self._overrun = None  # set at an evaluation, decided at the save that follows it

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = self._last = self.clock()

    def on_evaluate(self, args, state, control, **kwargs):
        now = self.clock()
        epoch_seconds, self._last = now - self._last, now
        self._overrun = now - self._start + epoch_seconds > self.seconds

    def on_save(self, args, state, control, **kwargs):
        overrun, self._overrun = self._overrun, None
        if overrun is None:  # a save between evaluations (train.save_steps)
            return
        # every rank decides (any_rank is collective on all of them; a rank left training would wait forever)
        overrun = any_rank(overrun)
        if control.should_training_stop or state.epoch >= args.num_train_epochs:
            return  # early stopping or the schedule ends the run here anyway
        if overrun:
            control.should_training_stop = True
            self.stopped = True


class SkipNonFiniteCallback(TrainerCallback, ExportableState):
    """Drops an optimizer step whose gradients are NaN or infinite (on_nonfinite="skip").

    A NaN loss makes every gradient NaN (clipping multiplies them all by the NaN norm), so checking the
    gradients catches it however many micro-batches were accumulated. Setting them to None makes AdamW
    leave each parameter and its moments untouched, weight decay included; the LR schedule still advances.
    The Trainer's logging_nan_inf_filter keeps the logged loss finite (a NaN step counts as the mean so far).
    """

    def __init__(self):
        self.skipped = 0

    def state(self) -> dict:
        return {"args": {}, "attributes": {"skipped": self.skipped}}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not torch.stack([g.isfinite().all() for g in grads]).all():
            for parameter in model.parameters():
                parameter.grad = None
            self.skipped += 1


def _has_checkpoints(run_dir: Path) -> bool:
    return any(run_dir.glob("checkpoint-*"))


def _is_complete_checkpoint(folder: Path) -> bool:
    """Whether the Trainer finished writing `folder`: all its files, and a trainer_state.json that parses."""
    if not all((folder / name).is_file() for name in CHECKPOINT_FILES):
        return False
    if not any(path.is_file() for pattern in RNG_STATE_FILES for path in folder.glob(pattern)):
        return False
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


def has_complete_checkpoint(run_dir) -> bool:
    """Whether `run_dir` holds a checkpoint-N folder a resume can start from."""
    return any(_is_complete_checkpoint(folder) for folder in Path(run_dir).glob("checkpoint-*"))


def remove_incomplete_checkpoints(run_dir: Path) -> list[Path]:
    """Delete checkpoint-N folders left half-written (or half-deleted) by a killed run; returns them.

    The Trainer writes checkpoint-N in place, trainer_state.json last and without a rename, and picks
    the highest N on resume: an incomplete folder would be resumed from (or fail to load) otherwise.
    """
    removed = [folder for folder in sorted(run_dir.glob("checkpoint-*")) if not _is_complete_checkpoint(folder)]
    for folder in removed:
        shutil.rmtree(folder)
    return removed


class QuietProgressCallback(ProgressCallback):
    """The Trainer's progress bars without the log dicts it writes under them."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def _sequence_nll(logits: torch.Tensor, labels: torch.Tensor, rows: int = 8) -> torch.Tensor:
    """(B, 2) float64: each sequence's summed next-token loss and its number of scored tokens (the models shift the
    labels inside: the logits at t predict the label at t + 1; -100 is not scored). In fp32, a few rows at a time, so
    that evaluation holds no (B, T, V) copy of the logits."""
    targets = labels[:, 1:]
    nll = torch.cat([
        F.cross_entropy(logits[i : i + rows, :-1].float().transpose(1, 2), targets[i : i + rows],
                        ignore_index=IGNORE_INDEX, reduction="none").sum(-1, dtype=torch.float64)
        for i in range(0, len(targets), rows)
    ])  # fmt: skip
    return torch.stack([nll, (targets != IGNORE_INDEX).sum(-1).double()], dim=-1)


class FiniteEvalTrainer(Trainer):
    """The Trainer, with the validation loss a mean over tokens, stopping on a validation batch whose loss is NaN or
    infinite.

    The Trainer's own `eval_loss` is the mean over validation sequences of their batch's mean token loss: each batch
    counts by its number of sequences, not of tokens, and DailyDialog's batches differ in length. Here every
    sequence's loss is summed with its scored tokens, over every process, so `eval_loss` (the history's val_loss,
    early stopping, the best checkpoint) is the loss per token, as the test perplexity is (evaluation/perplexity.py).

    A NaN validation loss would otherwise count as "no improvement" (on_nonfinite="stop"), or be dropped
    from the mean by logging_nan_inf_filter (on_nonfinite="skip"), and a model that fails on part of
    the validation set could still be kept as the best.
    """

    group_by_length: bool = False  # TrainConfig.group_by_length: batches of similar length
    grouped_sampler: LengthGroupedSampler | None = None  # its sampler, once the training data loader is built
    _token_sums: torch.Tensor | None = None  # during evaluation_loop: loss summed over scored tokens, their number

    def get_decay_parameter_names(self, model) -> list[str]:
        """Weight decay on the matrices (and embeddings, convolution kernels) only: every parameter of two or more
        dimensions. The Trainer's own rule finds norms and biases by their names, which misses Mamba-2's final
        `norm_f` and its per-head `A_log` and `D` (the reference Mamba code exempts those); for New-LLM, TinyGPT2
        and the LSTM both rules pick the same parameters at every preset (tests/unit/training/test_loop.py)."""
        return [name for name, parameter in model.named_parameters() if parameter.dim() >= 2]

    def _get_train_sampler(self, *args, **kwargs):
        if not self.group_by_length:
            return super()._get_train_sampler(*args, **kwargs)
        # the megabatch unit is one optimizer step's items, as transformers' own group_by_length uses
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        self.grouped_sampler = LengthGroupedSampler(self.train_dataset.lengths, batch, seed=self.args.seed)
        return self.grouped_sampler

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self._token_sums is None or inputs.get("labels") is None:  # not one of evaluation_loop's batches
            loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        else:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
            # per sequence its summed loss and scored tokens, gathered over the processes as the Trainer gathers its
            # losses, which drops the sequences the last batch repeats to even out the processes
            self._token_sums += self.gather_function(_sequence_nll(outputs["logits"], inputs["labels"])).sum(0).cpu()
            loss, logits, labels = loss.detach().mean(), None, None
        if loss is not None and not torch.isfinite(loss).all():
            raise TrainingDivergedError(
                f"validation loss became {loss.float().mean().item()} at epoch {self.state.epoch:.2f} "
                f"(step {self.state.global_step}); lower the learning rate; the best checkpoint so far is untouched"
            )
        return loss, logits, labels

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):  # fmt: skip
        self._token_sums = torch.zeros(2, dtype=torch.float64)  # loss summed over scored tokens, their number
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)  # fmt: skip
        finally:
            sums, self._token_sums = self._token_sums, None
        if f"{metric_key_prefix}_loss" in output.metrics and sums[1] > 0:
            output.metrics[f"{metric_key_prefix}_loss"] = (sums[0] / sums[1]).item()
        return output


class StatefulTrainer(FiniteEvalTrainer):
    """Truncated BPTT: each row's recurrent state is carried (detached) from one training batch to the next.

    Needs a `StreamLanes` dataset read in order with batch size == lanes (row r of every batch is
    the same lane) and a model whose forward takes and returns `state` (New-LLM, the LSTM).
    Evaluation is untouched: every validation window starts from a reset state.
    """

    carried: RecurrentCache | None = None
    carry: bool = True  # False: the lanes' order without the carried state (TrainConfig.stateful_carry)

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)  # the lanes' order is the point: no shuffling

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        outputs = model(**inputs, state=self.carried, use_cache=True)
        if self.carry:  # without carry `carried` stays None: every window starts from a reset state
            self.carried = RecurrentCache(tuple(s.detach() for s in outputs.state.states))
        return (outputs.loss, outputs) if return_outputs else outputs.loss


class SamplerEpochCallback(TrainerCallback):
    """Tells the length-grouped sampler (group_by_length) which epoch begins, as the Trainer means to through the data
    loader: under several processes, a run resumed in the middle of an epoch wraps the sampler one level deeper
    (accelerate's SkipBatchSampler around its BatchSamplerShard) than that reaches, and the resumed epoch would
    read epoch 0's batches. state.epoch is the epochs done so far, a fraction after a mid-epoch resume."""

    def __init__(self, trainer: FiniteEvalTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.grouped_sampler is not None:
            self.trainer.grouped_sampler.set_epoch(math.floor(state.epoch + 1e-6))


class ResetStateCallback(TrainerCallback):
    """Every epoch starts each lane from the model's initial state (and a resumed run does too).

    It also tells the lanes which epoch begins, so that rotating lanes cut the stream anew.
    """

    def __init__(self, trainer: StatefulTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.carried = None
        start_epoch = getattr(self.trainer.train_dataset, "start_epoch", None)
        if start_epoch is not None:
            start_epoch(int(round(state.epoch)))  # epochs done so far: also right after a resume


def _check_stateful(model, train_dataset, config: TrainConfig) -> None:
    if not carries_state(model):
        raise ValueError(f"stateful training needs a recurrent model (new_llm, lstm), not {type(model).__name__}")
    lanes = getattr(train_dataset, "lanes", None)
    if lanes != config.batch_size:
        raise ValueError(
            f"stateful training needs a StreamLanes dataset with lanes == batch_size ({config.batch_size}), got {lanes}"
        )
    if world_size() > 1:
        raise ValueError("stateful training is single-process: each rank would need its own lanes")
    if config.save_steps > 0:
        # a checkpoint does not hold the lanes' carried state, so a resume mid-epoch could not be exact
        raise ValueError("stateful training checkpoints at epoch ends only: set save_steps = 0")


def use_torch_compile(model, train_dataset, config: TrainConfig, device: str) -> bool:
    """Whether the Trainer compiles `model`: the baselines on CUDA when `compile` is set (New-LLM runs its own fast
    path; on CPU inductor needs a C++ toolchain and gains these small models little), except a model that does not
    compile with a symbolic length (Mamba-2) on batches whose width varies: DialogWindows, padded to their longest
    item. That model trains eagerly there, as fast as it can without torch.compile, and says so."""
    if not config.compile or hasattr(model, "set_fast_path") or device == "cpu":
        return False
    if hasattr(train_dataset, "lengths") and not compiles_any_length(model):
        logger.info("%s trains without torch.compile here: its batches change width and it does not compile with a "
                    "symbolic length", type(model).__name__)  # fmt: skip
        return False
    return True


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
    skip_nonfinite = config.on_nonfinite == "skip"
    if config.stateful:
        _check_stateful(model, train_dataset, config)
    if config.group_by_length and not hasattr(train_dataset, "lengths"):
        raise ValueError(f"group_by_length groups items by their lengths, which {type(train_dataset).__name__} does not "
                         "give: it applies to dialogues (DialogWindows), not to equal-length windows")  # fmt: skip
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu and torch.device(device).index not in (None, 0) and world_size() == 1:
        # the Trainer of one process trains on the first GPU it sees, whatever index was asked for
        raise ValueError(f"device {device}: training picks its GPU by CUDA_VISIBLE_DEVICES; run with "
                         f"CUDA_VISIBLE_DEVICES={torch.device(device).index} and --device cuda")  # fmt: skip
    if _has_checkpoints(run_dir) and not resume:
        if not overwrite:
            raise RunExistsError(
                f"{run_dir} already holds a run: pass --resume to continue it or --overwrite to start again"
            )
        if is_main_process():  # the other ranks wait for it at the barrier below
            for old in run_dir.glob("checkpoint-*"):
                shutil.rmtree(old)
    if resume:
        if is_main_process():
            remove_incomplete_checkpoints(run_dir)
        if not _has_checkpoints(run_dir):
            raise FileNotFoundError(f"nothing to resume in {run_dir}: it holds no complete checkpoint-* folder")
        if is_main_process():  # rank 0 alone: the others could see a folder it is still deleting above
            check_trainer_checkpoint(get_last_checkpoint(str(run_dir)))  # the one the Trainer resumes from
    run_dir.mkdir(parents=True, exist_ok=True)
    # compile: New-LLM runs its own fast path (compiled steps, CUDA-graphed scan; a no-op on CPU), the
    # baselines go through torch.compile. The recurrence is a Python loop torch.compile would unroll.
    if config.report_to != "none" and not any(importlib.util.find_spec(m) for m in TRACKERS[config.report_to]):
        raise ValueError(f"report_to = {config.report_to} needs the {TRACKERS[config.report_to][0]} package "
                         f"(pip install {TRACKERS[config.report_to][0]}, or newllm's [tracking] extra)")  # fmt: skip
    own_fast_path = hasattr(model, "set_fast_path")
    if own_fast_path:
        model.set_fast_path(config.fast_path if config.compile else "eager")
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
        torch_compile=use_torch_compile(model, train_dataset, config, device),
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        # "stop": a NaN must reach HistoryCallback, not be averaged away; "skip": average it away
        logging_nan_inf_filter=skip_nonfinite,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_total_limit=2,  # the best and the latest: enough to resume and to restore the best
        restore_callback_states_from_checkpoint=True,  # early-stopping counter and epoch timings
        prediction_loss_only=True,  # evaluation needs the loss only, not (B, T, V) logits
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to=config.report_to,
        ddp_find_unused_parameters=False,  # every parameter gets a gradient (tests/unit/models/test_contract.py)
        disable_tqdm=not progress,
    )
    if on_gpu and world_size() == 1:
        # One process, one GPU: on a host with several the Trainer would wrap the model in DataParallel, which
        # multiplies the batch (and shortens the schedule) by the GPUs' number; several GPUs train as several
        # processes (torchrun, docs/distributed.md).
        _ = args.n_gpu  # sets up the devices, then
        args._n_gpu = 1
    # TrainingArguments set up the process group: no rank looks for checkpoints before rank 0's cleanup above
    # is done (gloo connects all ranks when the group is created, NCCL only at the first collective)
    barrier()
    callbacks = [HistoryCallback(), EarlyStoppingCallback(early_stopping_patience=config.patience)]
    if config.save_steps > 0:
        callbacks.append(SaveEveryCallback(config.save_steps))
    if skip_nonfinite:
        callbacks.append(SkipNonFiniteCallback())
    time_limit = TimeLimitCallback(config.time_limit) if config.time_limit > 0 else None
    if time_limit is not None:
        callbacks.append(time_limit)
    trainer = (StatefulTrainer if config.stateful else FiniteEvalTrainer)(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        callbacks=callbacks,
    )
    # Our models take **kwargs and return a mean loss; without this the Trainer assumes they divide
    # by num_items_in_batch and multiplies the loss by the world size (and skips the grad_accum division).
    trainer.model_accepts_loss_kwargs = False
    trainer.group_by_length = config.group_by_length
    if config.group_by_length:
        trainer.add_callback(SamplerEpochCallback(trainer))
    if config.stateful:
        trainer.carry = config.stateful_carry
        trainer.add_callback(ResetStateCallback(trainer))
    if not logger.isEnabledFor(logging.INFO):  # `newllm -q`: not the Trainer's per-epoch dicts either
        trainer.remove_callback(PrinterCallback)
        if trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(QuietProgressCallback)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - start
    # on resume the Trainer replaces these callbacks by ones rebuilt from the checkpoint's state
    history_callback = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HistoryCallback))
    skipped = sum(cb.skipped for cb in trainer.callback_handler.callbacks if isinstance(cb, SkipNonFiniteCallback))
    history = history_from_log(trainer.state.log_history, history_callback.seconds)
    if trainer.is_world_process_zero():
        write_history(history, run_dir)
    best = min(history, key=lambda row: row["val_loss"]) if history else None
    return TrainResult(
        model=trainer.model,
        history=history,
        best_epoch=best["epoch"] if best else None,
        epochs_run=len(history),
        seconds=seconds + history_callback.earlier_seconds(),  # all processes' training, not only this one's
        skipped_steps=skipped,
        stopped_by_time_limit=time_limit is not None and time_limit.stopped,
    )
