"""benchmarks/tune.py: the grid's points, the commands they become, and what collect chooses."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tune():
    return load_benchmark("tune")


GRID = """
preset = "quick"
seed = 3
[axes]
"model.dropout" = [0.1, 0.3]
"pretrain.weight_decay" = [0.0, 0.1]
[families.new_llm]
follow = { "model.embedding_dropout" = "model.dropout" }
[families.tinygpt2.axes]
"model.gpt2_layers" = [2, 4]
[families.lstm]
"""


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    return path


def test_every_family_gets_the_shared_axes_and_its_own(tune, grid_file):
    points = tune.points(tune.load_grid(grid_file))
    counts = {f: sum(p["family"] == f for p in points) for f in ("new_llm", "tinygpt2", "lstm")}
    assert counts == {"new_llm": 4, "tinygpt2": 8, "lstm": 4}
    assert len({p["name"] for p in points}) == len(points)
    for point in points:
        assert {"model.dropout", "pretrain.weight_decay"} <= set(point["settings"])
        if point["family"] == "new_llm":
            assert point["settings"]["model.embedding_dropout"] == point["settings"]["model.dropout"]
    assert [p["family"] for p in tune.points(tune.load_grid(grid_file), "lstm")] == ["lstm"] * 4
    with pytest.raises(SystemExit, match="--only names gru"):
        tune.points(tune.load_grid(grid_file), "gru")


def test_the_commands_are_step_1_of_the_preset_with_the_points_settings(tune, grid_file, tmp_path):
    grid = tune.load_grid(grid_file)
    point = tune.points(grid, "tinygpt2")[-1]
    cmd = tune.command(grid, point, tmp_path, "python3", time_limit=90.4)
    assert cmd[:4] == ["python3", "-m", "newllm.cli", "pretrain"]
    sets = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
    assert sets == ["pretrain.seed=3", "model.dropout=0.3", "pretrain.weight_decay=0.1", "model.gpt2_layers=4",
                    "pretrain.time_limit=90"]  # fmt: skip
    assert "evaluate" not in cmd and cmd[cmd.index("--output-dir") + 1] == str(tmp_path / point["name"])


def test_a_grid_file_with_unknown_tables_is_refused(tune, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('preset = "quick"\n[families.lstm]\nseeds = [1]\n')
    with pytest.raises(SystemExit, match="families.lstm may hold axes, follow and preset"):
        tune.load_grid(bad)


def _history(folder: Path, val_ppls, stopped=False):
    folder.mkdir(parents=True)
    rows = [{"epoch": i + 1, "val_loss": math.log(v), "seconds": 2.0} for i, v in enumerate(val_ppls)]
    (folder / "history.json").write_text(json.dumps(rows))
    meta = {"parameters": 7, "train_seconds": 9.0} | ({"stopped": "time_limit"} if stopped else {})
    (folder / "complete.json").write_text(json.dumps(meta))


def test_collect_chooses_each_familys_lowest_validation_loss_and_keeps_earlier_parts(tune, grid_file, tmp_path):
    grid = tune.load_grid(grid_file)
    runs = tmp_path / "runs"
    by_name = {p["name"]: p for p in tune.points(grid)}
    lstm = [n for n in by_name if n.startswith("lstm")]
    _history(runs / lstm[0] / "lstm_wikitext", [90.0, 60.0, 70.0])
    _history(runs / lstm[1] / "lstm_wikitext", [80.0, 65.0], stopped=True)
    out = tmp_path / "part1.json"
    tune.main(["collect", str(runs), "--grid", str(grid_file), "--out", str(out), "--commit", "abc", "--ran-on", "H100"])
    summary = json.loads(out.read_text())
    rows = {r["name"]: r for r in summary["points"]}
    assert summary["chosen"] == {"lstm": lstm[0]} and summary["provenance"]["commit"] == "abc"
    assert summary["provenance"]["device"] == "H100"  # where the runs ran, not the machine collecting them
    assert rows[lstm[0]]["best_epoch"] == 2 and rows[lstm[0]]["complete"] is True
    assert rows[lstm[0]]["val_ppl"] == pytest.approx(60.0)
    assert rows[lstm[1]]["complete"] is False and rows[lstm[1]]["stopped"] == "time_limit"
    # a later part: other folders, the first part's points taken from its summary
    later = tmp_path / "later"
    new_llm = next(n for n in by_name if n.startswith("new_llm"))
    _history(later / new_llm / "new_llm_wikitext", [70.0, 55.0])
    out2 = tmp_path / "part2.json"
    tune.main(["collect", str(later), "--grid", str(grid_file), "--out", str(out2), "--previous", str(out)])
    merged = json.loads(out2.read_text())
    assert merged["chosen"] == {"new_llm": new_llm, "lstm": lstm[0]}
    with pytest.raises(SystemExit, match="not a summary"):
        tune.main(["collect", str(later), "--grid", str(grid_file), "--previous", str(grid_file)])


def test_collect_records_the_seed_each_point_ran_with(tune, grid_file, tmp_path):
    # `run --seed 2` overrides the grid's seed 3: the summary says which seed its numbers are from
    runs = tmp_path / "runs"
    name = next(p["name"] for p in tune.points(tune.load_grid(grid_file)) if p["family"] == "lstm")
    _history(runs / name / "lstm_wikitext", [90.0, 60.0])
    (runs / name / "experiment.json").write_text(json.dumps({"config": {"pretrain": {"seed": 2}}}))
    out = tmp_path / "summary.json"
    tune.main(["collect", str(runs), "--grid", str(grid_file), "--out", str(out), "--commit", "abc", "--ran-on", "H100"])
    rows = {r["name"]: r for r in json.loads(out.read_text())["points"]}
    assert rows[name]["seed"] == 2
    assert all("seed" not in row for other, row in rows.items() if other != name)  # no experiment.json, no claim


def test_launches_side_by_side_split_the_free_memory_and_a_grid_names_what_a_point_takes(tune, monkeypatch, tmp_path):
    # three seeds' step-2 grids, each of three points, on one 80 GB GPU: at 12 GB a point, 9 at once would take 108
    monkeypatch.setattr(tune, "free_gpu_mib", lambda gpus: 72 * 1024)
    args = argparse_namespace(jobs=None, share=1, gb_per_run=None)
    assert tune.jobs_at_once(args, 3, [], 12.0) == 3
    args.share = 3  # 24 GB each: two points of 12 GB at once, the third after
    assert tune.jobs_at_once(args, 3, [], 12.0) == 2
    args.jobs = 0  # --jobs wins: all at once
    assert tune.jobs_at_once(args, 3, [], 12.0) == 3
    # what a point takes: --gb-per-run, else the grid's, else $GB_PER_RUN, else 6
    monkeypatch.delenv("GB_PER_RUN", raising=False)
    assert tune.gb_per_run(argparse_namespace(gb_per_run=None), {"gb_per_run": 12}) == 12
    assert tune.gb_per_run(argparse_namespace(gb_per_run=4.0), {"gb_per_run": 12}) == 4
    assert tune.gb_per_run(argparse_namespace(gb_per_run=None), {}) == 6
    monkeypatch.setenv("GB_PER_RUN", "9")
    assert tune.gb_per_run(argparse_namespace(gb_per_run=None), {}) == 9
    grid = tmp_path / "grid.toml"
    grid.write_text('step = "finetune"\ngb_per_run = 12\n[families.lstm]\npreset = "quick"\n')
    assert tune.load_grid(grid)["gb_per_run"] == 12
    with pytest.raises(SystemExit, match="--share counts the launches side by side, at least 1, got 0"):
        tune.main(["run", str(tmp_path / "runs"), "--grid", str(grid), "--share", "0", "--dry-run"])


def argparse_namespace(**kwargs):
    import argparse

    return argparse.Namespace(**kwargs)


def test_the_studys_grid_gives_every_family_dropout_and_weight_decay_and_tinygpt2_two_shapes(tune):
    grid = tune.load_grid(ROOT / "configs" / "grids" / "study.toml")
    points = tune.points(grid)
    for family in ("new_llm", "tinygpt2", "lstm"):
        settings = [p["settings"] for p in points if p["family"] == family]
        assert {(s["model.dropout"], s["pretrain.weight_decay"]) for s in settings} == {
            (d, w) for d in (0.1, 0.2, 0.3) for w in (0.0, 0.1)
        }
    assert {p["settings"]["model.gpt2_layers"] for p in points if p["family"] == "tinygpt2"} == {4, 8}


def test_the_committed_pilot_summary_is_what_its_grid_file_runs(tune):
    grid = tune.load_grid(ROOT / "configs" / "grids" / "study_pilot.toml")
    summary = json.loads((ROOT / "docs" / "results" / "study_pilot_h200.json").read_text())
    assert summary["grid"] == grid
    assert [p["name"] for p in summary["points"]] == [p["name"] for p in tune.points(grid)]


def test_the_committed_study_grid_is_complete_and_what_its_grid_file_runs(tune):
    grid = tune.load_grid(ROOT / "configs" / "grids" / "study.toml")
    summary = json.loads((ROOT / "docs" / "results" / "study_grid_h200.json").read_text())
    assert summary["grid"] == grid
    assert [p["name"] for p in summary["points"]] == [p["name"] for p in tune.points(grid)]
    # every point ran its whole schedule, so the choice compares like with like
    assert all(p["complete"] and p["epochs_run"] == 16 for p in summary["points"])
    for family, name in summary["chosen"].items():
        best = min((p for p in summary["points"] if p["family"] == family), key=lambda p: p["val_loss"])
        assert best["name"] == name


def test_the_peers_grid_gives_mamba2_the_breadth_of_every_other_family(tune):
    study = tune.points(tune.load_grid(ROOT / "configs" / "grids" / "study.toml"))
    peers = tune.points(tune.load_grid(ROOT / "configs" / "grids" / "study_peers.toml"))
    assert {p["family"] for p in peers} == {"mamba2"}
    assert len(peers) == sum(p["family"] == "new_llm" for p in study) == 6
    # no dropout axis: the architecture has none (the registry's dropout fields are empty)
    assert all("model.dropout" not in p["settings"] for p in peers)
    assert {p["settings"]["pretrain.weight_decay"] for p in peers} == {0.0, 0.1}


def test_the_peers_step_2_grid_gives_mamba2_three_points_on_the_learning_rate(tune):
    study = tune.points(tune.load_grid(ROOT / "configs" / "grids" / "study_finetune.toml"))
    grid = tune.load_grid(ROOT / "configs" / "grids" / "study_finetune_peers.toml")
    peers = tune.points(grid)
    assert tune.step_of(grid) == "finetune" and tune.family_preset(grid, "mamba2") == "study_mamba2"
    assert len(peers) == sum(p["family"] == "new_llm" for p in study) == 3
    # half, once and twice the study's step-2 rate
    from newllm.config import load_config

    rate = load_config("study").finetune.lr
    assert sorted(p["settings"]["finetune.lr"] for p in peers) == [rate / 2, rate, rate * 2]


def test_plot_draws_every_point_of_the_committed_grid_and_refuses_other_json(tune, tmp_path):
    out = tmp_path / "grid.png"
    assert tune.main(["plot", str(ROOT / "docs" / "results" / "study_grid_h200.json"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "other.json").write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="not a summary of this script"):
        tune.main(["plot", str(tmp_path / "other.json"), "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


FINETUNE_GRID = """
step = "finetune"
seed = 2
[axes]
"finetune.dropout" = [0.1, 0.3]
[families.new_llm]
preset = "quick"
[families.lstm]
preset = "prototype"
"""


def test_a_step_2_grid_fine_tunes_each_familys_own_step_1_run(tune, tmp_path):
    path = tmp_path / "finetune.toml"
    path.write_text(FINETUNE_GRID)
    grid = tune.load_grid(path)
    points = tune.points(grid)
    assert [p["name"] for p in points] == ["new_llm_dropout0.1", "new_llm_dropout0.3", "lstm_dropout0.1",
                                           "lstm_dropout0.3"]  # fmt: skip
    cmd = tune.command(grid, points[-1], tmp_path, "python3", time_limit=30)
    assert cmd[3:6] == ["finetune", "--preset", "prototype"]
    assert [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"] == [
        "finetune.seed=2", "finetune.dropout=0.3", "finetune.time_limit=30"]  # fmt: skip
    # the point's folder starts from <preset>_<family>_s<seed>/ of the step-1 runs: tokenizer and best checkpoint
    step1 = tmp_path / "step1" / "quick_new_llm_s2"
    (step1 / "best_new_llm_wikitext").mkdir(parents=True)
    (step1 / "best_new_llm_wikitext" / "config.json").write_text("{}")
    (step1 / "tokenizer.json").write_text('{"t": 1}')
    out = tmp_path / "runs" / points[0]["name"]
    out.mkdir(parents=True)
    tune.link_pretrained(grid, points[0], tmp_path / "step1", out)
    assert (out / "tokenizer.json").read_text() == '{"t": 1}'
    assert (out / "best_new_llm_wikitext" / "config.json").is_file()
    with pytest.raises(SystemExit, match="prototype_lstm_s2/best_lstm_wikitext"):
        tune.link_pretrained(grid, points[2], tmp_path / "step1", tmp_path)
    # collect reads the step-2 stage
    _history(tmp_path / "runs" / points[0]["name"] / "new_llm_dialog", [20.0, 18.0])
    assert tune.read_point(tmp_path / "runs", points[0], "finetune")["val_ppl"] == pytest.approx(18.0)


def test_grid_files_without_a_usable_preset_or_step_are_refused(tune, tmp_path):
    for text, message in [
        ('[families.lstm]\n', "a step-1 grid names the preset"),
        ('step = "finetune"\n[families.lstm]\n', "families.lstm has no preset"),
        ('step = "evaluate"\npreset = "quick"\n[families.lstm]\n', "step must be pretrain or finetune"),
    ]:
        path = tmp_path / "grid.toml"
        path.write_text(text)
        with pytest.raises(SystemExit, match=message):
            tune.load_grid(path)


def test_the_studys_step_2_grid_starts_from_the_chosen_presets(tune):
    grid = tune.load_grid(ROOT / "configs" / "grids" / "study_finetune.toml")
    assert tune.step_of(grid) == "finetune"
    assert {family: tune.family_preset(grid, family) for family in grid["families"]} == {
        "new_llm": "study_new_llm", "tinygpt2": "study_tinygpt2", "lstm": "study_lstm"}  # fmt: skip
    assert len(tune.points(grid)) == 9


def test_run_takes_another_seed_and_passes_other_options_to_every_point(tune, grid_file, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert tune.main(["run", str(runs), "--grid", str(grid_file), "--only", "lstm", "--seed", "7",
                      "--set", "pretrain.fast_path=compiled", "--device", "cpu", "--dry-run"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line in lines:
        assert " --set pretrain.seed=7 " in line
        assert line.endswith(" --set pretrain.fast_path=compiled --device cpu")
    with pytest.raises(SystemExit):  # collect takes no newllm options
        tune.main(["collect", str(runs), "--grid", str(grid_file), "--device", "cpu"])


def test_run_points_runs_only_the_named_points_and_refuses_unknown_names(tune, grid_file, tmp_path, capsys):
    runs = tmp_path / "runs"
    chosen = "lstm_dropout0.1_weight_decay0.1"
    assert tune.main(["run", str(runs), "--grid", str(grid_file), "--points", chosen, "--seed", "1", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and f"--output-dir {runs / chosen} " in lines[0] and " --set pretrain.seed=1 " in lines[0]
    with pytest.raises(SystemExit, match="--points names lstm_dropout0.5"):
        tune.main(["run", str(runs), "--grid", str(grid_file), "--points", "lstm_dropout0.5", "--dry-run"])


def test_run_starts_at_most_jobs_points_at_once_from_the_gpus_free_memory(tune, grid_file, tmp_path, monkeypatch):
    # a fake nvidia-smi reports 13,000 MiB free: at 6 GB a run two points fit, so the four LSTM points run two at a
    # time, the next starting as one ends; a fake interpreter logs each point's start and end
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho 13000\n')
    smi.chmod(0o755)
    events = tmp_path / "events"
    python = bin_dir / "fake-python"
    python.write_text(f'#!/bin/sh\necho "start $$" >> {events}\nsleep 0.6\necho "end $$" >> {events}\n')
    python.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(tune, "POLL_S", 0.05)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "tokenizer.json").write_text("{}")  # the grid's tokenizer, so that run trains none
    assert tune.main(["run", str(runs), "--grid", str(grid_file), "--only", "lstm", "--python", str(python)]) == 0
    assert _most_at_once(events) == 2 and events.read_text().count("start") == 4
    assert json.loads((runs / "exit_codes.json").read_text()) == {name: 0 for name in (
        "lstm_dropout0.1_weight_decay0.0", "lstm_dropout0.1_weight_decay0.1", "lstm_dropout0.3_weight_decay0.0",
        "lstm_dropout0.3_weight_decay0.1")}  # fmt: skip
    # --jobs 0 runs all at once; --jobs 1 one at a time
    for jobs, expected in [("0", 4), ("1", 1)]:
        events.unlink()
        assert tune.main(["run", str(runs), "--grid", str(grid_file), "--only", "lstm", "--python", str(python),
                          "--jobs", jobs]) == 0  # fmt: skip
        assert _most_at_once(events) == expected


def test_a_point_that_ran_out_of_gpu_memory_runs_again_alone_once_the_others_end(tune, grid_file, tmp_path, monkeypatch):
    # a fake interpreter: every point's first run fails as CUDA does when other runs hold the memory, the second
    # succeeds; the rerun starts from scratch (--overwrite) after the first runs have all ended, one at a time
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    events = tmp_path / "events"
    python = bin_dir / "fake-python"
    python.write_text(
        "#!/bin/sh\n"
        'out=$(echo "$@" | sed "s/.*--output-dir \\([^ ]*\\).*/\\1/")\n'
        f'echo "start $$ $*" >> {events}\n'
        'if [ -e "$out/tried" ]; then sleep 0.2; code=0; else touch "$out/tried"; sleep 0.2; '
        'echo "newllm: error: CUDA out of memory. Tried to allocate 256.00 MiB."; code=1; fi\n'
        f'echo "end $$" >> {events}\nexit $code\n'
    )
    python.chmod(0o755)
    monkeypatch.setattr(tune, "POLL_S", 0.05)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "tokenizer.json").write_text("{}")
    assert tune.main(["run", str(runs), "--grid", str(grid_file), "--only", "lstm", "--python", str(python),
                      "--jobs", "0"]) == 0  # fmt: skip
    lines = events.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["start"] * 4 + ["end"] * 4 + ["start", "end"] * 4
    assert all("--overwrite" not in line for line in lines[:4]) and all("--overwrite" in line for line in lines[8::2])
    codes = json.loads((runs / "exit_codes.json").read_text())
    assert len(codes) == 4 and set(codes.values()) == {0}
    assert len(list(runs.glob("*.out_of_memory.log"))) == 4  # the failed runs' logs are kept beside the reruns'
    # a point that runs out of memory again is not tried a third time: run fails
    for tried in runs.glob("*/tried"):
        tried.unlink()
    python.write_text(f'#!/bin/sh\necho "start $$" >> {events}\necho "CUDA out of memory"\nexit 1\n')
    events.unlink()
    assert tune.main(["run", str(runs), "--grid", str(grid_file), "--only", "lstm", "--python", str(python),
                      "--jobs", "0"]) == 1  # fmt: skip
    assert events.read_text().count("start") == 8


def _most_at_once(events: Path) -> int:
    """The most points running at once, from a log of their starts and ends."""
    at_once = most = 0
    for line in events.read_text().splitlines():
        at_once += 1 if line.startswith("start") else -1
        most = max(most, at_once)
    return most


def test_the_best_cells_step_2_grid_is_the_studys_from_the_ablations_best_cell(tune, capsys):
    study = tune.load_grid(ROOT / "configs" / "grids" / "study_finetune.toml")
    best = tune.load_grid(ROOT / "configs" / "grids" / "study_finetune_best_cell.toml")
    assert tune.step_of(best) == "finetune" and best["axes"] == study["axes"] and best["seed"] == study["seed"]
    assert list(best["families"]) == ["new_llm"] and tune.family_preset(best, "new_llm") == "study_without_tanh"
    # what benchmarks/study.sh reads for each family's step 1 and evaluation
    assert tune.main(["preset", "new_llm", "--grid", str(ROOT / "configs" / "grids" / "study_finetune_best_cell.toml")]) == 0
    assert tune.main(["preset", "lstm"]) == 0
    assert capsys.readouterr().out.split() == ["study_without_tanh", "study_lstm"]
    with pytest.raises(SystemExit, match="has no family lstm"):
        tune.main(["preset", "lstm", "--grid", str(ROOT / "configs" / "grids" / "study_finetune_best_cell.toml")])


@pytest.mark.parametrize("family, summary", [("new_llm", "study_grid_h200.json"), ("tinygpt2", "study_grid_h200.json"),
                                             ("lstm", "study_grid_h200.json"), ("mamba2", "study_peers_grid_h200.json")])
def test_each_study_preset_holds_the_settings_its_grid_chose(tune, family, summary):
    # the committed presets against what write-preset derives from the committed grid summaries; the peer's file is
    # that command's output, byte for byte
    tomllib = tune.tomllib  # tomli on Python 3.10
    path = ROOT / "docs" / "results" / summary
    text = tune.preset_text(json.loads(path.read_text()), family, f"study_{family}", f"docs/results/{summary}")
    committed = (ROOT / "configs" / f"study_{family}.toml").read_text()
    assert tomllib.loads(text) == tomllib.loads(committed)
    if family == "mamba2":
        assert text == committed


def test_write_preset_refuses_a_stopped_choice_a_step_2_summary_and_overwriting(tune, tmp_path):
    summary = json.loads((ROOT / "docs" / "results" / "study_peers_grid_h200.json").read_text())
    out = tmp_path / "study_peer.toml"
    args = ["write-preset", str(tmp_path / "summary.json"), "mamba2", "--name", "study_peer", "--out", str(out)]
    stopped = json.loads(json.dumps(summary))
    next(p for p in stopped["points"] if p["name"] == stopped["chosen"]["mamba2"])["complete"] = False
    (tmp_path / "summary.json").write_text(json.dumps(stopped))
    with pytest.raises(SystemExit, match="did not finish"):
        tune.main(args)
    step2 = json.loads(json.dumps(summary))
    step2["grid"]["step"] = "finetune"
    (tmp_path / "summary.json").write_text(json.dumps(step2))
    with pytest.raises(SystemExit, match="step-2 grid"):
        tune.main(args)
    assert not out.exists()
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert tune.main(args) == 0
    from newllm.config import load_config

    written = out.read_text()
    assert 'preset = "study_peer"' in written and 'base = "study"' in written
    out.write_text(written + "# edited by hand\n")
    with pytest.raises(SystemExit, match="exists and differs"):
        tune.main(args)
    assert out.read_text().endswith("# edited by hand\n")  # nothing destroyed
    assert load_config("study_mamba2").pretrain.lr == 2e-3  # the committed preset resolves over study's
