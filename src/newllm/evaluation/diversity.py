"""Lexical diversity of a set of replies: distinct-1/2 (Li et al. 2016, arXiv:1510.03055, section 4.1).

Words are the whitespace tokens of a reply after `clean_turn` (control characters as spaces),
lower-cased. DailyDialog writes punctuation as separate tokens ("Fine , thanks ."), and the models'
replies decode to the same layout, so "," and "." count as words in both.

distinct-n = |distinct n-grams| / |n-grams|, both over all replies together; n-grams are taken
within a reply, never across two. A set of replies with no n-gram (all shorter than n words) has
no distinct-n: None, not 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from newllm.evaluation.generation import clean_turn


@dataclass(frozen=True)
class DiversityResult:
    """distinct-1/2 over all replies, mean words per reply, how many replies and how many were empty."""

    distinct_1: float | None
    distinct_2: float | None
    mean_words: float | None
    n: int
    empty: int


def reply_words(reply: str) -> list[str]:
    """The words distinct-n counts in one reply: cleaned, lower-cased, split on whitespace."""
    return clean_turn(reply).lower().split()


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(replies: Sequence[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams over `replies` (n-grams within a reply); None when there is none."""
    if isinstance(replies, str) or not isinstance(replies, Sequence):
        raise TypeError(f"replies must be a list of str, got {type(replies).__name__}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    grams = [gram for reply in replies for gram in _ngrams(reply_words(reply), n)]
    return len(set(grams)) / len(grams) if grams else None


def measure_diversity(replies: Sequence[str]) -> DiversityResult:
    """distinct-1, distinct-2 and length of `replies`; an empty reply counts as 0 words."""
    if isinstance(replies, str) or not isinstance(replies, Sequence):
        raise TypeError(f"replies must be a list of str, got {type(replies).__name__}")
    lengths = [len(reply_words(reply)) for reply in replies]
    return DiversityResult(
        distinct_1=distinct_n(replies, 1),
        distinct_2=distinct_n(replies, 2),
        mean_words=sum(lengths) / len(lengths) if lengths else None,
        n=len(replies),
        empty=lengths.count(0),
    )
