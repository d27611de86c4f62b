"""The Trainer wrapper: learns, keeps the best epoch, writes the history, refuses to clobber a run."""

import functools
import json
import logging
import math

import pytest
import torch
from transformers import Trainer, TrainingArguments

from newllm.config import TrainConfig, load_config
from newllm.data import DialogWindows
from newllm.data import collate as pad_collate
from newllm.evaluation.perplexity import evaluate_perplexity
from newllm.models import BaselineShape, NewLLMConfig, build_model, matched_configs
from newllm.training.loop import FiniteEvalTrainer, RunExistsError, TrainingDivergedError, history_from_log, train

from tests.helpers import CountingSequences, collate

from ..models.conftest import VOCAB, tiny_new_llm_config


def _train(run_dir, **overrides):
    torch.manual_seed(0)
    config = TrainConfig(**{"epochs": 3, "patience": 2, "batch_size": 16, "eval_batch_size": 32, "lr": 1e-2, **overrides})
    model = build_model("new_llm", tiny_new_llm_config())
    return train(model, CountingSequences(128), CountingSequences(32, seed=1), collate, config, run_dir, progress=False)


def test_learns_and_writes_history(tmp_path):
    result = _train(tmp_path / "run")
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.history[-1]["val_loss"] < math.log(VOCAB) - 1.0  # far better than uniform
    assert result.best_epoch == min(result.history, key=lambda r: r["val_loss"])["epoch"]
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved == result.history
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,val_loss,train_ppl,val_ppl,lr,seconds"
    assert all(row["seconds"] > 0 for row in result.history)


def test_existing_run_is_not_overwritten_without_asking(tmp_path):
    _train(tmp_path / "run", epochs=1)
    with pytest.raises(RunExistsError, match="--resume .* --overwrite"):
        _train(tmp_path / "run", epochs=1)


def test_overwrite_starts_again(tmp_path):
    _train(tmp_path / "run", epochs=1)
    torch.manual_seed(0)
    model = build_model("new_llm", tiny_new_llm_config())
    config = TrainConfig(epochs=1, batch_size=16)
    result = train(model, CountingSequences(64), CountingSequences(16), collate, config, tmp_path / "run", overwrite=True, progress=False)
    assert result.epochs_run == 1


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    model = build_model("new_llm", tiny_new_llm_config())
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(model, CountingSequences(8), CountingSequences(8), collate, TrainConfig(epochs=1), tmp_path / "run", resume=True)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    model = build_model("new_llm", tiny_new_llm_config())
    with torch.no_grad():
        model.lm_head.bias.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="training loss became nan"):
        train(model, CountingSequences(32), CountingSequences(8), collate, TrainConfig(epochs=1, batch_size=16), tmp_path / "run", progress=False)


def test_history_pairs_train_and_eval_logs_by_epoch():
    log = [
        {"loss": 2.0, "learning_rate": 0.1, "epoch": 1.0},
        {"eval_loss": 1.5, "epoch": 1.0},
        {"loss": 1.0, "learning_rate": 0.05, "epoch": 2.0},
        {"eval_loss": 1.2, "epoch": 2.0},
        {"train_runtime": 3.0, "epoch": 2.0},
    ]
    history = history_from_log(log, {1: 1.5, 2: 1.4})
    assert [(r["epoch"], r["train_loss"], r["val_loss"], r["seconds"]) for r in history] == [(1, 2.0, 1.5, 1.5), (2, 1.0, 1.2, 1.4)]
    assert history[0]["val_ppl"] == pytest.approx(math.exp(1.5))


def test_compile_gives_new_llm_its_own_fast_path_not_torch_compile(tmp_path, monkeypatch):
    seen = {}
    original = train.__globals__["TrainingArguments"]

    def recording_arguments(**kwargs):
        seen["torch_compile"] = kwargs["torch_compile"]
        return original(**kwargs)

    monkeypatch.setitem(train.__globals__, "TrainingArguments", recording_arguments)
    result = _train(tmp_path / "run", epochs=1, compile=True)
    cell = result.model.model.cell
    assert (cell.compile_steps, cell.cuda_graphs) == (True, True)  # inert on CPU, used on CUDA
    assert seen["torch_compile"] is False  # torch.compile would unroll the recurrence


