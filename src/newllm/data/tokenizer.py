"""Train, save, load and identify the tokenizers behind every id in newllm.

Two kinds, both stored as one ``tokenizer.json`` and told apart by its model type:

- ``"bpe"`` (default, model ``BPE``): byte-level BPE as in GPT-2, trained on our own text. It is
  lossless, ``decode(encode(s).ids) == s``, for any text that does not spell out a special token.
  ``pad`` is ``<|endoftext|>`` (GPT-2's convention); padded labels are -100, so sharing the id is harmless.
- ``"prototype"`` (model ``WordLevel``; earlier ``"seed"``): the prototype's word-level protocol. Text is lower-cased and split on
  whitespace, and every line end ("\\n") becomes one ``<EOS>`` token. So a WikiText line costs one token
  per whitespace word plus one, the count behind the published word-level figures (test: 245,569).
  The vocabulary has exactly ``vocab_size`` entries. It holds ``<PAD> <UNK> <BOS> <EOS>``, the three
  dialogue tokens, then the training text's most frequent words (ties in code-point order). Other words
  become ``<UNK>``. WikiText's own ``<unk>`` stays an ordinary word, so it is not the same as ``<UNK>``.

A special token written out literally in the text (``<|endoftext|>``) is encoded as that token.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from newllm.data.errors import DataFormatError, TokenizerMismatchError

END_OF_TEXT = "<|endoftext|>"
SPEAKER_1 = "<|speaker1|>"
SPEAKER_2 = "<|speaker2|>"
END_OF_TURN = "<|endofturn|>"

PROTOTYPE_PAD = "<PAD>"
PROTOTYPE_UNK = "<UNK>"
PROTOTYPE_BOS = "<BOS>"
PROTOTYPE_EOS = "<EOS>"

_DIALOGUE_TOKENS = (SPEAKER_1, SPEAKER_2, END_OF_TURN)
_BPE_SPECIALS = (END_OF_TEXT, *_DIALOGUE_TOKENS)
_PROTOTYPE_SPECIALS = (PROTOTYPE_PAD, PROTOTYPE_UNK, PROTOTYPE_BOS, PROTOTYPE_EOS, *_DIALOGUE_TOKENS)
_FILE_NAME = "tokenizer.json"
# The prototype's word-level kind was called "seed"; configs and commands may still say so.
KIND_ALIASES = {"seed": "prototype"}

_NORMALISATION = {
    "bpe": "No normalisation: byte-level BPE over the raw UTF-8 bytes, so decoding returns the exact text.",
    "prototype": "Lower-cased and split on whitespace; each line end is <EOS> and out-of-vocabulary words are <UNK>.",
}


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the tokens that frame texts and dialogues."""

    end_of_text: int
    pad: int
    speaker_1: int
    speaker_2: int
    end_of_turn: int


def train_tokenizer(
    lines: Iterable[str], kind: str = "bpe", vocab_size: int = 8192, source: str = "the text"
) -> Tokenizer:
    """Train a tokenizer of `kind` ("bpe" or "prototype", earlier "seed") with exactly `vocab_size` entries, special
    tokens included; a text too small to give that many is refused, naming `source` (the file it came from)."""
    kind = KIND_ALIASES.get(kind, kind)
    if kind == "bpe":
        return _train_bpe(lines, vocab_size, source)
    if kind == "prototype":
        return _train_prototype(lines, vocab_size, source)
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'bpe' or 'prototype'")


