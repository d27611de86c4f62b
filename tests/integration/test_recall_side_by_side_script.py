"""benchmarks/recall_side_by_side.sh on CPU with a tiny config: each family alone, then processes side by side
timing one window; the work rate is the sum of their speeds relative to alone. Bad input stops at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "recall_side_by_side.sh"


def _run(tmp_path, **env):
    config = tmp_path / "tiny.toml"
    config.write_text("widths = [16]\nseq_lens = [16]\npairs = [2]\nvocab_size = 32\nbatch_size = 4\n")
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "CONFIG": str(config), "MODELS": "lstm",
           "JOBS_LIST": "2", "STEPS": "2", "LEAD": "8", "WIDTH": "16", "SEQ_LEN": "16", **env}  # fmt: skip
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_processes_side_by_side_against_one_at_a_time(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "side_by_side.json").read_text())
    alone = result["alone_ms_per_step"]["lstm"]
    (round_,) = result["rounds"]
    assert round_["jobs"] == round_["finished"] == len(round_["processes"]) == 2 and result["device"] == "cpu"
    for process in round_["processes"]:
        assert process["model"] == "lstm" and process["slowdown"] == pytest.approx(process["ms_per_step"] / alone)
    assert round_["work_rate"] == pytest.approx(sum(alone / p["ms_per_step"] for p in round_["processes"]))
    assert "| 2 | 2 |" in done.stdout and f"{round_['work_rate']:.2f} |" in done.stdout


def test_bad_input_stops_before_anything_runs(tmp_path):
    done = _run(tmp_path, JOBS_LIST="2 0")
    assert done.returncode == 2 and "must be positive integers, got 0" in done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
