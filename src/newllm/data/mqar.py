"""Multi-query associative recall (MQAR): key–value pairs, then queries of the keys; only the answers are scored.

The task of Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models"
(arXiv:2312.04927, section 3). One sequence of `seq_len` tokens with N = `pairs`:

    position   0  1  2  3 … 2N-2 2N-1 | 2N  2N+1 | 2N+2 2N+3 | …
    tokens     k1 v1 k2 v2 …  kN   vN | f   f    | k2   v2   | …     each slot after the pairs holds
    labels     -100 …                 | -100 -100 | -100 v2   | …     a query "k v" or two filler tokens

Every key is queried once, in a random slot; the value that follows a query is its label, so the
model's prediction after reading the key is scored (labels are shifted inside the models, as for text).
Keys come from the lower half of the vocabulary and values from the upper half; the filler from the
value half too, so that any key-half token after the pairs is a scored query. (Zoology's filler is drawn
from the whole vocabulary and puts filler, not the value, after a query; `hide_answers` does the latter.)
Query slots follow Zoology's power law in their distance from the pairs: `power_a` = 1 is uniform, 0.01
(Zoology's default) puts most queries close to the pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

# Token 0 is the tokenizers' pad / end-of-text id; no key, value or filler uses it.
FIRST_KEY = 1
IGNORE_INDEX = -100  # skipped by the models' cross-entropy


class MQARBatch(NamedTuple):
    """(N, T) token ids and their labels: the value at each answer position, -100 elsewhere."""

    input_ids: torch.Tensor
    labels: torch.Tensor


def _check(vocab_size, pairs, seq_len, examples, seed, power_a) -> None:
    for name, value in [("vocab_size", vocab_size), ("pairs", pairs), ("seq_len", seq_len), ("examples", examples)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"MQAR {name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"MQAR seed must be a non-negative integer, got {seed!r}")
    if isinstance(power_a, bool) or not (isinstance(power_a, (int, float)) and 0 < power_a <= 1):
        raise ValueError(f"MQAR power_a must be in (0, 1], got {power_a!r}")
    keys, values = vocab_size // 2 - FIRST_KEY, vocab_size - vocab_size // 2
    if min(keys, values) < pairs:
        raise ValueError(
            f"MQAR vocab_size {vocab_size} has {keys} keys and {values} values, fewer than {pairs} pairs"
        )
    if seq_len < 4 * pairs:
        # the pairs take 2N tokens and the N queries need N two-token slots after them
        raise ValueError(f"MQAR seq_len must be at least 4 × pairs = {4 * pairs}, got {seq_len}")


def keyless_accuracy(pairs: int, hide_answers: bool = False) -> float:
    """The most a model scores that holds which values were given but not which key each belongs to. With the
    answers shown it guesses among the values not yet asked for, so the i-th of N queries is right with
    chance 1/(N-i+1) and the mean is H_N / N (0.75 at 2 pairs, 0.52 at 4); with them hidden, 1/N."""
    if hide_answers:
        return 1 / pairs
    return sum(1 / k for k in range(1, pairs + 1)) / pairs


def mqar(
    vocab_size: int, pairs: int, seq_len: int, examples: int, seed: int, power_a: float = 0.01,
    hide_answers: bool = False,
) -> MQARBatch:
    """`examples` MQAR sequences, the same for the same arguments; train and test sets take different seeds.

    `hide_answers` puts filler after each query instead of its value (the label stays), as Zoology does: a
    shown answer tells every later query which value is taken, so a model can score keyless_accuracy without
    binding a single key to its value."""
    _check(vocab_size, pairs, seq_len, examples, seed, power_a)
    rng = np.random.default_rng(seed)
    half = vocab_size // 2
    context = 2 * pairs
    slots = (seq_len - context) // 2
    # P(slot s) ∝ a · s^(a-1), s = 1 … slots: Zoology's gaps between a pair and its query
    weights = power_a * np.arange(1, slots + 1, dtype=np.float64) ** (power_a - 1)
    weights /= weights.sum()
    # filler everywhere first; pairs and queries are written over it
    ids = rng.integers(half, vocab_size, size=(examples, seq_len), dtype=np.int64)
    labels = np.full((examples, seq_len), IGNORE_INDEX, dtype=np.int64)
    for row in range(examples):
        keys = FIRST_KEY + rng.choice(half - FIRST_KEY, size=pairs, replace=False)
        values = half + rng.choice(vocab_size - half, size=pairs, replace=False)
        ids[row, 0:context:2] = keys
        ids[row, 1:context:2] = values
        # slot s starts at context + 2s; query j of key order[j] goes into slot chosen[j]
        chosen = rng.choice(slots, size=pairs, replace=False, p=weights)
        order = rng.permutation(pairs)
        starts = context + 2 * chosen
        ids[row, starts] = keys[order]
        labels[row, starts + 1] = values[order]
        # filler drawn only when hidden, so the shown-answer sequences stay what they were
        ids[row, starts + 1] = rng.integers(half, vocab_size, size=pairs) if hide_answers else values[order]
    return MQARBatch(torch.from_numpy(ids), torch.from_numpy(labels))
