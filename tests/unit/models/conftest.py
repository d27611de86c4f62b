import pytest
import torch

from newllm.models import BaselineShape, NewLLMConfig, build_model, matched_configs

VOCAB = 300


def tiny_new_llm_config(**overrides) -> NewLLMConfig:
    values = dict(
        vocab_size=VOCAB,
        embedding_size=24,
        context_size=16,
        hidden_size=48,
        num_hidden_layers=2,
        dropout=0.0,
        # no end-of-text id: generation must not stop early in equality tests
        pad_token_id=0,
    )
    values.update(overrides)
    return NewLLMConfig(**values)


def order_one_(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with parameters of order one, in place: the default init leaves every gate near 0.5 and every
    activation near 0, which would hide a wrong sign or a missing term from a test (and make logits near-tied)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            elif name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return module


def assert_scans_agree(cell, inputs, reference, fast, grad_atol: float = 1e-5) -> None:
    """Two scans of `cell` on `inputs` ((T, B, H) token part and (B, C) context first, both needing grad): the same
    hidden states and last context to 1e-5, and the same gradient of a random linear loss for the inputs and every
    parameter (to 1e-4 relative, `grad_atol` absolute). The input layer's bias lives in the token part, computed
    outside the scan: neither may give it a gradient."""
    outputs = [reference(cell, *inputs), fast(cell, *inputs)]
    for expected, got in zip(*outputs):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(outputs[0][0]), torch.randn_like(outputs[0][1])
    leaves = [inputs[0], inputs[1], *cell.parameters()]
    names = ["token part", "context", *(n for n, _ in cell.named_parameters())]
    grads = []
    for hidden, last in outputs:
        loss = (hidden * weights[0]).sum() + (last * weights[1]).sum()
        grads.append(torch.autograd.grad(loss, leaves, allow_unused=True))
    for label, expected, got in zip(names, *grads):
        if expected is None:
            assert got is None or not got.any(), label
            continue
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=grad_atol, msg=lambda m: f"{label}: {m}")


@pytest.fixture
def tiny_configs():
    return matched_configs(tiny_new_llm_config(), shape=BaselineShape(gpt2_positions=64, dropout=0.0))


@pytest.fixture(params=["new_llm", "tinygpt2", "lstm", "mamba2"])
def any_model(request, tiny_configs):
    torch.manual_seed(0)
    return request.param, build_model(request.param, tiny_configs[request.param]).eval()


def random_ids(batch, length, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # never id 0 (pad / end of text) so padding tests can tell prompt tokens from pads
    return torch.randint(1, VOCAB, (batch, length), generator=generator)
