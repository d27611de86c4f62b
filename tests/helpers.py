"""What several test files share: a data folder holding the tiny corpus, the quick preset's step options
shrunk to fit it, a snapshot of a folder, and a toy dataset that a model learns in a few steps."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from tests.conftest import TINY_DIALOGUES, TINY_TEXT
from tests.unit.models.conftest import VOCAB

# The step commands: quick preset shrunk to the tiny tokenizer; every row below fails before training.
STEP_OPTIONS = [
    "--preset", "quick",
    "--set", "data.vocab_size=300",
    "--set", "data.train_lines=50",
    "--set", "data.eval_lines=20",
    "--set", "data.train_dialogues=10",
    "--set", "data.eval_dialogues=5",
    "--models", "new_llm",
    "--no-progress",
    # the tiny corpus holds 23 WikiText windows and 4 DailyDialog ones: batches that fit them
    "--set", "pretrain.batch_size=4",
    "--set", "finetune.batch_size=2",
]  # fmt: skip

DIALOGUE_TEXT = "".join(" __eou__ ".join(turns) + " __eou__\n" for turns in TINY_DIALOGUES)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every path under `directory` with its (mtime_ns, size); {} when it does not exist."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size) for p in directory.rglob("*")}


def write_data_dir(root: Path, **files: bytes) -> Path:
    """A data dir of the real layout filled with the tiny corpus; `files` (relative path → bytes) replace files."""
    root.mkdir(parents=True, exist_ok=True)
    defaults = {f"wikitext-2/wiki.{s}.tokens": TINY_TEXT.encode() for s in ("train", "valid", "test")}
    defaults |= {f"dailydialog/dialogues_{s}.txt": DIALOGUE_TEXT.encode() for s in ("train", "validation", "test")}
    for relative, data in (defaults | {k.replace("__", "/"): v for k, v in files.items()}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


class CountingSequences(Dataset):
    """Windows of the sequence a, a+1, a+2, ... (mod V): learnable in a few steps."""

    def __init__(self, n, length=12, seed=0, step=1, starts=20, vocab=VOCAB):
        # starts=20: every window starts at one of 20 ids, so each id is seen often
        start = torch.randint(0, starts, (n, 1), generator=torch.Generator().manual_seed(seed))
        self.ids = (start + step * torch.arange(length)) % vocab

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def collate(batch):
    ids = torch.stack([item["input_ids"] for item in batch])
    return {"input_ids": ids, "labels": ids}
