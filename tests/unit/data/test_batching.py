"""Windows over streams and dialogues, and collate's padding."""

from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from newllm.data import DialogWindows, StreamWindows, collate, count_targets, encode_dialogue, special_ids
from newllm.data.batching import LengthGroupedSampler


def scored(item):
    """The tokens an item scores: labels shifted by one, as the models do inside."""
    return item["labels"][1:].tolist()


@settings(max_examples=200, deadline=None)
@given(n_tokens=st.integers(2, 120), block_size=st.integers(1, 20), drop_last=st.booleans())
def test_every_token_after_the_first_is_a_target_exactly_once(n_tokens, block_size, drop_last):
    # Distinct token values, so a target seen twice or skipped shows up in the list.
    stream = torch.arange(100, 100 + n_tokens)
    if drop_last and n_tokens - 1 < block_size:
        with pytest.raises(ValueError, match=f"^wiki.train.tokens holds {n_tokens} tokens, fewer than one window of {block_size + 1} "):
            StreamWindows(stream, block_size, drop_last=True, source="wiki.train.tokens")
        return
    windows = StreamWindows(stream, block_size, drop_last=drop_last)
    items = [windows[i] for i in range(len(windows))]
    targets = [token for item in items for token in scored(item)]
    if drop_last:
        assert all(len(item["input_ids"]) == block_size + 1 for item in items)
        # Only a remainder shorter than one block may go unscored.
        assert targets == stream[1 : 1 + len(targets)].tolist()
        assert 0 <= (n_tokens - 1) - len(targets) < block_size
    else:
        assert targets == stream[1:].tolist()
        assert all(2 <= len(item["input_ids"]) <= block_size + 1 for item in items)
    for before, after in zip(items, items[1:]):
        assert before["input_ids"][-1] == after["input_ids"][0]
    assert items[0]["input_ids"][0] == stream[0]
    assert count_targets(windows) == len(targets)


def test_drop_last_drops_only_the_short_final_window():
    stream = torch.arange(10)  # 9 targets in blocks of 4: two full windows and one of a single target
    assert [w["input_ids"].tolist() for w in StreamWindows(stream, 4)] == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]]
    assert [w["input_ids"].tolist() for w in StreamWindows(stream, 4, drop_last=False)][-1] == [8, 9]


def test_items_are_labels_equal_to_inputs_and_do_not_alias_the_stream():
    stream = torch.arange(20)
    windows = StreamWindows(stream, 5)
    item = windows[1]
    assert torch.equal(item["input_ids"], item["labels"]) and item["input_ids"].dtype == torch.long
    item["labels"][:] = -100
    assert torch.equal(windows[1]["input_ids"], torch.arange(5, 11))
    with pytest.raises(IndexError):
        windows[len(windows)]


@pytest.mark.parametrize(
    "stream, block_size, message",
    [
        (torch.arange(12).reshape(3, 4), 2, "1-D integer tensor"),
        (torch.rand(10), 2, "1-D integer tensor"),
        (torch.arange(10), 0, "block_size must be >= 1"),
        (torch.arange(1), 4, "^the stream holds 1 token\\(s\\): nothing to score \\(a window needs 2\\)$"),
    ],
)
def test_stream_windows_reject_bad_input(stream, block_size, message):
    with pytest.raises(ValueError, match=message):
        StreamWindows(stream, block_size, drop_last=False)


def test_stream_windows_work_with_a_data_loader():
    windows = StreamWindows(torch.arange(41), 8)
    batches = list(DataLoader(windows, batch_size=3, collate_fn=partial(collate, pad_id=0)))
    assert [b["input_ids"].shape for b in batches] == [(3, 9), (2, 9)]
    assert torch.cat([b["input_ids"] for b in batches]).flatten().unique().tolist() == list(range(41))


@pytest.fixture
def encoded(tiny_tokenizer, tiny_dialogues):
    return [encode_dialogue(tiny_tokenizer, utterances) for utterances in tiny_dialogues]