def test_fast_path_picks_new_llms_path_when_compiling(tmp_path):
    cell = _train(tmp_path / "run", epochs=1, compile=True, fast_path="kernel").model.model.cell
    assert (cell.kernel, cell.compile_steps, cell.cuda_graphs) == (True, False, False)  # on CPU: the eager scan
    cell = _train(tmp_path / "eager", epochs=1, compile=False, fast_path="kernel").model.model.cell
    assert not (cell.kernel or cell.compile_steps or cell.cuda_graphs)  # no compile: eager, whatever fast_path says


def test_compile_is_ignored_on_cpu_for_the_baselines(tmp_path, monkeypatch):
    from newllm.models.registry import matched_configs

    seen = {}
    original = train.__globals__["TrainingArguments"]
    monkeypatch.setitem(train.__globals__, "TrainingArguments",
                        lambda **kwargs: seen.update(kwargs) or original(**kwargs))  # fmt: skip
    torch.manual_seed(0)
    lstm = build_model("lstm", matched_configs(tiny_new_llm_config(), names=("new_llm", "lstm"))["lstm"])
    config = TrainConfig(epochs=1, batch_size=16, eval_batch_size=32, compile=True)
    train(lstm, CountingSequences(32), CountingSequences(8, seed=1), collate, config, tmp_path / "run", progress=False)
    assert seen["torch_compile"] is False


def test_torch_compile_skips_a_model_that_cannot_trace_a_symbolic_length_on_varying_batches(caplog):
    from newllm.models.mamba2 import mamba2_config
    from newllm.models.registry import matched_configs
    from newllm.training.loop import use_torch_compile

    gpt2 = build_model("tinygpt2", matched_configs(tiny_new_llm_config(), names=("new_llm", "tinygpt2"))["tinygpt2"])
    mamba2 = build_model("mamba2", mamba2_config(vocab_size=VOCAB, hidden_size=32, num_layers=1))
    new_llm = build_model("new_llm", tiny_new_llm_config())
    dialogues, windows = _dialogues(8, seed=0), CountingSequences(8)
    on = TrainConfig(compile=True)
    # step 1's equal windows: every baseline compiles on CUDA; step 2's dialogues: all but Mamba-2
    assert use_torch_compile(mamba2, windows, on, "cuda") and use_torch_compile(gpt2, dialogues, on, "cuda")
    with caplog.at_level(logging.INFO, logger="newllm.training.loop"):
        assert not use_torch_compile(mamba2, dialogues, on, "cuda")
    assert "Mamba2ForCausalLM trains without torch.compile" in caplog.text
    # never on CPU, never without compile, never for New-LLM (its own fast path)
    assert not use_torch_compile(gpt2, windows, on, "cpu")
    assert not use_torch_compile(gpt2, windows, TrainConfig(compile=False), "cuda")
    assert not use_torch_compile(new_llm, windows, on, "cuda")


def _stateful_run(tmp_path, model, epochs=2, batch_size=4, rotation_seed=None, inputs=None, carry=True):
    from newllm.data.batching import StreamLanes

    calls = []
    forward = model.forward

    @functools.wraps(forward)  # keeps the signature: train() checks that forward takes `state`
    def recording_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        if model.training:
            calls.append((kwargs.get("state"), out.state))
            if inputs is not None:
                inputs.append(kwargs["input_ids"].cpu())
        return out

    model.forward = recording_forward
    stream = torch.arange(4 * 3 * 13) % VOCAB  # 4 lanes × 3 windows of 13 tokens
    lanes = StreamLanes(stream, block_size=12, lanes=batch_size, rotation_seed=rotation_seed)
    config = TrainConfig(epochs=epochs, patience=5, batch_size=batch_size, eval_batch_size=8, lr=1e-3, stateful=True,
                         stateful_carry=carry)  # fmt: skip
    train(model, lanes, CountingSequences(8, seed=1), collate, config, tmp_path / "run", progress=False)
    return calls


