"""Bad input through the CLI: one `newllm: error:` line on stderr, exit 1, no traceback, nothing destroyed.

Argparse usage errors (a missing required option, a non-integer `--max-new-tokens`) exit 2 instead,
with argparse's usage text and a `newllm <command>: error:` line; one test pins that. The messages
themselves are listed in docs/reliability.md ("Bad input: what you see").
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from newllm.cli import main
from newllm.config import load_config
from newllm.data.dailydialog import load_dailydialog
from newllm.data.tokenizer import save_tokenizer, train_tokenizer
from newllm.data.wikitext import load_wikitext
from newllm.models import BaselineShape, build_model, matched_configs
from newllm.pipeline.setup import model_configs
from newllm.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from tests.conftest import TINY_DIALOGUES, TINY_TEXT
from tests.helpers import DIALOGUE_TEXT, STEP_OPTIONS, snapshot, write_data_dir

from .models.conftest import tiny_new_llm_config

# pipeline.pretrain/finetune check every input before writing anything: nothing may change.
EARLY_WRITES: set[str] = set()


RELIABILITY_MD = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
UNIT_TESTS = Path(__file__).resolve().parent


# ---------------------------------------------------------------- helpers


def assert_untouched(before: dict, after: dict, allowed: set[str] = frozenset()) -> None:
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} - set(allowed)
    assert not changed, f"bad input changed {sorted(changed)}"


def error_line(stderr: str) -> str:
    """The one `newllm: error:` line of `stderr`, after checking that there is exactly one and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("newllm: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def fails(capsys, argv: list[str]) -> str:
    """Run `newllm -q <argv>` in-process; assert exit 1 with one error line and return that line."""
    capsys.readouterr()
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    return error_line(captured.err)


def step(command: str, data, out: Path) -> list[str]:
    """argv of a pipeline step on the tiny settings."""
    return [command, *STEP_OPTIONS, "--data-dir", str(data), "--output-dir", str(out)]


def prepared_output(root: Path, tokenizer, step1: Path | None = None) -> Path:
    """An output dir after step 1: tokenizer.json, experiment.json and, if given, best_new_llm_wikitext/."""
    root.mkdir(parents=True)
    save_tokenizer(tokenizer, root)
    (root / "experiment.json").write_text('{"step": "pretrain"}\n')
    if step1 is not None:
        shutil.copytree(step1, root / "best_new_llm_wikitext")
    return root


def step_config():
    """The experiment config of `step`'s argv (STEP_OPTIONS): what a step-1 checkpoint of these tests must match."""
    sets = [STEP_OPTIONS[i + 1] for i, option in enumerate(STEP_OPTIONS) if option == "--set"]
    return load_config(STEP_OPTIONS[STEP_OPTIONS.index("--preset") + 1], sets)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """New-LLM as the step settings build it and a tiny GPT-2, with the tiny tokenizer; copy before damaging one."""
    root = tmp_path_factory.mktemp("checkpoints")
    configs = matched_configs(tiny_new_llm_config(), shape=BaselineShape(gpt2_positions=128, dropout=0.0))
    configs["new_llm"] = model_configs(step_config(), tiny_tokenizer)["new_llm"]
    torch.manual_seed(0)
    return {
        name: save_checkpoint(build_model(name, configs[name]).eval(), tiny_tokenizer, root / name)
        for name in ("new_llm", "tinygpt2")
    }


# ---------------------------------------------------------------- data files


def test_missing_data_directory(capsys, tmp_path, tiny_tokenizer):
    out = prepared_output(tmp_path / "out", tiny_tokenizer)
    before = snapshot(out)
    line = fails(capsys, step("pretrain", "/nonexistent", out))
    message = "WikiText-2 train (tokens) not found: the data directory /nonexistent does not exist"
    assert line.startswith(f"newllm: error: {message}")
    assert_untouched(before, snapshot(out), EARLY_WRITES)


@pytest.mark.parametrize(
    "files, message",
    [
        ({"wikitext-2__wiki.train.tokens": b""}, "wiki.train.tokens is empty"),
        ({"wikitext-2__wiki.valid.tokens": b""}, "wiki.valid.tokens is empty"),
        ({"wikitext-2__wiki.valid.tokens": b"caf\xe9 au lait\n"}, "not UTF-8 (invalid byte at offset 3)"),
        # A file cut inside a multi-byte character is the one truncation of plain text that can be detected.
        ({"wikitext-2__wiki.valid.tokens": "The café".encode()[:-1]}, "not UTF-8 (invalid byte at offset 7)"),
    ],
    ids=["train-empty", "valid-empty", "valid-latin1", "valid-cut-mid-character"],
)
def test_bad_wikitext_file(capsys, tmp_path, tiny_tokenizer, files, message):
    data = write_data_dir(tmp_path / "data", **files)
    out = prepared_output(tmp_path / "out", tiny_tokenizer)
    before, data_before = snapshot(out), snapshot(data)
    line = fails(capsys, step("pretrain", data, out))
    assert line.startswith(f"newllm: error: {data / 'wikitext-2'}") and line.endswith(message)
    assert_untouched(before, snapshot(out), EARLY_WRITES)
    assert_untouched(data_before, snapshot(data))


def test_wikitext_cut_mid_line_is_not_detectable_and_loads(tmp_path):
    # A text file cut between characters is just a shorter file: its last line simply lacks "\n".
    data = write_data_dir(tmp_path / "data", **{"wikitext-2__wiki.valid.tokens": TINY_TEXT.encode()[:100]})
    split = load_wikitext("valid", data_dir=data)
    assert "".join(split.lines) == TINY_TEXT[:100] and not split.lines[-1].endswith("\n")


def test_dailydialog_line_cut_before_its_eou_is_skipped_and_counted(tmp_path):
    cut = "Hello , how are you ? __eou__ Fine , th"
    data = write_data_dir(tmp_path / "data", **{"dailydialog__dialogues_train.txt": (DIALOGUE_TEXT + cut).encode()})
    split = load_dailydialog("train", data_dir=data)
    assert split.skipped == 1
    assert len(split.dialogues) == len(TINY_DIALOGUES)
    assert all("th" not in dialogue[-1].split() for dialogue in split.dialogues)


def test_finetune_refuses_a_step1_model_of_another_config(capsys, tmp_path, tiny_tokenizer, checkpoints):
    data = write_data_dir(tmp_path / "data")
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"])
    before = snapshot(out)
    line = fails(capsys, step("finetune", data, out) + ["--set", "model.num_layers=1"])
    assert line.endswith("is not the new_llm this config builds (num_hidden_layers = 2 there, 1 here): fine-tune "
                         "with the preset and settings step 1 ran with, or run `newllm pretrain --overwrite` first")
    assert_untouched(before, snapshot(out))


def test_finetune_refuses_a_step1_model_whose_run_has_not_finished(capsys, tmp_path, tiny_tokenizer, checkpoints):
    # a step 1 under way (or cut) in this folder: its best_ folder may still be an earlier run's
    data = write_data_dir(tmp_path / "data")
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"])
    (out / "new_llm_wikitext").mkdir()
    before = snapshot(out)
    line = fails(capsys, step("finetune", data, out))
    assert "step 1 of new_llm has not finished in" in line and line.endswith("`newllm pretrain --resume` first")
    assert_untouched(before, snapshot(out))
    (out / "new_llm_wikitext" / "complete.json").write_text('{"stopped": "time_limit"}')  # ended, by its time limit
    assert main(["-q", *step("finetune", data, out)]) == 0


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "dialogues_train.txt is empty"),
        (b"\xff\xfe Hi __eou__ Hello __eou__\n", "dialogues_train.txt is not UTF-8 (invalid byte at offset 0)"),
        (b"Hello there\nHow are you ?\n", "dialogues_train.txt holds no well-formed dialogue (2 malformed)"),
        (b"Hi . __eou__ Hel", "dialogues_train.txt holds no well-formed dialogue (1 malformed)"),
    ],
    ids=["empty", "not-utf8", "no-eou", "only-a-truncated-line"],
)
def test_bad_dailydialog_file(capsys, tmp_path, tiny_tokenizer, checkpoints, content, message):
    data = write_data_dir(tmp_path / "data", **{"dailydialog__dialogues_train.txt": content})
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"])
    before = snapshot(out)
    line = fails(capsys, step("finetune", data, out))
    assert line.startswith("newllm: error: ") and line.endswith(message)
    assert_untouched(before, snapshot(out), EARLY_WRITES)


