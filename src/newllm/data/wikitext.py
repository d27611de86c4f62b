"""WikiText-2 splits: lines read from local files (else the Hugging Face Hub), encoded as one id stream.

The data directory is `data_dir` (--data-dir) or else $NEWLLM_DATA_DIR where one is given, and
nothing else then (a typo must not fall back to other data); otherwise ./data, ../shared/data
(relative to the working directory) and the Hub are tried in that order. It holds ``wikitext-2/wiki.{train,valid,test}.tokens``
and ``wikitext-2-raw/wiki.{train,valid,test}.raw``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from newllm.data.errors import DataFormatError, DataNotFoundError
from newllm.data.tokenizer import special_ids

DATA_DIR_ENV = "NEWLLM_DATA_DIR"
HUB_ID = "Salesforce/wikitext"

_SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
_HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
# variant -> (folder, file suffix, Hub config)
_VARIANTS = {
    "tokens": ("wikitext-2", "tokens", "wikitext-2-v1"),
    "raw": ("wikitext-2-raw", "raw", "wikitext-2-raw-v1"),
}


@dataclass(frozen=True)
class TextSplit:
    """One split of a text corpus, line by line, each line with its "\\n" exactly as in the file."""

    name: str
    lines: tuple[str, ...]
    source: str

    @property
    def n_words(self) -> int:
        """Whitespace tokens plus one end-of-line per line, the count that word-level perplexity divides by."""
        return sum(len(line.split()) for line in self.lines) + len(self.lines)

    @property
    def n_bytes(self) -> int:
        """UTF-8 bytes of the text, the count that bits per byte divides by."""
        return sum(len(line.encode("utf-8")) for line in self.lines)

    def head(self, n_lines: int) -> TextSplit:
        """The first `n_lines` lines, for quick presets."""
        if n_lines < 0:
            raise ValueError(f"n_lines must be >= 0, got {n_lines}")
        return TextSplit(self.name, self.lines[:n_lines], f"{self.source} (first {n_lines} lines)")


def explicit_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data directory the user named: `data_dir` (--data-dir), else $NEWLLM_DATA_DIR; None if neither."""
    named = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    return Path(named).expanduser() if named is not None else None


def _places(data_dir: str | os.PathLike | None) -> list[tuple[Path | None, str]]:
    """Candidate data directories in search order, each with how it was chosen; None if unset."""
    explicit = explicit_data_dir(data_dir)
    if explicit is not None:
        # A folder the user named is the only place looked at: falling back elsewhere would hide a typo.
        return [(explicit, "--data-dir" if data_dir is not None else f"${DATA_DIR_ENV}")]
    places: list[tuple[Path | None, str]] = [(None, f"${DATA_DIR_ENV}")]
    cwd = Path.cwd()
    places.append((cwd / "data", "./data"))
    places.append((cwd.parent / "shared" / "data", "../shared/data"))
    return places


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The named directory (`data_dir`, else $NEWLLM_DATA_DIR) if it exists, None if it does not; when none is
    named, the first existing of ./data and ../shared/data, else None."""
    for path, _ in _places(data_dir):
        if path is not None and path.is_dir():
            return path
    return None


def locate_file(relative: str, data_dir: str | os.PathLike | None = None) -> tuple[Path | None, list[str]]:
    """The first data directory's `relative` file that exists (else None), and one note per place tried before it."""
    # Every directory is tried, not only find_data_dir's, so that an unrelated ./data cannot hide ../shared/data.
    tried = []
    for directory, origin in _places(data_dir):
        if directory is None:
            tried.append(f"{origin} (not set)")
            continue
        path = directory / relative
        if path.is_file():
            return path, tried
        tried.append(f"{path} ({origin})")
    return None, tried


def missing_from(data_dir: str | os.PathLike, tried: str) -> str:
    """Why an explicit data directory lacks a file: the directory itself is missing, or only the file is."""
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        return f"the data directory {directory} does not exist; tried {tried}"
    return f"no {tried}"


def read_lines(path: Path) -> tuple[str, ...]:
    """The lines of a UTF-8 text file, each keeping its "\\n"; DataFormatError if it is empty or not UTF-8."""
    data = path.read_bytes()
    if not data:
        raise DataFormatError(f"{path} is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path} is not UTF-8 (invalid byte at offset {error.start})") from None
    # Split on "\n" only: str.splitlines would also split on \r, \x0b and \u2028, and change the line counts.
    *complete, last = text.split("\n")
    return tuple(line + "\n" for line in complete) + ((last,) if last else ())


def hub_failure(error: BaseException) -> str:
    """Why a Hub fallback failed, in a few words for an error message."""
    if isinstance(error, ModuleNotFoundError) and error.name == "datasets":
        return "datasets not installed"
    first_line = (str(error).strip().splitlines() or ["no message"])[0]
    return f"{type(error).__name__}: {first_line}"


def canonical_split(split: str, aliases: dict[str, str], what: str) -> str:
    """The canonical name of `split`, or ValueError listing the accepted names."""
    if split not in aliases:
        raise ValueError(f"unknown {what} split {split!r}; expected one of {', '.join(aliases)}")
    return aliases[split]


def load_wikitext(split: str, variant: str = "tokens", data_dir: str | os.PathLike | None = None) -> TextSplit:
    """Read a WikiText-2 split ("train", "valid"/"validation", "test") of `variant` "tokens" or "raw"."""
    name = canonical_split(split, _SPLITS, "WikiText-2")
    if variant not in _VARIANTS:
        raise ValueError(f"unknown WikiText-2 variant {variant!r}; expected 'tokens' or 'raw'")
    folder, suffix, config = _VARIANTS[variant]
    path, tried = locate_file(f"{folder}/wiki.{name}.{suffix}", data_dir)
    if path is not None:
        return TextSplit(name, read_lines(path), str(path))
    if (named := explicit_data_dir(data_dir)) is not None:
        raise DataNotFoundError(f"WikiText-2 {name} ({variant}) not found: {missing_from(named, tried[0])}")
    hub_split = _HUB_SPLITS[name]
    try:
        lines = _lines_from_hub(config, hub_split)
    except Exception as error:  # whatever stops the Hub (no datasets, no network) is one more place tried
        tried.append(f"Hub {HUB_ID} {config} split {hub_split} ({hub_failure(error)})")
        raise DataNotFoundError(f"WikiText-2 {name} ({variant}) not found; tried: {'; '.join(tried)}") from error
    return TextSplit(name, lines, f"hf://datasets/{HUB_ID}/{config}/{hub_split}")


def _lines_from_hub(config: str, split: str) -> tuple[str, ...]:
    import datasets  # imported here: only this fallback needs it, and the GPU machine doesn't have it

    rows = datasets.load_dataset(HUB_ID, config, split=split)["text"]
    # The Hub copy stores the original blank line " \n" as an empty row; other rows keep their "\n".
    return tuple(" \n" if not row else row if row.endswith("\n") else row + "\n" for row in rows)


def encode_text(tokenizer: Tokenizer, split: TextSplit) -> torch.Tensor:
    """One int64 stream: end_of_text, then the ids of every line in order, each line encoded with its "\\n"."""
    start = special_ids(tokenizer).end_of_text
    # Encoding line by line keeps a line's ids independent of its neighbours, so the stream of
    # split.head(n) is a prefix of the stream of split.
    encodings = tokenizer.encode_batch(list(split.lines), add_special_tokens=False)
    return torch.tensor([start, *itertools.chain.from_iterable(e.ids for e in encodings)], dtype=torch.long)
