"""Training-step time of each `newllm recall` run, one model at a time in one process: what a sweep will cost.

    python benchmarks/recall_step_times.py [--config configs/recall/sweep.toml] [--models lstm,mamba2]
        [--widths 64,512] [--seq-lens 64,512] [--pairs 4] [--steps 30] [--device cuda] [--out times.json]

For each family × width × sequence length of the config's points (at the first that has it), the model is built as the
sweep builds it, takes a few warm-up steps (New-LLM captures its CUDA graphs there), then `--steps` timed
optimizer steps of the sweep's batch through `train_recall`, the sweep's own loop. It prints milliseconds a
step and the seconds the config's `steps` would take at that speed, the most a run costs before early stop.
Run it alone on the GPU: processes side by side (benchmarks/recall_sweep.sh) share it and each runs slower.
`--start-at` (epoch seconds) holds the timed steps until then, so that processes started together
(benchmarks/recall_side_by_side.sh) time the same window.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from newllm.data.mqar import mqar
from newllm.models.registry import build_model
from newllm.pipeline import device_from_name
from newllm.recall import DEFAULT_CONFIG, FAMILIES, load_recall_config, model_config, train_recall

WARMUP_STEPS = 3


def time_steps(family: str, width: int, seq_len: int, pairs: int, config, steps: int, device,
               start_at: float | None = None) -> float:
    """Milliseconds a training step of `family` at `width` takes on (batch_size, seq_len) MQAR batches."""
    data = mqar(config.vocab_size, pairs, seq_len, config.batch_size * 4, 0, config.power_a, config.hide_answers)
    torch.manual_seed(0)
    model = build_model(FAMILIES[family][0], model_config(family, width, config, seq_len)).to(device)
    if FAMILIES[family][0] == "new_llm":
        model.set_fast_path(config.fast_path)
    # eval_every past the end: the only evaluation is the last step's, outside the timed part
    run = dataclasses.replace(config, eval_every=10**9, target=1.0, test_examples=config.eval_batch_size)
    test = mqar(config.vocab_size, pairs, seq_len, run.test_examples, 1, config.power_a, config.hide_answers)
    train_recall(model, data, test, test, dataclasses.replace(run, steps=WARMUP_STEPS), device, seed=0)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    return train_recall(model, data, test, test, dataclasses.replace(run, steps=steps), device, seed=0)["ms_per_step"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    for flag in ("models", "widths", "seq-lens", "pairs"):
        parser.add_argument(f"--{flag}", help="comma-separated; replaces the config's")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model (after warm-up)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--start-at", type=float, help="epoch seconds: each timed part waits for it (after warm-up)")
    parser.add_argument("--out", help="write the rows here as JSON")
    args = parser.parse_args(argv)
    flags = {name: getattr(args, name) for name in ("models", "widths", "seq_lens", "pairs")}
    try:
        config = load_recall_config(args.config, overrides={k: v for k, v in flags.items() if v})
    except ValueError as err:
        print(f"recall_step_times.py: {err}", file=sys.stderr)
        return 2
    device = device_from_name(args.device)
    rows = []
    lengths = {}  # each sequence length of the sweep at its first point: the step's cost is the length's
    for seq_len, pairs in config.settings():
        lengths.setdefault(seq_len, pairs)
    for family in config.models:
        for seq_len, pairs in lengths.items():
            for width in config.widths:
                ms = time_steps(family, width, seq_len, pairs, config, args.steps, device, args.start_at)
                rows.append({"model": family, "width": width, "seq_len": seq_len, "pairs": pairs,
                             "batch_size": config.batch_size, "ms_per_step": ms,
                             "seconds_for_config_steps": ms * config.steps / 1000})  # fmt: skip
                print(f"{family:12s} width {width:4d}  T {seq_len:4d}  {ms:8.2f} ms/step  "
                      f"{ms * config.steps / 1000:7.1f} s for {config.steps} steps", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"config": dataclasses.asdict(config), "device": str(device),
                       "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                       "torch": torch.__version__, "rows": rows}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
