"""benchmarks/full_schedule.sh, and `newllm collect` on what it wrote, end to end on a slice of the real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Full-size LSTM (the cheapest full-size model on a CPU), two optimizer steps per stage, sliced data (40
# dialogues: enough windows for step 2's batch of 32).
EXTRA = (
    "--set data.train_lines=200 --set data.eval_lines=30 --set data.train_dialogues=40 --set data.eval_dialogues=10 "
    "--set eval.response_dialogues=3 --set pretrain.max_steps=2 --set finetune.max_steps=2 --set eval.speed_repeats=1 "
    "--set eval.speed_new_tokens=4 --set eval.max_new_tokens=4 --device cpu"
)


def test_one_run_goes_through_all_three_steps_and_into_the_summary(real_data_dir, tmp_path):
    root = tmp_path / "runs"
    env = {
        **os.environ,
        "NEWLLM_DATA_DIR": str(real_data_dir),
        "PYTHON": sys.executable,
        "SEEDS": "3",
        "PLAN": "full:lstm",
        "SEED_PLAN": "",
        "EXTRA": EXTRA,
    }
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=900)
    log = (root / "full_lstm_s3.log").read_text()
    events = [line.split()[0] for line in log.splitlines() if line.split()[:1] in (["start"], ["pretrain_done"],
              ["finetune_done"], ["evaluate_done"], ["exit"])]  # fmt: skip
    assert events == ["start", "pretrain_done", "finetune_done", "evaluate_done", "exit"], log
    assert "exit 0 " in log
    assert sorted(p.name for p in root.glob("*.log")) == ["full_lstm_s3.log", "launch.log"]  # SEED_PLAN="" runs none
    assert json.loads((root / "full_lstm_s3" / "experiment.json").read_text())["config"]["pretrain"]["seed"] == 3

    # the run's results.json alone: its seed, test numbers and training record
    out = tmp_path / "summary"
    runs = sorted(str(p) for p in root.iterdir() if p.is_dir())
    assert runs == [str(root / "full_lstm_s3")]
    subprocess.run(
        [sys.executable, "-m", "newllm.cli", "collect", *runs, "--out", f"{out}.json", "--markdown", f"{out}.md",
         "--plot", f"{out}_val.png", "--plot-test", f"{out}_test.png"],
        check=True, timeout=300,
    )  # fmt: skip
    (row,) = json.loads(Path(f"{out}.json").read_text())["rows"]
    assert (row["preset"], row["model"], row["seeds"], row["stopped"]) == ("full", "lstm", [3], [])
    assert row["wikitext_test_word_ppl"]["n"] == 1 and row["wikitext_test_word_ppl"]["mean"] > 1
    assert row["dailydialog_test_token_ppl"]["n"] == 1
    (run,) = row["runs"]
    for stage in ("wikitext", "dailydialog"):  # step 3 put each stage's record into results.json
        assert run[f"{stage}_epochs_run"] == len(run["per_epoch"][stage]) >= 1
        assert run[f"{stage}_best_val_ppl"] == min(epoch["val_ppl"] for epoch in run["per_epoch"][stage])
    assert "| `full` | LSTM | 1 |" in Path(f"{out}.md").read_text()
    assert all(Path(f"{out}_{name}.png").stat().st_size > 0 for name in ("val", "test"))


def test_mps_is_started_checked_and_stopped_or_left_out(tmp_path):
    """MPS=1 starts the daemon, and stops it again when no CUDA client can use it (here: no GPU)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-cuda-mps-control"  # records its arguments and its stdin ("quit")
    fake.write_text(f'#!/bin/sh\necho "args $*" >> {calls}\n[ -t 0 ] || cat >> {calls}\n')
    fake.chmod(0o755)
    python = tmp_path / "bin" / "python-without-cuda"  # the CUDA probe fails, as on a machine without a GPU
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python), "MPS": "1", "PLAN": "",
           "SEED_PLAN": ""}  # fmt: skip
    root = tmp_path / "runs"
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=60,
                   stdin=subprocess.DEVNULL)  # fmt: skip
    assert calls.read_text().split("\n")[:3] == ["args -d", "args ", "quit"]  # started, then told to quit
    assert "MPS: the daemon or a CUDA client failed, running without" in (root / "launch.log").read_text()
    assert [p.name for p in root.iterdir()] == ["launch.log"]  # PLAN="" and SEED_PLAN="": no run, no tokenizer

    env["PATH"] = "/usr/bin:/bin"  # no daemon to be found
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(tmp_path / "runs2")], env=env,
                   check=True, timeout=60)  # fmt: skip
    assert "MPS: nvidia-cuda-mps-control not found" in (tmp_path / "runs2" / "launch.log").read_text()