# ---------------------------------------------------------------- checkpoints


def _damage(name: str, folder: Path, source: Path) -> None:
    if name.startswith("missing-"):
        (folder / name.removeprefix("missing-")).unlink()
    elif name == "garbage-weights":
        (folder / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    elif name == "truncated-weights":
        (folder / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:1000])
    elif name == "garbage-config":
        (folder / "config.json").write_text("{not json")
    elif name == "config-not-an-object":
        (folder / "config.json").write_text("[1, 2]")
    elif name == "unknown-model-type":
        (folder / "config.json").write_text('{"model_type": "bert"}')
    elif name == "garbage-tokenizer":
        (folder / "tokenizer.json").write_text("nope")
    elif name in ("mis-shaped-weight", "dropped-weight"):
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        if name == "dropped-weight":
            del tensors["lm_head.bias"]
        else:
            tensors["lm_head.weight"] = tensors["lm_head.weight"][:, :-1].contiguous()
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing-config.json", "is incomplete: missing config.json"),
        ("missing-model.safetensors", "is incomplete: missing model.safetensors"),
        ("missing-tokenizer.json", "is incomplete: missing tokenizer.json"),
        ("garbage-weights", "could not be loaded: Error while deserializing header"),
        ("truncated-weights", "could not be loaded: Error while deserializing header"),
        ("garbage-config", ": config.json is not valid JSON"),
        ("config-not-an-object", ": config.json is not a JSON object"),
        ("unknown-model-type", "holds a 'bert' model; newllm loads gpt2, mamba2, new_llm, newllm_lstm"),
        ("garbage-tokenizer", ": corrupt tokenizer file"),
        ("mis-shaped-weight", ": model.safetensors does not match config.json: 1 of another shape or dtype "
         "(lm_head.weight 300x127 F32 instead of 300x128 F32)"),
        ("dropped-weight", ": model.safetensors does not match config.json: 1 missing (lm_head.bias)"),
    ],
)
def test_damaged_checkpoint(capsys, tmp_path, checkpoints, damage, message):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoints["new_llm"], folder)
    _damage(damage, folder, checkpoints["new_llm"])
    before = snapshot(folder)
    line = fails(capsys, ["generate", "--checkpoint", str(folder), "hello"])
    assert line.startswith(f"newllm: error: checkpoint {folder}") and message in line
    assert_untouched(before, snapshot(folder))


