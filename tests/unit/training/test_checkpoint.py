"""Checkpoints: atomic, safetensors + JSON only, and refused when they don't match."""

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from newllm.data.tokenizer import train_tokenizer
from newllm.models import build_model, matched_configs
from newllm.training.checkpoint import CheckpointError, check_checkpoint, load_checkpoint, save_checkpoint, write_json_atomic

from ..models.conftest import random_ids, tiny_new_llm_config


@pytest.fixture(scope="module")
def tokenizer():
    lines = [f"the cat number {i} sat on the mat and looked at dog {i * 7} .\n" for i in range(200)]
    return train_tokenizer(lines, kind="bpe", vocab_size=300)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("new_llm", tiny_new_llm_config()).eval()


def test_save_load_gives_identical_logits_and_no_pickles(tmp_path, model, tokenizer):
    path = save_checkpoint(model, tokenizer, tmp_path / "best_new_llm_wikitext", {"stage": "wikitext"})
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", "newllm.json", "tokenizer.json"]
    loaded, loaded_tokenizer = load_checkpoint(path, "new_llm", expected_tokenizer=tokenizer)
    ids = random_ids(2, 8)
    assert torch.equal(model(ids).logits, loaded.eval()(ids).logits)
    assert loaded_tokenizer.to_str() == tokenizer.to_str()
    assert json.loads((path / "newllm.json").read_text())["stage"] == "wikitext"


def test_overwriting_leaves_no_temporary_folders(tmp_path, model, tokenizer):
    target = tmp_path / "best"
    save_checkpoint(model, tokenizer, target)
    save_checkpoint(model, tokenizer, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_another_model_type_is_refused(tmp_path, model, tokenizer):
    path = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="expected 'gpt2'"):
        load_checkpoint(path, "tinygpt2")


def test_another_tokenizer_is_refused(tmp_path, model, tokenizer):
    path = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    other = train_tokenizer(["completely different words here\n"] * 50, kind="bpe", vocab_size=280)
    with pytest.raises(CheckpointError):
        load_checkpoint(path, "new_llm", expected_tokenizer=other)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_incomplete_checkpoint_names_the_missing_file(tmp_path, model, tokenizer, missing):
    path = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    (path / missing).unlink()
    with pytest.raises(CheckpointError, match=f"missing {missing}"):
        check_checkpoint(path)


def test_corrupt_weights_are_a_clear_error(tmp_path, model, tokenizer):
    path = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="could not be loaded"):
        load_checkpoint(path, "new_llm")


def test_weights_of_another_model_are_refused_not_replaced_by_random_ones(tmp_path, model, tokenizer):
    path = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    gpt2_config = matched_configs(tiny_new_llm_config(), names=("new_llm", "tinygpt2"))["tinygpt2"]
    gpt2 = save_checkpoint(build_model("tinygpt2", gpt2_config), tokenizer, tmp_path / "gpt2")
    (path / "model.safetensors").write_bytes((gpt2 / "model.safetensors").read_bytes())  # no name in common
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path, "new_llm")
    message = str(raised.value)
    assert "model.safetensors does not match config.json: 11 missing (" in message
    assert "28 unexpected (transformer.h.0.attn.c_attn.bias, transformer.h.0.attn.c_attn.weight, " in message
    assert "\n" not in message