def test_stateful_training_carries_each_rows_state_and_resets_every_epoch(tmp_path):
    torch.manual_seed(0)
    calls = _stateful_run(tmp_path, build_model("new_llm", tiny_new_llm_config()))
    assert len(calls) == 6  # 3 batches per epoch, 2 epochs
    for step, (given, returned) in enumerate(calls):
        if step % 3 == 0:
            assert given is None, f"step {step} starts an epoch: fresh state"
        else:
            previous = calls[step - 1][1].states[0]
            assert given.states[0].requires_grad is False  # truncated: no gradient into the last batch
            torch.testing.assert_close(given.states[0], previous.detach())


def test_stateful_training_without_carry_reads_the_lanes_in_order_from_reset_states(tmp_path):
    torch.manual_seed(0)
    inputs = []
    calls = _stateful_run(tmp_path, build_model("new_llm", tiny_new_llm_config()), inputs=inputs, carry=False)
    assert len(calls) == 6 and all(given is None for given, _ in calls)  # every window from a reset state
    stream = torch.arange(4 * 3 * 13) % VOCAB
    assert inputs[1][2].equal(stream[2 * 39 + 13 : 2 * 39 + 26])  # batch 1, row 2: lane 2's second window


def test_stateful_training_reads_each_epoch_from_its_rotated_lanes(tmp_path):
    from newllm.data.batching import StreamLanes

    torch.manual_seed(0)
    inputs = []
    _stateful_run(tmp_path, build_model("new_llm", tiny_new_llm_config()), epochs=3, rotation_seed=3, inputs=inputs)
    expected = StreamLanes(torch.arange(4 * 3 * 13) % VOCAB, block_size=12, lanes=4, rotation_seed=3)
    offsets = []
    for epoch in range(3):  # 3 batches an epoch: batch k holds window k of the 4 lanes cut for this epoch
        expected.start_epoch(epoch)
        offsets.append(expected.offset)
        for k in range(3):
            batch = torch.stack([expected[k * 4 + r]["input_ids"] for r in range(4)])
            assert inputs[3 * epoch + k].equal(batch), (epoch, k)
    assert len(set(offsets)) == 3  # the epochs did read different cuts


def test_stateful_training_refuses_a_transformer_and_a_wrong_lane_count(tmp_path):
    from newllm.data.batching import StreamLanes
    from newllm.models.registry import matched_configs

    gpt2 = build_model("tinygpt2", matched_configs(tiny_new_llm_config(), names=("new_llm", "tinygpt2"))["tinygpt2"])
    lanes = StreamLanes(torch.arange(200) % VOCAB, block_size=12, lanes=4)
    stateful = TrainConfig(epochs=1, batch_size=4, stateful=True)
    with pytest.raises(ValueError, match="needs a recurrent model"):
        train(gpt2, lanes, lanes, collate, stateful, tmp_path / "a", progress=False)
    model = build_model("new_llm", tiny_new_llm_config())
    with pytest.raises(ValueError, match=r"lanes == batch_size \(8\), got 4"):
        train(model, lanes, lanes, collate, TrainConfig(epochs=1, batch_size=8, stateful=True), tmp_path / "b",
              progress=False)  # fmt: skip
    # a mid-epoch checkpoint would not hold the lanes' carried state: resume could not be exact
    with pytest.raises(ValueError, match="epoch ends only: set save_steps = 0"):
        train(model, lanes, lanes, collate, TrainConfig(epochs=1, batch_size=4, stateful=True, save_steps=2),
              tmp_path / "c", progress=False)  # fmt: skip
    assert not any((tmp_path / name).exists() for name in "abc")  # refused before writing anything