@pytest.mark.parametrize("what", ["missing", "a-file"])
def test_checkpoint_path_that_is_no_folder(capsys, tmp_path, checkpoints, what):
    path = tmp_path / "nope" if what == "missing" else checkpoints["new_llm"] / "config.json"
    line = fails(capsys, ["generate", "--checkpoint", str(path), "hello"])
    assert line == (
        f"newllm: error: checkpoint {path} does not exist"
        if what == "missing"
        else f"newllm: error: checkpoint {path} is a file; pass the folder that holds config.json"
    )


def test_checkpoint_of_another_model_type(checkpoints):
    with pytest.raises(CheckpointError, match=r"holds a 'gpt2' model, expected 'new_llm' \(new_llm\)$"):
        load_checkpoint(checkpoints["tinygpt2"], "new_llm")


def test_finetune_from_a_step1_checkpoint_of_another_model_type(capsys, tmp_path, tiny_tokenizer, checkpoints):
    out = prepared_output(tmp_path / "out", tiny_tokenizer)
    shutil.copytree(checkpoints["tinygpt2"], out / "best_new_llm_wikitext")
    before = snapshot(out)
    line = fails(capsys, step("finetune", write_data_dir(tmp_path / "d"), out))
    step1 = out / "best_new_llm_wikitext"
    assert line == f"newllm: error: checkpoint {step1} holds a 'gpt2' model, expected 'new_llm' (new_llm)"
    assert_untouched(before, snapshot(out))


def test_finetune_from_a_step1_checkpoint_of_another_tokenizer(capsys, tmp_path, checkpoints):
    other = train_tokenizer(TINY_TEXT.upper().splitlines(keepends=True), kind="bpe", vocab_size=300)
    out = prepared_output(tmp_path / "out", other, checkpoints["new_llm"])
    before = snapshot(out)
    line = fails(capsys, step("finetune", write_data_dir(tmp_path / "d"), out))
    step1 = out / "best_new_llm_wikitext"
    assert line.startswith(f"newllm: error: checkpoint {step1}: tokenizer differs from the expected one")
    assert line.endswith("it was saved with another tokenizer than the run's tokenizer.json")
    assert_untouched(before, snapshot(out))


def test_evaluate_checks_every_checkpoint_before_it_scores_any(capsys, tmp_path, tiny_tokenizer, checkpoints, monkeypatch):
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"])  # a good first model
    other = train_tokenizer(TINY_TEXT.upper().splitlines(keepends=True), kind="bpe", vocab_size=300)
    shutil.copytree(checkpoints["tinygpt2"], out / "best_tinygpt2_dialog")
    save_tokenizer(other, out / "best_tinygpt2_dialog")  # the second model's step 2 used another tokenizer
    scored = []

    def score(model, *args, **kwargs):
        scored.append(type(model).__name__)
        raise AssertionError("evaluate scored a model before checking every checkpoint")

    monkeypatch.setattr("newllm.pipeline.scores.evaluate_perplexity", score)
    before = snapshot(out)
    argv = step("evaluate", write_data_dir(tmp_path / "d"), out)
    line = fails(capsys, [*argv[: argv.index("--models") + 1], "new_llm,tinygpt2", *argv[argv.index("--models") + 2 :]])
    assert line.startswith(f"newllm: error: checkpoint {out / 'best_tinygpt2_dialog'}: tokenizer differs")
    assert scored == []  # refused before new_llm was scored
    assert_untouched(before, snapshot(out))