def test_dialog_windows_hold_whole_dialogues_when_they_fit(encoded):
    windows = DialogWindows(encoded, block_size=max(len(ids) for ids, _ in encoded))
    assert len(windows) == len(encoded)
    for item, (ids, mask) in zip(windows, encoded):
        assert item["input_ids"].tolist() == ids == item["labels"].tolist()
        assert item["response_mask"].tolist() == mask


@pytest.mark.parametrize("block_size", [1, 3, 7, 16])
def test_long_dialogues_are_cut_without_crossing_dialogues(encoded, block_size):
    windows = DialogWindows(encoded, block_size)
    items = iter(windows)
    for ids, mask in encoded:
        # Rebuild this dialogue from its windows: each window repeats the previous one's last token.
        first = next(items)
        rebuilt_ids, rebuilt_mask = first["input_ids"].tolist(), first["response_mask"].tolist()
        while len(rebuilt_ids) < len(ids):
            item = next(items)
            assert len(item["input_ids"]) <= block_size + 1
            assert item["input_ids"][0] == rebuilt_ids[-1]
            rebuilt_ids += item["input_ids"][1:].tolist()
            rebuilt_mask += item["response_mask"][1:].tolist()
        assert (rebuilt_ids, rebuilt_mask) == (ids, mask)
    assert next(items, None) is None
    assert count_targets(windows) == sum(len(ids) - 1 for ids, _ in encoded)


def test_dialog_windows_reject_bad_input():
    with pytest.raises(ValueError, match="dialogue 1 has 3 ids but 2 mask entries"):
        DialogWindows([([1, 2], [0, 0]), ([1, 2, 3], [0, 1])], block_size=4)
    with pytest.raises(ValueError, match="dialogue 0 has 1 token"):
        DialogWindows([([1], [0])], block_size=4)


def test_collate_right_pads(tiny_tokenizer, encoded):
    pad = special_ids(tiny_tokenizer).pad
    items = list(DialogWindows(encoded, block_size=64))
    lengths = [len(item["input_ids"]) for item in items]
    batch = collate(items, pad_id=pad, keep_response_mask=True)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "response_mask"}
    assert all(t.shape == (len(items), max(lengths)) and t.dtype == torch.long for t in batch.values())
    for row, (item, n) in enumerate(zip(items, lengths)):
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"])
        assert torch.equal(batch["labels"][row, :n], item["labels"])
        assert torch.equal(batch["response_mask"][row, :n], item["response_mask"])
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["input_ids"][row, n:] == pad).all()
        assert (batch["labels"][row, n:] == -100).all()
        assert (batch["response_mask"][row, n:] == 0).all()
    assert "response_mask" not in collate(items, pad_id=pad)


def test_collate_rejects_empty_batches_and_missing_masks():
    with pytest.raises(ValueError, match="empty batch"):
        collate([], pad_id=0)
    with pytest.raises(ValueError, match="no response_mask"):
        collate([StreamWindows(torch.arange(5), 4)[0]], pad_id=0, keep_response_mask=True)


def test_stream_lanes_batches_continue_each_row_and_read_every_token_once():
    from newllm.data.batching import StreamLanes

    stream = torch.arange(103)  # 4 lanes of 25 tokens (3 dropped), 4 windows of 6 per lane (1 left over)
    lanes = StreamLanes(stream, block_size=5, lanes=4)
    assert (len(lanes), lanes.windows_per_lane) == (16, 4)
    batches = [torch.stack([lanes[k * 4 + r]["input_ids"] for r in range(4)]) for k in range(4)]
    for r in range(4):
        row = torch.cat([batch[r] for batch in batches])  # row r of consecutive batches: lane r, in order
        torch.testing.assert_close(row, torch.arange(r * 25, r * 25 + 24))
    assert lanes[5]["labels"].equal(lanes[5]["input_ids"])


