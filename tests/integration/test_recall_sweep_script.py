"""benchmarks/recall_sweep.sh on CPU with a tiny config: one process per family × length × pairs × seed × width, each on
one thread, every recall.json merged into one; a deadline already passed starts nothing and says so, nor does it start a
run that its ESTIMATE says would outlast the deadline; bad input stops at once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from newllm.recall import load_recall_config, run_recall

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "recall_sweep.sh"
TINY = """
widths = [16]
seq_lens = [16]
pairs = [2]
vocab_size = 32
steps = 2
batch_size = 4
train_examples = 32
test_examples = 8
eval_every = 2
eval_batch_size = 8
cpu_threads = 1
"""


def _sweep(tmp_path, text=TINY, **env):
    config = tmp_path / "tiny.toml"
    config.write_text(text)
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "CONFIG": str(config), "SEQ_LENS": "16 32",
           "PAIRS": "2 8", **env}  # fmt: skip
    env = {key: value for key, value in env.items() if value is not None}
    runs, out = env.pop("RUNS_DIR", "runs"), env.pop("OUT_DIR", "out")
    args = ["bash", str(SCRIPT), str(tmp_path / runs), str(tmp_path / out)]
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_every_process_runs_and_their_results_are_merged(tmp_path):
    done = _sweep(tmp_path, MODELS="new_llm lstm", SEEDS="0", JOBS="3")
    assert done.returncode == 0, done.stderr
    # 16 tokens hold 2 pairs but not 8 (seq_len >= 4 × pairs), so 2 models × 3 settings
    names = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert names == sorted(f"{m}_T{t}_p{n}_s0_w16" for m in ("new_llm", "lstm") for t, n in ((16, 2), (32, 2), (32, 8)))
    merged = json.loads((tmp_path / "out" / "recall.json").read_text())
    runs = merged["runs"]
    assert [part["environment"]["threads"] for part in merged["parts"]] == [1] * len(names)  # OMP_NUM_THREADS=1
    named = [re.fullmatch(r"(\w+)_T(\d+)_p(\d+)_s(\d+)_w(\d+)", name).groups() for name in names]
    assert sorted((r["model"], r["seq_len"], r["pairs"], r["seed"], r["width"]) for r in runs) == sorted(
        (model, *map(int, numbers)) for model, *numbers in named)  # fmt: skip
    assert (tmp_path / "out" / "recall.png").is_file()
    log = (tmp_path / "runs" / "sweep.log").read_text()
    assert log.count(": ended (0)") == len(names) and "collected 6 recall.json" in log


def test_a_passed_deadline_starts_nothing_and_logs_the_order_the_processes_would_run_in(tmp_path):
    # the config's own points run (a diagonal, not the product of its seq_lens and pairs) with neither SEQ_LENS nor
    # PAIRS given; ORDER=points runs every seed of a point before the next, shortest first; a run a process,
    # the widest first. A deadline already passed starts none of them and says so, in that order.
    config = TINY.replace("widths = [16]", "widths = [16, 32]") + "points = [[32, 8], [16, 2]]\n"
    done = _sweep(tmp_path, config, SEQ_LENS=None, PAIRS=None, MODELS="lstm", SEEDS="0 1", ORDER="points", DEADLINE="1")
    assert done.returncode == 1
    log = (tmp_path / "runs" / "sweep.log").read_text()
    planned = [line.split()[1].rstrip(":") for line in log.splitlines() if line.endswith("not started (deadline)")]
    assert planned == [f"lstm_T{t}_p{n}_s{s}_w{w}" for t, n in ((16, 2), (32, 8)) for s in (0, 1) for w in (32, 16)]
    assert "no process wrote a recall.json" in log and not (tmp_path / "out").exists()
    assert _sweep(tmp_path, ORDER="random").returncode == 2


def test_rates_and_resume(tmp_path):
    """RATES: one process per rate, every run in OUT/all_rates, the best rate on validation in OUT. RESUME from
    OUT/all_rates: only the processes it lacks run, and the choice is made again over every seed."""
    first = _sweep(tmp_path, SEQ_LENS="16", PAIRS="2", MODELS="lstm", SEEDS="0", JOBS="2", RATES="1e-3 3e-3")
    assert first.returncode == 0, first.stderr
    names = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert names == ["lstm_T16_p2_s0_w16_lr0.001", "lstm_T16_p2_s0_w16_lr0.003"]
    earlier = tmp_path / "out" / "all_rates" / "recall.json"
    assert sorted(r["lr"] for r in json.loads(earlier.read_text())["runs"]) == [1e-3, 3e-3]

    done = _sweep(tmp_path, SEQ_LENS="16", PAIRS="2", MODELS="lstm", SEEDS="0 1", JOBS="2", RATES="0.001 0.003",
                  RESUME=str(earlier), RUNS_DIR="runs2", OUT_DIR="out2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "runs2" / "sweep.log").read_text()
    assert log.count("_s0_w16_lr0.00") == 2 and log.count("in RESUME, not run") == 2 and log.count(": started") == 2
    every = json.loads((tmp_path / "out2" / "all_rates" / "recall.json").read_text())["runs"]
    assert sorted((r["seed"], r["lr"]) for r in every) == [(0, 1e-3), (0, 3e-3), (1, 1e-3), (1, 3e-3)]
    kept = json.loads((tmp_path / "out2" / "recall.json").read_text())
    (choice,) = kept["rates_chosen"]
    score = {lr: sum(r["valid_accuracy"] for r in every if r["lr"] == lr) / 2 for lr in (1e-3, 3e-3)}
    assert choice["lr"] == min(score, key=lambda lr: (-score[lr], lr))  # the best mean on validation, ties to the lower
    assert sorted((r["seed"], r["lr"]) for r in kept["runs"]) == [(0, choice["lr"]), (1, choice["lr"])]

    # bad input stops before anything runs: no such file; a run at a width the config does not ask; runs without valid_accuracy under RATES; a RUNS already written;
    # a rate that is not a number
    missing = _sweep(tmp_path, RESUME=str(tmp_path / "missing.json"), RUNS_DIR="runs3")
    assert missing.returncode == 2 and "is not a readable recall.json" in missing.stderr
    (tmp_path / "narrow.json").write_text(json.dumps({"runs": [dict(every[0], width=8)]}))
    narrow = _sweep(tmp_path, RESUME=str(tmp_path / "narrow.json"), RUNS_DIR="runs3")
    assert narrow.returncode == 2 and "has lstm_T16_p2_s0_w8, the config asks widths [16]" in narrow.stderr
    # runs checked on the test set cannot join a choice made on validation: refused before the sweep, not after
    unvalidated = {key: value for key, value in every[0].items() if key != "valid_accuracy"}
    (tmp_path / "old.json").write_text(json.dumps({"runs": [unvalidated]}))
    unchecked = _sweep(tmp_path, RESUME=str(tmp_path / "old.json"), RATES="1e-3", RUNS_DIR="runs3")
    assert unchecked.returncode == 2 and "has runs without valid_accuracy" in unchecked.stderr
    reused = _sweep(tmp_path, RESUME=str(earlier))  # "runs" holds the first sweep's recall.json
    assert reused.returncode == 2 and "RUNS must hold no recall.json yet" in reused.stderr
    bad = _sweep(tmp_path, RATES="1e-3 fast", RUNS_DIR="runs3")
    assert bad.returncode == 2 and "RATES: could not convert string to float: 'fast'" in bad.stderr
    assert not (tmp_path / "runs3").exists()


def test_resume_skips_the_runs_its_file_holds(tmp_path):
    # a sweep whose deadline came after width 32's process: RESUME runs width 16's alone
    two = tmp_path / "two.toml"
    two.write_text(TINY.replace("widths = [16]", "widths = [16, 32]"))
    flags = {"models": "lstm", "widths": "32", "seq_lens": "16", "pairs": "2", "seeds": "0"}
    kept = run_recall(load_recall_config(two, overrides=flags))
    (tmp_path / "cut.json").write_text(json.dumps(kept))
    done = _sweep(tmp_path, two.read_text(), SEQ_LENS="16", PAIRS="2", MODELS="lstm", SEEDS="0",
                  RESUME=str(tmp_path / "cut.json"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "runs" / "sweep.log").read_text()
    assert "lstm_T16_p2_s0_w32: in RESUME, not run" in log and "lstm_T16_p2_s0_w16: started" in log
    merged = json.loads((tmp_path / "out" / "recall.json").read_text())["runs"]
    assert sorted(r["width"] for r in merged) == [16, 32] and kept["runs"][0] in merged


def test_min_left_starts_nothing_that_the_deadline_would_cut(tmp_path):
    done = _sweep(tmp_path, MODELS="lstm", SEEDS="0", SEQ_LENS="16", PAIRS="2", DEADLINE=str(int(time.time()) + 600),
                  MIN_LEFT="900")  # fmt: skip
    assert done.returncode == 1 and "lstm_T16_p2_s0_w16: not started (deadline)" in done.stdout


def test_estimate_starts_only_the_runs_that_fit_before_the_deadline(tmp_path):
    # from the step times ESTIMATE records: the LSTM's 2 steps of 1,000 s each would outlast the deadline, New-LLM's
    # fit; neither is cut by MIN_LEFT, and the run that does not fit leaves the next one to start
    steps = {"lstm": 1e6, "new_llm": 1.0}
    earlier = {"runs": [{"model": m, "seq_len": 16, "width": 16, "seed": 0, "ms_per_step": ms} for m, ms in steps.items()]}
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    done = _sweep(tmp_path, MODELS="lstm new_llm", SEEDS="0", SEQ_LENS="16", PAIRS="2", ESTIMATE=str(tmp_path / "earlier.json"),
                  DEADLINE=str(int(time.time()) + 600))  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "runs" / "sweep.log").read_text()
    assert re.search(r"lstm_T16_p2_s0_w16: not started \(needs about 2030 s, \d+ s left\)", log)
    assert "new_llm_T16_p2_s0_w16: started" in log and "new_llm_T16_p2_s0_w16: ended (0)" in log
    assert [r["model"] for r in json.loads((tmp_path / "out" / "recall.json").read_text())["runs"]] == ["new_llm"]
    bad = _sweep(tmp_path, ESTIMATE=str(tmp_path / "missing.json"), RUNS_DIR="runs2")
    assert bad.returncode == 2 and "ESTIMATE=" in bad.stderr and "is not a readable recall.json" in bad.stderr


def test_bad_input_stops_before_anything_runs(tmp_path):
    done = _sweep(tmp_path, JOBS="0")
    assert done.returncode == 2 and "JOBS must be a positive integer" in done.stderr
    done = _sweep(tmp_path, MIN_LEFT="5m")
    assert done.returncode == 2 and "MIN_LEFT must be a whole number of seconds" in done.stderr
    done = _sweep(tmp_path, DEADLINE="in 25 minutes")  # unchecked, it ran every process with no time limit
    assert done.returncode == 2 and done.stderr.startswith("recall_sweep.sh: DEADLINE must be a Unix time")
    done = _sweep(tmp_path, PAIRS="2 x")
    assert done.returncode == 2 and done.stderr.strip() == "recall_sweep.sh: pairs: expected an integer, got 'x'"
    done = _sweep(tmp_path, CONFIG=str(tmp_path / "missing.toml"))
    assert done.returncode == 2 and "no config" in done.stderr and not (tmp_path / "runs").exists()
