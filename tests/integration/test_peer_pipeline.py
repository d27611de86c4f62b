"""The attention-free peer (Mamba-2, transformers' pure-PyTorch path) through all three steps on slices of the
real data, beside New-LLM and sized to it (about half a minute on 2 CPU cores)."""

import json
import math

import pytest

from newllm.cli import main

pytestmark = [pytest.mark.integration]

SLICES = ["data.train_lines=300", "data.eval_lines=60", "data.train_dialogues=60", "data.eval_dialogues=20",
          "pretrain.epochs=1", "finetune.epochs=1", "eval.response_dialogues=5"]  # fmt: skip


def test_mamba2_runs_all_three_steps_and_is_reported(real_data_dir, tmp_path):
    out = tmp_path / "run"
    sets = [arg for setting in SLICES for arg in ("--set", setting)]
    code = main(["-q", "pipeline", "--preset", "quick", "--models", "new_llm,mamba2", "--data-dir", str(real_data_dir),
                 "--output-dir", str(out), "--no-progress", *sets])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    mamba2, new_llm = results["models"]["mamba2"], results["models"]["new_llm"]
    assert abs(mamba2["params"] - new_llm["params"]) <= 0.05 * new_llm["params"]
    test = mamba2["wikitext"]["test"]
    assert math.isfinite(test["word_ppl"]) and test["token_ppl"] < results["tokenizer"]["vocab_size"]
    stream = mamba2["wikitext"]["test_stream"]  # no `state` keyword: a sliding window of its training window
    assert (stream["method"], stream["window"]) == ("sliding_window", results["config"]["data"]["block_size"])
    assert mamba2["dailydialog"]["test"]["token_ppl"] > 1 and mamba2["speed"]["ms_per_token"] > 0
    assert mamba2["speed"]["state_bytes"] > 0  # its conv and SSM states, counted from its own cache
    assert "| Mamba-2 |" in (out / "report.md").read_text()
