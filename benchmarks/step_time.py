"""Training-step time of a preset's models, side by side in one process: what one epoch of a schedule costs.

    python benchmarks/step_time.py --preset study [--preset full] [--steps 20] [--out step_time.json]
        [--new-llm-modes graphed,kernel,compiled+graphed/autograd] [--baseline-modes eager,compiled,reduce-overhead]
        [--batch-size 256 --block-size 64] [--set model.names=new_llm,mamba2] [--profile]

Each model of each preset (the baselines sized to its New-LLM, as in the experiment) runs full
optimizer steps (forward, backward, AdamW) on random (batch_size, block_size) token windows under
bf16 autocast, in each fast path a training run can take: New-LLM's `set_fast_path` modes (by
default "graphed" and "compiled+graphed"; `--new-llm-modes` names others, such as "kernel", the
Triton scan, whose row is an error if the model fell back; a mode ending in "/autograd" trains the cell
through autograd instead of its hand-written backward, to compare the two), the baselines eagerly and
through torch.compile (`--baseline-modes`: also "reduce-overhead", torch.compile with CUDA graphs);
`--batch-size` and `--block-size` replace the preset's window shape. It prints
milliseconds a step (median of `--steps` after warm-up) and tokens a second, and the seconds one
WikiText-2 epoch of 2,688,768 training tokens would take at that speed. `--profile` adds where the
GPU time of a step goes: each row gets the kernels that took the most device time over 3 profiled
steps (torch.profiler), in microseconds a step with their launches a step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import torch
from tokenizers import models

from newllm.config import load_config
from newllm.models import build_model
from newllm.models.new_llm.modeling import FAST_PATHS
from newllm.models.registry import count_parameters
from newllm.pipeline import model_configs
from newllm.pipeline.setup import git_commit

BASELINE_MODES = ("eager", "compiled", "reduce-overhead")
WIKITEXT_TRAIN_TOKENS = 2_688_768  # WikiText-2 train in the 8,192-entry BPE


class _Vocabulary:
    """What `model_configs` asks of a tokenizer: its size and the ids of the framing tokens."""

    def __init__(self, size: int):
        self.size = size
        self.model = models.BPE()  # the experiment's kind of tokenizer, not the prototype's word level

    def get_vocab_size(self) -> int:
        return self.size

    def token_to_id(self, name: str) -> int:
        return hash(name) % 5  # any distinct small ids: the step time does not depend on them


def time_steps(model, batch: int, length: int, vocab: int, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, length), device="cuda")
    times = []
    for i in range(steps + 3):  # 3 warm-ups: compilation and graph capture
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return times


def profile_steps(model, batch: int, length: int, vocab: int, top: int = 12) -> list[dict]:
    """The `top` kernels by device time over 3 training steps of a model `time_steps` already warmed up: name,
    microseconds a step and launches a step, after the sum over every kernel."""
    from torch.profiler import ProfilerActivity, profile

    steps = 3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        time_steps(model, batch, length, vocab, 0)  # its 3 untimed steps
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events)
    rows = [{"kernel": e.key[:120], "us_per_step": round(e.device_time_total / steps, 1),
             "launches_per_step": round(e.count / steps, 1)} for e in events[:top]]  # fmt: skip
    return [{"kernel": "(all kernels)", "us_per_step": round(total / steps, 1),
             "launches_per_step": round(sum(e.count for e in events) / steps, 1)}, *rows]  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", default=None)
    parser.add_argument("--models", default=None, help="comma-separated: only these of each preset's models")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=None)
    parser.add_argument("--new-llm-modes", default="graphed,compiled+graphed",
                        help=f"comma-separated New-LLM fast paths, of: {', '.join(FAST_PATHS)}")
    parser.add_argument("--baseline-modes", default="eager,compiled",
                        help="comma-separated, of: eager, compiled, reduce-overhead (torch.compile with CUDA graphs)")
    parser.add_argument("--batch-size", type=int, default=None, help="instead of the preset's pretrain.batch_size")
    parser.add_argument("--block-size", type=int, default=None, help="instead of the preset's data.block_size")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a preset override, e.g. --set model.names=new_llm,mamba2 to time the peer")
    parser.add_argument("--profile", action="store_true", help="add each row's most expensive kernels (torch.profiler)")
    args = parser.parse_args(argv)
    new_llm_modes = tuple(args.new_llm_modes.split(","))
    unknown = [mode for mode in new_llm_modes if mode.removesuffix("/autograd") not in FAST_PATHS]
    if unknown:
        parser.error(f"--new-llm-modes: unknown {', '.join(unknown)}; choose from {', '.join(FAST_PATHS)}"
                     " (each may end in /autograd)")
    baseline_modes = tuple(args.baseline_modes.split(","))
    unknown = [mode for mode in baseline_modes if mode not in BASELINE_MODES]
    if unknown:
        parser.error(f"--baseline-modes: unknown {', '.join(unknown)}; choose from {', '.join(BASELINE_MODES)}")
    if not torch.cuda.is_available():
        print("step_time.py: needs a CUDA device", file=sys.stderr)
        return 2
    torch.set_float32_matmul_precision("high")
    rows = []
    for preset in args.preset or ["study"]:
        config = load_config(preset, args.set)
        vocab = config.data.vocab_size
        configs = model_configs(config, _Vocabulary(vocab))
        batch = args.batch_size or config.pretrain.batch_size
        length = args.block_size or config.data.block_size
        for name, model_config in configs.items():
            if args.models and name not in args.models.split(","):
                continue
            modes = new_llm_modes if name == "new_llm" else baseline_modes
            for mode in modes:
                torch.manual_seed(0)
                model = build_model(name, model_config).cuda().train()
                if name == "new_llm":
                    model.set_fast_path(mode)
                elif mode != "eager":
                    model = torch.compile(model, mode=None if mode == "compiled" else mode)
                try:
                    with warnings.catch_warnings():
                        # a "kernel" row that silently timed the fallback would be a wrong number: make it an error row
                        warnings.filterwarnings("error", message="fast path 'kernel(_loop)?' not taken")
                        times = time_steps(model, batch, length, vocab, args.steps)
                except Exception as err:  # a path that fails is a row with its error, not the end of the table
                    rows.append({"preset": preset, "model": name, "mode": mode, "error": f"{type(err).__name__}: {err}"[:300]})
                    print(rows[-1], flush=True)
                    continue
                ms = 1000 * statistics.median(times)
                tokens = batch * length / (ms / 1000)
                rows.append({"preset": preset, "model": name, "mode": mode, "parameters": count_parameters(model),
                             "batch": batch, "length": length, "ms_per_step": round(ms, 2),
                             "tokens_per_s": round(tokens), "epoch_s": round(WIKITEXT_TRAIN_TOKENS / tokens, 1)})  # fmt: skip
                print(f"{preset:8s} {name:9s} {mode:17s} {ms:8.2f} ms/step {tokens / 1e6:6.2f} M tok/s "
                      f"{rows[-1]['epoch_s']:7.1f} s/epoch", flush=True)  # fmt: skip
                if args.profile:
                    rows[-1]["profile"] = profile_steps(model, batch, length, vocab)
                    for kernel in rows[-1]["profile"][:6]:
                        print(f"    {kernel['us_per_step']:10.1f} us/step {kernel['launches_per_step']:7.1f} launches "
                              f"{kernel['kernel'][:70]}", flush=True)  # fmt: skip
                del model
                torch.cuda.empty_cache()
    if args.out:
        env = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"),
               "commit": git_commit(), "command": " ".join(["python", *sys.argv])}  # fmt: skip
        with open(args.out, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
