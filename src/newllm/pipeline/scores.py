"""Step 3's pieces: the test data read once, the checks before any work, results.json's header and the
numbers each model gets on each test set."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import types

from newllm.config import ExperimentConfig
from newllm.data.batching import DialogWindows, StreamWindows
from newllm.data.dailydialog import DialogSplit, encode_dialogue
from newllm.data.tokenizer import describe_tokenizer
from newllm.data.wikitext import TextSplit, encode_text
from newllm.evaluation.diversity import measure_diversity
from newllm.evaluation.generation import check_reply_length
from newllm.evaluation.perplexity import evaluate_perplexity
from newllm.evaluation.speed import environment
from newllm.evaluation.stream import evaluate_stream, plan_stream
from newllm.models import usable_positions
from newllm.pipeline.setup import (
    _sliced,
    command_line,
    load_dialog_splits,
    load_wikitext_splits,
    provenance,
)
from newllm.reporting.report import RESULTS_SCHEMA, load_history
from newllm.training.checkpoint import CheckpointError, check_checkpoint
from newllm.training.rundir import STAGES, RunDir

logger = logging.getLogger("newllm")

# Test dialogues whose context, reference and replies results.json and the report show (the first ones: deterministic).
DIALOG_SAMPLES = 10
# What results.json keeps of each epoch of a stage's history.json: the validation curve of many runs in one figure.
EPOCH_FIELDS = ("epoch", "train_ppl", "val_ppl", "seconds")


def dialog_sets(config: ExperimentConfig, tokenizer, names=("train", "validation")):
    splits = load_dialog_splits(config, names)
    return {
        name: DialogWindows([encode_dialogue(tokenizer, d) for d in split.dialogues], config.data.dialog_block_size)
        for name, split in splits.items()
    }, splits


def stage_summary(config: ExperimentConfig, name: str, stage: str) -> dict:
    """Training facts of a stage for results.json: the best checkpoint's record (best epoch, epochs run, seconds,
    "stopped" when its time limit ended the stage), its validation PPL and each epoch's, paths relative to the
    output folder. `newllm collect` reads these, so no collector has to open the run folder."""
    folder = RunDir(config.output_dir)
    meta_path = folder.checkpoint(name, stage) / "newllm.json"
    summary = {
        "history": folder.history(name, stage).relative_to(folder.root).as_posix(),
        "curves": folder.curves(name, stage).name,
        "checkpoint": folder.checkpoint(name, stage).name,
    }
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        summary.update({k: meta.get(k) for k in ("best_epoch", "epochs_run", "train_seconds")})
        if "stopped" in meta:
            summary["stopped"] = meta["stopped"]
    history_path = folder.history(name, stage)
    if not history_path.is_file():  # a checkpoint copied here without its Trainer folder
        return summary
    try:
        history = load_history(history_path)
    except ValueError as e:  # minutes of evaluation are worth more than the curve
        logger.warning("%s: its per-epoch record is left out of results.json", e)
        return summary
    best = [row for row in history if row.get("epoch") == summary.get("best_epoch")]
    if best:
        summary["best_val_ppl"] = best[0].get("val_ppl")
    summary["per_epoch"] = [{k: row.get(k) for k in EPOCH_FIELDS} for row in history]
    return summary


@dataclasses.dataclass
class TestData:
    """Step 3's data, read and encoded once for every model."""

    wiki: dict[str, TextSplit]  # "valid", "test"
    wiki_windows: dict[str, StreamWindows]  # each split in block_size windows
    wiki_test_stream: list[int]  # the test split as one token stream, for the stateful evaluation
    dialog_split: DialogSplit  # the (sliced) test split
    dialog_windows: DialogWindows
    replied: list[tuple[int, list[str]]]  # (index, dialogue) of the test dialogues the models reply to


def check_evaluable(config: ExperimentConfig, tokenizer) -> None:
    """Every model's checkpoints, checked before minutes of work on the first."""
    for name in config.model.names:
        folders = [RunDir(config.output_dir).checkpoint(name, stage) for stage in STAGES]
        if not any(folder.exists() for folder in folders):  # else an empty report would replace the folder's
            raise CheckpointError(
                f"no checkpoint of {name} to evaluate: neither {folders[0]} nor {folders[1]} exists; "
                f"run `newllm pretrain` with this output dir first or leave {name} out of --models"
            )
        for folder in folders:
            if folder.exists():
                saved = check_checkpoint(folder, name, expected_tokenizer=tokenizer)
                # step 3 replies with whichever checkpoint it scores: refused here, not after minutes of scoring
                positions = usable_positions(types.SimpleNamespace(config=types.SimpleNamespace(**saved)))
                check_reply_length(config.eval.max_new_tokens, positions, f"eval.max_new_tokens ({folder})")


