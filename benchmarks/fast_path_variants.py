"""What each New-LLM fast-path switch is worth: training tokens/s per mode, and decoding ms/token.

    python benchmarks/fast_path_variants.py --device cuda --out fast_path.json

Rows (full-size models of `newllm bench`, random ids, medians after warm-up):
  - New-LLM training in each `set_fast_path` mode, and under torch.compile of the whole model;
  - TinyGPT2 training eager, torch.compile, and torch.compile(mode="reduce-overhead") (CUDA graphs);
  - the LSTM eager (cuDNN);
  - New-LLM greedy decoding through `GreedyDecoder` (one CUDA graph replay per token) and through the
    model's forward per token, as `newllm bench` measures every model.
Each row is printed as one JSON line as soon as it is measured, so a cut-off run keeps what it has.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from newllm.evaluation.bench import BenchConfig, bench_models, measure_generation, measure_training


def _emit(rows, row, out):
    rows.append(row)
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None)
    parser.add_argument("--shapes", default="256x64,64x128", help="batch x seq_len, comma separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    models = bench_models(BenchConfig())
    rows = []
    new_llm = models["new_llm"]

    def training(batch, seq):
        for mode in ("eager", "compiled", "graphed", "compiled+graphed", "torch.compile(model)"):
            head = {"model": "new_llm", "mode": mode, "batch_size": batch, "seq_len": seq, "precision": "bf16"}
            start = time.perf_counter()
            try:
                new_llm.set_fast_path("eager" if mode.startswith("torch") else mode)
                torch.compiler.reset()
                runner = torch.compile(new_llm) if mode.startswith("torch") else new_llm
                row = measure_training(runner, batch, seq, "bf16", args.device, 3, args.repeats)
            except Exception as error:  # a failing mode is a result, not the end of the run
                row = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
            _emit(rows, {**head, **row, "setup_s": time.perf_counter() - start}, args.out)
        new_llm.set_fast_path("eager")
        for name, modes in (("tinygpt2", ("eager", "compiled", "reduce-overhead")), ("lstm", ("eager",))):
            for mode in modes:
                head = {"model": name, "mode": mode, "batch_size": batch, "seq_len": seq, "precision": "bf16"}
                torch.compiler.reset()
                compile_mode = None if mode == "compiled" else mode
                runner = models[name] if mode == "eager" else torch.compile(models[name], mode=compile_mode)
                try:
                    row = measure_training(runner, batch, seq, "bf16", args.device, 3, args.repeats)
                except Exception as error:
                    row = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
                _emit(rows, {**head, **row}, args.out)
        torch.compiler.reset()

    def decoding():
        new_llm.to(args.device).eval()
        for batch in (1, 32):
            for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                for context_len in (1024, 65536):
                    head = {"model": "new_llm", "decode": "GreedyDecoder", "batch_size": batch,
                            "precision": precision, "context_len": context_len}
                    row = measure_generation(new_llm, context_len, batch, 64, args.device, dtype, 1, args.repeats,
                                             graphed=True)  # fmt: skip
                    _emit(rows, {**head, **row}, args.out)
                row = measure_generation(new_llm, 1024, batch, 64, args.device, dtype, 2, args.repeats)
                _emit(rows, {"model": "new_llm", "decode": "forward per token", "precision": precision, **row},
                      args.out)

    training(*shapes[0])
    decoding()
    for shape in shapes[1:]:
        training(*shape)

if __name__ == "__main__":
    main()
