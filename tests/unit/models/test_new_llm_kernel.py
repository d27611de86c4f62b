"""The Triton kernels of kernel.py compute the prototype cell's training scan: outputs, every gradient, dropout masks.

Without a GPU the kernels run in Triton's CPU interpreter. `triton.jit` decides when a kernel is
defined whether it is compiled or interpreted (triton's own helpers such as `tl.sum` when triton is
first imported), so tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton, and
only when CUDA is absent: with a GPU the same tests run the compiled kernels
(`pytest tests/unit/models/test_new_llm_kernel.py` on the GPU machine). Without triton (CI) they skip.
"""

import pytest
import torch

triton = pytest.importorskip("triton", reason="the kernel path needs triton (CI does not install it)")
if not torch.cuda.is_available() and not triton.knobs.runtime.interpret:
    pytest.skip("no GPU and TRITON_INTERPRET is not 1: the kernels cannot run", allow_module_level=True)

from newllm.models.new_llm import NewLLMForCausalLM, kernel  # noqa: E402
from newllm.models.new_llm.modeling import kernel_refusal  # noqa: E402
from newllm.models.new_llm.scan import CellShape, ScanOptions, cell_step, dropout_masks  # noqa: E402
from tests.unit.models.conftest import assert_scans_agree, order_one_, random_ids, tiny_new_llm_config  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cell(**overrides):
    """A tiny prototype cell with parameters of order one (the default init leaves every gate near 0.5 and
    every activation near 0, which would hide a wrong sign or a missing term)."""
    torch.manual_seed(0)
    return order_one_(NewLLMForCausalLM(tiny_new_llm_config(**overrides)).model.cell.to(DEVICE))


def _kernel_inputs(cell, batch, steps, dropout, context_dropout):
    """(T, B, H) token part, (B, C) context, the masks and the weights the scan takes; the first two need grad."""
    size_h, size_c = cell.layers[0].out_features, cell.context_size
    token_part = torch.randn(steps, batch, size_h, device=DEVICE, requires_grad=True)
    context = torch.randn(batch, size_c, device=DEVICE, requires_grad=True)
    masks = dropout_masks(token_part, (steps, len(cell.layers), batch, size_h), dropout)
    context_masks = dropout_masks(token_part, (steps, batch, size_c), context_dropout)
    return token_part, context, masks, context_masks


def _run_kernel(cell, token_part, context, masks, context_masks):
    context_weight = cell.layers[0].weight[:, cell.embedding_size :]
    params = [p for layer in cell.layers[1:] for p in (layer.weight, layer.bias)]
    options = ScanOptions(cell.context_norm.eps, cell.context_clamp, False, False)
    return kernel.NewLLMKernelScan.apply(options, 0, token_part, context, masks, context_masks, context_weight,
                                         cell.context_norm.weight, cell.context_norm.bias, cell.context_proj.weight,
                                         cell.context_proj.bias, *params)  # fmt: skip


def _run_reference(cell, token_part, context, masks, context_masks):
    """scan.cell_step along T under autograd: the step written with torch ops, masks given."""
    p = dict(cell.named_parameters())
    shape = CellShape(False, len(cell.layers), False, False, None, False, cell.context_clamp, cell.context_norm.eps,
                      masks is not None, context_masks is not None)  # fmt: skip
    context_weight = p["layers.0.weight"][:, cell.embedding_size :]
    hiddens = []
    for t in range(token_part.shape[0]):
        step_masks = None if masks is None else masks[t]
        step_context_masks = None if context_masks is None else context_masks[t]
        hidden, context = cell_step(token_part[t], context, step_masks, step_context_masks, context_weight, p, shape)
        hiddens.append(hidden)
    return torch.stack(hiddens), context


CASES = {
    # name: cell overrides, batch, steps, dropout p, context dropout p
    "two layers": ({}, 3, 6, 0.0, 0.0),
    "dropout masks": ({"num_hidden_layers": 3}, 3, 6, 0.3, 0.2),
    "one layer": ({"num_hidden_layers": 1}, 2, 4, 0.2, 0.0),
    # a clamp the context reaches (the gradient is cut there); B > BLOCK_B and H, C over one tile: several programs
    # and the tile loops' ragged last tiles
    "clamp, tiles": ({"context_clamp": 1.2, "hidden_size": 72, "context_size": 70}, 18, 3, 0.2, 0.1),
}


