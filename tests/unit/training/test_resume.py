"""Resume is exact: a run SIGKILLed three times (after a step, twice mid-checkpoint) equals an unkilled one.

Each run is a child process (`_child` below) so the kill leaves exactly what a crash leaves: no
`finally`, no flush. The child kills itself with SIGKILL at a chosen point, which makes "a random
step" reproducible from the printed seed (NEWLLM_KILL_SEED re-runs one). Equality is bitwise: on
CPU, with one thread, the same seed and the Trainer's restored RNG, data position, optimizer and
scheduler, the resumed run replays the same floating-point operations in the same order.
The end of the file tests the other crash guard, on_nonfinite="skip".
"""

import dataclasses
import json
import math
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.trainer_callback import TrainerState

from newllm.config import TrainConfig
from newllm.models import NewLLMConfig, build_model
from newllm.training import loop
from newllm.training.loop import remove_incomplete_checkpoints

from ..models.conftest import tiny_new_llm_config
from tests.helpers import CountingSequences, collate

V = 64


def counting(n, seed, step=1):
    """Windows of 10 ids counting up by `step` (mod V) from random starts."""
    return CountingSequences(n, length=10, seed=seed, step=step, starts=V, vocab=V)


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(kill: str) -> None:
    """Patch the Trainer (in this child only) to SIGKILL itself at `kill` = "what:step"."""
    what, _, at = kill.partition(":")
    at = int(at or 0)
    if what == "step":  # after optimizer step `at`, before anything is logged or saved
        original_step_end = loop.HistoryCallback.on_step_end

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == at:
                _die()
            return original_step_end(self, args, state, control, **kwargs)

        loop.HistoryCallback.on_step_end = on_step_end
    elif what == "optimizer":  # checkpoint-`at` holds model.safetensors only
        original_save = Trainer._save_optimizer_and_scheduler

        def save_optimizer_and_scheduler(self, output_dir):
            if self.state.global_step == at:
                _die()
            original_save(self, output_dir)

        Trainer._save_optimizer_and_scheduler = save_optimizer_and_scheduler
    elif what == "state":  # checkpoint-`at` holds everything but half its trainer_state.json
        original_json = TrainerState.save_to_json

        def save_to_json(self, json_path):
            if self.global_step == at and "checkpoint-" in json_path:
                text = json.dumps(dataclasses.asdict(self), indent=2)
                with open(json_path, "w", encoding="utf-8") as handle:
                    handle.write(text[: len(text) // 2])
                _die()  # the OS keeps what was written: a truncated, unparsable file
            original_json(self, json_path)

        TrainerState.save_to_json = save_to_json


class _Sized(CountingSequences):
    """The same windows with their lengths given, what group_by_length needs (all 10: the sampler's order is
    still its own, a permutation cut into sorted megabatches)."""

    @property
    def lengths(self):
        return [len(ids) for ids in self.ids]


def _child(run_dir, out_dir, kill, resume, grouped=False):
    """One training run in a fresh process; writes its best weights and result to `out_dir`."""
    torch.set_num_threads(1)  # one thread: the same reduction order in every run
    _install_kill(kill)
    torch.manual_seed(0)
    config = NewLLMConfig(vocab_size=V, embedding_size=16, context_size=8, hidden_size=32, num_hidden_layers=1,
                          dropout=0.1, pad_token_id=0)  # dropout: the restored RNG state matters
    train = TrainConfig(
        epochs=8, patience=2, batch_size=8, eval_batch_size=32, lr=3e-2, warmup=0.1, save_steps=3, seed=7,
        group_by_length=grouped,
    )
    data = _Sized(48, length=10, seed=0, starts=V, vocab=V) if grouped else counting(48, 0)
    # validation counts in steps of 3: fitting the training task (steps of 1) soon hurts it, so early
    # stopping fires (epoch 5 of 8) and its counter must survive the kills
    result = loop.train(build_model("new_llm", config), data, counting(16, 1, step=3), collate, train,
                        run_dir, resume=resume, progress=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, out_dir / "best.safetensors")
    payload = {"history": result.history, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    (out_dir / "result.json").write_text(json.dumps(payload))



_STEPS_PER_EPOCH = 6  # 48 windows, batches of 8
_TIMING_KEYS = ("runtime", "per_second")  # eval_runtime, eval_samples_per_second, ...


def _run_child(run_dir, out_dir, kill="none", resume=False, grouped=False) -> int:
    """The child's exit code: 0, or -9 when it was SIGKILLed."""
    # forkserver: torch and transformers are imported once (seconds each), every run forks from a
    # process that never ran a thread pool, and nothing of pytest's state leaks into the child
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "newllm.training.loop", __name__])
    process = context.Process(target=_child, args=(str(run_dir), str(out_dir), kill, resume, grouped))
    process.start()
    process.join(timeout=120)
    if process.exitcode is None:
        process.kill()
        pytest.fail(f"training child still running after 120 s ({kill})")
    return process.exitcode


def _latest(run_dir: Path) -> Path:
    return max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def _comparable_state(checkpoint: Path) -> dict:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    log = [{k: v for k, v in entry.items() if not any(t in k for t in _TIMING_KEYS)} for entry in state["log_history"]]
    callbacks = dict(state["stateful_callbacks"])
    callbacks.pop("HistoryCallback")  # epoch timings
    return {"log_history": log, "stateful_callbacks": callbacks, "global_step": state["global_step"],
            "best_metric": state["best_metric"], "best_global_step": state.get("best_global_step")}


def _strip_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("grouped", [False, True], ids=["shuffled", "grouped_by_length"])
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, grouped):
    """grouped: batches from LengthGroupedSampler (group_by_length), whose order comes from (seed, epoch)."""
    seed = int(os.environ.get("NEWLLM_KILL_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    assert _run_child(tmp_path / "ref", tmp_path / "ref_out", grouped=grouped) == 0
    ref_last = _latest(tmp_path / "ref")
    last_step = int(ref_last.name.split("-")[1])
    ref_result = json.loads((tmp_path / "ref_out" / "result.json").read_text())
    assert ref_result["epochs_run"] < 8, "early stopping should fire in this setup"
    saves = list(range(3, last_step, 3))  # save_steps=3 checkpoints, all before the last step

    # three kills at increasing points: a random step, then two random checkpoint writes, the last one
    # after the early-stopping counter left 0 (the first evaluation worse than the best epoch's)
    counter_step = (ref_result["best_epoch"] + 1) * _STEPS_PER_EPOCH
    step_kill = rng.randint(4, 2 * _STEPS_PER_EPOCH)
    optimizer_kill = rng.choice([s for s in saves if step_kill < s < counter_step])
    state_kill = rng.choice([s for s in saves if s > counter_step])
    run_dir, out_dir = tmp_path / "run", tmp_path / "run_out"
    where = f"(NEWLLM_KILL_SEED={seed}: kills at step {step_kill}, optimizer {optimizer_kill}, state {state_kill})"
    for n, kill in enumerate([f"step:{step_kill}", f"optimizer:{optimizer_kill}", f"state:{state_kill}"]):
        assert _run_child(run_dir, out_dir, kill=kill, resume=n > 0, grouped=grouped) == -signal.SIGKILL, f"{kill} {where}"
    assert not (run_dir / f"checkpoint-{state_kill}" / "trainer_state.json").read_text().endswith("}\n")
    assert _run_child(run_dir, out_dir, resume=True, grouped=grouped) == 0, where

    result = json.loads((out_dir / "result.json").read_text())
    assert _strip_seconds(result["history"]) == _strip_seconds(ref_result["history"]), where
    assert (result["best_epoch"], result["epochs_run"]) == (ref_result["best_epoch"], ref_result["epochs_run"]), where
    assert all(row["seconds"] is not None for row in result["history"]), "epoch timings lost on resume"
    best, ref_best = load_file(out_dir / "best.safetensors"), load_file(tmp_path / "ref_out" / "best.safetensors")
    assert all(torch.equal(best[k], ref_best[k]) for k in ref_best), f"best weights differ {where}"
    last = _latest(run_dir)
    assert last.name == ref_last.name, where
    weights, ref_weights = load_file(last / "model.safetensors"), load_file(ref_last / "model.safetensors")
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights), f"last weights differ {where}"
    # the log history (losses, learning rates, eval losses at every step) and the early-stopping counter
    assert _comparable_state(last) == _comparable_state(ref_last), where
    assert json.loads((run_dir / "history.json").read_text()) == result["history"]


def test_incomplete_checkpoints_are_removed(tmp_path):
    complete = tmp_path / "checkpoint-6"
    complete.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (complete / name).write_bytes(b"x")
    (complete / "trainer_state.json").write_text('{"global_step": 6}\n')
    no_state = tmp_path / "checkpoint-9"
    no_state.mkdir()
    (no_state / "model.safetensors").write_bytes(b"x")
    half_state = tmp_path / "checkpoint-12"
    half_state.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (half_state / name).write_bytes(b"x")
    (half_state / "trainer_state.json").write_text('{"global_step": 1')
    assert remove_incomplete_checkpoints(tmp_path) == [half_state, no_state]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-6"]


# on_nonfinite="skip": a NaN step is dropped, not stepped and not fatal


def _nan_loss_at(model, calls):
    """Make the training loss NaN on the given forward calls (1-based, training mode only)."""
    seen = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            seen["n"] += 1
            if seen["n"] in calls:
                output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(hook)


def _skip_run(run_dir, calls, epochs=1):
    torch.manual_seed(0)
    model = build_model("new_llm", tiny_new_llm_config())
    _nan_loss_at(model, calls)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=epochs, patience=5, batch_size=16, lr=1e-2, on_nonfinite="skip")
    data = CountingSequences(64), CountingSequences(16, seed=1)
    result = loop.train(model, *data, collate, config, run_dir, progress=False)
    return before, result


