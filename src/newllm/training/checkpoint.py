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

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

import newllm.models  # noqa: F401  (registers the Auto classes)
from newllm.data.tokenizer import check_same_tokenizer, load_tokenizer, save_tokenizer, tokenizer_fingerprint
from newllm.models.registry import MODEL_TYPES

METADATA_FILE = "newllm.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# safetensors' dtype names (its header's "dtype"), for comparing a file with a model without reading tensors
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
NAMES_SHOWN = 3  # tensors named per kind of mismatch: enough to recognise the model, short enough for one line


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete, corrupt or of another model or tokenizer."""


def write_json_atomic(path: Path, payload) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: leave `path` as it was and no stray copy
        raise
    return path


def save_checkpoint(model: PreTrainedModel, tokenizer, directory, metadata: dict | None = None) -> Path:
    """Write model + tokenizer + metadata into `directory`, replacing it only once all is written."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        meta = {
            "model_type": model.config.model_type,
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(metadata or {}),
        }
        write_json_atomic(tmp / METADATA_FILE, meta)
    except BaseException:
        # a full disk mid-write: the previous checkpoint stays, and the partial copy gives its space back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    _check_tensors(directory)
    return config


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _names(names) -> str:
    names = sorted(names)
    return ", ".join(names[:NAMES_SHOWN]) + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def _check_tensors(directory: Path) -> None:
    """CheckpointError unless model.safetensors holds the tensors of the model config.json builds: every
    name, shape and dtype. Read from the file's header and a model on the meta device, so no weights are
    loaded: transformers would fill a missing tensor with random values, and stop on a mis-shaped one
    with "look at the above report!" after a report its quiet logging hides."""
    try:
        with safe_open(directory / "model.safetensors", framework="pt") as file:
            saved = {name: (tuple(file.get_slice(name).get_shape()), file.get_slice(name).get_dtype()) for name in file.keys()}
        config = AutoConfig.from_pretrained(directory)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(config, "dtype", None) or torch.float32)
    except Exception as err:  # safetensors / transformers raise many types for a corrupt file
        raise CheckpointError(f"checkpoint {directory} could not be loaded: {_first_line(err)}") from None
    tensors = model.state_dict(keep_vars=True)
    # tied weights (GPT-2's lm_head and token embedding) are one tensor under several names, saved once
    aliases: dict[int, list[str]] = {}
    for name, tensor in tensors.items():
        aliases.setdefault(id(tensor), []).append(name)
    missing = [names[0] for names in aliases.values() if not any(name in saved for name in names)]
    unexpected = [name for name in saved if name not in tensors]
    wrong = []
    for name in saved.keys() & tensors.keys():
        expected = (tuple(tensors[name].shape), SAFETENSORS_DTYPES.get(tensors[name].dtype, str(tensors[name].dtype)))
        if saved[name] != expected:
            wrong.append(f"{name} {_shape_and_dtype(saved[name])} instead of {_shape_and_dtype(expected)}")
    problems = [f"{len(found)} {what} ({_names(found)})" for found, what in
                ((missing, "missing"), (unexpected, "unexpected"), (wrong, "of another shape or dtype")) if found]  # fmt: skip
    if problems:
        raise CheckpointError(
            f"checkpoint {directory}: model.safetensors does not match config.json: {'; '.join(problems)}"
        )


def _shape_and_dtype(entry: tuple) -> str:
    shape, dtype = entry
    return f"{'x'.join(map(str, shape)) or 'scalar'} {dtype}"


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


def _load_failure(err: Exception) -> str:
    """torch.load's reason in a few words: its weights-only refusal is a page that suggests weights_only=False,
    which would run whatever code the file holds."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        return f"not a file of tensors: {detail}"
    if isinstance(err, EOFError):
        return "empty or cut short"
    return _first_line(err)


def check_trainer_checkpoint(folder) -> None:
    """CheckpointError naming the file when a Trainer checkpoint-N folder's training state does not load.

    The Trainer would stop mid-resume with an UnpicklingError or a KeyError; loading each file here
    first (weights_only, as the Trainer does) names the damaged one before anything is changed.
    """
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_pt_utils import safe_globals

    folder = Path(folder)
    hint = "--resume cannot continue from it; start again with --overwrite"
    for path in [folder / "optimizer.pt", folder / "scheduler.pt", *sorted(folder.glob("rng_state*.pth"))]:
        try:
            with safe_globals():  # NumPy's RNG state, allow-listed as the Trainer does
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{path} is corrupt ({_load_failure(err)}): {hint}") from None
    path = folder / "trainer_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            raise ValueError("not a JSON object with a global_step")
        TrainerState(**state)
    except Exception as err:
        raise CheckpointError(f"{path} is corrupt ({_first_line(err)}): {hint}") from None


def load_checkpoint(directory, model_name: str | None = None, expected_tokenizer=None, device="cpu", **config_changes):
    """(model, tokenizer) from a checkpoint folder, checking model type and, if given, the tokenizer.
    `config_changes` replace fields of its config.json (as in `from_pretrained`), e.g. dropout=0.1."""
    directory = Path(directory)
    check_checkpoint(directory, model_name)
    tokenizer = _checked_tokenizer(directory, expected_tokenizer)
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, **config_changes)
    except Exception as err:  # safetensors / transformers raise many types for a corrupt file
        raise CheckpointError(f"checkpoint {directory} could not be loaded: {_first_line(err)}") from None
    # a run that diverged before its last save gives NaN logits, and generation then gives garbage
    nonfinite = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if nonfinite:
        raise CheckpointError(
            f"checkpoint {directory}: model.safetensors holds NaN or infinite values in {len(nonfinite)} "
            f"tensor(s) ({_names(nonfinite)})"
        )
    return model.to(device), tokenizer