def test_evaluate_refuses_a_model_without_any_checkpoint(capsys, tmp_path, tiny_tokenizer, checkpoints):
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"])  # New-LLM's step 1 only
    (out / "report.md").write_text("the last run's report\n")
    (out / "results.json").write_text("{}\n")
    before = snapshot(out)
    argv = step("evaluate", write_data_dir(tmp_path / "d"), out)
    argv[argv.index("--models") + 1] = "lstm"
    capsys.readouterr()
    assert main(argv) == 1  # not -q: no warning about lstm's results may come before the error
    err = capsys.readouterr().err
    assert error_line(err) == (
        f"newllm: error: no checkpoint of lstm to evaluate: neither {out / 'best_lstm_wikitext'} nor "
        f"{out / 'best_lstm_dialog'} exists; run `newllm pretrain` with this output dir first or leave lstm out of --models"
    )
    assert "step-1 model" not in err and "left out" not in err
    assert_untouched(before, snapshot(out))


def test_evaluate_scores_a_model_without_step2_on_its_step1_model(caplog, tmp_path, tiny_tokenizer, checkpoints):
    # benchmarks/full_schedule.sh evaluates a run whose step 2 was stopped before its first checkpoint
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"])
    argv = step("evaluate", write_data_dir(tmp_path / "d"), out)
    assert main([*argv, "--set", "eval.speed_repeats=1", "--set", "eval.max_new_tokens=3"]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["models"]["new_llm"]["dailydialog"]["responses"]["checkpoint"] == "best_new_llm_wikitext"
    assert "dialogue results for new_llm use the step-1 model" in caplog.text


@pytest.mark.parametrize("what", ["no-step1-checkpoint", "empty-output-dir"])
def test_finetune_without_step1(capsys, tmp_path, tiny_tokenizer, what):
    out = prepared_output(tmp_path / "out", tiny_tokenizer) if what == "no-step1-checkpoint" else tmp_path / "out"
    before = snapshot(out)
    line = fails(capsys, step("finetune", write_data_dir(tmp_path / "d"), out))
    if what == "no-step1-checkpoint":
        step1 = out / "best_new_llm_wikitext"
        assert line.startswith(f"newllm: error: fine-tuning new_llm starts from its step-1 checkpoint {step1}, which")
    else:
        assert line == f"newllm: error: no tokenizer at {out / 'tokenizer.json'}: run `newllm pretrain` (step 1) first"
        assert not out.exists()
    assert_untouched(before, snapshot(out))


# ---------------------------------------------------------------- an output dir that holds a run


@pytest.mark.parametrize("command, run", [("pretrain", "new_llm_wikitext"), ("finetune", "new_llm_dialog")])
def test_output_dir_that_already_holds_a_run(capsys, tmp_path, tiny_tokenizer, checkpoints, command, run):
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"])
    (out / run / "checkpoint-7").mkdir(parents=True)
    (out / run / "checkpoint-7" / "trainer_state.json").write_text("{}\n")
    (out / run / "history.json").write_text("[]\n")
    before = snapshot(out)
    line = fails(capsys, step(command, write_data_dir(tmp_path / "d"), out))
    assert line == (
        f"newllm: error: {out / run} already holds a run: pass --resume to continue it or --overwrite to start again"
    )
    assert_untouched(before, snapshot(out), EARLY_WRITES)


def test_experiment_json_is_not_rewritten_by_a_failing_step(capsys, tmp_path, tiny_tokenizer):
    out = prepared_output(tmp_path / "out", tiny_tokenizer)
    before = snapshot(out)
    fails(capsys, step("pretrain", "/nonexistent", out))
    assert_untouched(before, snapshot(out))


# ---------------------------------------------------------------- storage and training state

# One optimizer step of fine-tuning: enough to write a Trainer checkpoint, in seconds.
ONE_STEP = ["--set", "finetune.epochs=1", "--set", "finetune.max_steps=1"]


def test_read_only_output_folder(capsys, tmp_path, tiny_tokenizer, checkpoints):
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder anyway; test_read_only_file_system covers the message")
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"])
    before = snapshot(out)
    out.chmod(0o555)
    try:
        line = fails(capsys, step("finetune", write_data_dir(tmp_path / "d"), out))
    finally:
        out.chmod(0o755)
    lock = out.resolve() / ".newllm.lock"
    assert line == f"newllm: error: {lock}: permission denied; check the folder's permissions or choose another --output-dir"
    assert_untouched(before, snapshot(out))


def test_read_only_file_system(capsys, tmp_path, tiny_tokenizer, checkpoints, monkeypatch):
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"])
    before = snapshot(out)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # what a read-only mount answers to creating a file
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    line = fails(capsys, step("finetune", write_data_dir(tmp_path / "d"), out))
    lock = out.resolve() / ".newllm.lock"
    assert line == f"newllm: error: {lock}: the file system is read-only; check the folder's permissions or choose another --output-dir"
    assert_untouched(before, snapshot(out))


def _disk_full_in_safetensors(monkeypatch):
    from safetensors import SafetensorError
    import transformers.modeling_utils

    def full(tensors, filename, metadata=None):  # safetensors' save_file, on a full disk
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    return "model.safetensors", "Error while serializing: IoError("


def _disk_full_in_torch_save(monkeypatch):
    real_save = torch.save

    def full(obj, f, *args, **kwargs):  # torch.save's zip writer, on a full disk
        if str(f).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    return "optimizer.pt", "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


@pytest.mark.parametrize("writer", [_disk_full_in_safetensors, _disk_full_in_torch_save], ids=["safetensors", "torch-save"])
def test_disk_full_while_training_writes_a_checkpoint(capsys, tmp_path, tiny_tokenizer, checkpoints, monkeypatch, writer):
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"])
    before = snapshot(out)
    name, detail = writer(monkeypatch)
    line = fails(capsys, [*step("finetune", write_data_dir(tmp_path / "d"), out), *ONE_STEP])
    assert line.startswith(f"newllm: error: the disk is full: could not write {out}/new_llm_dialog/checkpoint-1/{name} ({detail}")
    assert line.endswith("; free some space and run again (training continues with --resume)")
    # step 1's checkpoint and tokenizer are as they were; the step's own record is the known exception
    assert_untouched({k: v for k, v in before.items()}, {k: v for k, v in snapshot(out).items() if k in before},
                     {"experiment.json"})


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory, tiny_tokenizer, checkpoints) -> tuple[Path, Path]:
    """(data dir, output dir) after one step of fine-tuning, its complete.json removed as if it was killed."""
    root = tmp_path_factory.mktemp("unfinished")
    data, out = write_data_dir(root / "d"), prepared_output(root / "out", tiny_tokenizer, checkpoints["new_llm"])
    assert main(["-q", *step("finetune", data, out), *ONE_STEP]) == 0
    (out / "new_llm_dialog" / "complete.json").unlink()
    return data, out