def load_test_data(config: ExperimentConfig, tokenizer) -> TestData:
    e = config.eval
    if e.response_dialogues is not None and e.response_dialogues < 0:
        raise ValueError(f"eval.response_dialogues must be >= 0 or none, got {e.response_dialogues}")
    wiki = load_wikitext_splits(config, ("valid", "test"))
    streams = {name: encode_text(tokenizer, split) for name, split in wiki.items()}
    test_sets, dialog_splits = dialog_sets(config, tokenizer, ("test",))
    # Each model replies to every test dialogue minus its last turn, which is the human reference reply.
    replied = [
        (index, dialogue)
        for index, dialogue in enumerate(_sliced(dialog_splits["test"], e.response_dialogues).dialogues)
        if len(dialogue) >= 2  # a one-turn dialogue leaves no context to reply to
    ]
    return TestData(
        wiki=wiki,
        wiki_windows={
            name: StreamWindows(stream, config.data.block_size, drop_last=False) for name, stream in streams.items()
        },
        wiki_test_stream=streams["test"],
        dialog_split=dialog_splits["test"],
        dialog_windows=test_sets["test"],
        replied=replied,
    )


def results_header(config: ExperimentConfig, device: str, tokenizer, data: TestData) -> dict:
    """results.json before any model: what was run, on what, and the human replies to compare with."""
    env = environment()
    return {
        "schema": RESULTS_SCHEMA,
        "provenance": provenance(config, device, env),
        "preset": config.preset,
        "command": command_line(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device,
        "environment": env,
        "tokenizer": describe_tokenizer(tokenizer),
        "data": {
            "wikitext": {
                "variant": config.data.wikitext,
                "source": data.wiki["test"].source,
                "test_words": data.wiki["test"].n_words,
                "test_bytes": data.wiki["test"].n_bytes,
                "test_tokens": None,  # filled in by the first model evaluated
                "block_size": config.data.block_size,
                "sliced": config.data.eval_lines is not None or config.data.train_lines is not None,
            },
            "dailydialog": {
                "source": data.dialog_split.source,
                "test_dialogues": len(data.dialog_split.dialogues),
                "block_size": config.data.dialog_block_size,
                "sliced": config.data.eval_dialogues is not None or config.data.train_dialogues is not None,
            },
        },
        "config": config.to_dict(),
        "models": {},
        "reference_responses": dataclasses.asdict(measure_diversity([dialogue[-1] for _, dialogue in data.replied])),
        "dialog_samples": [
            {
                "dialogue": index,  # position in the (sliced) test split
                "context_turns": len(dialogue) - 1,
                "context": list(dialogue[-3:-1]),  # the last two turns are enough to follow the reply
                "reference": dialogue[-1],
                "replies": {},
            }
            for index, dialogue in data.replied[:DIALOG_SAMPLES]
        ],
    }


def _wikitext_numbers(ppl, split: TextSplit) -> dict:
    return {
        "loss": ppl.loss,
        "token_ppl": ppl.token_ppl,
        "word_ppl": ppl.word_ppl(split.n_words),
        "bits_per_byte": ppl.bits_per_byte(split.n_bytes),
        "tokens": ppl.tokens,
        "words": split.n_words,
        "bytes": split.n_bytes,
    }


def evaluate_wikitext(
    model, name: str, config: ExperimentConfig, data: TestData, pad: int, device: str, dtype, progress: bool
) -> dict:
    """Validation and test perplexity window by window, then the test split again as one stream."""
    e = config.eval
    numbers = {}
    for split_name, dataset in data.wiki_windows.items():
        logger.info("step 3: %s on WikiText-2 %s", name, split_name)
        ppl = evaluate_perplexity(model, dataset, pad, e.batch_size, device=device, dtype=dtype, progress=progress)
        numbers[split_name] = _wikitext_numbers(ppl, data.wiki[split_name])
    # The same test tokens again, with context across windows: carried state or sliding window.
    plan = plan_stream(model, e.stream_window, e.stream_stride, e.stream_lanes, config.data.block_size)
    logger.info("step 3: %s on WikiText-2 test, %s", name, plan.method.replace("_", " "))
    ppl = evaluate_stream(
        model,
        data.wiki_test_stream,
        window=plan.window,
        stride=plan.stride,
        lanes=e.stream_lanes,
        batch_size=e.batch_size,
        device=device,
        dtype=dtype,
        progress=progress,
    )
    numbers["test_stream"] = {**dataclasses.asdict(plan), **_wikitext_numbers(ppl, data.wiki["test"])}
    return numbers


def evaluate_dialog(
    model, name: str, config: ExperimentConfig, data: TestData, pad: int, device: str, dtype, progress: bool
) -> dict:
    logger.info("step 3: %s on DailyDialog test", name)
    ppl = evaluate_perplexity(
        model, data.dialog_windows, pad, config.eval.batch_size, device=device, dtype=dtype, progress=progress
    )
    return {
        "loss": ppl.loss,
        "token_ppl": ppl.token_ppl,
        "response_ppl": ppl.response_ppl,
        "tokens": ppl.tokens,
        "response_tokens": ppl.response_tokens,
    }


def architecture(model_config) -> dict:
    keys = ("embedding_size", "context_size", "hidden_size", "num_hidden_layers", "n_head", "n_positions")
    return {k: getattr(model_config, k) for k in keys if hasattr(model_config, k)}


