"""The prototype's three commands, on the quick preset and the real data, end to end (a few minutes)."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from newllm.data.dailydialog import load_dailydialog
from newllm.evaluation.diversity import measure_diversity
from newllm.evaluation.generation import respond
from newllm.models import DEFAULT_MODEL_NAMES as MODEL_NAMES  # the models a run trains unless told otherwise
from newllm.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ("train_wikitext.py", "finetune_dialog.py", "evaluate_comparison.py")
PROTOTYPE_NAMES = [
    "best_new_llm_wikitext",
    "best_tinygpt2_wikitext",
    "best_new_llm_dialog",
    "best_tinygpt2_dialog",
    "new_llm_wikitext_training_curves.png",
    "tinygpt2_wikitext_training_curves.png",
    "new_llm_dialog_training_curves.png",
    "tinygpt2_dialog_training_curves.png",
]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def quick_run(real_data_dir, tmp_path_factory):
    """Run the three scripts in a fresh folder, as a user would after cloning; returns that folder."""
    workdir = tmp_path_factory.mktemp("prototype")
    env = {**os.environ, "NEWLLM_DATA_DIR": str(real_data_dir), "TOKENIZERS_PARALLELISM": "false"}
    for script in SCRIPTS:
        proc = subprocess.run(
            [sys.executable, str(REPO / "scripts" / script), "--preset", "quick", "--no-progress"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,  # minutes on an idle 2-core machine; generous for a loaded one
        )
        assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-4000:]}"
    return workdir


def test_scripts_write_the_prototype_names(quick_run):
    out = quick_run / "checkpoints"
    for name in PROTOTYPE_NAMES:
        assert (out / name).exists(), name
    for name in ("best_new_llm_dialog", "best_tinygpt2_dialog", "best_lstm_dialog"):
        files = {p.name for p in (out / name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
        assert (out / name / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_results_json_has_every_field_for_every_model(quick_run):
    results = json.loads((quick_run / "checkpoints" / "results.json").read_text())
    assert results["preset"] == "quick"
    provenance = results["provenance"]  # what the numbers came from, enough to run them again
    assert (provenance["preset"], Path(provenance["config_file"]).name) == ("quick", "quick.toml")
    assert provenance["seeds"] == {"pretrain": results["config"]["pretrain"]["seed"],
                                   "finetune": results["config"]["finetune"]["seed"]}  # fmt: skip
    assert set(provenance["changed_settings"]) <= {"data.data_dir", "output_dir"}  # the scripts change no setting
    assert provenance["packages"]["torch"] and provenance["date"].startswith("20")
    assert results["tokenizer"]["kind"] == "bpe"
    params = {name: results["models"][name]["params"] for name in MODEL_NAMES}
    for name in MODEL_NAMES:
        model = results["models"][name]
        assert abs(params[name] - params["new_llm"]) <= 0.05 * params["new_llm"]
        numbers = [
            model["wikitext"]["test"]["token_ppl"],
            model["wikitext"]["test"]["word_ppl"],
            model["wikitext"]["test"]["bits_per_byte"],
            model["dailydialog"]["test"]["token_ppl"],
            model["dailydialog"]["test"]["response_ppl"],
            model["speed"]["ms_per_batch"],
            model["speed"]["ms_per_token"],
        ]
        assert all(isinstance(x, float) and math.isfinite(x) and x > 0 for x in numbers), (name, numbers)
        test = model["wikitext"]["test"]
        # word PPL and bits/byte are the same NLL over other denominators
        nll = math.log(test["token_ppl"]) * test["tokens"]
        assert math.isclose(test["word_ppl"], math.exp(nll / test["words"]), rel_tol=1e-6)
        assert math.isclose(test["bits_per_byte"], nll / math.log(2) / test["bytes"], rel_tol=1e-6)
        # trained: far better than a uniform guess over the vocabulary
        assert test["token_ppl"] < results["tokenizer"]["vocab_size"] / 3
        # scored again with context across windows: the same tokens, words and bytes, one NLL behind all three units
        stream = model["wikitext"]["test_stream"]
        assert stream["method"] == ("sliding_window" if name == "tinygpt2" else "carried_state")
        if name == "tinygpt2":  # no window past the positions it was trained on
            assert stream["window"] == results["config"]["data"]["block_size"]
            data = results["config"]["data"]
            for stage, window in (("wikitext", data["block_size"]), ("dialog", data["dialog_block_size"])):
                config = json.loads((quick_run / "checkpoints" / f"best_tinygpt2_{stage}" / "config.json").read_text())
                assert config["trained_positions"] == window  # what generation and chat stop at
        assert (stream["tokens"], stream["words"], stream["bytes"]) == (test["tokens"], test["words"], test["bytes"])
        stream_nll = math.log(stream["token_ppl"]) * stream["tokens"]
        assert math.isclose(stream["word_ppl"], math.exp(stream_nll / stream["words"]), rel_tol=1e-6)
        assert math.isclose(stream["bits_per_byte"], stream_nll / math.log(2) / stream["bytes"], rel_tol=1e-6)
        assert stream["token_ppl"] < results["tokenizer"]["vocab_size"] / 3
        assert len(model["samples"]) == len(results["config"]["eval"]["prompts"])
        assert model["samples"][0]["prompt"] == "hello how are you"


def test_replies_to_the_test_contexts_are_scored(quick_run, real_data_dir):
    out = quick_run / "checkpoints"
    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    test = load_dailydialog("test", data_dir=real_data_dir).head(config["data"]["eval_dialogues"])
    cap = config["eval"]["response_dialogues"]
    used = [d for d in test.dialogues[: len(test.dialogues) if cap is None else cap] if len(d) >= 2]
    # The human baseline depends on the data alone: recomputed here.
    assert results["reference_responses"] == dataclasses.asdict(measure_diversity([d[-1] for d in used]))
    assert results["reference_responses"]["n"] == len(used) > 0
    max_new_tokens = config["eval"]["max_new_tokens"]
    for name in MODEL_NAMES:
        responses = results["models"][name]["dailydialog"]["responses"]
        assert responses["n"] == len(used)
        assert responses["checkpoint"] == f"best_{name}_dialog"
        for key, n in (("distinct_1", 1), ("distinct_2", 2)):
            if responses[key] is None:  # no n-gram at all: a quick model may answer every context in one word
                assert responses["mean_words"] <= n - 1, (name, responses)
            else:
                assert 0 < responses[key] <= 1, (name, responses)
        assert 0 <= responses["empty"] <= responses["n"]
        # byte-level BPE splits at spaces, so a reply has no more words than tokens
        assert 0 <= responses["mean_words"] <= max_new_tokens
    samples = results["dialog_samples"]
    assert len(samples) == min(10, len(used))
    for sample, dialogue in zip(samples, used):
        assert sample["reference"] == dialogue[-1]
        assert sample["context"] == list(dialogue[-3:-1]) and sample["context_turns"] == len(dialogue) - 1
        assert set(sample["replies"]) == set(MODEL_NAMES)
    # The batched, left-padded replies are the ones `respond` gives a single conversation.
    for name in MODEL_NAMES:
        model, tokenizer = load_checkpoint(out / f"best_{name}_dialog", name)
        for sample, dialogue in list(zip(samples, used))[:2]:
            assert sample["replies"][name] == respond(model, tokenizer, dialogue[:-1], max_new_tokens=max_new_tokens)


def test_report_embeds_curves_and_samples(quick_run):
    out = quick_run / "checkpoints"
    report = (out / "report.md").read_text()
    for label in ("New-LLM", "TinyGPT2", "LSTM", "hello how are you", "Word PPL", "Bits/byte", "Word PPL, stateful",
                  "## DailyDialog replies", "Human reference", "#### Test dialogue 1 "):
        assert label in report
    for line in report.splitlines():
        if "](" in line and ".png)" in line:
            for piece in line.split("](")[1:]:
                assert (out / piece.split(")")[0]).is_file()


def test_history_is_written_per_epoch_as_json_and_csv(quick_run):
    out = quick_run / "checkpoints"
    history = json.loads((out / "new_llm_wikitext" / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert all(row["val_loss"] is not None and row["train_loss"] is not None for row in history)
    assert (out / "new_llm_wikitext" / "history.csv").read_text().startswith("epoch,train_loss,val_loss")


def test_generate_command_answers_a_prompt(quick_run):
    proc = subprocess.run(
        [sys.executable, "-m", "newllm.cli", "generate", "--checkpoint", "checkpoints/best_new_llm_dialog", "hello how are you"],
        cwd=quick_run,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() or "ended its turn without a word" in proc.stderr


def test_finetune_refuses_a_checkpoint_with_another_tokenizer(quick_run, tmp_path):
    import shutil

    out = tmp_path / "checkpoints"
    shutil.copytree(quick_run / "checkpoints" / "best_new_llm_wikitext", out / "best_new_llm_wikitext")
    shutil.copy(quick_run / "checkpoints" / "tokenizer.json", out / "tokenizer.json")
    from newllm.data.tokenizer import save_tokenizer, train_tokenizer

    foreign = train_tokenizer(["some other corpus entirely\n"] * 100, kind="bpe", vocab_size=280)
    save_tokenizer(foreign, out / "best_new_llm_wikitext")
    proc = subprocess.run(
        [sys.executable, "-m", "newllm.cli", "finetune", "--preset", "quick", "--models", "new_llm", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "tokenizer" in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert not (out / "best_new_llm_dialog").exists()
