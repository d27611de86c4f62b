"""The MQAR generator: shapes, determinism, and that every scored label is recallable from the pairs."""

import pytest
import torch

from newllm.data.mqar import FIRST_KEY, IGNORE_INDEX, keyless_accuracy, mqar

VOCAB, PAIRS, SEQ = 64, 6, 40


@pytest.fixture(scope="module")
def batch():
    return mqar(VOCAB, PAIRS, SEQ, examples=50, seed=3)


def test_shapes_and_dtypes(batch):
    assert batch.input_ids.shape == batch.labels.shape == (50, SEQ)
    assert batch.input_ids.dtype == batch.labels.dtype == torch.int64
    assert batch.input_ids.min() >= FIRST_KEY and batch.input_ids.max() < VOCAB


def test_same_seed_same_data_other_seed_other_data(batch):
    again = mqar(VOCAB, PAIRS, SEQ, examples=50, seed=3)
    assert torch.equal(batch.input_ids, again.input_ids) and torch.equal(batch.labels, again.labels)
    other = mqar(VOCAB, PAIRS, SEQ, examples=50, seed=4)
    assert not torch.equal(batch.input_ids, other.input_ids)


def test_keys_and_values_come_from_disjoint_halves(batch):
    pairs = batch.input_ids[:, : 2 * PAIRS]
    assert (pairs[:, 0::2] < VOCAB // 2).all() and (pairs[:, 1::2] >= VOCAB // 2).all()


def test_no_key_repeats_within_the_pairs_and_each_is_queried_once(batch):
    for ids in batch.input_ids:
        keys = ids[0 : 2 * PAIRS : 2].tolist()
        assert len(set(keys)) == PAIRS
        # after the pairs, key-half tokens are the queries: each key exactly once
        queries = [t for t in ids[2 * PAIRS :].tolist() if t < VOCAB // 2]
        assert sorted(queries) == sorted(keys)


def test_every_scored_label_is_the_value_paired_with_the_preceding_key(batch):
    scored = 0
    for ids, labels in zip(batch.input_ids.tolist(), batch.labels.tolist()):
        table = dict(zip(ids[0 : 2 * PAIRS : 2], ids[1 : 2 * PAIRS : 2]))
        for t, label in enumerate(labels):
            if label == IGNORE_INDEX:
                continue
            scored += 1
            assert t > 2 * PAIRS  # answers come after the pairs, right after their query key
            assert label == ids[t] == table[ids[t - 1]]
    assert scored == 50 * PAIRS


def test_uniform_slots_spread_the_queries_and_the_power_law_keeps_them_close():
    # a = 1 is uniform over the slots; Zoology's a = 0.01 favours the slots next to the pairs
    def mean_answer_position(power_a):
        labels = mqar(VOCAB, 2, 64, examples=400, seed=0, power_a=power_a).labels
        return (labels != IGNORE_INDEX).nonzero()[:, 1].float().mean().item()

    assert mean_answer_position(0.01) < mean_answer_position(1.0) - 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
        ({"pairs": 2.5}, "pairs must be a positive integer"),
        ({"examples": 0}, "examples must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"power_a": 0.0}, "power_a must be in (0, 1]"),
        ({"vocab_size": 10}, "fewer than 6 pairs"),
        ({"seq_len": 23}, "seq_len must be at least 4 × pairs = 24"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, message):
    args = {"vocab_size": VOCAB, "pairs": PAIRS, "seq_len": SEQ, "examples": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError) as info:
        mqar(**args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_elimination_is_what_guessing_among_the_values_not_yet_asked_for_scores(batch):
    # from the sequences themselves: at each query, the chance of picking its value among the pair values
    # whose answers have not appeared since the pairs; no key is read
    scores = []
    for ids, labels in zip(batch.input_ids.tolist(), batch.labels.tolist()):
        left = set(ids[1 : 2 * PAIRS : 2])
        for value in (label for label in labels if label != IGNORE_INDEX):
            scores.append(1 / len(left))
            left.discard(value)
    assert sum(scores) / len(scores) == pytest.approx(keyless_accuracy(PAIRS))
    assert keyless_accuracy(1) == 1.0 and keyless_accuracy(2) == 0.75
    assert keyless_accuracy(4) == pytest.approx(25 / 48)


def test_hidden_answers_keep_the_labels_and_show_filler_instead(batch):
    hidden = mqar(VOCAB, PAIRS, SEQ, examples=50, seed=3, hide_answers=True)
    scored = hidden.labels != IGNORE_INDEX
    assert int(scored.sum()) == 50 * PAIRS  # every key still queried once
    # shown: the value sits at its label's position; hidden: a filler token of the value half, rarely the value
    assert torch.equal(batch.input_ids[batch.labels != IGNORE_INDEX], batch.labels[batch.labels != IGNORE_INDEX])
    assert (hidden.input_ids[scored] >= VOCAB // 2).all()
    assert (hidden.input_ids[scored] == hidden.labels[scored]).float().mean() < 0.1
    # the pairs and which key each query asks for are drawn as before; only the rows after the first differ
    shown = mqar(VOCAB, PAIRS, SEQ, examples=1, seed=3)
    first = mqar(VOCAB, PAIRS, SEQ, examples=1, seed=3, hide_answers=True)
    assert torch.equal(shown.labels, first.labels) and torch.equal(shown.input_ids[0, : 2 * PAIRS], first.input_ids[0, : 2 * PAIRS])
    assert keyless_accuracy(PAIRS, hide_answers=True) == pytest.approx(1 / PAIRS)
