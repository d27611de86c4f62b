"""DailyDialog: dialogues as tuples of utterances, and their ids with a mask over the responses.

Files are ``<data dir>/dailydialog/dialogues_{train,validation,test}.txt`` (data dir as in wikitext.py),
one dialogue per line with every utterance ending in ``__eou__`` (a line with text after its last
``__eou__``, as in a file cut short, is skipped and counted). The Hub fallback is
``li2017dailydialog/daily_dialog``. Its original loading script won't run under datasets >= 3, so we
read the Hub's automatic parquet conversion (revision ``refs/convert/parquet``) instead.

A dialogue is encoded as follows. The layout below is a three-turn example; spk1/spk2 alternate by
turn, and eot is end_of_text:

    ids   eot spk1 How are you ? eoturn spk2 Fine . eoturn spk1 Good eoturn eot
    mask  0   0    0   0   0   0 0      0    1    1 1      0    1    1      0

The mask is 1 on the responses, meaning the text and end_of_turn of every utterance after the first.
These are the tokens that "response perplexity" is measured over.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from newllm.data.errors import DataFormatError, DataNotFoundError
from newllm.data.tokenizer import SpecialIds, special_ids
from newllm.data.wikitext import canonical_split, explicit_data_dir, hub_failure, locate_file, missing_from, read_lines

HUB_ID = "li2017dailydialog/daily_dialog"
HUB_REVISION = "refs/convert/parquet"

_END_OF_UTTERANCE = "__eou__"
_SPLITS = {"train": "train", "validation": "validation", "valid": "validation", "test": "test"}


@dataclass(frozen=True)
class DialogSplit:
    """One split of dialogues; `skipped` counts the malformed lines left out of the whole source."""

    name: str
    dialogues: tuple[tuple[str, ...], ...]
    source: str
    skipped: int

    @property
    def n_utterances(self) -> int:
        """Utterances over all dialogues."""
        return sum(len(dialogue) for dialogue in self.dialogues)

    def head(self, n: int) -> DialogSplit:
        """The first `n` dialogues, for quick presets; `skipped` still describes the whole source."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return DialogSplit(self.name, self.dialogues[:n], f"{self.source} (first {n} dialogues)", self.skipped)


def _clean(pieces: Iterable[str]) -> tuple[str, ...] | None:
    """Stripped utterances without empty trailing pieces, or None when nothing or an empty middle one is left."""
    utterances = [piece.strip() for piece in pieces]
    while utterances and not utterances[-1]:
        utterances.pop()
    # An empty utterance between two others would shift which speaker says what, so the dialogue is unusable.
    if not utterances or not all(utterances):
        return None
    return tuple(utterances)


def _parse_line(line: str) -> tuple[str, ...] | None:
    """The utterances of one line of dialogues_*.txt, or None when it is malformed."""
    if _END_OF_UTTERANCE not in line:
        return None
    *utterances, tail = line.split(_END_OF_UTTERANCE)
    # Text after the last marker is an utterance cut off before its __eou__ (a truncated file): drop the dialogue.
    if tail.strip():
        return None
    return _clean(utterances)


def _build_split(name: str, dialogues: Iterable[tuple[str, ...] | None], source: str) -> DialogSplit:
    kept = []
    skipped = 0
    for dialogue in dialogues:
        if dialogue is None:
            skipped += 1
        else:
            kept.append(dialogue)
    if not kept:
        raise DataFormatError(f"{source} holds no well-formed dialogue ({skipped} malformed)")
    return DialogSplit(name, tuple(kept), source, skipped)


def load_dailydialog(split: str, data_dir: str | os.PathLike | None = None) -> DialogSplit:
    """Read a DailyDialog split ("train", "validation"/"valid", "test"), skipping and counting malformed lines."""
    name = canonical_split(split, _SPLITS, "DailyDialog")
    path, tried = locate_file(f"dailydialog/dialogues_{name}.txt", data_dir)
    if path is not None:
        return _build_split(name, (_parse_line(line) for line in read_lines(path)), str(path))
    if (named := explicit_data_dir(data_dir)) is not None:
        raise DataNotFoundError(f"DailyDialog {name} not found: {missing_from(named, tried[0])}")
    try:
        rows = _dialogues_from_hub(name)
    except Exception as error:  # whatever stops the Hub (no datasets, no network) is one more place tried
        tried.append(f"Hub {HUB_ID}@{HUB_REVISION} split {name} ({hub_failure(error)})")
        raise DataNotFoundError(f"DailyDialog {name} not found; tried: {'; '.join(tried)}") from error
    return _build_split(name, (_clean(row) for row in rows), f"hf://datasets/{HUB_ID}@{HUB_REVISION}/{name}")


def _dialogues_from_hub(split: str) -> list[list[str]]:
    import datasets  # imported here: only this fallback needs it, and the GPU machine doesn't have it

    return datasets.load_dataset(HUB_ID, revision=HUB_REVISION, split=split)["dialog"]


def _frame(tokenizer: Tokenizer, utterances: Sequence[str]) -> tuple[list[int], list[int], SpecialIds]:
    """Ids and mask of end_of_text plus every turn, without the closing token."""
    special = special_ids(tokenizer)
    ids, mask = [special.end_of_text], [0]
    # The leading space gives an utterance's first word the same token it gets inside a sentence (byte-level BPE).
    encodings = tokenizer.encode_batch([" " + utterance for utterance in utterances], add_special_tokens=False)
    for k, encoding in enumerate(encodings):
        scored = int(k >= 1)
        ids += [special.speaker_1 if k % 2 == 0 else special.speaker_2, *encoding.ids, special.end_of_turn]
        mask += [0] + [scored] * (len(encoding.ids) + 1)
    return ids, mask, special


def encode_dialogue(tokenizer: Tokenizer, utterances: Sequence[str]) -> tuple[list[int], list[int]]:
    """(ids, response_mask) of one dialogue in the layout of the module docstring."""
    if not utterances:
        raise ValueError("a dialogue needs at least one utterance")
    ids, mask, special = _frame(tokenizer, utterances)
    return ids + [special.end_of_text], mask + [0]


def format_prompt(tokenizer: Tokenizer, turns: Sequence[str]) -> list[int]:
    """Ids of the conversation so far, ending with the next speaker's token so that a model writes the reply."""
    turns = [turn.strip() for turn in turns]
    if not any(turns):
        raise ValueError("empty prompt")
    if not all(turns):
        raise ValueError(f"turn {turns.index('')} of the prompt is empty")
    ids, _, special = _frame(tokenizer, turns)
    return ids + [special.speaker_1 if len(turns) % 2 == 0 else special.speaker_2]