@pytest.mark.parametrize(
    "file, content, detail",
    [
        ("optimizer.pt", b"garbage", "(not a file of tensors: Unsupported operand 103)"),
        ("scheduler.pt", b"", "(empty or cut short)"),
        ("trainer_state.json", b"[]", "not a JSON object with a global_step"),
        ("trainer_state.json", b'{"global_step": 1, "bogus": 2}', "unexpected keyword argument 'bogus'"),
    ],
    ids=["optimizer-garbage", "scheduler-empty", "state-a-list", "state-unknown-field"],
)
def test_corrupt_training_state_on_resume(capsys, tmp_path, unfinished_run, file, content, detail):
    data, original = unfinished_run
    out = tmp_path / "out"
    shutil.copytree(original, out)
    (checkpoint,) = sorted((out / "new_llm_dialog").glob("checkpoint-*"))
    (checkpoint / file).write_bytes(content)
    before = snapshot(out)
    line = fails(capsys, [*step("finetune", data, out), *ONE_STEP, "--resume"])
    assert line.startswith(f"newllm: error: {checkpoint / file} is corrupt (") and detail in line
    assert line.endswith("): --resume cannot continue from it; start again with --overwrite")
    assert_untouched(before, snapshot(out), {"experiment.json"})


def test_corpus_too_short_for_one_window(capsys, tmp_path, tiny_tokenizer):
    data = write_data_dir(tmp_path / "d")
    out = prepared_output(tmp_path / "out", tiny_tokenizer)
    before = snapshot(out)
    line = fails(capsys, [*step("pretrain", data, out), "--set", "data.block_size=5000"])
    train = data / "wikitext-2" / "wiki.train.tokens"
    assert re.fullmatch(
        rf"newllm: error: {re.escape(str(train))} \(first 50 lines\) holds \d+ tokens, fewer than one window of 5001 "
        r"\(block size 5000 \+ 1\): use more text or a smaller block size",
        line,
    ), line
    assert_untouched(before, snapshot(out))


@pytest.mark.parametrize("output", ["fresh-folder", "overwrite"])
def test_corpus_too_small_for_the_tokenizer(capsys, tmp_path, tiny_tokenizer, output):
    data = write_data_dir(tmp_path / "d")
    if output == "fresh-folder":
        out = tmp_path / "out"
        out.mkdir()
        extra = []
    else:  # --overwrite trains the tokenizer anew: refused before the old run is cleared
        out = prepared_output(tmp_path / "out", tiny_tokenizer)
        (out / "new_llm_wikitext" / "checkpoint-7").mkdir(parents=True)
        extra = ["--overwrite"]
    before = snapshot(out)
    line = fails(capsys, [*step("pretrain", data, out), "--set", "data.vocab_size=2048", *extra])
    train = data / "wikitext-2" / "wiki.train.tokens"
    match = re.fullmatch(
        rf"newllm: error: {re.escape(str(train))} \(first 50 lines\) is too small to train a bpe tokenizer of 2048 "
        r"entries: it yields (\d+) entries; use more text or a smaller data.vocab_size",
        line,
    )
    assert match, line
    assert 300 <= int(match.group(1)) < 2048
    assert_untouched(before, snapshot(out))


