#!/usr/bin/env python
"""Step 2 of the prototype: fine-tune the step-1 checkpoints on DailyDialog.

Same as `newllm finetune --preset full`; pass --preset quick (or any newllm finetune option) to change it.
Outputs go under checkpoints/ with the prototype's names.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a clone without install

from newllm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]], script=Path(__file__).name))  # usage: finetune_dialog.py ...
