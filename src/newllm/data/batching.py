"""Windows over encoded text and dialogues, and the collate function that pads them into batches."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import Dataset, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from newllm.data.errors import DataFormatError

# torch's cross-entropy ignores this label by default, and so do the Hugging Face models.
IGNORE_INDEX = -100


def _window_starts(n_tokens: int, block_size: int, drop_last: bool) -> range:
    """Start offsets of windows of block_size + 1 tokens that overlap by one token."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    # Tokens 1 … n-1 are targets. Window w scores targets w·B+1 … w·B+B.
    n_targets = max(n_tokens - 1, 0)
    n_windows = n_targets // block_size if drop_last else -(-n_targets // block_size)
    return range(0, n_windows * block_size, block_size)


class StreamWindows(Dataset):
    """Consecutive windows over one token stream (WikiText), scoring every token after the first exactly once."""

    # block_size = 4, stream t0 … t9:
    #
    #   stream   t0 t1 t2 t3 t4 t5 t6 t7 t8 t9
    #   item 0   t0 t1 t2 t3 t4
    #   item 1               t4 t5 t6 t7 t8
    #   item 2                           t8 t9       (only with drop_last=False)
    #
    # An item is block_size + 1 tokens and models shift labels inside, so item 0 scores t1 … t4 and
    # item 1 scores t5 … t8. The shared token t4 is scored once, as item 0's last target, and then
    # used once more as item 1's first input. Read in order, the items cover the whole stream, which is what stateful
    # evaluation needs in order to carry its state from one window to the next.

    def __init__(self, stream: torch.Tensor, block_size: int, drop_last: bool = True, source: str = "the stream"):
        """`source`: where the stream comes from (a file), named when it is too short for one window."""
        stream = torch.as_tensor(stream)
        if stream.dim() != 1 or stream.is_floating_point() or stream.is_complex():
            raise ValueError(f"stream must be a 1-D integer tensor, got {stream.dtype} of shape {tuple(stream.shape)}")
        self.stream = stream.long()
        self.block_size = block_size
        self.drop_last = drop_last
        self._starts = _window_starts(len(stream), block_size, drop_last)
        if not self._starts:
            if drop_last:
                raise DataFormatError(
                    f"{source} holds {len(stream)} tokens, fewer than one window of {block_size + 1} "
                    f"(block size {block_size} + 1): use more text or a smaller block size"
                )
            raise DataFormatError(f"{source} holds {len(stream)} token(s): nothing to score (a window needs 2)")

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = self._starts[index]
        # A copy, so that nothing a caller does to an item can edit the stream.
        window = self.stream[start : start + self.block_size + 1].clone()
        return {"input_ids": window, "labels": window}


