"""The loop launch of kernel.py's training kernels (fast path "kernel_loop"): the same function as the window launch.

The model-level checks (dropout, gradient accumulation, a carried context, a CUDA training step in fp32 and bf16)
and the full-width CUDA check against the hand-written scan are test_new_llm_kernel.py's, in both modes. A loop launch runs one program per SM; each phase's tiles are spread over all of them and a grid barrier ends the
phase. Triton's CPU interpreter runs programs one after another, so there a loop launch runs as one program (which
meets every barrier alone): the interpreter checks the tile arithmetic of every phase, and only the CUDA tests, with
many programs, check the barriers. Without triton (CI) the file skips, as test_new_llm_kernel.py does.
"""

import pytest
import torch

triton = pytest.importorskip("triton", reason="the kernel path needs triton (CI does not install it)")
if not torch.cuda.is_available() and not triton.knobs.runtime.interpret:
    pytest.skip("no GPU and TRITON_INTERPRET is not 1: the kernels cannot run", allow_module_level=True)

from newllm.models.new_llm import kernel  # noqa: E402
from newllm.models.new_llm.scan import ScanOptions  # noqa: E402
from tests.unit.models.conftest import assert_scans_agree, random_ids  # noqa: E402
from tests.unit.models.test_new_llm_kernel import (  # noqa: E402
    CASES,
    DEVICE,
    _cell,
    _kernel_inputs,
    _model,
    _run_reference,
)

# Programs of a loop launch: one off CUDA; on a GPU a few, so that a phase's tiles wrap around, and one per SM.
PROGRAMS = [1, 3, 7, None] if torch.cuda.is_available() else [1]


def _loop_scan(programs):
    def run(cell, token_part, context, masks, context_masks):
        count = programs or kernel.loop_programs(token_part.device, token_part.shape[1], token_part.shape[2])
        context_weight = cell.layers[0].weight[:, cell.embedding_size :]
        params = [p for layer in cell.layers[1:] for p in (layer.weight, layer.bias)]
        options = ScanOptions(cell.context_norm.eps, cell.context_clamp, False, False)
        return kernel.NewLLMKernelScan.apply(options, count, token_part, context, masks, context_masks,
                                             context_weight, cell.context_norm.weight, cell.context_norm.bias,
                                             cell.context_proj.weight, cell.context_proj.bias, *params)  # fmt: skip

    return run


@pytest.mark.parametrize("programs", PROGRAMS, ids=lambda p: f"{p or 'sm'}_programs")
@pytest.mark.parametrize("name", CASES)
def test_loop_outputs_and_gradients_equal_the_reference_step(name, programs):
    overrides, batch, steps, dropout, context_dropout = CASES[name]
    cell = _cell(**overrides)
    inputs = _kernel_inputs(cell, batch, steps, dropout, context_dropout)
    assert_scans_agree(cell, inputs, _run_reference, _loop_scan(programs))


@pytest.fixture
def loop_launches(monkeypatch):
    """The programs of every launch of the training kernels' autograd function (0: a window launch)."""
    launches = []
    real = kernel.NewLLMKernelScan.apply
    monkeypatch.setattr(kernel.NewLLMKernelScan, "apply", lambda options, programs, *args: launches.append(programs)
                        or real(options, programs, *args))  # fmt: skip
    return launches


@pytest.mark.parametrize("mode, loop", [("kernel", False), ("kernel_loop", True)])
def test_kernel_loop_takes_the_loop_launch_and_kernel_the_window_launch(loop_launches, mode, loop):
    # The model-level equalities with eager (dropout, gradient accumulation, a carried context) are
    # test_new_llm_kernel.py's, run in both modes; this checks which launch each mode takes.
    model = _model(mode, dropout=0.2)
    ids = random_ids(3, 8).to(DEVICE)
    model(ids, labels=ids).loss.backward()
    assert len(loop_launches) == 1 and (loop_launches[0] >= 1) == loop


def test_a_loop_launch_of_several_programs_is_refused_off_cuda():
    with pytest.raises(ValueError, match="one program"):
        kernel._launch(torch.device("cpu"), 2, 16, 32, 2, 4)


def test_the_column_tile_gives_every_program_a_tile_of_a_hidden_layer():
    # (batch, hidden, programs) -> BLOCK_N: 16 row blocks of 8 tiles at 64 columns fill 128 programs; 4 row blocks
    # need 16 columns for 128 tiles; a window launch keeps kernel.BLOCK_N and one program per 16 rows.
    cuda_device = torch.device("cuda")  # only read for its type: nothing runs
    assert kernel._launch(cuda_device, 128, 256, 512, 3, 64)[1]["BLOCK_N"] == 64
    assert kernel._launch(cuda_device, 129, 256, 512, 3, 64)[1]["BLOCK_N"] == 32
    assert kernel._launch(cuda_device, 128, 64, 512, 3, 128)[1]["BLOCK_N"] == 16
    grid, meta = kernel._launch(cuda_device, 0, 256, 512, 3, 64)
    assert grid == (16,) and not meta["GRID"] and meta["BLOCK_N"] == kernel.BLOCK_N
    assert kernel._launch(cuda_device, 128, 256, 512, 3, 64)[1]["launch_cooperative_grid"]
    with pytest.raises(ValueError, match="int32"):
        kernel._launch(cuda_device, 132, 256, 512, 3, 2**24)
