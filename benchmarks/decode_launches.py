"""Greedy decoding per token, six ways side by side in one process (CUDA only):

    graph  GreedyDecoder's default: model.step captured (about 45 kernels a token)
    split  decode_kernel.py's kernels with the context update and the pick in a launch of their own (5 launches a
           token for the prototype's cell)
    tail   the same kernels with that update at the end of the head's launch, in its last program (4 launches;
           the default)
    tail_bf16_head  the same with the output head's weights read in bf16 (head_dtype), half of a token's bytes at
           full size; its tokens may differ from float32's where two logits are within bf16's rounding
    loop   decode_loop.py: every token in one persistent launch (no graph, no launch a token)
    loop_bf16_head  the loop with the bf16 head

    PYTHONPATH=src python benchmarks/decode_launches.py --out decode_launches.json

Each stepped way is one step captured as a CUDA graph and replayed `--tokens` times a repeat, the loop one launch
of `--tokens` tokens; median of `--repeats`: ms a token with nothing else timed (newllm bench's decode rows also
time the prompt's hand-over, so read a little higher). The model is newllm bench's at each preset, float32, eval
mode, random weights: the time of a step does not depend on the weights. Before timing, each kernel variant's
tokens are compared with the graph's (`<variant>_same_tokens`; the bf16 heads' with each other's).
"""

import argparse
import json
import statistics
import sys

import torch

from newllm.evaluation.bench import BenchConfig, bench_models
from newllm.evaluation.speed import environment
from newllm.models.cuda_graphs import capture_step
from newllm.models.new_llm.decoding import GreedyDecoder
from newllm.pipeline.setup import git_commit


def replay_ms(graph: torch.cuda.CUDAGraph, restart, tokens: int, repeats: int) -> float:
    """The median over `repeats` of ms a replay, `tokens` replays in a row, each run restarted first."""
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        restart()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(tokens):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / tokens)
    return statistics.median(times[1:])


def launch_ms(run, restart, tokens: int, repeats: int) -> float:
    """The median over `repeats` of ms a token of `run()`, which decodes `tokens` tokens, restarted first."""
    times = []
    for _ in range(repeats + 1):  # the first run warms up (and compiles)
        restart()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / tokens)
    return statistics.median(times[1:])


def measure(model, batch: int, tokens: int, repeats: int) -> dict:
    # Triton: imported only where it can run
    from newllm.models.new_llm.decode_kernel import DecodeKernels
    from newllm.models.new_llm.decode_loop import DecodeLoop

    device = model.device
    generator = torch.Generator(device=device).manual_seed(0)
    first = torch.randint(1, model.config.vocab_size, (batch,), device=device, generator=generator)
    context = torch.randn(batch, model.config.context_size, device=device, generator=generator)
    row = {"batch_size": batch}
    graphed = GreedyDecoder(model, batch, tokens, kernels=False)  # the graph, whatever the default

    def restart_graph():
        graphed.context.copy_(context)
        graphed.token.copy_(first)
        graphed.position.zero_()

    row["graph"] = replay_ms(graphed.graph, restart_graph, tokens, repeats)
    restart_graph()
    for _ in range(tokens):
        graphed.graph.replay()
    expected = graphed.tokens.clone()
    variants = {"split": dict(tail=False), "tail": dict(tail=True), "tail_bf16_head": dict(head_dtype=torch.bfloat16)}
    outs = {}
    for name, options in variants.items():
        kernels = DecodeKernels(model, batch, **options)
        token = torch.empty_like(first)
        out = torch.zeros(batch, tokens, dtype=torch.long, device=device)
        position = torch.zeros(1, dtype=torch.long, device=device)

        def restart():
            kernels.context.copy_(context)
            token.copy_(first)
            position.zero_()

        graph = capture_step(lambda: kernels.step(token, out, position), restart, device.index)
        restart()
        for _ in range(tokens):
            graph.replay()
        row[f"{name}_same_tokens"] = bool(torch.equal(out, expected))
        row[name] = replay_ms(graph, restart, tokens, repeats)
        outs[name] = out.clone()
    for name, options in {"loop": {}, "loop_bf16_head": dict(head_dtype=torch.bfloat16)}.items():
        kernels = DecodeKernels(model, batch, **options)
        loop = DecodeLoop(kernels)
        token = torch.empty_like(first)
        out = torch.zeros(batch, tokens, dtype=torch.long, device=device)

        def restart():
            kernels.context.copy_(context)
            token.copy_(first)

        restart()
        loop.run(token, out, tokens)
        same = outs["tail_bf16_head"] if "bf16" in name else expected
        row[f"{name}_same_tokens"] = bool(torch.equal(out, same))
        row[name] = launch_ms(lambda: loop.run(token, out, tokens), restart, tokens, repeats)
        row[f"{name}_programs"] = loop.programs
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="full,study")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("decode_launches.py needs a CUDA device: it times CUDA graphs", file=sys.stderr)
        return 2
    rows = []
    for preset in args.presets.split(","):
        model = bench_models(BenchConfig(preset=preset, models=("new_llm",)))["new_llm"].cuda().eval()
        with torch.no_grad():
            for batch in map(int, args.batch_sizes.split(",")):
                row = {"preset": preset, **measure(model, batch, args.tokens, args.repeats)}
                print(json.dumps(row), flush=True)
                rows.append(row)
        del model
    run = {"commit": git_commit(), "tokens": args.tokens, "repeats": args.repeats, "unit": "ms per token"}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"environment": {**environment(), **run}, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