@pytest.mark.parametrize("progress", [False, True])
def test_quiet_logging_silences_the_trainers_log_dicts(tmp_path, capsys, progress):
    """`newllm -q` sets the log level to WARNING: then neither the printer nor the progress bars write the dicts."""
    root = logging.getLogger()
    level = root.level
    torch.manual_seed(0)
    config = TrainConfig(epochs=1, batch_size=16, eval_batch_size=32)
    for name, quiet in (("loud", False), ("quiet", True)):
        root.setLevel(logging.WARNING if quiet else logging.INFO)
        try:
            train(build_model("new_llm", tiny_new_llm_config()), CountingSequences(32), CountingSequences(8, seed=1),
                  collate, config, tmp_path / name, progress=progress)  # fmt: skip
        finally:
            root.setLevel(level)
        out = capsys.readouterr()
        printed = "'eval_loss'" in out.out + out.err
        assert printed is not quiet, out


def test_time_limit_stops_before_an_epoch_that_would_not_end_in_time():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from newllm.training.loop import TimeLimitCallback

    now = [0.0]
    callback = TimeLimitCallback(25.0, clock=lambda: now[0])
    args = TrainingArguments(output_dir="unused", num_train_epochs=10, report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    stops = []
    for epoch in range(1, 4):
        now[0] += 10.0  # every epoch, evaluation included, takes 10 s
        state.epoch = epoch
        callback.on_evaluate(args, state, control)
        callback.on_save(args, state, control)
        stops.append(control.should_training_stop)
    # after epoch 2, 20 s + another 10 s would pass 25 s
    assert stops == [False, True, True] and callback.stopped

    # where early stopping or the last epoch ends the run, the time limit did not, whether early stopping's
    # on_evaluate came before the time limit's or after it (as on a resumed Trainer); a save between
    # evaluations decides nothing
    for epoch, early, order in ((2, True, "before"), (2, True, "after"), (10, False, "before")):
        callback = TimeLimitCallback(1.0, clock=lambda: now[0])
        callback.on_train_begin(args, state, control := TrainerControl(should_training_stop=early and order == "before"))
        now[0] += 10.0
        state.epoch = epoch
        callback.on_save(args, state, control)
        assert not callback.stopped
        callback.on_evaluate(args, state, control)
        control.should_training_stop = early  # early stopping's on_evaluate, after the time limit's
        callback.on_save(args, state, control)
        assert not callback.stopped and control.should_training_stop == early


def test_time_limit_keeps_the_best_model_of_the_epochs_run(tmp_path):
    result = _train(tmp_path / "run", epochs=5, time_limit=1e-6)
    assert result.stopped_by_time_limit
    assert result.epochs_run == 1 and [row["epoch"] for row in result.history] == [1]
    assert not _train(tmp_path / "other", epochs=2).stopped_by_time_limit


def test_time_limit_must_be_non_negative_seconds():
    from newllm.config import ConfigError

    with pytest.raises(ConfigError, match=r"time_limit: must be at least 0 \(seconds; 0: no limit\), got -1"):
        TrainConfig(time_limit=-1)


def test_report_to_tensorboard_writes_each_epochs_losses_under_the_run_folder(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tracking] extra (installed with [test])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tmp_path / "run", epochs=2, report_to="tensorboard")
    events = sorted((tmp_path / "run" / "runs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard events written"
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    assert [event.step for event in accumulator.Scalars("eval/loss")] == [8, 16]  # 128 rows, batches of 16


def test_report_to_a_tracker_that_is_not_installed_is_one_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"report_to = wandb needs the wandb package \(pip install wandb"):
        _train(tmp_path / "run", epochs=1, report_to="wandb")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("checkpoint-*"))