@pytest.mark.parametrize("name", CASES)
def test_kernel_outputs_and_gradients_equal_the_reference_step(name):
    overrides, batch, steps, dropout, context_dropout = CASES[name]
    cell = _cell(**overrides)
    inputs = _kernel_inputs(cell, batch, steps, dropout, context_dropout)
    if "clamp" in name:  # the case must reach the clamp for the test to check its gradient
        with torch.no_grad():
            assert (_run_reference(cell, *inputs)[1].abs() == cell.context_clamp).any()
    assert_scans_agree(cell, inputs, _run_reference, _run_kernel)


def test_kernel_scan_equals_cell_scan_at_every_position():
    # eval mode (no dropout): kernel_scan on embeddings against the reference `cell.scan`; each prefix's last
    # context is the context sequence, and the embeddings' gradient is the input's
    cell = _cell(num_hidden_layers=3).eval()
    embeddings = torch.randn(2, 5, cell.embedding_size, device=DEVICE, requires_grad=True)
    context = torch.randn(2, cell.context_size, device=DEVICE)
    with torch.no_grad():
        for t in range(1, 6):
            expected = cell.scan(embeddings[:, :t], context)
            for fast, reference in zip(kernel.kernel_scan(cell, embeddings[:, :t], context), expected):
                torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    grads = []
    for scan in (cell.scan, lambda *args: kernel.kernel_scan(cell, *args)):
        hidden, last = scan(embeddings, context)
        grads.append(torch.autograd.grad(hidden.square().sum() + last.sum(), [embeddings, *cell.parameters()]))
    for reference, fast in zip(*grads):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


