#!/usr/bin/env python
"""Step 1 of the prototype: pre-train New-LLM, TinyGPT2 and the LSTM on WikiText-2.

Same as `newllm pretrain --preset full`; pass --preset quick (or any newllm pretrain option) to change it.
Outputs go under checkpoints/ with the prototype's names.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a clone without install

from newllm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]], script=Path(__file__).name))  # usage: train_wikitext.py ...
