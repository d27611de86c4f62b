"""benchmarks/backward_memory.py: the bytes backward keeps, counted from the tensors autograd saves."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _kept(*args) -> float:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "backward_memory.py"), "--preset", "quick", *args],
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    return float(re.search(r"GiB \(([\d.]+) MiB\)", done.stdout).group(1)), done.stdout


def test_it_counts_what_backward_keeps_and_grows_with_the_batch():
    small, out = _kept("--model", "mamba2", "--batch-size", "1", "--length", "64", "--top", "3")
    large, _ = _kept("--model", "mamba2", "--batch-size", "8", "--length", "64")
    assert len(re.findall(r"MiB  \(", out)) == 3  # the three largest shapes listed
    assert 0 < small < large  # eight times the rows keep more
