"""benchmarks/dialog_batches.py: the steps and shapes it counts are those of the batches training makes."""

from newllm.config import TrainConfig
from newllm.data import DialogWindows
from newllm.pipeline.stage import stage_collator

from tests.conftest import load_benchmark


def test_count_sums_the_padded_widths_and_counts_the_shapes():
    script = load_benchmark("dialog_batches")
    windows = DialogWindows([(list(range(n)), [1] * n) for n in (3, 40, 5, 33, 100)], block_size=64)
    assert windows.lengths == [3, 40, 5, 33, 65, 36]
    longest = stage_collator(TrainConfig(), 0, windows)
    bucketed = stage_collator(TrainConfig(group_by_length=True), 0, windows)
    # batches of 2 in this order: (3, 5), (40, 33), (65, 36)
    order = [0, 2, 1, 3, 4, 5]
    assert script.count(windows, order, 2, longest) == (5 + 40 + 65, 3)
    assert script.count(windows, order, 2, bucketed) == (32 + 64 + 65, 3)
    assert script.count(windows, [0, 1, 2, 3, 4, 5], 3, bucketed) == (64 + 65, 2)