def test_rotating_stream_lanes_cut_the_stream_anew_each_epoch():
    from newllm.data.batching import StreamLanes

    stream = torch.arange(103)
    fixed, rotating = StreamLanes(stream, 5, 4), StreamLanes(stream, 5, 4, rotation_seed=7)
    fixed.start_epoch(1)
    assert fixed.offset == 0 and fixed[0]["input_ids"].equal(torch.arange(6))  # no seed: the same every epoch
    offsets = []
    for epoch in (0, 1, 2, 1):
        rotating.start_epoch(epoch)
        offsets.append(rotating.offset)
        rolled = torch.roll(stream, -rotating.offset)
        for r in range(4):  # lane r, window k is the rotated stream's [r * 25 + 6k, ... + 6)
            for k in range(4):
                assert rotating[k * 4 + r]["input_ids"].equal(rolled[r * 25 + 6 * k : r * 25 + 6 * k + 6])
    assert offsets[1] == offsets[3]  # drawn from (seed, epoch): a resumed epoch cuts the same lanes
    assert len(set(offsets[:3])) == 3 and len(rotating) == 16


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_size=5, lanes=0), "lanes must be a positive integer"),
    (dict(block_size=30, lanes=4), "^the stream holds 100 tokens, fewer than 4 lanes \\(one per batch row\\) of one 31-token window each \\(124\\)"),
    (dict(block_size=0, lanes=2), "block_size must be >= 1"),
])  # fmt: skip
def test_stream_lanes_rejects_bad_shapes(kwargs, message):
    from newllm.data.batching import StreamLanes

    with pytest.raises(ValueError, match=message):
        StreamLanes(torch.arange(100), **kwargs)


def test_dialog_windows_give_each_items_length(encoded):
    windows = DialogWindows(encoded, block_size=5)
    assert windows.lengths == [len(item["input_ids"]) for item in windows]


def test_collate_pads_up_to_a_multiple_at_most_to_the_window():
    items = [{"input_ids": torch.arange(n), "labels": torch.arange(n)} for n in (3, 5)]
    assert collate(items, pad_id=0)["input_ids"].shape == (2, 5)
    assert collate(items, pad_id=0, pad_to_multiple_of=4)["input_ids"].shape == (2, 8)
    padded = collate(items, pad_id=0, pad_to_multiple_of=4, max_length=6)
    assert padded["input_ids"].shape == (2, 6)
    assert padded["labels"][1, 5:].tolist() == [-100] and padded["attention_mask"].sum().item() == 8
    # never narrower than the longest item, whatever max_length says
    assert collate(items, pad_id=0, pad_to_multiple_of=4, max_length=2)["input_ids"].shape == (2, 5)


def _padded_steps(order, lengths, batch):
    """Positions a padded batch steps through, summed over the epoch's batches (a recurrent model's cost)."""
    return sum(max(lengths[i] for i in order[k : k + batch]) for k in range(0, len(order), batch))


def test_length_grouped_batches_cover_every_item_once_and_pad_less_than_random_ones():
    lengths = torch.randint(2, 258, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(2000)) and len(sampler) == 2000
    random_order = torch.randperm(2000, generator=torch.Generator().manual_seed(3)).tolist()
    assert _padded_steps(order, lengths, 32) < 0.7 * _padded_steps(random_order, lengths, 32)
    second = [lengths[i] for i in order[32:64]]  # inside a batch the lengths are close: sorted megabatches
    assert max(second) - min(second) < 20


def test_length_grouped_order_depends_on_seed_and_epoch_alone():
    lengths = list(range(2, 300))
    a, b = LengthGroupedSampler(lengths, 8, seed=1), LengthGroupedSampler(lengths, 8, seed=1)
    torch.manual_seed(123)  # the global random state plays no part (a resumed run has another)
    first = list(a)
    torch.manual_seed(456)
    assert list(b) == first
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(LengthGroupedSampler(lengths, 8, seed=2)) != first
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        LengthGroupedSampler(lengths, 0)