@pytest.mark.parametrize(
    "command, setting, per_step, windows, source",
    [
        ("pretrain", ["pretrain.batch_size=24"], 24, 23, "wikitext-2/wiki.train.tokens (first 50 lines)"),
        ("pretrain", ["pretrain.batch_size=12", "pretrain.grad_accum=2"], 24, 23, "wikitext-2/wiki.train.tokens (first 50 lines)"),
        ("finetune", ["finetune.batch_size=5"], 5, 4, "dailydialog/dialogues_train.txt (first 10 dialogues)"),
    ],
    ids=["pretrain", "pretrain-grad-accum", "finetune"],
)
def test_batch_larger_than_the_training_windows(capsys, tmp_path, tiny_tokenizer, checkpoints, command, setting, per_step,
                                                windows, source):  # fmt: skip
    data = write_data_dir(tmp_path / "d")
    out = prepared_output(tmp_path / "out", tiny_tokenizer, checkpoints["new_llm"] if command == "finetune" else None)
    before = snapshot(out)
    line = fails(capsys, [*step(command, data, out), *[a for pair in setting for a in ("--set", pair)]])
    named = " × ".join(setting)
    assert line == (
        f"newllm: error: {named}: must be at most the {windows} training windows of {data / source}, got {per_step}; "
        "use a smaller batch or more text"
    )
    assert_untouched(before, snapshot(out))


