"""The output folder's layout and the stage states --resume reads from it."""

import json

from newllm.training.loop import CHECKPOINT_FILES
from newllm.training.rundir import STAGES, RunDir, StageState


def test_the_layout_keeps_the_prototypes_names(tmp_path):
    folder = RunDir(tmp_path)
    assert folder.checkpoint("new_llm", "wikitext") == tmp_path / "best_new_llm_wikitext"
    assert folder.stage("lstm", "dialog") == tmp_path / "lstm_dialog"
    assert folder.curves("tinygpt2", "dialog") == tmp_path / "tinygpt2_dialog_training_curves.png"
    assert folder.complete("new_llm", "dialog") == tmp_path / "new_llm_dialog" / "complete.json"
    assert (folder.tokenizer.name, folder.results.name, folder.report.name) == ("tokenizer.json", "results.json", "report.md")


def test_a_stage_is_fresh_resumable_or_done(tmp_path):
    folder = RunDir(tmp_path)
    assert folder.state("new_llm", "wikitext") is StageState.FRESH
    half = folder.stage("new_llm", "wikitext") / "checkpoint-1"
    half.mkdir(parents=True)
    assert folder.has_run("new_llm", "wikitext")
    assert folder.state("new_llm", "wikitext") is StageState.FRESH  # half-written: nothing to resume from
    for name in CHECKPOINT_FILES:
        (half / name).write_bytes(b"x")
    (half / "trainer_state.json").write_text("{}")
    (half / "rng_state.pth").write_bytes(b"x")
    assert folder.state("new_llm", "wikitext") is StageState.RESUMABLE
    folder.complete("new_llm", "wikitext").write_text(json.dumps({"stopped": "time_limit"}))
    assert folder.state("new_llm", "wikitext") is not StageState.DONE  # a time limit's stop can be continued
    folder.complete("new_llm", "wikitext").write_text(json.dumps({"best_epoch": 1}))
    assert folder.state("new_llm", "wikitext") is StageState.DONE


def test_remove_runs_takes_every_artefact_of_the_named_models_and_the_step_files(tmp_path):
    folder = RunDir(tmp_path)
    for stage in STAGES:
        for model in ("new_llm", "lstm"):
            folder.stage(model, stage).mkdir()
            folder.checkpoint(model, stage).mkdir()
            folder.curves(model, stage).write_bytes(b"png")
    for path in (folder.tokenizer, folder.results, folder.report, folder.experiment):
        path.write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    removed = folder.remove_runs(["new_llm"])
    assert "best_new_llm_wikitext" in removed and "tokenizer.json" in removed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["notes.txt"] + [f"{kind}lstm_{stage}{suffix}" for stage in STAGES
                         for kind, suffix in (("", ""), ("best_", ""), ("", "_training_curves.png"))])  # fmt: skip
    assert folder.read_experiment() is None
