#!/usr/bin/env python
"""Step 3 of the prototype: compare the fine-tuned models (perplexity, responses, speed).

Same as `newllm evaluate --preset full`; pass --preset quick (or any newllm evaluate option) to change it.
Outputs go under checkpoints/ with the prototype's names.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a clone without install

from newllm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]], script=Path(__file__).name))  # usage: evaluate_comparison.py ...
