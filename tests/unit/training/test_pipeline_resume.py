"""`--resume` at the level of the pipeline's steps, each model's stage on its own: a finished stage is
skipped (not trained one more epoch), a stage never started starts, and a stage cut off after a
checkpoint continues from it. Bitwise equality of a resumed run is tests/unit/training/test_resume.py's."""

from __future__ import annotations

import json
import shutil

import pytest

from newllm.cli import main
from newllm.training.rundir import RunDir

from tests.helpers import STEP_OPTIONS, snapshot, write_data_dir

OPTIONS = [*STEP_OPTIONS, "--set", "pretrain.epochs=2", "--set", "finetune.epochs=1"]


def run(command: str, data, out, *flags: str) -> None:
    code = main(["-q", command, *OPTIONS, "--data-dir", str(data), "--output-dir", str(out), *flags])
    assert code == 0


@pytest.fixture
def pretrained(tmp_path, one_thread):
    data, out = write_data_dir(tmp_path / "data"), tmp_path / "out"
    run("pretrain", data, out)
    return data, out


def checkpoints(run_dir):
    return sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def test_a_finished_stage_is_skipped_and_a_stage_never_started_starts(pretrained):
    data, out = pretrained
    marker = json.loads(RunDir(out).complete("new_llm", "wikitext").read_text())
    assert (marker["checkpoint"], marker["epochs_run"]) == ("best_new_llm_wikitext", 2)
    before = snapshot(out / "new_llm_wikitext") | snapshot(out / "best_new_llm_wikitext")
    run("pretrain", data, out, "--resume")
    assert snapshot(out / "new_llm_wikitext") | snapshot(out / "best_new_llm_wikitext") == before
    run("finetune", data, out, "--resume")  # no dialog run yet: it starts instead of "nothing to resume"
    assert RunDir(out).complete("new_llm", "dialog").is_file()
    assert (out / "best_new_llm_dialog" / "model.safetensors").is_file()


def test_step_2_started_with_resume_takes_its_own_settings_and_keeps_them_on_a_later_resume(pretrained, capsys):
    # experiment.json is step 1's: step 2's settings (a tuned step-2 dropout) are its own, not a change. Once step 2
    # has run, a resume of it with another dropout is a change and is refused.
    data, out = pretrained
    run("finetune", data, out, "--resume", "--set", "finetune.dropout=0.3", "--set", "finetune.lr=1e-3")
    assert json.loads((out / "best_new_llm_dialog" / "config.json").read_text())["dropout"] == 0.3
    code = main(["-q", "finetune", *OPTIONS, "--data-dir", str(data), "--output-dir", str(out), "--resume",
                 "--set", "finetune.dropout=0.1", "--set", "finetune.lr=1e-3"])  # fmt: skip
    assert code == 1 and "finetune.dropout=0.3, this command says 0.1" in capsys.readouterr().err


def test_a_stage_cut_off_after_a_checkpoint_continues_from_it(pretrained):
    data, out = pretrained
    run_dir = out / "new_llm_wikitext"
    first, last = checkpoints(run_dir)
    RunDir(out).complete("new_llm", "wikitext").unlink()
    shutil.rmtree(last)  # as if killed during epoch 2
    kept = snapshot(first)
    run("pretrain", data, out, "--resume")
    assert snapshot(first) == kept  # resumed from it, not deleted by a fresh start
    assert [row["epoch"] for row in json.loads((run_dir / "history.json").read_text())] == [1, 2]
    assert RunDir(out).complete("new_llm", "wikitext").is_file()


def test_a_stage_cut_off_before_its_first_checkpoint_starts_again(pretrained):
    data, out = pretrained
    run_dir = out / "new_llm_wikitext"
    for folder in checkpoints(run_dir):
        shutil.rmtree(folder)
    RunDir(out).complete("new_llm", "wikitext").unlink()
    (run_dir / "checkpoint-3").mkdir()  # half-written: no trainer_state.json
    run("pretrain", data, out, "--resume")
    assert [p.name for p in checkpoints(run_dir)] != ["checkpoint-3"]
    assert all((p / "trainer_state.json").is_file() for p in checkpoints(run_dir))
    assert RunDir(out).complete("new_llm", "wikitext").is_file()


