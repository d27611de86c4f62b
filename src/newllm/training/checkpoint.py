"""Checkpoints: a Hugging Face model folder (config.json + model.safetensors) + tokenizer.json + newllm.json.

Written to a temporary folder beside the target and renamed into place, so a reader never sees a
half-written "best" checkpoint. Loading reads JSON and safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

import newllm.models  # noqa: F401  (registers the Auto classes)
from newllm.data.tokenizer import check_same_tokenizer, load_tokenizer, save_tokenizer, tokenizer_fingerprint
from newllm.models.registry import MODEL_TYPES

METADATA_FILE = "newllm.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete, corrupt or of another model or tokenizer."""


def write_json_atomic(path: Path, payload) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def save_checkpoint(model: PreTrainedModel, tokenizer, directory, metadata: dict | None = None) -> Path:
    """Write model + tokenizer + metadata into `directory`, replacing it only once all is written."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    save_tokenizer(tokenizer, tmp)
    meta = {
        "model_type": model.config.model_type,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(metadata or {}),
    }
    write_json_atomic(tmp / METADATA_FILE, meta)
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp.iterdir():  # safetensors writes its file 0600: collaborators must be able to load it
        os.chmod(path, 0o666 & ~umask)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def check_checkpoint(directory, model_name: str | None = None, expected_tokenizer=None) -> dict:
    """The checkpoint's config as a dict, after checking its files, model type and, if given, its tokenizer.

    Everything but the weights, so it is cheap: CheckpointError for what does not fit.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} is a file; pass the folder that holds config.json")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {directory} is incomplete: missing {', '.join(missing)}")
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {directory}: config.json is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {directory}: config.json is not a JSON object")
    known = sorted(set(MODEL_TYPES.values()))
    if config.get("model_type") not in known:
        raise CheckpointError(
            f"checkpoint {directory} holds a {config.get('model_type')!r} model; newllm loads {', '.join(known)}"
        )
    if model_name is not None:
        if model_name not in MODEL_TYPES:
            raise ValueError(f"unknown model {model_name!r}; expected one of {', '.join(MODEL_TYPES)}")
        expected = MODEL_TYPES[model_name]
        if config.get("model_type") != expected:
            raise CheckpointError(
                f"checkpoint {directory} holds a {config.get('model_type')!r} model, expected {expected!r} ({model_name})"
            )
    if expected_tokenizer is not None:
        _checked_tokenizer(directory, expected_tokenizer)
    return config


def _checked_tokenizer(directory: Path, expected=None):
    """The checkpoint's tokenizer.json, the same as `expected` if given; CheckpointError otherwise."""
    try:
        tokenizer = load_tokenizer(directory)
    except ValueError as err:
        raise CheckpointError(f"checkpoint {directory}: {err}") from None
    if expected is not None:
        try:
            check_same_tokenizer(expected, tokenizer, where=f"checkpoint {directory}")
        except ValueError as err:
            raise CheckpointError(f"{err}: it was saved with another tokenizer than the run's tokenizer.json") from None
    _check_own_tokenizer(directory, tokenizer)
    return tokenizer


def _check_own_tokenizer(directory: Path, tokenizer) -> None:
    """The folder's tokenizer.json is the one its model was trained with: the fingerprint newllm.json
    recorded at save time, and as many entries as the model's vocabulary. A swapped tokenizer would
    otherwise decode every id into the wrong text (or index past the embedding) without a word."""
    meta_path = directory / METADATA_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"checkpoint {directory}: {METADATA_FILE} is not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint {directory}: {METADATA_FILE} is not a JSON object")
        recorded = meta.get("tokenizer_fingerprint")
        if isinstance(recorded, str) and recorded != tokenizer_fingerprint(tokenizer):
            raise CheckpointError(
                f"checkpoint {directory}: tokenizer.json is not the tokenizer its model was trained with "
                f"(fingerprint {tokenizer_fingerprint(tokenizer)[:12]}, {METADATA_FILE} records {recorded[:12]})"
            )
    try:
        vocab_size = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return  # check_checkpoint reports an unreadable config.json
    if isinstance(vocab_size, int) and tokenizer.get_vocab_size() != vocab_size:
        raise CheckpointError(
            f"checkpoint {directory}: tokenizer.json has {tokenizer.get_vocab_size()} entries, the model "
            f"{vocab_size}: it is not the model's tokenizer"
        )


def load_checkpoint(directory, model_name: str | None = None, expected_tokenizer=None, device="cpu", **config_changes):
    """(model, tokenizer) from a checkpoint folder, checking model type and, if given, the tokenizer.
    `config_changes` replace fields of its config.json (as in `from_pretrained`), e.g. dropout=0.1."""
    directory = Path(directory)
    check_checkpoint(directory, model_name)
    tokenizer = _checked_tokenizer(directory, expected_tokenizer)
    try:
        AutoConfig.from_pretrained(directory)
        model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True, **config_changes)
    except Exception as err:  # safetensors / transformers raise many types for a corrupt file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {directory} could not be loaded: {first_line}") from None
    # transformers fills missing weights with fresh random ones and only logs it: a checkpoint whose
    # weights belong to another model would otherwise load and generate noise
    problems = [f"{len(info[key])} {what}" for key, what in (("missing_keys", "missing"),
                ("unexpected_keys", "unexpected"), ("mismatched_keys", "of the wrong shape")) if info.get(key)]  # fmt: skip
    if problems:
        raise CheckpointError(
            f"checkpoint {directory}: model.safetensors does not match config.json ({', '.join(problems)} weights, "
            f"e.g. {sorted(map(str, info.get('missing_keys') or info.get('unexpected_keys') or info['mismatched_keys']))[0]})"
        )
    return model.to(device), tokenizer
