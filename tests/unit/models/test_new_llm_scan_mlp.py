"""scan_mlp.py: the MLP-block cell's hand-written backward computes `cell.step` along T and its gradients."""

import shutil
from unittest.mock import patch

import pytest
import torch

from newllm.models.new_llm import NewLLMConfig, NewLLMForCausalLM
from newllm.models.new_llm import modeling
from newllm.models.new_llm.cell import NewLLMCell
from newllm.models.new_llm.scan import autograd_scan
from newllm.models.new_llm import scan_mlp
from newllm.models.new_llm.scan_mlp import mlp_scan
from tests.unit.models.conftest import random_ids, tiny_new_llm_config


def mlp_cell(**fields) -> NewLLMCell:
    """A bare float64 MLP-block cell with non-trivial LayerNorm affines (γ, β away from 1, 0)."""
    torch.manual_seed(0)
    values = dict(block="mlp", mlp_ratio=2, embedding_size=6, context_size=5, hidden_size=8, num_hidden_layers=2,
                  dropout=0.0)  # fmt: skip
    cell = NewLLMCell(NewLLMConfig(**{**values, **fields})).double()
    with torch.no_grad():
        for module in cell.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.5, 0.5)
    return cell


def _inputs(cell, batch=3, steps=7):
    inputs = torch.randn(batch, steps, cell.embedding_size, dtype=torch.double, requires_grad=True)
    context0 = torch.randn(batch, cell.context_size, dtype=torch.double, requires_grad=True)
    return inputs, context0


def _loss(hidden, context):
    head = torch.linspace(-1.0, 1.0, hidden.shape[-1], dtype=hidden.dtype)
    return (hidden * head).sin().sum() + (context * torch.arange(float(context.shape[-1]), dtype=context.dtype)).sum()


@pytest.mark.parametrize(
    "fields",
    [
        dict(final_norm=True, candidate="tanh", context_clamp=0.0),  # configs/study.toml's cell
        dict(final_norm=False, candidate="linear", context_clamp=1.5),  # some entries clamped
        dict(final_norm=True, candidate="linear", context_clamp=0.0, num_hidden_layers=1),
        dict(final_norm=False, candidate="tanh", context_clamp=0.0, num_hidden_layers=3, mlp_ratio=1),
    ],
    ids=["study cell", "clamp", "one block", "three blocks"],
)
def test_mlp_scan_matches_the_reference_forward_and_every_gradient(fields):
    cell = mlp_cell(**fields)
    assert cell.has_mlp_backward and not cell.has_handwritten_backward
    inputs, context0 = _inputs(cell)
    params = [inputs, context0, *cell.parameters()]
    hidden, context = mlp_scan(cell, inputs, context0)
    grads = torch.autograd.grad(_loss(hidden, context), params)
    hidden_ref, context_ref = cell.scan(inputs, context0)
    grads_ref = torch.autograd.grad(_loss(hidden_ref, context_ref), params)
    if fields["context_clamp"] > 0:
        assert (context_ref.abs() == fields["context_clamp"]).any(), "the test should exercise the clamp"
    torch.testing.assert_close(hidden, hidden_ref)
    torch.testing.assert_close(context, context_ref)
    names = ["inputs", "context0", *[n for n, _ in cell.named_parameters()]]
    for name, fast, ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(fast, ref, msg=lambda m: f"gradient of {name}: {m}")


@pytest.mark.parametrize("context_dropout", [0.0, 0.4])
def test_mlp_scan_gradients_with_dropout_pass_gradcheck(context_dropout):
    cell = mlp_cell(final_norm=True, candidate="tanh", context_clamp=0.0, dropout=0.3,
                    context_dropout=context_dropout).train()  # fmt: skip
    inputs, context0 = _inputs(cell, batch=2, steps=4)

    def run(inputs, context0):
        torch.manual_seed(1)  # the same dropout masks on every call
        return mlp_scan(cell, inputs, context0)

    assert torch.autograd.gradcheck(run, (inputs, context0))


def test_mlp_scan_draws_the_masks_of_the_autograd_scan():
    """With dropout on and one seed, the hand-written and the autograd scan give the same outputs and
    gradients: the masks are drawn alike, so a switch between the two paths changes nothing."""
    cell = mlp_cell(final_norm=True, candidate="tanh", context_clamp=0.0, dropout=0.3, context_dropout=0.2).train()
    inputs, context0 = _inputs(cell)
    params = [inputs, context0, *cell.parameters()]
    results = []
    for scan in (mlp_scan, autograd_scan):
        torch.manual_seed(3)
        hidden, context = scan(cell, inputs, context0)
        results.append((hidden, context, torch.autograd.grad(_loss(hidden, context), params)))
    (hidden, context, grads), (hidden_ref, context_ref, grads_ref) = results
    torch.manual_seed(4)
    assert not torch.allclose(mlp_scan(cell, inputs, context0)[0], hidden), "another seed draws other masks"
    torch.testing.assert_close(hidden, hidden_ref)
    torch.testing.assert_close(context, context_ref)
    for fast, ref in zip(grads, grads_ref):
        torch.testing.assert_close(fast, ref)


MLP_MODEL = dict(block="mlp", embedding_size=32, hidden_size=32, context_size=32, mlp_ratio=2, tie_embeddings=True,
                 final_norm=True, candidate="tanh", context_clamp=0.0, forget_bias=1.0)  # fmt: skip


@pytest.mark.parametrize("handwritten", [True, False])
def test_training_takes_the_mlp_scan_unless_told_not_to(monkeypatch, handwritten):
    calls = []
    real = modeling.mlp_scan
    monkeypatch.setattr(modeling, "mlp_scan", lambda *args: calls.append(1) or real(*args))
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config(**MLP_MODEL))
    model.model.cell.handwritten_backward = handwritten
    ids = random_ids(2, 9)
    with torch.no_grad():
        reference = model(ids, labels=ids).loss  # no_grad, no fast path: the reference loop
    assert not calls
    loss = model(ids, labels=ids).loss
    assert len(calls) == int(handwritten)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler")  # fmt: skip
def test_compiled_step_functions_equal_the_eager_ones():
    """The fast path compiles `forward_step` and `backward_step` on CUDA only. Patched in here, inductor's CPU
    backend checks that both trace and compute what the eager functions compute (dropout on, the same masks)."""
    cell = mlp_cell(final_norm=True, candidate="tanh", context_clamp=0.0, dropout=0.2).float().train()
    inputs = torch.randn(3, 5, cell.embedding_size, requires_grad=True)
    context0 = torch.randn(3, cell.context_size)
    results = []
    for compiled in (False, True):
        torch.manual_seed(2)
        with patch.object(scan_mlp, "EAGER_STEPS", scan_mlp.compiled_steps() if compiled else scan_mlp.EAGER_STEPS):
            hidden, context = mlp_scan(cell, inputs, context0)
        results.append((hidden, context, torch.autograd.grad(_loss(hidden, context), [inputs, *cell.parameters()])))
    (hidden, context, grads), (hidden_c, context_c, grads_c) = results
    torch.testing.assert_close(hidden_c, hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(context_c, context, rtol=1e-5, atol=1e-5)
    for fast, ref in zip(grads_c, grads):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