def test_skip_drops_every_nan_step_and_leaves_the_weights_alone(tmp_path):
    before, result = _skip_run(tmp_path / "run", calls=range(1, 100))
    assert result.skipped_steps == 4  # 64 windows / 16 = 4 steps, all NaN
    after = result.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step moved a weight (AdamW decay?)"


def test_skip_survives_one_nan_step(tmp_path):
    before, result = _skip_run(tmp_path / "run", calls={3}, epochs=2)
    assert result.skipped_steps == 1
    assert all(math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"]) for row in result.history)
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())


def test_stop_is_the_default(tmp_path):
    torch.manual_seed(0)
    model = build_model("new_llm", tiny_new_llm_config())
    _nan_loss_at(model, {2})
    config = TrainConfig(epochs=1, batch_size=16)
    with pytest.raises(loop.TrainingDivergedError):
        data = CountingSequences(64), CountingSequences(16, seed=1)
        loop.train(model, *data, collate, config, tmp_path / "run", progress=False)
    assert not any((tmp_path / "run").glob("checkpoint-*"))  # stopped before writing any checkpoint


@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
def test_a_nan_validation_batch_stops_the_run_in_both_modes(tmp_path, on_nonfinite):
    # "skip" averages NaN losses away (logging_nan_inf_filter), also in evaluation; "stop" would count
    # a NaN validation loss as no improvement: either way a model failing on validation could be kept.
    torch.manual_seed(0)
    model = build_model("new_llm", tiny_new_llm_config())

    def nan_in_eval(module, inputs, output):
        if not module.training:
            output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(nan_in_eval)
    config = TrainConfig(epochs=2, batch_size=16, on_nonfinite=on_nonfinite)
    data = CountingSequences(64), CountingSequences(16, seed=1)
    with pytest.raises(loop.TrainingDivergedError, match="validation loss became nan at epoch 1.00"):
        loop.train(model, *data, collate, config, tmp_path / "run", progress=False)
    assert not any((tmp_path / "run").glob("checkpoint-*"))  # the epoch's checkpoint was never written
