"""Two CPU processes (gloo) train like one process with twice the batch, and write one set of outputs.

Why they match: the Trainer samples with accelerate's seedable random sampler, seeded alike on every
rank, so every rank draws the same permutation; accelerate then shards the *batches* of b windows, rank r
taking batches r, r+2, r+4, ... (BatchSamplerShard, split_batches=False). Optimizer step k therefore sees
windows [2kb, 2kb+2b) of the permutation, split over the two ranks, exactly the windows one process with
batch 2b sees at step k. DDP averages the two ranks' gradients; every window has the same number of
tokens (no padding, dropout 0), so that average equals the gradient of the mean loss over the 2b windows.
What remains is float summation order: losses and weights agree to 1e-5 (measured: losses within 5e-7),
not bit for bit.

The same worker also runs under `accelerate launch --multi_gpu` (accelerate's only single-host launcher
that starts several processes without MPI; on a host without GPUs the Trainer then picks gloo), and a
resume test kills both ranks mid-epoch and resumes from the latest `save_steps` checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from transformers import TrainingArguments

from newllm.config import TrainConfig
from newllm.data import DialogWindows
from newllm.data import collate as pad_collate
from newllm.data.tokenizer import tokenizer_fingerprint, train_tokenizer
from newllm.evaluation.perplexity import evaluate_perplexity
from newllm.models import build_model
from newllm.training import distributed, loop
from newllm.training.loop import remove_incomplete_checkpoints, train

from ..models.conftest import tiny_new_llm_config
from tests.helpers import CountingSequences, collate

REPO = Path(__file__).resolve().parents[3]
PER_DEVICE_BATCH = 4
TOLERANCE = 1e-5
TOKENIZER_LINES = [f"line {i} of the lighthouse keeper's journal , wind and water .\n" for i in range(40)]


def _config(batch_size: int) -> TrainConfig:
    # 64 windows: 8 optimizer steps of 8 per epoch, no partial batch; 16 eval windows: even over 2 ranks
    return TrainConfig(epochs=2, patience=5, batch_size=batch_size, eval_batch_size=8, lr=1e-2, warmup=0.0)


def _run(run_dir: Path, batch_size: int, *, dropout: float = 0.0, save_steps: int = 0, resume: bool = False,
         device: str = "cpu"):  # fmt: skip
    torch.manual_seed(0)
    model = build_model("new_llm", tiny_new_llm_config(dropout=dropout))
    data, valid = CountingSequences(64), CountingSequences(16, seed=1)
    # on CUDA, compile = New-LLM's fast path (compiled steps, CUDA-graphed scan), as the GPU presets train
    config = dataclasses.replace(_config(batch_size), save_steps=save_steps, compile=device != "cpu")
    return train(model, data, valid, collate, config, run_dir, resume=resume, progress=False, device=device)


# Resume runs: dropout, so that every rank's restored RNG state (rng_state_<rank>.pth) matters; a checkpoint
# every 3 steps; both ranks SIGKILL themselves after step 11, so checkpoint-9 (mid epoch 2, after the
# epoch-1 evaluation) is the latest complete one and the resumed run must skip one batch per rank.
RESUME_DROPOUT, RESUME_SAVE_STEPS, KILL_STEP, TOTAL_STEPS = 0.1, 3, 11, 16
MODES = ("plain", "full", "killed", "resumed", "cuda", "eval")


def _record_steps(kill_at: int | None) -> list[int]:
    """Patch the loop (in this worker process only) to list the optimizer steps it runs; SIGKILL after `kill_at`."""
    steps: list[int] = []
    original = loop.HistoryCallback.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        steps.append(state.global_step)
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash: no save, no flush, no cleanup
        return original(self, args, state, control, **kwargs)

    loop.HistoryCallback.on_step_end = on_step_end
    return steps


def _worker(run_dir: str, out_dir: str, mode: str = "plain") -> None:
    """One rank under a launcher: train, then report rank, world size, losses, weights (and tokenizer fingerprint).

    plain: the batch-4 run compared with one process; full / killed / resumed: the resume runs.
    """
    assert mode in MODES, mode
    if mode == "eval":
        return _evaluate_uneven(Path(out_dir))
    steps = _record_steps(KILL_STEP if mode == "killed" else None)
    if mode == "plain":
        result = _run(Path(run_dir), PER_DEVICE_BATCH)
    elif mode == "cuda":
        result = _run(Path(run_dir), PER_DEVICE_BATCH, device="cuda")
    else:
        result = _run(Path(run_dir), PER_DEVICE_BATCH, dropout=RESUME_DROPOUT, save_steps=RESUME_SAVE_STEPS,
                      resume=mode == "resumed")  # fmt: skip
    rank = distributed.rank()
    out = Path(out_dir)
    report = {
        "rank": rank,
        "world_size": distributed.world_size(),
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "steps": steps,  # optimizer steps this process ran
        "history": result.history,
    }
    if mode == "plain":
        # the tokenizer is trained on every rank (pipeline.prepare_tokenizer): it must come out the same
        report["tokenizer"] = tokenizer_fingerprint(train_tokenizer(TOKENIZER_LINES, kind="bpe", vocab_size=300))
    (out / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))


def _uneven_validation() -> DialogWindows:
    """11 windows of 2 to 60 tokens, the first four long and scored very differently from the rest: over 2 ranks in
    batches of 3, accelerate repeats the first ones to even out the last batch, which the loss must not count."""
    lengths = [60] * 4 + torch.randint(2, 41, (7,), generator=torch.Generator().manual_seed(3)).tolist()
    return DialogWindows([([7] * k if j < 4 else [(5 + i) % 300 for i in range(k)], [1] * k)
                          for j, k in enumerate(lengths)], 64)  # fmt: skip


def _uneven_model():
    torch.manual_seed(0)
    model = build_model("new_llm", tiny_new_llm_config())
    with torch.no_grad():
        model.lm_head.bias[7] = 8.0  # the long windows' token: nearly free to predict, the others' not
    return model


def _evaluate_uneven(out: Path) -> None:
    """One rank: the training loop's evaluation of `_uneven_validation`, its eval_loss written by rank 0."""
    args = TrainingArguments(output_dir=str(out / "trainer"), per_device_eval_batch_size=3, use_cpu=True,
                             prediction_loss_only=True, remove_unused_columns=False, report_to="none",
                             disable_tqdm=True)  # fmt: skip
    trainer = loop.FiniteEvalTrainer(model=_uneven_model(), args=args, eval_dataset=_uneven_validation(),
                                     data_collator=functools.partial(pad_collate, pad_id=0))  # fmt: skip
    trainer.model_accepts_loss_kwargs = False
    metrics = trainer.evaluate()
    if distributed.rank() == 0:
        report = {"world_size": distributed.world_size(), "eval_loss": metrics["eval_loss"]}
        (out / "eval.json").write_text(json.dumps(report), encoding="utf-8")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_distributed_helpers_in_one_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    distributed.barrier()  # no process group: returns at once
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (1, 2, False)


