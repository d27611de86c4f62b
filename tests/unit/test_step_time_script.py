"""benchmarks/step_time.py: the modes it accepts, and its refusal to time without a GPU (decode_launches.py too)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def step_time():
    return load_benchmark("step_time")


@pytest.mark.parametrize("flag, value, unknown", [("--new-llm-modes", "graphed,graph", "graph"),
                                                  ("--new-llm-modes", "kernel/eager", "kernel/eager"),
                                                  ("--baseline-modes", "eager,graphed", "graphed")])  # fmt: skip
def test_unknown_modes_are_a_one_line_usage_error(step_time, capsys, flag, value, unknown):
    with pytest.raises(SystemExit) as exit_info:
        step_time.main([flag, value])
    assert exit_info.value.code == 2
    assert f"unknown {unknown};" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_known_modes_pass_the_checks_and_then_need_a_gpu(step_time, capsys):
    code = step_time.main(["--new-llm-modes", "compiled+graphed,compiled+graphed/autograd",
                           "--baseline-modes", "eager,compiled,reduce-overhead"])  # fmt: skip
    assert code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_decode_launches_refuses_without_a_gpu_and_writes_nothing(capsys, tmp_path):
    # benchmarks/decode_launches.py: a one-line refusal before it needs Triton (CI has none) or writes its JSON
    out = tmp_path / "launches.json"
    assert load_benchmark("decode_launches").main(["--out", str(out)]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err and not out.exists()