class StreamLanes(Dataset):
    """Windows of `lanes` parallel parts of one stream, in the order stateful training (TBPTT) reads them.

    The stream is cut into `lanes` contiguous parts of equal length (pytorch/examples
    word_language_model's `batchify`), and each part into back-to-back windows of block_size + 1
    tokens that do not overlap. Item i is window i // lanes of lane i % lanes, so read in order with
    batch size == lanes, batch k holds window k of every lane and row r of batch k + 1 continues row
    r of batch k. A model that carries its state from batch to batch has then read every token of
    its lane exactly once. Each window scores its own block_size targets; the first token of the next
    window is read but not scored (one target in block_size + 1 goes unscored).

    With `rotation_seed`, `start_epoch(epoch)` first rotates the stream by a random offset drawn from
    (seed, epoch): each epoch then cuts the lanes and windows at other places, so the batches are not
    the same every epoch (the stream's end joins its start once, inside one lane).
    """

    def __init__(
        self, stream: torch.Tensor, block_size: int, lanes: int, rotation_seed: int | None = None, source: str = "the stream"
    ):
        stream = torch.as_tensor(stream)
        if stream.dim() != 1 or stream.is_floating_point() or stream.is_complex():
            raise ValueError(f"stream must be a 1-D integer tensor, got {stream.dtype} of shape {tuple(stream.shape)}")
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, got {lanes!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.lanes = lanes
        self.block_size = block_size
        self.rotation_seed = rotation_seed
        self._stream = stream.long()
        self._lane_length = len(stream) // lanes
        self.windows_per_lane = self._lane_length // (block_size + 1)
        if self.windows_per_lane == 0:
            raise DataFormatError(
                f"{source} holds {len(stream)} tokens, fewer than {lanes} lanes (one per batch row) of one "
                f"{block_size + 1}-token window each ({lanes * (block_size + 1)}): use more text, a smaller block size or batch size"
            )
        self.offset = 0
        self._cut(self._stream)

    def _cut(self, stream: torch.Tensor) -> None:
        used = self.windows_per_lane * (self.block_size + 1)
        # (lanes, windows, block_size + 1): lane r is stream[r · lane_length :][:used]
        self._windows = stream[: self.lanes * self._lane_length].view(self.lanes, self._lane_length)[:, :used].reshape(
            self.lanes, self.windows_per_lane, self.block_size + 1
        )

    def start_epoch(self, epoch: int) -> None:
        """Before epoch `epoch` (0-based): with a rotation seed, cut the lanes at a new random offset."""
        if self.rotation_seed is None:
            return
        generator = torch.Generator().manual_seed(self.rotation_seed * 1_000_003 + epoch)
        self.offset = int(torch.randint(len(self._stream), (1,), generator=generator))
        self._cut(torch.roll(self._stream, -self.offset))

    def __len__(self) -> int:
        return self.lanes * self.windows_per_lane

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        window = self._windows[index % self.lanes, index // self.lanes].clone()
        return {"input_ids": window, "labels": window}


class DialogWindows(Dataset):
    """Whole dialogues (DailyDialog); one longer than block_size + 1 tokens is cut like StreamWindows, end kept."""

    def __init__(self, encoded: list[tuple[list[int], list[int]]], block_size: int):
        spans = []
        offset = 0
        for i, (ids, mask) in enumerate(encoded):
            if len(ids) != len(mask):
                raise ValueError(f"dialogue {i} has {len(ids)} ids but {len(mask)} mask entries")
            if len(ids) < 2:
                raise ValueError(f"dialogue {i} has {len(ids)} token(s); scoring one needs two")
            spans += [
                (offset + start, offset + min(start + block_size + 1, len(ids)))
                for start in _window_starts(len(ids), block_size, drop_last=False)
            ]
            offset += len(ids)
        if not spans:
            raise ValueError("no dialogues to window")
        # One flat tensor for all dialogues instead of one small tensor per dialogue, to save memory.
        self._ids = torch.tensor(list(itertools.chain.from_iterable(ids for ids, _ in encoded)), dtype=torch.long)
        self._mask = torch.tensor(list(itertools.chain.from_iterable(mask for _, mask in encoded)), dtype=torch.long)
        self._spans = spans
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self._spans)

    @property
    def lengths(self) -> list[int]:
        """Tokens of each item, in item order (what TrainConfig.group_by_length groups batches by)."""
        return [stop - start for start, stop in self._spans]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start, stop = self._spans[index]
        window = self._ids[start:stop].clone()
        # response_mask[j] refers to token j; after the shift inside the model it weighs the prediction made at j - 1.
        return {"input_ids": window, "labels": window, "response_mask": self._mask[start:stop].clone()}


class LengthGroupedSampler(Sampler[int]):
    """Every item once per epoch, in batches of similar length: transformers' get_length_grouped_indices (a
    random permutation cut into megabatches of up to 50 batches, each sorted by length, the longest batch
    first), drawn from (seed, epoch) alone.

    transformers' own LengthGroupedSampler draws from the global random state when an epoch starts, and a
    run resumed in the middle of an epoch restores that state as it was at the checkpoint, not at the
    epoch's start: it would read other batches (tests/unit/training/test_resume.py). The Trainer calls
    set_epoch at the start of every epoch.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def collate(
    batch: list[dict],
    pad_id: int,
    keep_response_mask: bool = False,
    pad_to_multiple_of: int | None = None,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad items to the longest: input_ids with pad_id, labels with -100, attention_mask 1 on real tokens.

    pad_to_multiple_of rounds the width up (at most to max_length, never below the longest item), so
    that batches of many lengths come in few shapes: the CUDA-graphed scan captures one graph per shape.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    if keep_response_mask and any("response_mask" not in item for item in batch):
        raise ValueError("keep_response_mask=True but an item has no response_mask (DialogWindows provides it)")
    width = max(len(item["input_ids"]) for item in batch)
    if pad_to_multiple_of:
        rounded = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        width = max(width, min(rounded, max_length)) if max_length else rounded
    shape = (len(batch), width)
    out = {
        "input_ids": torch.full(shape, pad_id, dtype=torch.long),
        "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros(shape, dtype=torch.long),
    }
    if keep_response_mask:
        out["response_mask"] = torch.zeros(shape, dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        out["input_ids"][row, :n] = item["input_ids"]
        out["labels"][row, :n] = item["labels"]
        out["attention_mask"][row, :n] = 1
        if keep_response_mask:
            out["response_mask"][row, :n] = item["response_mask"]
    return out


def count_targets(dataset: Dataset) -> int:
    """Label positions that are scored: the sum over items of their length minus one."""
    return sum(len(dataset[i]["input_ids"]) - 1 for i in range(len(dataset)))