def test_a_resumed_runs_time_adds_up_the_earlier_processes_epochs(tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    _train(run_dir, epochs=2)
    first, last = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    shutil.rmtree(last)  # killed during epoch 2, after an epoch 1 that (say) took 1000 s
    state_path = first / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["stateful_callbacks"]["HistoryCallback"]["attributes"]["seconds"] = {"1": 1000.0}
    state_path.write_text(json.dumps(state))
    torch.manual_seed(0)
    config = TrainConfig(epochs=2, patience=2, batch_size=16, eval_batch_size=32, lr=1e-2)
    model = build_model("new_llm", tiny_new_llm_config())
    result = train(model, CountingSequences(128), CountingSequences(32, seed=1), collate, config, run_dir,
                   progress=False, resume=True)  # fmt: skip
    assert result.history[0]["seconds"] == 1000.0
    assert 1000.0 + result.history[1]["seconds"] <= result.seconds < 1000.0 + 60


def _dialogues(n, seed):
    """Counting sequences of 2 to 40 tokens, as DialogWindows items (the mask is all responses)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 41, (n,), generator=g).tolist()
    starts = torch.randint(0, 20, (n,), generator=g).tolist()
    return DialogWindows([([(s + i) % VOCAB for i in range(k)], [1] * k) for s, k in zip(starts, lengths)], 64)


def test_group_by_length_trains_on_batches_of_similar_length_drawn_anew_each_epoch(tmp_path):
    widths = {}
    for grouped in (False, True):
        seen = widths[grouped] = []

        def padded(batch):
            seen.append(max(len(item["input_ids"]) for item in batch))
            return pad_collate(batch, pad_id=0)

        torch.manual_seed(0)
        config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, group_by_length=grouped)
        result = train(build_model("new_llm", tiny_new_llm_config()), _dialogues(160, 0), _dialogues(16, 1), padded,
                       config, tmp_path / f"run_{grouped}", progress=False)  # fmt: skip
        assert result.epochs_run == 2
    # each epoch: 20 training batches, then one validation batch (the same either way)
    assert len(widths[True]) == len(widths[False]) == 42
    assert sum(widths[True]) < 0.8 * sum(widths[False])
    assert widths[True][:20] != widths[True][21:41]  # another grouping every epoch


def test_group_by_length_refuses_a_dataset_without_lengths(tmp_path):
    with pytest.raises(ValueError, match="group_by_length groups items by their lengths, which CountingSequences"):
        train(build_model("new_llm", tiny_new_llm_config()), CountingSequences(16), CountingSequences(8), collate,
              TrainConfig(epochs=1, batch_size=8, group_by_length=True), tmp_path / "run", progress=False)  # fmt: skip


def test_the_validation_loss_is_a_mean_over_tokens_not_over_sequences(tmp_path):
    # validation sequences of 2 to 40 tokens in batches of 4: each batch's mean token loss counts by its tokens, so
    # the history's val_loss (what early stopping and the best checkpoint read) is the test perplexity's loss per token
    torch.manual_seed(0)
    valid = _dialogues(23, 1)  # the last batch holds 3

    def padded(batch):
        return pad_collate(batch, pad_id=0)

    config = TrainConfig(epochs=1, batch_size=8, eval_batch_size=4, lr=1e-2)
    result = train(build_model("new_llm", tiny_new_llm_config()), _dialogues(256, 0), valid, padded, config,
                   tmp_path / "run", progress=False)  # fmt: skip
    per_token = evaluate_perplexity(result.model, valid, pad_id=0, batch_size=5)  # other batches: the same sum
    assert result.history[0]["val_loss"] == pytest.approx(per_token.loss, rel=1e-6)
    # the Trainer's own mean: each batch's mean token loss once per sequence in it
    batches = [evaluate_perplexity(result.model, [valid[i] for i in range(k, min(k + 4, len(valid)))], pad_id=0)
               for k in range(0, len(valid), 4)]  # fmt: skip
    per_sequence = sum(b.loss * min(4, len(valid) - 4 * i) for i, b in enumerate(batches)) / len(valid)
    assert abs(per_sequence - per_token.loss) > 1e-3  # a thousand times the tolerance above


@pytest.mark.parametrize("preset", ["study_new_llm", "full"])
def test_weight_decay_falls_on_the_matrices_as_the_trainers_rule_does_for_the_three_families(preset):
    model_config = load_config(preset).model
    new_llm = NewLLMConfig(vocab_size=8192, bos_token_id=0, eos_token_id=0, pad_token_id=1,
                           **model_config.new_llm_arguments())  # fmt: skip
    configs = matched_configs(new_llm, names=("new_llm", "tinygpt2", "lstm", "mamba2"),
                              shape=BaselineShape(**model_config.baseline_shape()))  # fmt: skip
    for name, config in configs.items():
        with torch.device("meta"):
            model = build_model(name, config)
        ours = set(FiniteEvalTrainer.get_decay_parameter_names(None, model))
        # the names the optimizer looks up: a tied matrix once, by its first name
        theirs = set(Trainer.get_decay_parameter_names(None, model)) & set(dict(model.named_parameters()))
        assert ours and all(p.dim() >= 2 for n, p in model.named_parameters() if n in ours)
        if name != "mamba2":
            assert ours == theirs, name
        else:  # the names the Trainer's rule misses: the final norm, and A_log and D in every layer
            missed = {n.rsplit(".", 1)[-1] if ".mixer." in n else n for n in theirs - ours}
            assert missed == {"backbone.norm_f.weight", "A_log", "D"} and ours < theirs


def test_the_optimizer_leaves_mamba2s_norms_and_decay_rates_undecayed(tmp_path):
    config = matched_configs(tiny_new_llm_config(), names=("mamba2",), shape=BaselineShape(dropout=0.0))["mamba2"]
    model = build_model("mamba2", config)
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, use_cpu=True, report_to="none")
    optimizer = FiniteEvalTrainer(model=model, args=args).create_optimizer()
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0.1 for p in group["params"]}
    named = dict(model.named_parameters())
    assert {n.rsplit(".", 1)[-1] for n, p in named.items() if id(p) not in decayed} >= {"A_log", "D", "weight", "dt_bias"}
    assert all((id(p) in decayed) == (p.dim() >= 2) for p in named.values())


def test_the_grouped_sampler_is_told_each_epoch_also_after_a_resume_in_the_middle_of_one():
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from newllm.data.batching import LengthGroupedSampler
    from newllm.training.loop import SamplerEpochCallback

    sampler = LengthGroupedSampler([3, 1, 4, 1, 5, 9, 2, 6], batch_size=2, seed=0)
    callback = SamplerEpochCallback(SimpleNamespace(grouped_sampler=sampler))
    for done, epoch in ((0.0, 0), (1.0, 1), (2.375, 2), (3.0, 3)):  # 2.375: resumed after 3 of epoch 2's 8 steps
        callback.on_epoch_begin(None, TrainerState(epoch=done), TrainerControl())
        assert sampler.epoch == epoch
    callback = SamplerEpochCallback(SimpleNamespace(grouped_sampler=None))  # shuffled batches: nothing to tell
    callback.on_epoch_begin(None, TrainerState(epoch=1.0), TrainerControl())


def test_a_gpu_index_is_refused_where_the_trainer_would_ignore_it(tmp_path):
    # one process trains on the first GPU it sees: cuda:1 would train on GPU 0 (checked before any CUDA call)
    with pytest.raises(ValueError, match=r"device cuda:1: training picks its GPU by CUDA_VISIBLE_DEVICES; run with "
                                         r"CUDA_VISIBLE_DEVICES=1 and --device cuda"):  # fmt: skip
        train(build_model("new_llm", tiny_new_llm_config()), CountingSequences(16), CountingSequences(8), collate,
              TrainConfig(epochs=1, batch_size=8), tmp_path / "run", progress=False, device="cuda:1")
    assert not (tmp_path / "run").exists()
