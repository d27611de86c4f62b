"""finetune.dropout: step 2 with another dropout than step 1's, for every model, recorded in its checkpoint."""

from __future__ import annotations

import json
import re

import pytest

from newllm.cli import main
from newllm.config import ConfigError, load_config
from newllm.models import DEFAULT_MODEL_NAMES, DROPOUT_FIELDS, MODEL_NAMES, BaselineShape, NewLLMConfig, matched_configs

from tests.helpers import STEP_OPTIONS, write_data_dir

OPTIONS = [*STEP_OPTIONS, "--models", "new_llm,tinygpt2,lstm", "--set", "pretrain.epochs=1", "--set", "finetune.epochs=1",
           "--set", "model.dropout=0.3"]  # fmt: skip


def test_the_dropout_fields_are_the_ones_model_dropout_sets():
    # the same experiment with model.dropout 0.1 and 0.3 (pipeline.model_configs): which fields differ?
    low, high = (matched_configs(NewLLMConfig(vocab_size=300, dropout=p), shape=BaselineShape(dropout=p)) for p in (0.1, 0.3))
    for name in MODEL_NAMES:
        changed = {key for key, value in low[name].to_dict().items() if high[name].to_dict()[key] != value}
        assert changed == set(DROPOUT_FIELDS[name]), name


def test_step_2_trains_and_saves_with_its_own_dropout(tmp_path, one_thread):
    data, out = write_data_dir(tmp_path / "data"), tmp_path / "out"
    common = ["--data-dir", str(data), "--output-dir", str(out)]
    assert main(["-q", "pretrain", *OPTIONS, *common]) == 0

    def dropouts(stage):
        configs = {name: json.loads((out / f"best_{name}_{stage}" / "config.json").read_text()) for name in DEFAULT_MODEL_NAMES}
        return {name: {configs[name][key] for key in DROPOUT_FIELDS[name]} for name in DEFAULT_MODEL_NAMES}

    assert main(["-q", "finetune", *OPTIONS, *common]) == 0  # without it: step 1's
    assert dropouts("wikitext") == dropouts("dialog") == {name: {0.3} for name in DEFAULT_MODEL_NAMES}
    assert main(["-q", "finetune", *OPTIONS, *common, "--overwrite", "--set", "finetune.dropout=0.05"]) == 0
    assert dropouts("dialog") == {name: {0.05} for name in DEFAULT_MODEL_NAMES}
    assert dropouts("wikitext") == {name: {0.3} for name in DEFAULT_MODEL_NAMES}  # step 1's checkpoints untouched


@pytest.mark.parametrize(
    "override, message",
    [
        ("pretrain.dropout=0.1", "pretrain.dropout: step 1's dropout is model.dropout"),
        ("finetune.dropout=1.0", "dropout: must be in [0, 1)"),
    ],
)
def test_a_dropout_for_step_1_or_out_of_range_is_refused(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("quick", [override])
