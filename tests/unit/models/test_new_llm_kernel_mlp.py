"""kernel_mlp.py's Triton kernels compute the MLP-block cell's training scan: outputs, every gradient, dropout masks.

Run as test_new_llm_kernel.py's tests are: in Triton's CPU interpreter without a GPU (tests/conftest.py
sets TRITON_INTERPRET=1), compiled on a GPU, skipped without triton (CI). Both launches of the kernels: a program per
row block (`kernel`) and one program per SM with grid barriers (`kernel_loop`; in the interpreter one program).
"""

import pytest
import torch

triton = pytest.importorskip("triton", reason="the kernel path needs triton (CI does not install it)")
if not torch.cuda.is_available() and not triton.knobs.runtime.interpret:
    pytest.skip("no GPU and TRITON_INTERPRET is not 1: the kernels cannot run", allow_module_level=True)

from newllm.models.new_llm import NewLLMForCausalLM, kernel, kernel_mlp  # noqa: E402
from newllm.models.new_llm.modeling import kernel_refusal  # noqa: E402
from newllm.models.new_llm.scan import CellShape, cell_step, dropout_masks  # noqa: E402
from tests.unit.models.conftest import assert_scans_agree, order_one_, random_ids, tiny_new_llm_config  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# The study's cell (configs/study.toml) at a tiny width: MLP blocks, final norm, tied head, tanh, no clamp.
STUDY = dict(block="mlp", embedding_size=32, hidden_size=32, context_size=32, mlp_ratio=2, tie_embeddings=True,
             final_norm=True, candidate="tanh", context_clamp=0.0, forget_bias=1.0)  # fmt: skip


def _cell(**overrides):
    """A tiny MLP-block cell with parameters of order one, so that no wrong sign or missing term hides near 0."""
    torch.manual_seed(0)
    return order_one_(NewLLMForCausalLM(tiny_new_llm_config(**overrides)).model.cell.to(DEVICE))


def _inputs(cell, batch, steps, dropout, context_dropout):
    """(T, B, D) token part and (B, C) context, both needing grad, and the masks as scan.py draws them."""
    width, size_c = cell.layers[0].out_features, cell.context_size
    token_part = torch.randn(steps, batch, width, device=DEVICE, requires_grad=True)
    context = torch.randn(batch, size_c, device=DEVICE, requires_grad=True)
    masks = dropout_masks(token_part, (steps, len(cell.blocks), batch, width), dropout)
    context_masks = dropout_masks(token_part, (steps, batch, size_c), context_dropout)
    return token_part, context, masks, context_masks


# programs of a launch: 0 the window launch; a loop launch's one off CUDA, on a GPU also 3 and one per SM (None)
PROGRAMS = [0, 1, 3, None] if torch.cuda.is_available() else [0, 1]


def _launch_name(programs):
    return "window" if programs == 0 else f"loop_{programs or 'sm'}"


def _run_kernel(cell, token_part, context, masks, context_masks, programs=0):
    if programs is None:
        programs = kernel.loop_programs(token_part.device, token_part.shape[1], token_part.shape[2])
    blocks = [p for b in cell.blocks for p in (b.norm.weight, b.norm.bias, b.up.weight, b.up.bias, b.down.weight,
                                               b.down.bias)]  # fmt: skip
    final = (cell.final_norm.weight, cell.final_norm.bias) if cell.final_norm is not None else (None, None)
    options = (cell.context_norm.eps, float(cell.context_clamp), cell.candidate == "tanh")
    return kernel_mlp.MLPKernelScan.apply(options, programs, token_part, context, masks, context_masks,
                                          cell.layers[0].weight[:, cell.embedding_size :], cell.context_norm.weight,
                                          cell.context_norm.bias, cell.context_proj.weight, cell.context_proj.bias,
                                          *final, *blocks)  # fmt: skip


def _run_reference(cell, token_part, context, masks, context_masks):
    """scan.cell_step along T under autograd, the masks given."""
    p = dict(cell.named_parameters())
    final_norm = cell.final_norm_type if cell.final_norm is not None else None
    shape = CellShape(True, len(cell.blocks), False, False, final_norm, cell.candidate == "tanh",
                      float(cell.context_clamp), cell.context_norm.eps, masks is not None, context_masks is not None)  # fmt: skip
    context_weight = p["layers.0.weight"][:, cell.embedding_size :]
    hiddens = []
    for t in range(token_part.shape[0]):
        hidden, context = cell_step(token_part[t], context, None if masks is None else masks[t],
                                    None if context_masks is None else context_masks[t], context_weight, p, shape)  # fmt: skip
        hiddens.append(hidden)
    return torch.stack(hiddens), context


CASES = {
    # name: cell overrides, batch, steps, dropout p, context dropout p
    "plain blocks": (dict(block="mlp", mlp_ratio=2, hidden_size=24), 3, 5, 0.0, 0.0),
    "study cell, dropouts": (STUDY, 3, 5, 0.3, 0.2),
    "one block, linear candidate, final norm": (dict(block="mlp", num_hidden_layers=1, final_norm=True), 2, 4, 0.2, 0.0),
    # a clamp the context reaches; B > BLOCK_B, and widths (72, 70, 144) over one tile: several programs, ragged tiles
    "clamp, tiles": (dict(block="mlp", mlp_ratio=2, hidden_size=72, context_size=70, context_clamp=1.2), 18, 3, 0.2, 0.1),
}


