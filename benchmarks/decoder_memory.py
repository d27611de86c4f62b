"""Device memory left behind by New-LLM's graphed decoder, built and dropped again and again (CUDA only).

    PYTHONPATH=src python benchmarks/decoder_memory.py

Prints, after each build, the memory still allocated above the weights ("left") and the decoding peak.
Before the fix (every capture on a new CUDA stream, each keeping its own 33 MiB cuBLAS workspace)
"left" grew by 33 MiB per build; this script, then looping over the parallel and the prototype cell in
bf16 and fp32, showed it on an H200. After the fix (scan.capture_stream) this version
printed a constant 99 MiB left and a 127.5 MiB peak on every row (docs/performance.md).
"""

import gc, sys, torch
from newllm.evaluation.bench import BenchConfig, bench_models, measure_generation, _release
from newllm.models.new_llm.decoding import GreedyDecoder
dev = torch.device("cuda")
MiB = 2**20
for cell in ("parallel", "prototype"):
    m = bench_models(BenchConfig(cell=cell, residual=cell == "parallel", ffn_norm=cell == "parallel", models=("new_llm",)))["new_llm"].to(dev).eval()
    _release(dev); base = torch.cuda.memory_allocated()
    print(cell, "weights MiB", base / MiB, flush=True)
    for dtype in (torch.bfloat16, torch.float32):
        for i in range(3):
            r = measure_generation(m, 128, 1, 64, dev, dtype, 1, 2, seed=i, graphed=True)
            _release(dev)
            print(cell, dtype, "bench row", i, "left MiB", (torch.cuda.memory_allocated() - base) / MiB, "peak MiB", r["peak_mem_bytes"] / MiB, flush=True)
    for i in range(3):
        prompt = torch.randint(1, 8192, (1, 128), device=dev)
        d = GreedyDecoder(m, 1, 64, dtype=torch.bfloat16); out = torch.no_grad()(m)(prompt, use_cache=True)
        d.decode(out.state, out.logits[:, -1].argmax(-1), 64)
        d.graph.reset(); del d, out, prompt; _release(dev)
        print(cell, "graph.reset()", i, "left MiB", (torch.cuda.memory_allocated() - base) / MiB, flush=True)
    for i in range(2):
        prompt = torch.randint(1, 8192, (1, 128), device=dev)
        d = GreedyDecoder(m, 1, 64, dtype=torch.bfloat16); del d, prompt; _release(dev)
        print(cell, "capture only", i, "left MiB", (torch.cuda.memory_allocated() - base) / MiB, flush=True)
    print(torch.cuda.memory_summary(abbreviated=True)[:1500])
    del m; _release(dev)