def _any_rank_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = [distributed.any_rank(rank == 0), distributed.any_rank(False), distributed.any_rank(True)]
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_any_rank_is_one_decision_for_every_rank(tmp_path, monkeypatch):
    assert distributed.any_rank(True) and not distributed.any_rank(False)  # one process: the flag itself
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    torch.multiprocessing.spawn(_any_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    # the time limit's stop: true on rank 0 only is true on both
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [[True, False, True]] * 2


def _env(**extra: str) -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # localhost only
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        **extra,
    }


def _torchrun(processes: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
    ]  # fmt: skip


def _launch(launcher: list[str], run: Path, out: Path, mode: str = "plain", env: dict | None = None,
            timeout: int = 120):  # fmt: skip
    """Run `_worker` on the ranks of `launcher`; the finished process (its return code is not checked here)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [*launcher, "-m", "tests.unit.training.test_distributed", str(run), str(out), mode]
    try:
        return subprocess.run(command, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"2-process run ({mode}) did not finish in {err.timeout} s")


def _reports(out: Path, ranks: int = 2):
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]
    weights = [load_file(str(out / f"rank{r}.safetensors")) for r in range(ranks)]
    return reports, weights


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Run `_worker` on 2 ranks (torch.distributed.run, gloo, 127.0.0.1); its run folder and per-rank reports."""
    root = tmp_path_factory.mktemp("ddp")
    run, out = root / "run", root / "out"
    done = _launch(_torchrun(), run, out)
    assert done.returncode == 0, done.stderr[-4000:]
    return (run, *_reports(out))