def test_mps_on_one_gpu_of_several_names_it_by_uuid(tmp_path):
    """Under CUDA_VISIBLE_DEVICES=1 the daemon and its clients get GPU 1's UUID: the MPS server numbers the GPUs
    it sees from 0, so a client asking for index 1 would find none."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name, script in (
        ("nvidia-cuda-mps-control", f'echo "daemon $* $CUDA_VISIBLE_DEVICES" >> {calls}; [ -t 0 ] || cat > /dev/null'),
        ("nvidia-smi", 'echo "0, GPU-aaaa-0000"; echo "1, GPU-bbbb-1111"'),  # --query-gpu=index,uuid
        ("python-probe", f'echo "client $CUDA_VISIBLE_DEVICES" >> {calls}; exit 0'),  # the CUDA probe succeeds
    ):
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python-probe"), "MPS": "1",
           "PLAN": "", "SEED_PLAN": "", "CUDA_VISIBLE_DEVICES": "1", "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipe")}  # fmt: skip
    root = tmp_path / "runs"
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=60,
                   stdin=subprocess.DEVNULL)  # fmt: skip
    assert calls.read_text().splitlines()[:3] == ["daemon -d GPU-bbbb-1111", "client GPU-bbbb-1111", "daemon  GPU-bbbb-1111"]
    assert "MPS: on" in (root / "launch.log").read_text()

    env["CUDA_VISIBLE_DEVICES"] = "0,GPU-cccc,7"  # a UUID stays; an index nvidia-smi does not list stays too
    calls.unlink()
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(tmp_path / "runs2")], env=env, check=True,
                   timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert calls.read_text().splitlines()[0] == "daemon -d GPU-aaaa-0000,GPU-cccc,7"


FAKE_PYTHON = """#!/bin/bash
# stands in for python: `-` is the tokenizer step; `-m newllm.cli STEP ... --output-dir DIR` records STEP
if [ "$1" = - ]; then cat > /dev/null; echo {} > "$3"; exit 0; fi
step=$3; out=$(echo "$@" | sed 's/.*--output-dir \\([^ ]*\\).*/\\1/')
echo "$step" >> "$out.calls"
echo "$@" | grep -o '[a-z]*\\.time_limit=[0-9]*' >> "$out.limits"
case " $* " in *" --resume "*) echo "$step" >> "$out.resumed" ;; esac
case $step in
  pretrain) mkdir -p "$out/best_lstm_wikitext" ;;
  finetune) exec sleep 60 ;;  # still running at the deadline
esac
"""


def fake_python(tmp_path, finetune_hangs: bool = False) -> Path:
    """FAKE_PYTHON as an executable; its step 2 returns at once unless `finetune_hangs`."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON if finetune_hangs else FAKE_PYTHON.replace("exec sleep 60", "exit 0"))
    python.chmod(0o755)
    return python


def test_a_deadline_stops_step_2_and_step_1_is_still_evaluated(tmp_path):
    python = fake_python(tmp_path, finetune_hangs=True)
    env = {**os.environ, "PYTHON": str(python), "SEEDS": "0", "PLAN": "full:lstm", "SEED_PLAN": ""}
    root = tmp_path / "runs"
    env["DEADLINE"] = str(int(time.time()) + 4)
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=60)
    assert (root / "full_lstm_s0.calls").read_text().split() == ["pretrain", "finetune", "evaluate"]
    events = [line.split()[0] for line in (root / "full_lstm_s0.log").read_text().splitlines()]
    assert events == ["start", "pretrain_done", "deadline", "evaluate_done", "exit"]
    assert "exit 124 " in (root / "full_lstm_s0.log").read_text()

    late = tmp_path / "late"
    env["DEADLINE"] = str(int(time.time()) - 1)  # already past: nothing starts
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(late)], env=env, check=True, timeout=60)
    assert not (late / "full_lstm_s0.calls").exists()
    assert [line.split()[:2] for line in (late / "full_lstm_s0.log").read_text().splitlines()][-1] == ["exit", "124"]


