"""What backward keeps of one training forward of a preset's model, counted exactly on CPU: the bytes of every tensor
autograd saves (`torch.autograd.graph.saved_tensors_hooks`), largest shapes first. Eager, fp32, no GPU needed: the
GPU's figure adds the CUDA context and the allocator's slack on top.

    python benchmarks/backward_memory.py --preset study_mamba2 --model mamba2 --batch-size 32 --length 256

(DailyDialog's step-2 batch: 32 windows of up to 256 tokens; docs/performance.md.)
"""

from __future__ import annotations

import argparse
import collections

import torch
from step_time import _Vocabulary

from newllm.config import load_config
from newllm.models import build_model
from newllm.pipeline import model_configs


def saved_bytes(model, ids: torch.Tensor) -> tuple[int, collections.Counter]:
    """Bytes autograd keeps for backward of one forward with labels, in all and by (shape, dtype)."""
    by_shape = collections.Counter()

    def keep(t):
        by_shape[(tuple(t.shape), str(t.dtype))] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(by_shape.values()), by_shape


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="study_mamba2")
    parser.add_argument("--model", default="mamba2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--top", type=int, default=8, help="how many of the largest shapes to list")
    args = parser.parse_args(argv)
    config = load_config(args.preset, [f"model.names=new_llm,{args.model}"] if args.model != "new_llm" else [])
    model_config = model_configs(config, _Vocabulary(config.data.vocab_size))[args.model]
    torch.manual_seed(0)
    model = build_model(args.model, model_config).train()
    ids = torch.randint(0, config.data.vocab_size, (args.batch_size, args.length))
    total, by_shape = saved_bytes(model, ids)
    print(f"{args.preset} {args.model}: backward keeps {total / 2**30:.2f} GiB ({total / 2**20:.1f} MiB) at batch "
          f"{args.batch_size} x {args.length}")
    for (shape, dtype), size in by_shape.most_common(args.top):
        print(f"  {size / 2**20:9.1f} MiB  {shape} {dtype}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