def _train_bpe(lines: Iterable[str], vocab_size: int, source: str) -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    smallest = len(alphabet) + len(_BPE_SPECIALS)
    if vocab_size < smallest:
        raise ValueError(f"bpe vocab_size must be at least {smallest} (256 bytes + 4 special tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # The full byte alphabet, even bytes the text lacks, is what makes any input encodable without <unk>.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_BPE_SPECIALS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    # The trainer stops early, without a word, once the text has no pair left to merge: the model would then be
    # built for fewer entries than the config says, and every run record would disagree with its settings.
    learned = tokenizer.get_vocab_size()
    if learned < vocab_size:
        raise DataFormatError(_too_small(source, "bpe", vocab_size, f"{learned} entries"))
    return tokenizer


def _too_small(source: str, kind: str, vocab_size: int, learned: str) -> str:
    return (
        f"{source} is too small to train a {kind} tokenizer of {vocab_size} entries: it yields {learned}; "
        "use more text or a smaller data.vocab_size"
    )


def _prototype_tokenizer(model: models.WordLevel) -> Tokenizer:
    tokenizer = Tokenizer(model)
    # Lower-case before inserting <EOS>, so that the inserted token keeps its upper-case spelling.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace("\n", f" {PROTOTYPE_EOS} ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def _train_prototype(lines: Iterable[str], vocab_size: int, source: str) -> Tokenizer:
    n_words = vocab_size - len(_PROTOTYPE_SPECIALS)
    if n_words < 1:
        specials = len(_PROTOTYPE_SPECIALS)
        raise ValueError(f"prototype vocab_size must exceed its {specials} special tokens, got {vocab_size}")
    counter = _prototype_tokenizer(models.WordLevel(unk_token=PROTOTYPE_UNK))
    # The trainer counts words with the same normaliser and pre-tokeniser that encoding uses, so the
    # two agree on what a word is. It ranks by count, with ties in code-point order. It is given no
    # special tokens, because it would give any that also occur as words a second id.
    counter.train_from_iterator(lines, trainers.WordLevelTrainer(vocab_size=2**31 - 1, show_progress=False))
    ranked = sorted(counter.get_vocab().items(), key=lambda item: item[1])
    words = [word for word, _ in ranked if word not in _PROTOTYPE_SPECIALS][:n_words]
    if len(words) < n_words:
        learned = f"{len(words) + len(_PROTOTYPE_SPECIALS)} entries ({len(words)} distinct words, {n_words} needed)"
        raise DataFormatError(_too_small(source, "prototype", vocab_size, learned))
    vocab = {token: i for i, token in enumerate((*_PROTOTYPE_SPECIALS, *words))}
    tokenizer = _prototype_tokenizer(models.WordLevel(vocab=vocab, unk_token=PROTOTYPE_UNK))
    # <UNK> stays an ordinary entry, so that decoding shows where words were lost.
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in _PROTOTYPE_SPECIALS if token != PROTOTYPE_UNK]
    )
    return tokenizer


def _kind(tokenizer: Tokenizer) -> str:
    if isinstance(tokenizer.model, models.WordLevel):
        return "prototype"
    if isinstance(tokenizer.model, models.BPE):
        return "bpe"
    raise ValueError(f"unsupported tokenizer model {type(tokenizer.model).__name__}; newllm uses BPE or WordLevel")


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """Ids of the framing tokens; the prototype kind maps end_of_text to <EOS> and pad to <PAD>."""
    if _kind(tokenizer) == "prototype":
        names = (PROTOTYPE_EOS, PROTOTYPE_PAD, SPEAKER_1, SPEAKER_2, END_OF_TURN)
    else:
        names = (END_OF_TEXT, END_OF_TEXT, SPEAKER_1, SPEAKER_2, END_OF_TURN)
    ids = [tokenizer.token_to_id(name) for name in names]
    missing = sorted({name for name, i in zip(names, ids) if i is None})
    if missing:
        raise ValueError(
            f"tokenizer lacks special token(s) {', '.join(missing)}; train it with newllm.data.train_tokenizer"
        )
    return SpecialIds(*ids)


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 hex digest of the tokenizer's canonical JSON (sorted keys, no spaces, no padding/truncation)."""
    state = json.loads(tokenizer.to_str())
    # Padding and truncation are run-time settings; they don't change what any id means.
    state.pop("padding", None)
    state.pop("truncation", None)
    canonical = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> Path:
    """Write `directory`/tokenizer.json atomically and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _FILE_NAME
    # Write a temporary file beside the target, then rename it. A crash then leaves either the old file or the new one,
    # never half of one.
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".tokenizer.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(tokenizer.to_str(pretty=True))
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only; a checkpoint should be readable like any other file.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load tokenizer.json from a file path or from a directory that contains it."""
    path = Path(path)
    file = path / _FILE_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer file at {file}")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as error:  # tokenizers reports every parse failure as a bare Exception
        reason = (str(error).strip().splitlines() or ["unreadable"])[0]
        raise DataFormatError(f"corrupt tokenizer file {file}: {reason}") from error


def check_same_tokenizer(expected: Tokenizer, actual: Tokenizer, where: str) -> None:
    """Raise TokenizerMismatchError naming `where` unless both tokenizers have the same fingerprint."""
    want, got = tokenizer_fingerprint(expected), tokenizer_fingerprint(actual)
    if want != got:
        raise TokenizerMismatchError(
            f"{where}: tokenizer differs from the expected one (fingerprint {got[:12]} != {want[:12]}, "
            f"vocab {actual.get_vocab_size()} vs {expected.get_vocab_size()})"
        )


def describe_tokenizer(tokenizer: Tokenizer) -> dict:
    """Kind, vocabulary size, fingerprint and a sentence on normalisation, for run records."""
    kind = _kind(tokenizer)
    return {
        "kind": kind,
        "vocab_size": tokenizer.get_vocab_size(),
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "normalisation": _NORMALISATION[kind],
    }
