"""Data layer: tokenizers, WikiText-2 and DailyDialog loading, and batching; imports nothing else from newllm."""

from newllm.data.batching import DialogWindows, StreamWindows, collate, count_targets
from newllm.data.dailydialog import DialogSplit, encode_dialogue, format_prompt, load_dailydialog
from newllm.data.errors import DataFormatError, DataNotFoundError, TokenizerMismatchError
from newllm.data.tokenizer import (
    END_OF_TEXT,
    END_OF_TURN,
    SPEAKER_1,
    SPEAKER_2,
    SpecialIds,
    check_same_tokenizer,
    describe_tokenizer,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    tokenizer_fingerprint,
    train_tokenizer,
)
from newllm.data.wikitext import TextSplit, encode_text, find_data_dir, load_wikitext

__all__ = [
    "END_OF_TEXT",
    "END_OF_TURN",
    "SPEAKER_1",
    "SPEAKER_2",
    "DataFormatError",
    "DataNotFoundError",
    "DialogSplit",
    "DialogWindows",
    "SpecialIds",
    "StreamWindows",
    "TextSplit",
    "TokenizerMismatchError",
    "check_same_tokenizer",
    "collate",
    "count_targets",
    "describe_tokenizer",
    "encode_dialogue",
    "encode_text",
    "find_data_dir",
    "format_prompt",
    "load_dailydialog",
    "load_tokenizer",
    "load_wikitext",
    "save_tokenizer",
    "special_ids",
    "tokenizer_fingerprint",
    "train_tokenizer",
]