def _resave(path, change) -> None:
    """Rewrite path/model.safetensors with `change` applied to its dict of tensors."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("lm_head.weight"), ": 1 missing (lm_head.weight)"),
        (lambda t: t.update(extra=torch.zeros(2)), ": 1 unexpected (extra)"),
        (lambda t: t.update({"lm_head.weight": t["lm_head.weight"][:-1].clone()}),
         ": 1 of another shape or dtype (lm_head.weight 299x48 F32 instead of 300x48 F32)"),
        (lambda t: t.update({"lm_head.weight": t["lm_head.weight"].half()}),
         ": 1 of another shape or dtype (lm_head.weight 300x48 F16 instead of 300x48 F32)"),
    ],
    ids=["missing", "unexpected", "mis-shaped", "other-dtype"],
)
def test_each_tensor_is_checked_by_name_shape_and_dtype(tmp_path, model, tokenizer, change, message):
    path = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    _resave(path, change)
    for check in (lambda: check_checkpoint(path), lambda: load_checkpoint(path, "new_llm")):
        with pytest.raises(CheckpointError) as raised:
            check()
        assert str(raised.value) == f"checkpoint {path}: model.safetensors does not match config.json{message}"


def test_non_finite_weights_are_refused(tmp_path, model, tokenizer):
    path = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    _resave(path, lambda t: t["lm_head.weight"].__setitem__((0, 0), float("nan")))
    with pytest.raises(CheckpointError, match=r"holds NaN or infinite values in 1 tensor\(s\) \(lm_head.weight\)"):
        load_checkpoint(path, "new_llm")


@pytest.mark.parametrize("name", ["new_llm", "tinygpt2", "lstm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_models_own_checkpoint_passes_the_tensor_check(tmp_path, tokenizer, name, dtype):
    """No false alarm: tied weights saved once, buffers, and a bf16 save all match their config."""
    config = matched_configs(tiny_new_llm_config(), names=("new_llm", "tinygpt2", "lstm"))[name]
    path = save_checkpoint(build_model(name, config).to(dtype), tokenizer, tmp_path / name)
    loaded, _ = load_checkpoint(path, name)
    assert loaded.dtype == dtype


def test_weights_are_readable_by_others_as_the_umask_allows(tmp_path, model, tokenizer):
    umask = os.umask(0o022)
    try:
        path = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    finally:
        os.umask(umask)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}["model.safetensors"] == 0o644


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        check_checkpoint(tmp_path / "nothing")


def test_a_swapped_tokenizer_json_is_refused_by_every_loader(tmp_path, model, tokenizer):
    """generate and chat load a checkpoint without the run's tokenizer to compare with: the fingerprint
    newllm.json recorded, and the model's vocabulary size, catch a tokenizer.json swapped in later."""
    from newllm.data.tokenizer import save_tokenizer

    same_size = train_tokenizer([f"other words {i} here and there {i * 3} .\n" for i in range(200)], kind="bpe",
                                vocab_size=300)  # fmt: skip
    path = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    save_tokenizer(same_size, path)
    with pytest.raises(CheckpointError, match="not the tokenizer its model was trained with"):
        load_checkpoint(path)
    meta = json.loads((path / "newllm.json").read_text())
    (path / "newllm.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "tokenizer_fingerprint"}))
    larger = train_tokenizer([f"other words {i} here and there {i * 3} .\n" for i in range(200)], kind="bpe",
                             vocab_size=320)  # fmt: skip
    save_tokenizer(larger, path)
    with pytest.raises(CheckpointError, match="tokenizer.json has 320 entries, the model 300"):
        load_checkpoint(path)
    (path / "newllm.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="newllm.json is not a JSON object"):
        load_checkpoint(path)


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_partial_copy(tmp_path, model, tokenizer, monkeypatch):
    import transformers.modeling_utils
    from safetensors import SafetensorError

    target = save_checkpoint(model, tokenizer, tmp_path / "best")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def full(tensors, filename, metadata=None):  # safetensors' save_file, on a full disk
        (Path(filename)).write_bytes(b"partial")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    with pytest.raises(SafetensorError):
        save_checkpoint(model, tokenizer, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_full_disk_leaves_a_json_file_as_it_was(tmp_path, monkeypatch):
    path = write_json_atomic(tmp_path / "results.json", {"old": 1})

    def full(self, *args, **kwargs):  # the first bytes fit, the rest do not
        self.write_bytes(b'{"ne')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        write_json_atomic(path, {"new": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
