"""Device memory left behind by New-LLM's graphed decoder, built and dropped again and again (CUDA only).

    PYTHONPATH=src python benchmarks/decoder_memory.py

Prints, after each build, the memory still allocated above the weights ("left") and the decoding peak.
Before the fix (every capture on a new CUDA stream, each keeping its own 33 MiB cuBLAS workspace)
"left" grew by 33 MiB per build; this script, then looping over the parallel and the prototype cell in
bf16 and fp32, showed it on an H200. After the fix (cuda_graphs.capture_stream) this version
printed a constant 99 MiB left and a 127.5 MiB peak on every row (docs/performance.md).
"""

import torch

from newllm.evaluation.bench import BenchConfig, _release, bench_models, measure_generation
from newllm.models.new_llm.decoding import GreedyDecoder

MiB = 2**20


def left(base: int) -> float:
    """MiB allocated above the weights."""
    return (torch.cuda.memory_allocated() - base) / MiB


def main() -> None:
    device = torch.device("cuda")
    for preset in ("full_parallel", "full"):  # the parallel cell, then the prototype's
        config = BenchConfig(preset=preset, models=("new_llm",))
        model = bench_models(config)["new_llm"].to(device).eval()
        _release(device)
        base = torch.cuda.memory_allocated()
        print(preset, "weights MiB", base / MiB, flush=True)
        for dtype in (torch.bfloat16, torch.float32):
            for i in range(3):
                row = measure_generation(model, 128, 1, 64, device, dtype, 1, 2, seed=i, graphed=True)
                _release(device)
                print(preset, dtype, "bench row", i, "left MiB", left(base), "peak MiB", row["peak_mem_bytes"] / MiB,
                      flush=True)  # fmt: skip
        for i in range(3):
            prompt = torch.randint(1, config.vocab_size, (1, 128), device=device)
            decoder = GreedyDecoder(model, 1, 64, dtype=torch.bfloat16)
            with torch.no_grad():
                out = model(prompt, use_cache=True)
            decoder.decode(out.state, out.logits[:, -1].argmax(-1), 64)
            decoder.graph.reset()
            del decoder, out, prompt
            _release(device)
            print(preset, "graph.reset()", i, "left MiB", left(base), flush=True)
        for i in range(2):
            decoder = GreedyDecoder(model, 1, 64, dtype=torch.bfloat16)
            del decoder
            _release(device)
            print(preset, "capture only", i, "left MiB", left(base), flush=True)
        print(torch.cuda.memory_summary(abbreviated=True)[:1500])
        del model
        _release(device)


if __name__ == "__main__":
    main()
