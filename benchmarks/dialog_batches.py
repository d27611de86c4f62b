"""Step 2's batches counted, not timed: the sequential steps a recurrent model takes through one DailyDialog epoch.

    python benchmarks/dialog_batches.py [--preset study_new_llm] [--seeds 0 1] [--tokenizer RUNS/tokenizer.json]

A batch is padded to its longest window, and New-LLM's loop steps through every padded position. For
each shuffle seed this prints the steps an epoch and the distinct batch shapes of random batches (the
Trainer's default), of batches grouped by length (transformers' get_length_grouped_indices), and of
grouped batches padded in LENGTH_BUCKET steps, as `group_by_length` trains them (each shape is one
CUDA-graph capture). The tokenizer is trained as the preset says unless --tokenizer names one.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from newllm.config import TrainConfig
from newllm.pipeline.stage import LENGTH_BUCKET, stage_collator


def count(dataset, order: list[int], batch: int, collator) -> tuple[int, int]:
    """(sequential steps, distinct (rows, width) shapes) of `order` cut into batches made by `collator`."""
    steps, shapes = 0, set()
    for k in range(0, len(order), batch):
        rows, width = collator([dataset[i] for i in order[k : k + batch]])["input_ids"].shape
        steps += width
        shapes.add((rows, width))
    return steps, len(shapes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="study_new_llm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tokenizer", default=None, help="a trained tokenizer.json (default: train one as the preset says)")
    args = parser.parse_args(argv)

    from newllm.config import load_config
    from newllm.pipeline import load_wikitext_splits, prepare_tokenizer
    from newllm.pipeline.scores import dialog_sets

    with tempfile.TemporaryDirectory() as out:
        config = dataclasses.replace(load_config(args.preset), output_dir=out)
        if args.tokenizer:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(args.tokenizer)
        else:
            tokenizer = prepare_tokenizer(config, load_wikitext_splits(config, ("train",))["train"])
        train = dialog_sets(config, tokenizer, ("train",))[0]["train"]
    lengths, batch = train.lengths, config.finetune.batch_size
    longest = stage_collator(TrainConfig(), 0, train)  # what training pads with: the pad id plays no part here
    bucketed = stage_collator(TrainConfig(group_by_length=True), 0, train)
    print(f"{args.preset}: {len(lengths)} windows, {sum(lengths)} tokens, batches of {batch}")
    print("| step 2's batches | sequential steps an epoch | shapes | vs random |\n| --- | ---: | ---: | ---: |")
    for seed in args.seeds:
        random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
        grouped = get_length_grouped_indices(lengths, batch, generator=torch.Generator().manual_seed(seed))
        rows = [
            (f"random, seed {seed}", count(train, random_order, batch, longest)),
            (f"grouped, padded to the longest, seed {seed}", count(train, grouped, batch, longest)),
            (f"grouped, padded in steps of {LENGTH_BUCKET}, seed {seed}", count(train, grouped, batch, bucketed)),
        ]
        base = rows[0][1][0]
        for name, (steps, shapes) in rows:
            print(f"| {name} | {steps:,} | {shapes} | {base / steps:.2f}x fewer |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