def test_two_processes_write_one_set_of_outputs(two_process_run):
    run, reports, weights = two_process_run
    assert [(r["rank"], r["world_size"], r["backend"]) for r in reports] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert reports[0]["tokenizer"] == reports[1]["tokenizer"]
    assert _untimed(reports[0]["history"]) == _untimed(reports[1]["history"])  # losses are all-reduced
    worst = _max_diff(weights[0], weights[1])
    assert worst == 0.0, f"ranks disagree by {worst}: DDP keeps replicas identical"
    # one history, the Trainer's two kept checkpoints, no per-rank copies or temporary files
    saved = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in saved] == [1, 2]
    names = sorted(p.name for p in run.iterdir())
    assert names == ["checkpoint-16", "checkpoint-8", "history.csv", "history.json"], names


def test_two_processes_match_one_process_with_twice_the_batch(two_process_run, tmp_path):
    _, reports, weights = two_process_run
    single = _run(tmp_path / "single", 2 * PER_DEVICE_BATCH)
    for got, want in zip(reports[0]["history"], single.history, strict=True):
        assert got["epoch"] == want["epoch"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=TOLERANCE)
        assert got["val_loss"] == pytest.approx(want["val_loss"], abs=TOLERANCE)
    worst = _max_diff(weights[0], single.model.state_dict())
    assert worst < TOLERANCE, f"weights differ by {worst}"


# accelerate launch. `--cpu --num_processes 2` starts ONE process (accelerate 1.15 sends --cpu to its simple
# launcher, which runs several CPU processes only through mpirun: a MULTI_CPU config needs an MPI hostfile).
# `--multi_gpu` is the launcher that wraps torch.distributed.run; without GPUs the Trainer sets up gloo.
# `python -m accelerate.commands.launch` is the `accelerate launch` command without relying on PATH.
ACCELERATE_FLAGS = [
    "--multi_gpu", "--num_processes=2", "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
]  # fmt: skip


def test_accelerate_launch_runs_two_cpu_processes(two_process_run, tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", *ACCELERATE_FLAGS,
                "--main_process_ip=127.0.0.1", f"--main_process_port={_free_port()}"]  # fmt: skip
    # HF_HOME: no accelerate default_config.yaml of this machine's user overrides the flags
    done = _launch(launcher, run, out, env=_env(HF_HOME=str(tmp_path / "hf")))
    assert done.returncode == 0, done.stderr[-4000:]
    reports, weights = _reports(out)
    assert [(r["rank"], r["world_size"], r["backend"]) for r in reports] == [(0, 2, "gloo"), (1, 2, "gloo")]
    # 64 windows / (2 ranks x batch 4) = 8 steps per epoch on each rank (one process: 16 per epoch)
    assert [r["steps"] for r in reports] == [list(range(1, 17))] * 2
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-16", "checkpoint-8", "history.csv", "history.json"]
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [1, 2]
    assert _max_diff(weights[0], weights[1]) == 0.0
    # the same training as under torchrun
    _, torchrun_reports, torchrun_weights = two_process_run
    assert _untimed(reports[0]["history"]) == _untimed(torchrun_reports[0]["history"])
    worst = _max_diff(weights[0], torchrun_weights[0])
    assert worst < TOLERANCE, f"accelerate and torchrun runs differ by {worst}"


def test_ddp_checkpoints_count_as_complete(tmp_path):
    """Under DDP the Trainer writes rng_state_<rank>.pth, not rng_state.pth: resume must keep those folders."""
    ddp = tmp_path / "checkpoint-9"
    ddp.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"):
        (ddp / name).write_bytes(b"x")
    (ddp / "trainer_state.json").write_text('{"global_step": 9}\n')
    no_rng = tmp_path / "checkpoint-12"
    no_rng.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        (no_rng / name).write_bytes(b"{}")
    assert remove_incomplete_checkpoints(tmp_path) == [no_rng]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-9"]


