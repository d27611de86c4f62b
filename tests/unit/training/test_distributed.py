"""Two CPU processes (gloo) train like one process with twice the batch, and write one set of outputs.

Why they match: the Trainer samples with accelerate's seedable random sampler, seeded alike on every
rank, so every rank draws the same permutation; accelerate then shards the *batches* of b windows, rank r
taking batches r, r+2, r+4, ... (BatchSamplerShard, split_batches=False). Optimizer step k therefore sees
windows [2kb, 2kb+2b) of the permutation, split over the two ranks, exactly the windows one process with
batch 2b sees at step k. DDP averages the two ranks' gradients; every window has the same number of
tokens (no padding, dropout 0), so that average equals the gradient of the mean loss over the 2b windows.
What remains is float summation order: losses and weights agree to 1e-5 (measured: losses within 5e-7),
not bit for bit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from newllm.config import TrainConfig
from newllm.data.tokenizer import tokenizer_fingerprint, train_tokenizer
from newllm.models import build_model
from newllm.training import distributed
from newllm.training.loop import train

from ..models.conftest import tiny_new_llm_config
from .test_loop import CountingSequences, collate

REPO = Path(__file__).resolve().parents[3]
PER_DEVICE_BATCH = 4
TOLERANCE = 1e-5
TOKENIZER_LINES = [f"line {i} of the lighthouse keeper's journal , wind and water .\n" for i in range(40)]


def _config(batch_size: int) -> TrainConfig:
    # 64 windows: 8 optimizer steps of 8 per epoch, no partial batch; 16 eval windows: even over 2 ranks
    return TrainConfig(epochs=2, patience=5, batch_size=batch_size, eval_batch_size=8, lr=1e-2, warmup=0.0)


def _run(run_dir: Path, batch_size: int):
    torch.manual_seed(0)
    model = build_model("new_llm", tiny_new_llm_config())
    data, valid = CountingSequences(64), CountingSequences(16, seed=1)
    return train(model, data, valid, collate, _config(batch_size), run_dir, progress=False)


def _worker(run_dir: str, out_dir: str) -> None:
    """One rank under torch.distributed.run: train, then report losses, weights and tokenizer fingerprint."""
    result = _run(Path(run_dir), PER_DEVICE_BATCH)
    rank = distributed.rank()
    out = Path(out_dir)
    report = {
        "rank": rank,
        "world_size": distributed.world_size(),
        "history": result.history,
        # the tokenizer is trained on every rank (pipeline.prepare_tokenizer): it must come out the same
        "tokenizer": tokenizer_fingerprint(train_tokenizer(TOKENIZER_LINES, kind="bpe", vocab_size=300)),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    state = {k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))


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


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Run `_worker` on 2 ranks (torch.distributed.run, gloo, 127.0.0.1); its run folder and per-rank reports."""
    root = tmp_path_factory.mktemp("ddp")
    run, out = root / "run", root / "out"
    out.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # localhost only
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "tests.unit.training.test_distributed", str(run), str(out),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"2-process run did not finish in {err.timeout} s")
    assert done.returncode == 0, done.stderr[-4000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    weights = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    return run, reports, weights


def test_two_processes_write_one_set_of_outputs(two_process_run):
    run, reports, weights = two_process_run
    assert [(r["rank"], r["world_size"]) for r in reports] == [(0, 2), (1, 2)]
    assert reports[0]["tokenizer"] == reports[1]["tokenizer"]
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in r["history"]] for r in reports]
    assert untimed[0] == untimed[1]  # losses are all-reduced: every rank logs the same
    worst = max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0])
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
    expected = single.model.state_dict()
    assert weights[0].keys() == expected.keys()
    worst = max((weights[0][k] - expected[k]).abs().max().item() for k in expected)
    assert worst < TOLERANCE, f"weights differ by {worst}"


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
