"""How a training stage pads its batches: to the longest item, or, grouped by length, in LENGTH_BUCKET steps."""

import torch

from newllm.config import TrainConfig
from newllm.data import DialogWindows
from newllm.pipeline.stage import LENGTH_BUCKET, stage_collator


def test_grouped_batches_are_padded_in_buckets_up_to_the_window():
    windows = DialogWindows([(list(range(n)), [1] * n) for n in (3, 40, 100)], block_size=64)
    assert windows.lengths == [3, 40, 65, 36]  # the 100-token dialogue is cut into two windows
    plain = stage_collator(TrainConfig(), pad_id=0, train_dataset=windows)
    grouped = stage_collator(TrainConfig(group_by_length=True), pad_id=0, train_dataset=windows)
    assert plain([windows[0]])["input_ids"].shape == (1, 3)
    assert grouped([windows[0]])["input_ids"].shape == (1, LENGTH_BUCKET)
    assert grouped([windows[0], windows[1]])["input_ids"].shape == (2, 2 * LENGTH_BUCKET)
    assert grouped([windows[2]])["input_ids"].shape == (1, 65)  # capped at the window: 64 + 1 tokens
    batch = grouped([windows[0], windows[3]])
    assert batch["attention_mask"].sum().item() == 39 and (batch["labels"] != -100).sum().item() == 39
    assert torch.equal(batch["input_ids"][1, :36], windows[3]["input_ids"])