def test_a_deadline_gives_each_step_a_time_limit_step_margin_seconds_before_it(tmp_path):
    python = fake_python(tmp_path)
    deadline = int(time.time()) + 100
    env = {**os.environ, "PYTHON": str(python), "SEEDS": "0", "PLAN": "full:lstm", "SEED_PLAN": "",
           "DEADLINE": str(deadline), "STEP_MARGIN": "30"}  # fmt: skip
    root = tmp_path / "runs"
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=60)
    limits = [line.split("=") for line in (root / "full_lstm_s0.limits").read_text().split()]
    assert [name for name, _ in limits] == ["pretrain.time_limit", "finetune.time_limit"]  # not evaluate
    assert all(50 <= int(seconds) <= 70 for _, seconds in limits), limits
    events = [line.split()[0] for line in (root / "full_lstm_s0.log").read_text().splitlines()]
    assert events == ["start", "pretrain_done", "finetune_done", "evaluate_done", "exit"]


def test_finetune_0_runs_step_1_and_evaluates_its_model(tmp_path):
    python = fake_python(tmp_path)
    env = {**os.environ, "PYTHON": str(python), "SEEDS": "1", "PLAN": "pard:new_llm resd:new_llm", "SEED_PLAN": "",
           "FINETUNE": "0"}  # fmt: skip
    root = tmp_path / "runs"
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=60)
    for row, preset in (("pard", "full_parallel_dropout"), ("resd", "full_residual_norm_dropout")):
        assert (root / f"{row}_new_llm_s1.calls").read_text().split() == ["pretrain", "evaluate"]
        assert (root / f"tokenizer_{preset}.json").exists()  # the row's own preset
        events = [line.split()[0] for line in (root / f"{row}_new_llm_s1.log").read_text().splitlines()]
        assert events == ["start", "pretrain_done", "evaluate_done", "exit"]


def test_resume_1_adds_step_2_to_folders_where_step_1_ran(tmp_path):
    # the second pass after FINETUNE=0: --resume on both training steps (the finished one is skipped), not on evaluate
    python = fake_python(tmp_path)
    env = {**os.environ, "PYTHON": str(python), "SEEDS": "0", "PLAN": "full:lstm", "SEED_PLAN": "", "FINETUNE": "0"}
    root = tmp_path / "runs"
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=60)
    assert not (root / "full_lstm_s0.resumed").exists()
    env |= {"FINETUNE": "1", "RESUME": "1"}
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=60)
    assert (root / "full_lstm_s0.calls").read_text().split() == ["pretrain", "evaluate", "pretrain", "finetune", "evaluate"]
    assert (root / "full_lstm_s0.resumed").read_text().split() == ["pretrain", "finetune"]


def test_a_plan_entry_may_name_its_own_seeds(tmp_path):
    python = fake_python(tmp_path)
    env = {**os.environ, "PYTHON": str(python), "SEEDS": "7", "PLAN": "resd:new_llm:0,2 full:lstm", "SEED_PLAN": ""}
    root = tmp_path / "runs"
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=60)
    runs = sorted(p.name for p in root.glob("*.log") if p.name != "launch.log")
    assert runs == ["full_lstm_s7.log", "resd_new_llm_s0.log", "resd_new_llm_s2.log"]  # SEEDS for the entry without
    assert (root / "resd_new_llm_s2.calls").read_text().split() == ["pretrain", "finetune", "evaluate"]


