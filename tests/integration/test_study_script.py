"""benchmarks/study.sh end to end on a slice of the real data: step 1 of two seeds, step 2's grid at both,
the choice made at seed 0 alone, and only the chosen point of each seed evaluated; each family's preset is the
one its grid names (here `quick`, not `study_lstm`: the step-1 folders carry the grid's preset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_full_schedule_script import EXTRA

REPO = Path(__file__).resolve().parents[2]
GRID = """
step = "finetune"
seed = 0
[axes]
"finetune.dropout" = [0.1, 0.3]
[families.lstm]
preset = "quick"
"""


def test_the_study_runs_the_grid_at_every_seed_and_evaluates_the_choice_of_seed_0(real_data_dir, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    root = tmp_path / "runs"
    env = {**os.environ, "NEWLLM_DATA_DIR": str(real_data_dir), "PYTHON": sys.executable, "FAMILIES": "lstm",
           "SEEDS": "0 1", "GRID": str(grid), "EXTRA": EXTRA}  # fmt: skip
    subprocess.run(["bash", str(REPO / "benchmarks" / "study.sh"), str(root)], env=env, check=True, timeout=900)
    log = (root / "study.log").read_text()
    assert log.splitlines()[-1].endswith(" done"), log

    # step 1 of both seeds, each evaluated in its folder
    for seed in (0, 1):
        step1 = (root / "step1" / f"quick_lstm_s{seed}.log").read_text()
        assert "pretrain_done" in step1 and "evaluate_done" in step1 and "exit 0" in step1, step1
    # the grid at both seeds, each from its own seed's step-1 model
    for seed in (0, 1):
        for point in ("lstm_dropout0.1", "lstm_dropout0.3"):
            folder = root / f"step2_s{seed}" / point
            assert (folder / "best_lstm_dialog").is_dir()
            assert (folder / "best_lstm_wikitext").resolve() == (root / "step1" / f"quick_lstm_s{seed}" /
                                                                  "best_lstm_wikitext").resolve()  # fmt: skip
            settings = json.loads((folder / "experiment.json").read_text())["config"]
            assert settings["finetune"]["seed"] == seed and settings["finetune"]["dropout"] == float(point[-3:])
    # chosen on seed 0's validation loss alone; that point evaluated at both seeds, the other never
    choice = json.loads((root / "step2_s0" / "choice_lstm.json").read_text())
    losses = {p["name"]: p["val_loss"] for p in choice["points"] if p["family"] == "lstm"}
    chosen = min(losses, key=losses.get)
    assert choice["chosen"]["lstm"] == chosen
    assert sorted((root / "chosen.txt").read_text().split()) == [str(root / f"step2_s{s}" / chosen) for s in (0, 1)]
    for seed in (0, 1):
        results = json.loads((root / f"step2_s{seed}" / chosen / "results.json").read_text())
        assert results["provenance"]["changed_settings"]["finetune.dropout"] == float(chosen[-3:])
        other = next(p for p in losses if p != chosen)
        assert not (root / f"step2_s{seed}" / other / "results.json").exists()  # its test split was not read


def test_a_step_1_that_never_starts_ends_the_study_with_an_error_instead_of_waiting(real_data_dir, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace('preset = "quick"', 'preset = "no_such_preset"'))
    root = tmp_path / "runs"
    env = {**os.environ, "NEWLLM_DATA_DIR": str(real_data_dir), "PYTHON": sys.executable, "FAMILIES": "lstm",
           "SEEDS": "0", "GRID": str(grid), "EXTRA": EXTRA}  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "study.sh"), str(root)], env=env, timeout=120,
                          capture_output=True)  # fmt: skip
    assert done.returncode != 0
    log = (root / "study.log").read_text()
    assert "lstm seed 0: no step-1 model, no step 2" in log and "failed: nothing was evaluated" in log, log


@pytest.mark.parametrize("guess", ["", "lstm_dropout0.1"])
def test_choice_first_runs_only_the_point_seed_0_chose_at_the_other_seeds(real_data_dir, tmp_path, guess):
    # with a guess, that point starts at seed 1 beside seed 0's grid; the choice is still seed 0's alone
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    root = tmp_path / "runs"
    env = {**os.environ, "NEWLLM_DATA_DIR": str(real_data_dir), "PYTHON": sys.executable, "FAMILIES": "lstm",
           "SEEDS": "0 1", "GRID": str(grid), "EXTRA": EXTRA, "CHOICE_FIRST": "1", "GUESS": guess}  # fmt: skip
    subprocess.run(["bash", str(REPO / "benchmarks" / "study.sh"), str(root)], env=env, check=True, timeout=900)
    log = (root / "study.log").read_text()
    assert log.splitlines()[-1].endswith(" done"), log
    choice = json.loads((root / "step2_s0" / "choice_lstm.json").read_text())
    chosen = choice["chosen"]["lstm"]
    assert sorted(p.name for p in (root / "step2_s0").iterdir() if p.is_dir()) == ["lstm_dropout0.1", "lstm_dropout0.3"]
    ran = sorted(p.name for p in (root / "step2_s1").iterdir() if p.is_dir())
    assert ran == sorted({chosen, guess} - {""})  # the chosen point, and the guess if there was one
    if guess:  # started once, without waiting for the choice (whether it comes first depends on step 1's pace)
        assert log.count(f"lstm seed 1: step 2 grid started ({guess} only)") == 1, log
    if chosen != guess:  # run after the choice
        assert log.index("lstm: chose") < log.index(f"lstm seed 1: step 2 grid started ({chosen} only)")
        if guess:  # a wrong guess is never evaluated: its test split is not read
            assert not (root / "step2_s1" / guess / "results.json").exists()
    assert sorted((root / "chosen.txt").read_text().split()) == [str(root / f"step2_s{s}" / chosen) for s in (0, 1)]