def _model(mode, **overrides):
    torch.manual_seed(0)
    return NewLLMForCausalLM(tiny_new_llm_config(**overrides)).to(DEVICE).set_fast_path(mode)


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many times the model took the kernel path."""
    calls = []
    real = kernel.kernel_scan
    monkeypatch.setattr(kernel, "kernel_scan", lambda *args: calls.append(1) or real(*args))
    return calls


# both launches of the kernels: a program per row block ("kernel") and a program per SM ("kernel_loop",
# test_new_llm_kernel_loop.py)
MODES = ["kernel", "kernel_loop"]


@pytest.mark.parametrize("mode", MODES)
def test_model_training_step_with_dropout_equals_eager(kernel_calls, mode):
    # The kernel path draws its masks as scan.py does: one seed, the same masks, the same loss and gradients.
    options = dict(dropout=0.2, context_dropout=0.1)
    models = [_model("eager", **options).train(), _model(mode, **options).train()]
    ids = random_ids(3, 8).to(DEVICE)
    results = []
    for model in models:
        torch.manual_seed(1)
        loss = model(ids, labels=ids).loss
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    assert kernel_calls == [1]
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for (name, _), reference, fast in zip(models[0].named_parameters(), results[0][1], results[1][1]):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mode", MODES)
def test_gradient_accumulation_over_two_windows_equals_one(kernel_calls, mode):
    # Two half batches, each loss halved and backpropagated in turn, give the full batch's gradient: nothing a
    # backward needs is shared between calls, and the kernel's gradients add up in .grad like any other.
    model = _model(mode)
    ids = random_ids(4, 8).to(DEVICE)
    model(ids, labels=ids).loss.backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    first, second = model(ids[:2], labels=ids[:2]).loss, model(ids[2:], labels=ids[2:]).loss
    (first / 2).backward()
    (second / 2).backward()
    assert len(kernel_calls) == 3
    for (name, p), expected in zip(model.named_parameters(), full):
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("mode", MODES)
def test_a_context_carried_into_the_next_window_passes_its_gradient_back(kernel_calls, mode):
    # The second window starts from the first one's context without detaching it: the backward of the second
    # scan hands dL/dc_0 to the first one's (its dL/dc_T input), with both graphs alive at once.
    ids = random_ids(2, 10).to(DEVICE)
    grads = []
    for path in ("eager", mode):
        model = _model(path)
        first = model(ids[:, :5], labels=ids[:, :5])
        second = model(ids[:, 5:], labels=ids[:, 5:], state=first.state)
        grads.append(torch.autograd.grad(first.loss + second.loss, list(model.parameters())))
    assert kernel_calls == [1, 1]
    for reference, fast in zip(*grads):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-6)


REFUSED = {
    "residual": dict(residual=True),
    "ffn_norm": dict(ffn_norm=True),
    "no clamp": dict(context_clamp=0.0),
}


@pytest.mark.parametrize("name", REFUSED)
def test_cells_the_kernel_does_not_cover_are_refused_and_fall_back(name, kernel_calls):
    model = _model("kernel", **REFUSED[name])
    ids = random_ids(2, 6).to(DEVICE)
    reason = kernel_refusal(model.model.cell, model.model.embed_tokens(ids))
    assert reason is not None and "the kernels cover the prototype cell" in reason
    eager = _model("eager", **REFUSED[name])
    torch.testing.assert_close(model(ids, labels=ids).loss, eager(ids, labels=ids).loss)
    assert kernel_calls == []  # the model fell back to the eager scan
    with pytest.raises(ValueError, match="the kernels cover the prototype cell"):
        kernel.kernel_scan(model.model.cell, torch.zeros(2, 6, model.config.embedding_size, device=DEVICE),
                           torch.zeros(2, model.config.context_size, device=DEVICE))  # fmt: skip


@pytest.mark.parametrize("name", ["covered", *REFUSED])
def test_auto_takes_the_kernel_where_it_applies_and_the_other_scans_silently_elsewhere(name, kernel_calls, recwarn):
    # On a GPU a refused cell runs the compiled, graphed scan without the warning "kernel" gives; the
    # interpreter (CPU) runs every path eagerly and warns in neither mode.
    overrides = REFUSED.get(name, {})
    ids = random_ids(2, 6).to(DEVICE)
    losses = [_model(mode, **overrides)(ids, labels=ids).loss for mode in ("eager", "auto")]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert kernel_calls == ([1] if name == "covered" else [])
    assert not [w for w in recwarn if "not taken" in str(w.message)]


def test_shapes_and_dtypes_the_kernel_cannot_take_are_refused():
    cell = _cell()
    assert kernel.unsupported_reason(cell, 4, 8) is None
    # a (L, T, B, H) buffer of 2 · 2^16 · 2^12 · 48 values: past the kernels' int32 offsets
    assert "int32" in kernel.unsupported_reason(cell, 2**12, 2**16)
    assert "float32" in kernel.unsupported_reason(cell.to(torch.bfloat16), 4, 8)


def test_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cell = _cell().cpu()
    assert "CUDA" in kernel_refusal(cell, torch.zeros(2, 3, cell.embedding_size))


def _relative_error(fast, reference):
    return ((fast.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12)).item()


@cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", [{}, {"dropout": 0.2, "context_dropout": 0.1}], ids=["prototype", "dropouts"])
def test_cuda_kernel_training_step_matches_eager_in_fp32_and_bf16(options, mode, kernel_calls):
    ids = random_ids(8, 32).cuda()
    for precision in ("fp32", "bf16"):
        results = []
        for path in ("eager", mode):
            model = _model(path, **options).train()
            torch.manual_seed(1)  # the same dropout masks in both paths
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(ids, labels=ids).loss
            results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
        (loss_ref, grads_ref), (loss, grads) = results
        if precision == "fp32":
            torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=0)
            for ref, fast in zip(grads_ref, grads):
                torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6)
        else:
            # Both run the recurrence in fp32 and the head in bf16: a hidden value one fp32 rounding apart can
            # round to a different bf16, so the gradients are compared as whole tensors (relative norm of the
            # difference), not element by element.
            torch.testing.assert_close(loss, loss_ref, rtol=1e-3, atol=0)
            for (name, _), ref, fast in zip(model.named_parameters(), grads_ref, grads):
                assert _relative_error(fast, ref) < 1e-3, name
    assert len(kernel_calls) == 2


@cuda
@pytest.mark.parametrize("mode, batch, steps", [("kernel", 64, 32), ("kernel_loop", 64, 32), ("kernel_loop", 256, 64)])
def test_cuda_kernel_at_full_width_matches_the_hand_written_scan(mode, batch, steps):
    # The default model's widths (E 256, C 256, H 512, 3 layers) over many programs: the tiling and the barriers
    # between phases as the GPU runs them, which the interpreter (one program at a time) cannot check. The loop
    # launch runs one program per SM.
    from newllm.models.new_llm.scan import fused_scan

    torch.manual_seed(0)
    config = tiny_new_llm_config(embedding_size=256, context_size=256, hidden_size=512, num_hidden_layers=3,
                                 dropout=0.1, context_dropout=0.1)  # fmt: skip
    cell = NewLLMForCausalLM(config).model.cell.cuda().train()
    cell.kernel_loop = mode == "kernel_loop"
    embeddings = torch.randn(batch, steps, 256, device="cuda", requires_grad=True)
    context = torch.randn(batch, 256, device="cuda")
    grads = []
    for scan in (fused_scan, kernel.kernel_scan):
        torch.manual_seed(1)
        hidden, last = scan(cell, embeddings, context)
        loss = hidden.square().mean() + last.mean()
        grads.append((hidden, last, *torch.autograd.grad(loss, [embeddings, *cell.parameters()])))
    for reference, fast in zip(*grads):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