def test_an_unexpected_error_is_one_line_and_debug_shows_its_traceback(capsys, checkpoints, monkeypatch):
    import newllm.training.checkpoint

    def bug(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(newllm.training.checkpoint, "load_checkpoint", bug)
    argv = ["generate", "--checkpoint", str(checkpoints["new_llm"]), "hi"]
    line = fails(capsys, argv)
    assert line == "newllm: error: unexpected TypeError: a bug (a bug: run with --debug for the traceback and report it)"
    with pytest.raises(TypeError, match="a bug"):
        main(["--debug", *argv])
    with pytest.raises(TypeError, match="a bug"):  # like -q, after the command too
        main([*argv, "--debug"])


def test_debug_shows_the_traceback_of_an_expected_error_too(capsys, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        main(["--debug", "generate", "--checkpoint", str(tmp_path / "nope"), "hi"])


# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t\x00"], ids=["empty", "blank", "only-control-characters"])
def test_empty_prompt(capsys, checkpoints, prompt):
    before = snapshot(checkpoints["tinygpt2"])
    line = fails(capsys, ["generate", "--checkpoint", str(checkpoints["tinygpt2"]), prompt])
    assert line == "newllm: error: empty prompt"
    assert_untouched(before, snapshot(checkpoints["tinygpt2"]))


@pytest.mark.parametrize(
    "prompt",
    ["hello " * 16_667, "hi\x00 there\x1b[31m\r\n\x7f ok", "\u2028\u0085 line separators \ufeff"],
    ids=["100000-characters", "control-characters", "unicode-separators"],
)
def test_odd_prompts_get_a_reply(capsys, checkpoints, prompt):
    capsys.readouterr()
    code = main(["-q", "generate", "--checkpoint", str(checkpoints["tinygpt2"]), prompt, "--max-new-tokens", "3"])
    captured = capsys.readouterr()
    assert code == 0 and "newllm: error" not in captured.err and "Traceback" not in captured.err


def test_invalid_utf8_prompt_in_process(capsys, checkpoints):
    # What Python makes of the argv bytes b"hi \xff\xfe" (surrogateescape).
    line = fails(capsys, ["generate", "--checkpoint", str(checkpoints["new_llm"]), "hi \udcff\udcfe"])
    assert line == "newllm: error: the prompt is not valid UTF-8 text (byte 0xff at character 3)"


@pytest.fixture(scope="module", autouse=True)
def shell_run(checkpoints):
    """`newllm generate` on the raw bytes b"\\xff\\xfe", started with the module: importing torch takes seconds."""
    checkpoint = str(checkpoints["new_llm"]).encode()
    argv = [sys.executable, "-m", "newllm.cli", "-q", "generate", "--checkpoint", checkpoint, b"\xff\xfe"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield process
    process.kill()
    process.communicate()


def test_invalid_utf8_prompt_from_the_shell(shell_run):
    stdout, stderr = shell_run.communicate(timeout=120)
    stderr = stderr.decode("utf-8", "replace")
    assert shell_run.returncode == 1, stderr
    assert error_line(stderr) == "newllm: error: the prompt is not valid UTF-8 text (byte 0xff at character 0)"
    assert stdout == b""


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize("length", ["65", "128", "0", "-3"])
def test_max_new_tokens_beyond_gpt2_positions(capsys, monkeypatch, checkpoints, command, length):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))  # chat would answer this turn if it started
    before = snapshot(checkpoints["tinygpt2"])
    argv = [command, "--checkpoint", str(checkpoints["tinygpt2"]), *(["hi"] if command == "generate" else [])]
    line = fails(capsys, [*argv, "--max-new-tokens", length])
    # 0 and below are refused before the checkpoint is read, so no model's range can be named yet
    allowed = "at least 1" if int(length) < 1 else (
        "in [1, 64] for this model (it reads 128 positions; the prompt keeps at least half)"
    )
    assert line == f"newllm: error: --max-new-tokens: must be {allowed}, got {length}"
    assert_untouched(before, snapshot(checkpoints["tinygpt2"]))


def test_the_longest_reply_allowed_is_generated(capsys, checkpoints):
    capsys.readouterr()
    assert main(["-q", "generate", "--checkpoint", str(checkpoints["tinygpt2"]), "hi", "--max-new-tokens", "64"]) == 0
    # the recurrent models read any length: the bound is GPT-2's alone
    assert main(["-q", "generate", "--checkpoint", str(checkpoints["new_llm"]), "hi", "--max-new-tokens", "200"]) == 0
    assert "error" not in capsys.readouterr().err


def test_eval_max_new_tokens_beyond_a_checkpoints_positions(capsys, tmp_path, tiny_tokenizer, checkpoints):
    out = prepared_output(tmp_path / "out", tiny_tokenizer)
    shutil.copytree(checkpoints["tinygpt2"], out / "best_tinygpt2_wikitext")
    data = write_data_dir(tmp_path / "d")
    before = snapshot(out)
    argv = [*step("evaluate", data, out), "--models", "tinygpt2", "--set", "eval.max_new_tokens=100"]
    line = fails(capsys, argv)
    assert line == (
        f"newllm: error: eval.max_new_tokens ({out / 'best_tinygpt2_wikitext'}): must be in [1, 64] for this model "
        "(it reads 128 positions; the prompt keeps at least half), got 100"
    )
    assert_untouched(before, snapshot(out))


@pytest.mark.parametrize(
    "setting, message",
    [
        ("batch_sizes=0", "batch_sizes: must be at least 1, got 0"),
        ("batch_sizes=", "batch_sizes: must list at least one value, got none"),
        ("warmup=-1", "warmup: must be at least 0 (untimed runs), got -1"),
        ("seed=-1", "seed: must be in [0, 4294967296) (NumPy's seed range), got -1"),
        ("precisions=fp16", "precisions: must be 'fp32' or 'bf16', got 'fp16'"),
        ("models=gpt", "models: must be 'new_llm', 'tinygpt2', 'lstm' or 'mamba2', got 'gpt'"),
    ],
    ids=["zero-batch", "empty-list", "negative-warmup", "negative-seed", "unknown-precision", "unknown-model"],
)
def test_bench_setting_outside_its_range(capsys, tmp_path, setting, message):
    out = tmp_path / "bench"
    line = fails(capsys, ["bench", "--quick", "--device", "cpu", "--no-progress", "--output-dir", str(out), "--set", setting])
    assert line == f"newllm: error: {message}"
    assert not out.exists()


# ---------------------------------------------------------------- config files


@pytest.mark.parametrize(
    "toml, message",
    [
        (b"[pretrain]\nlearning_rate = 1e-3\n", "unknown setting 'pretrain.learning_rate'; valid here: "),
        (b"[optimizer]\nlr = 1\n", "unknown setting 'optimizer'; valid here: "),
        (b'[pretrain]\nepochs = "many"\n', "pretrain.epochs: expected an integer, got 'many'"),
        (b"[data]\nvocab_size = 3.5\n", "data.vocab_size: expected an integer, got 3.5"),
        (b"[model]\nnames = 5\n", "model.names: expected a list, got 5"),
        (b"pretrain = 3\n", "pretrain: expected a table of settings, got 3"),
        (b"[pretrain\nlr = ", "bad.toml: not valid TOML (Expected ']' at the end of a table declaration"),
        (b"\xff\xfe", "bad.toml: not valid TOML ('utf-8' codec can't decode byte 0xff in position 0"),
    ],
    ids=[
        "unknown-key", "unknown-section", "string-for-int", "float-for-int",
        "int-for-list", "value-for-table", "not-toml", "not-utf8",
    ],  # fmt: skip
)
def test_bad_config_file(capsys, tmp_path, tiny_tokenizer, toml, message):
    preset = tmp_path / "bad.toml"
    preset.write_bytes(toml)
    out = prepared_output(tmp_path / "out", tiny_tokenizer)
    before = snapshot(out)
    line = fails(capsys, ["pretrain", "--preset", str(preset), "--output-dir", str(out)])
    assert line.startswith("newllm: error: ") and message in line
    assert_untouched(before, snapshot(out))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "nope.toml"], "config file nope.toml does not exist"),
        (["--preset", "nope"], "unknown preset 'nope'; known: "),
        (["--set", "pretrain.lr=fast"], "pretrain.lr: expected a number, got 'fast'"),
        (["--set", "pretrain.foo=1"], "unknown setting 'pretrain.foo'; valid here: "),
        (["--set", "lr"], "override 'lr' is not of the form section.field=value"),
        (["--set", "pretrain.dropout=0.1"], "pretrain.dropout: step 1's dropout is model.dropout; this setting is step 2's"),
    ],
    ids=["missing-toml", "unknown-preset", "bad-override-type", "unknown-override", "override-without-value",
         "step-1-dropout"],  # fmt: skip
)
def test_bad_preset_or_override(capsys, tmp_path, argv, message):
    out = tmp_path / "out"
    line = fails(capsys, ["pretrain", *argv, "--output-dir", str(out)])
    assert line.startswith("newllm: error: ") and message in line
    assert not out.exists()