@pytest.mark.parametrize("programs", PROGRAMS, ids=_launch_name)
@pytest.mark.parametrize("name", CASES)
def test_mlp_kernel_outputs_and_gradients_equal_the_reference_step(name, programs):
    overrides, batch, steps, dropout, context_dropout = CASES[name]
    cell = _cell(**overrides)
    inputs = _inputs(cell, batch, steps, dropout, context_dropout)
    if "clamp" in name:  # the case must reach the clamp for the test to check its gradient
        with torch.no_grad():
            assert (_run_reference(cell, *inputs)[1].abs() == cell.context_clamp).any()
    # gradients to 5e-5 absolute: fp32 sums in another order, through three LayerNorm backwards per block
    launch = lambda *args: _run_kernel(*args, programs=programs)  # noqa: E731
    assert_scans_agree(cell, inputs, _run_reference, launch, grad_atol=5e-5)


def _model(mode, **overrides):
    torch.manual_seed(0)
    return NewLLMForCausalLM(tiny_new_llm_config(**overrides)).to(DEVICE).set_fast_path(mode)


@pytest.mark.parametrize("loop", [False, True], ids=["window", "loop"])
def test_mlp_kernel_scan_draws_the_masks_of_the_autograd_scan(loop):
    # scan.autograd_scan (which draws the masks as scan_mlp.mlp_scan, the MLP cell's training scan, does) and
    # mlp_kernel_scan draw their dropout masks alike: one seed, the same hidden states, last context and gradients.
    from newllm.models.new_llm.scan import autograd_scan

    cell = _cell(**STUDY, dropout=0.3, context_dropout=0.2).train()
    cell.kernel_loop = loop
    embeddings = torch.randn(3, 6, cell.embedding_size, device=DEVICE, requires_grad=True)
    context = torch.randn(3, cell.context_size, device=DEVICE)
    results = []
    for scan in (autograd_scan, kernel_mlp.mlp_kernel_scan):
        torch.manual_seed(1)
        hidden, last = scan(cell, embeddings, context)
        loss = hidden.square().sum() + last.sum()
        results.append((hidden, last, torch.autograd.grad(loss, [embeddings, *cell.parameters()])))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-5)
    # the gradients' absolute tolerance is the other MLP-kernel tests' 5e-5: on the H200 one weight-gradient entry
    # of 2,048 (about 2e-2 in size) summed in another order differed by 1.3e-5
    for reference, fast in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("mode, loop", [("kernel", False), ("kernel_loop", True)])
def test_the_study_cells_training_step_takes_the_kernel_and_equals_eager(monkeypatch, mode, loop):
    # Through the model: kernel_scan hands an MLP-block cell to kernel_mlp.py, in the launch the mode names; the loss
    # and every gradient (tied head and embedding included) equal the eager scan's. No dropout: eager `cell.scan`
    # draws its masks step by step.
    calls = []
    real = kernel_mlp.MLPKernelScan.apply
    monkeypatch.setattr(kernel_mlp.MLPKernelScan, "apply", lambda options, programs, *args: calls.append(programs)
                        or real(options, programs, *args))  # fmt: skip
    models = [_model("eager", **STUDY).train(), _model(mode, **STUDY).train()]
    assert kernel_refusal(models[1].model.cell, torch.zeros(2, 3, 32, device=DEVICE)) is None
    ids = random_ids(3, 8).to(DEVICE)
    results = []
    for model in models:
        loss = model(ids, labels=ids).loss
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    assert len(calls) == 1 and (calls[0] >= 1) == loop  # programs: 0 for a window launch
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for (name, _), reference, fast in zip(models[0].named_parameters(), results[0][1], results[1][1]):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_mlp_cells_the_kernel_cannot_take_are_refused():
    cell = _cell(**STUDY)
    assert kernel.unsupported_reason(cell, 4, 8) is None
    assert "MLP-block cell with one context scale" in kernel.unsupported_reason(_cell(**STUDY, context_scales=2), 4, 8)
    assert "its update reading the head's input" in kernel.unsupported_reason(_cell(**STUDY, update_input="stream"), 4, 8)
    for kind in ("rms", "center"):
        reason = kernel.unsupported_reason(_cell(**STUDY, final_norm_type=kind), 4, 8)
        assert reason == f"the kernels compute the final norm as a LayerNorm, not final_norm_type {kind!r}"
    assert "int32" in kernel.unsupported_reason(cell, 2**12, 2**16)
    assert "float32" in kernel.unsupported_reason(cell.to(torch.bfloat16), 4, 8)


@cuda
@pytest.mark.parametrize("mode", ["kernel", "kernel_loop"])
def test_cuda_mlp_kernel_training_step_matches_eager_in_fp32_and_bf16(mode):
    # On the GPU: loss to 1e-5 and gradients to 1e-3 relative, as for the prototype cell's kernel.
    ids = random_ids(8, 32).cuda()
    options = dict(STUDY, dropout=0.2, context_dropout=0.1)
    for precision in ("fp32", "bf16"):
        results = []
        for path in ("compiled", mode):  # "compiled": autograd_scan, which draws the masks as the kernel does
            model = _model(path, **options).train()
            torch.manual_seed(1)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(ids, labels=ids).loss
            results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
        for reference, fast in zip(results[0][1], results[1][1]):
            error = ((fast.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12)).item()
            assert error < 1e-3, (precision, error)