def test_overwrite_clears_the_finished_mark_until_the_stage_ends_again(pretrained, monkeypatch):
    data, out = pretrained
    from newllm.pipeline import stage

    seen = []

    def fake_train(run_dir, **kwargs):
        seen.append(RunDir(out).complete("new_llm", "wikitext").exists())
        raise KeyboardInterrupt  # killed mid-stage

    monkeypatch.setattr(stage, "train", fake_train)
    assert main(["-q", "pretrain", *OPTIONS, "--data-dir", str(data), "--output-dir", str(out), "--overwrite"]) != 0
    assert seen == [False]  # a run killed after --overwrite is not taken for finished by a later --resume
    assert not RunDir(out).complete("new_llm", "wikitext").exists()


def test_a_stage_stopped_by_the_time_limit_keeps_its_best_model_and_says_so(pretrained, caplog):
    data, out = pretrained
    assert "stopped" not in json.loads(RunDir(out).complete("new_llm", "wikitext").read_text())
    run("finetune", data, out, "--set", "finetune.epochs=3", "--set", "finetune.time_limit=1e-6")
    assert "new_llm/dialog: its time limit stopped it after epoch 1 of 3" in caplog.text
    marker = json.loads(RunDir(out).complete("new_llm", "dialog").read_text())
    assert (marker["stopped"], marker["epochs_run"]) == ("time_limit", 1)
    assert json.loads((out / "best_new_llm_dialog" / "newllm.json").read_text())["stopped"] == "time_limit"
    run("evaluate", data, out)
    results = json.loads((out / "results.json").read_text())["models"]["new_llm"]
    assert results["dailydialog"]["stopped"] == "time_limit" and "stopped" not in results["wikitext"]
    assert "1 / 1 (time limit)" in (out / "report.md").read_text()

    first = json.loads((out / "new_llm_dialog" / "history.json").read_text())
    # no limit now (a time limit may change on --resume): it goes on to the end from epoch 1's checkpoint;
    # epoch 1's row, its measured seconds included, is the one recorded before, not a second run's
    run("finetune", data, out, "--set", "finetune.epochs=3", "--resume")
    marker = json.loads(RunDir(out).complete("new_llm", "dialog").read_text())
    assert "stopped" not in marker and marker["epochs_run"] == 3
    history = json.loads((out / "new_llm_dialog" / "history.json").read_text())
    assert history[0] == first[0] and len(history) == 3
    assert "stopped" not in json.loads((out / "best_new_llm_dialog" / "newllm.json").read_text())


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--set", "pretrain.lr=0.5"], "pretrain.lr=0.003, this command says 0.5"),
        (["--set", "pretrain.batch_size=3"], "pretrain.batch_size=4, this command says 3"),
        (["--set", "pretrain.epochs=3", "--set", "model.dropout=0.3"], "model.dropout=0.1, this command says 0.3 (and 1 more: pretrain.epochs)"),
    ],
)
def test_resume_refuses_a_setting_that_changes_training_and_touches_nothing(pretrained, capsys, flags, named):
    data, out = pretrained
    RunDir(out).complete("new_llm", "wikitext").unlink()  # an unfinished stage: --resume would train
    before = snapshot(out)
    code = main(["-q", "pretrain", *OPTIONS, "--data-dir", str(data), "--output-dir", str(out), "--resume", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("newllm: error: --resume: ") and named in err[-1], err
    assert snapshot(out) == before


def test_resume_accepts_the_settings_that_do_not_change_training(pretrained):
    data, out = pretrained
    run("pretrain", data, out, "--resume", "--set", "pretrain.time_limit=3600", "--set", "eval.max_new_tokens=5")
    run("finetune", data, out, "--resume", "--set", "finetune.time_limit=3600", "--set", "finetune.fast_path=kernel")
    assert RunDir(out).complete("new_llm", "dialog").is_file()
    assert json.loads((out / "experiment.json").read_text())["config"]["finetune"]["time_limit"] == 3600


def test_overwrite_on_another_corpus_retrains_the_tokenizer_and_removes_what_the_old_one_made(pretrained, tmp_path):
    data, out = pretrained
    run("finetune", data, out)
    old = (out / "tokenizer.json").read_text()
    other = write_data_dir(tmp_path / "other")
    train = other / "wikitext-2" / "wiki.train.tokens"
    train.write_text(train.read_text().upper())  # another corpus: another BPE
    run("pretrain", other, out, "--overwrite")
    assert (out / "tokenizer.json").read_text() != old
    assert not (out / "best_new_llm_dialog").exists() and not (out / "new_llm_dialog").exists()  # made with the old one
    assert (out / "best_new_llm_wikitext" / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()


def test_overwrite_on_the_same_corpus_keeps_the_tokenizer_and_the_other_stages(pretrained):
    data, out = pretrained
    run("finetune", data, out)
    old = (out / "tokenizer.json").read_text()
    dialog = snapshot(out / "best_new_llm_dialog")
    run("pretrain", data, out, "--overwrite")
    assert (out / "tokenizer.json").read_text() == old
    assert snapshot(out / "best_new_llm_dialog") == dialog


def test_resume_reads_a_run_recorded_under_the_prototypes_earlier_names(tmp_path):
    """An experiment.json written before the renames says "seed" for the prototype's preset, cell and tokenizer:
    the same settings, so --resume goes on, and the preset is not named as another one."""
    import dataclasses

    from newllm.config import load_config
    from newllm.pipeline.setup import _recorded_preset_hint, check_resume_settings

    config = dataclasses.replace(load_config("prototype"), output_dir=str(tmp_path))
    recorded = config.to_dict() | {"preset": "seed"}
    recorded["model"]["cell"] = recorded["data"]["tokenizer"] = "seed"
    (tmp_path / "experiment.json").write_text(json.dumps({"step": "pretrain", "config": recorded}))
    check_resume_settings(config, "pretrain")
    assert _recorded_preset_hint(config) == ""

    recorded["model"]["cell"] = "parallel"  # another cell is still refused
    (tmp_path / "experiment.json").write_text(json.dumps({"step": "pretrain", "config": recorded}))
    with pytest.raises(ValueError, match="model.cell='parallel', this command says 'prototype'"):
        check_resume_settings(config, "pretrain")
    other = dataclasses.replace(config, preset="quick")  # another preset is still named
    assert _recorded_preset_hint(other) == "this folder was run with --preset seed; or "


def test_resume_reads_a_run_whose_model_section_was_recorded_flat(tmp_path):
    """experiment.json records New-LLM's options flat under "model", as runs recorded before NewLLMConfig became
    their one home did: such a run resumes, a changed option is named, and an option added since (absent from the
    record) does not block it."""
    import dataclasses

    from newllm.config import load_config
    from newllm.pipeline.setup import check_resume_settings

    from tests.unit.test_config import QUICK_MODEL

    config = dataclasses.replace(load_config("quick"), output_dir=str(tmp_path))
    recorded = config.to_dict() | {"model": dict(QUICK_MODEL)}
    (tmp_path / "experiment.json").write_text(json.dumps({"step": "pretrain", "config": recorded}))
    check_resume_settings(config, "pretrain")

    del recorded["model"]["candidate"]  # a record from before the option existed
    (tmp_path / "experiment.json").write_text(json.dumps({"step": "pretrain", "config": recorded}))
    check_resume_settings(config, "pretrain")

    recorded["model"]["mlp_ratio"] = 3
    (tmp_path / "experiment.json").write_text(json.dumps({"step": "pretrain", "config": recorded}))
    with pytest.raises(ValueError, match="trained with model.mlp_ratio=3, this command says 4;"):
        check_resume_settings(config, "pretrain")