def test_killed_and_resumed_two_process_run_equals_uninterrupted_one(tmp_path):
    full_run, full_out = tmp_path / "full", tmp_path / "full_out"
    done = _launch(_torchrun(), full_run, full_out, mode="full")
    assert done.returncode == 0, done.stderr[-4000:]
    run, out = tmp_path / "run", tmp_path / "run_out"
    done = _launch(_torchrun(), run, out, mode="killed")
    assert done.returncode != 0, "the ranks were to kill themselves"
    # what the crash left: the epoch-1 checkpoint (the best so far) and the step-9 one, with both ranks' RNG states
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-8", "checkpoint-9"]
    assert {p.name for p in (run / "checkpoint-9").glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
    done = _launch(_torchrun(), run, out, mode="resumed")
    assert done.returncode == 0, done.stderr[-4000:]

    reports, weights = _reports(out)
    full_reports, full_weights = _reports(full_out)
    assert [(r["rank"], r["world_size"]) for r in reports] == [(0, 2), (1, 2)]
    assert [r["steps"] for r in full_reports] == [list(range(1, TOTAL_STEPS + 1))] * 2
    assert [r["steps"] for r in reports] == [list(range(10, TOTAL_STEPS + 1))] * 2, "did not resume from step 9"
    # bitwise: CPU, one thread, gloo's sum of two tensors, restored data position, optimizer, scheduler, RNG
    for got, want in [(reports[0], full_reports[0]), (reports[1], full_reports[1])]:
        assert _untimed(got["history"]) == _untimed(want["history"])
    assert _max_diff(weights[0], full_weights[0]) == 0.0, "best weights differ"
    assert _max_diff(weights[1], full_weights[1]) == 0.0, "best weights differ on rank 1"
    last, full_last = (load_file(str(r / f"checkpoint-{TOTAL_STEPS}" / "model.safetensors")) for r in (run, full_run))
    assert _max_diff(last, full_last) == 0.0, "last weights differ"
    assert json.loads((run / "history.json").read_text()) == reports[0]["history"]


def test_two_processes_score_the_validation_loss_per_token_without_the_repeated_windows(tmp_path):
    done = _launch(_torchrun(), tmp_path / "run", tmp_path / "out", mode="eval")
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    reference = evaluate_perplexity(_uneven_model(), _uneven_validation(), pad_id=0, batch_size=5)
    assert report["world_size"] == 2 and report["eval_loss"] == pytest.approx(reference.loss, rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: NCCL data parallelism over this host's GPUs")
def test_nccl_ranks_on_the_fast_path_match_one_process_with_the_whole_batch(tmp_path):
    """Every GPU of the host (at most 2) a rank over NCCL, New-LLM on its compiled + CUDA-graphed scan, against
    one process with the ranks' batches together: DDP's gradient hooks and the captured scan must agree.
    With one GPU it is one rank under torchrun, which still starts the NCCL process group."""
    ranks = min(2, torch.cuda.device_count())
    run, out = tmp_path / "run", tmp_path / "out"
    done = _launch(_torchrun(ranks), run, out, mode="cuda", timeout=900)  # first compiles take minutes
    assert done.returncode == 0, done.stderr[-4000:]
    reports, weights = _reports(out, ranks)
    assert [(r["rank"], r["world_size"]) for r in reports] == [(rank, ranks) for rank in range(ranks)]
    assert {r["backend"] for r in reports} <= {"nccl", None}, reports[0]["backend"]
    single = _run(tmp_path / "single", ranks * PER_DEVICE_BATCH, device="cuda")
    for got, want in zip(reports[0]["history"], single.history, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-4)
        assert got["val_loss"] == pytest.approx(want["val_loss"], abs=1e-4)
    on_cpu = {k: v.cpu() for k, v in single.model.state_dict().items()}
    assert _max_diff(weights[0], on_cpu) < 1e-4


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