def test_a_row_may_be_any_preset_in_configs_and_nothing_else(tmp_path):
    python = fake_python(tmp_path)
    env = {**os.environ, "PYTHON": str(python), "SEEDS": "0", "PLAN": "full_parallel_dropout:new_llm", "SEED_PLAN": ""}
    root = tmp_path / "runs"
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=60)
    assert (root / "tokenizer_full_parallel_dropout.json").exists()
    assert (root / "full_parallel_dropout_new_llm_s0.calls").read_text().split() == ["pretrain", "finetune", "evaluate"]

    env["PLAN"] = "no_such_preset:new_llm"
    bad = subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(tmp_path / "bad")], env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert bad.returncode != 0 and "unknown row no_such_preset" in bad.stderr
    assert not list((tmp_path / "bad").glob("*.calls"))  # nothing ran


def test_the_prototype_plan_runs_the_prototype_preset_under_its_earlier_names_too(tmp_path):
    python = fake_python(tmp_path)
    env = {**os.environ, "PYTHON": str(python), "PLAN": "", "PROTOTYPE_PLAN": "prototype:lstm seed:new_llm"}
    root = tmp_path / "runs"
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(root)], env=env, check=True, timeout=60)
    assert sorted(p.name for p in root.glob("*.json")) == ["tokenizer_prototype.json"]  # the row seed is that preset
    for run in ("prototype_lstm_s0", "seed_new_llm_s0"):  # seed 0 alone
        assert (root / f"{run}.calls").read_text().split() == ["pretrain", "finetune", "evaluate"]

    env = {key: value for key, value in env.items() if key != "PROTOTYPE_PLAN"} | {"SEED_PLAN": "seed:lstm"}
    subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(tmp_path / "old")], env=env, check=True,
                   timeout=60)  # fmt: skip
    assert (tmp_path / "old" / "seed_lstm_s0.calls").read_text().split() == ["pretrain", "finetune", "evaluate"]


def test_jobs_caps_how_many_runs_are_at_once(tmp_path):
    """JOBS=N: never more than N runs' commands at once; without it every run starts together."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "fake-python"  # the tokenizer step writes its file; every newllm command logs its span
    python.write_text('#!/bin/sh\nif [ "$1" = "-" ]; then cat > /dev/null; touch "$3"; exit 0; fi\n'
                      f'echo "+" >> {tmp_path}/spans; sleep 0.4; echo "-" >> {tmp_path}/spans\n')  # fmt: skip
    python.chmod(0o755)

    def most_at_once(jobs: str | None, **more: str) -> int:
        (tmp_path / "spans").unlink(missing_ok=True)
        env = {**os.environ, "PYTHON": str(python), "PLAN": "full:lstm", "SEEDS": "0 1 2 3", "SEED_PLAN": "",
               "FINETUNE": "0", **more}  # fmt: skip
        env.pop("JOBS", None)
        if jobs is not None:
            env["JOBS"] = jobs
        subprocess.run(["bash", str(REPO / "benchmarks" / "full_schedule.sh"), str(tmp_path / f"runs{jobs}")], env=env,
                       check=True, timeout=60)  # fmt: skip
        now = peak = 0
        for line in (tmp_path / "spans").read_text().split():
            now += 1 if line == "+" else -1
            peak = max(peak, now)
        logs = sorted((tmp_path / f"runs{jobs}").glob("full_lstm_s*.log"))
        assert len(logs) == 4 and all("exit 0 " in log.read_text() for log in logs)  # every run still ran
        return peak

    assert most_at_once("2") == 2
    assert most_at_once("0") == 4
    # no JOBS and no GPU (an nvidia-smi that fails, as where no driver is): all at once
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 9\n")
    smi.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    assert most_at_once(None, PATH=path) == 4
    # no JOBS, a GPU with 13,000 MiB free: two runs of 6 GB at once, said in launch.log
    smi.write_text("#!/bin/sh\necho 13000\n")
    (tmp_path / "runsNone" / "launch.log").unlink()
    assert most_at_once(None, PATH=path, GB_PER_RUN="6") == 2
    launch = (tmp_path / "runsNone" / "launch.log").read_text()
    assert "jobs 2 at once: 13000 MiB of GPU memory free, 6 GB a run" in launch