# ---------------------------------------------------------------- argparse usage errors (exit 2)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "hi"], "newllm generate: error: the following arguments are required: --checkpoint"),
        (
            ["generate", "--checkpoint", "x", "hi", "--max-new-tokens", "many"],
            "newllm generate: error: argument --max-new-tokens: invalid int value: 'many'",
        ),
        (["pretrain", "--tokenizer", "chars"], "newllm pretrain: error: argument --tokenizer: invalid choice: 'chars'"),
    ],
    ids=["missing-checkpoint", "non-integer", "bad-choice"],
)
def test_usage_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    captured = capsys.readouterr()
    assert raised.value.code == 2
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if ": error:" in line]
    # Python 3.12 quotes the choices, 3.13 doesn't: compare up to them.
    assert len(errors) == 1 and errors[0].startswith(message)


# ---------------------------------------------------------------- docs/reliability.md


def _case_tables(text: str) -> list[list[list[str]]]:
    """The tables of "Bad input: what you see", each a list of rows of cells (header and rule dropped)."""
    section = text.split("## Bad input: what you see", 1)[1].split("\n## ", 1)[0]
    tables, table = [], None
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            if table is None:
                table = {"header": cells, "rows": []}
            elif not set(line) <= set("|-"):
                table["rows"].append(cells)
        elif table is not None:
            tables.append(table)
            table = None
    return tables


def _joins_literals(param: str, literals: set[str]) -> bool:
    """Whether a pytest parameter id is string literals of the test file joined by "-" (pytest's own ids)."""
    if param in literals:
        return True
    return any(param[:i] in literals and _joins_literals(param[i + 1 :], literals)
               for i, char in enumerate(param) if char == "-")  # fmt: skip


def _test_exists(node_id: str) -> str | None:
    """None if `node_id` (path under tests/unit :: test name [param id]) names a test; else what is wrong."""
    import ast

    match = re.fullmatch(r"([\w/]+\.py)::(test_\w+)(?:\[(.+)\])?", node_id)
    if match is None:
        return "not of the form path.py::test_name[param]"
    path, name, param = match.groups()
    if not (UNIT_TESTS / path).is_file():
        return f"no file tests/unit/{path}"
    tree = ast.parse((UNIT_TESTS / path).read_text(encoding="utf-8"))
    if name not in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}:
        return f"no test {name} in {path}"
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    if param is not None and not _joins_literals(param, literals):
        return f"no parameter id {param!r} in {path}"
    return None


def test_every_case_in_reliability_md_names_a_test_that_exists():
    tables = _case_tables(RELIABILITY_MD.read_text(encoding="utf-8"))
    assert len(tables) >= 8
    problems = []
    for table in tables:
        assert table["header"][-1] == "test", f"a table of cases without a test column: {table['header']}"
        for row in table["rows"]:
            node_ids = re.findall(r"`([^`]+)`", row[-1])
            if not node_ids:
                problems.append(f"{row[0]}: no test named")
            problems += [f"{row[0]}: {node_id}: {wrong}" for node_id in node_ids if (wrong := _test_exists(node_id))]
    assert not problems, "\n".join(problems)


def test_the_table_check_catches_a_missing_test_and_a_missing_parameter():
    assert _test_exists("test_bad_input.py::test_bad_wikitext_file[valid-latin1]") is None
    assert _test_exists("test_bad_input.py::test_output_dir_that_already_holds_a_run[pretrain-new_llm_wikitext]") is None
    assert _test_exists("test_bad_input.py::test_bad_wikitext_file[valid-latin2]") == (
        "no parameter id 'valid-latin2' in test_bad_input.py"
    )
    assert _test_exists("test_bad_input.py::test_no_such_thing") == "no test test_no_such_thing in test_bad_input.py"
    assert _test_exists("nowhere.py::test_x") == "no file tests/unit/nowhere.py"
