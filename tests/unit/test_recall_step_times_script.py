"""benchmarks/recall_step_times.py: one row per family × width × length, its estimate from the config's steps,
and a one-line refusal of a bad config."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def step_times():
    return load_benchmark("recall_step_times")


def test_rows_cover_each_family_width_and_length_with_the_config_estimate(step_times, tmp_path):
    config = tmp_path / "small.toml"
    config.write_text("widths = [16, 32]\nseq_lens = [16, 32]\npairs = [8, 2]\nvocab_size = 64\nsteps = 700\n"
                      "batch_size = 4\n", encoding="utf-8")  # fmt: skip
    out = tmp_path / "times.json"
    code = step_times.main(["--config", str(config), "--models", "lstm,tinygpt2", "--steps", "2", "--device", "cpu",
                            "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert [(r["model"], r["width"], r["seq_len"]) for r in rows] == [
        (m, w, t) for m in ("lstm", "tinygpt2") for t in (16, 32) for w in (16, 32)
    ]
    # 16 tokens hold at most 4 pairs, so the first pairs count that fits is 2; 32 tokens hold 8
    assert [r["pairs"] for r in rows if r["model"] == "lstm"] == [2, 2, 8, 8]
    for row in rows:
        assert row["ms_per_step"] > 0 and row["batch_size"] == 4
        assert row["seconds_for_config_steps"] == pytest.approx(row["ms_per_step"] * 700 / 1000)


def test_a_bad_config_is_a_one_line_error(step_times, capsys, tmp_path):
    assert step_times.main(["--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_start_at_holds_the_timed_steps_until_then(step_times, tmp_path, monkeypatch):
    config = tmp_path / "small.toml"
    config.write_text("widths = [16]\nseq_lens = [16]\npairs = [2]\nvocab_size = 64\nbatch_size = 4\n", encoding="utf-8")
    waits = []
    monkeypatch.setattr(step_times.time, "sleep", waits.append)
    monkeypatch.setattr(step_times.time, "time", lambda: 1000.0)
    args = ["--config", str(config), "--models", "lstm", "--steps", "1", "--device", "cpu"]
    assert step_times.main([*args, "--start-at", "1012.5"]) == 0
    assert waits == [12.5]  # after warm-up, once per timed model
    assert step_times.main([*args, "--start-at", "990"]) == 0 and waits[-1] == 0.0  # already past: no wait
    waits.clear()
    assert step_times.main(args) == 0 and waits == []
