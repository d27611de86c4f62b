"""New-LLM: the fast scan equals the reference cell, the cache is the context, generate() is exact."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from newllm.models import NewLLMConfig, NewLLMForCausalLM
from newllm.models.new_llm.cell import NewLLMCell
from newllm.models.recurrent import RecurrentCache

from .conftest import random_ids, tiny_new_llm_config


def prototype_cell(num_layers: int = 3, dropout: float = 0.0, **fields) -> NewLLMCell:
    """A bare prototype cell (no embedding, no head), dropout off unless asked for."""
    return NewLLMCell(NewLLMConfig(num_hidden_layers=num_layers, dropout=dropout, **fields))


def test_step_api_equals_full_forward():
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    ids = random_ids(3, 11)
    full = model(ids).logits
    context, steps = None, []
    for t in range(ids.shape[1]):
        logits, context = model.step(ids[:, t], context)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(context, model(ids).state.states[0], rtol=1e-5, atol=1e-5)


def test_scan_matches_reference_cell_forward_and_gradients():
    torch.manual_seed(0)
    cell = prototype_cell(embedding_size=10, context_size=6, hidden_size=20, num_layers=3).double()
    inputs = torch.randn(4, 9, 10, dtype=torch.double, requires_grad=True)
    context0 = torch.randn(4, 6, dtype=torch.double)

    hidden_fast, context_fast = cell.scan(inputs, context0)
    loss_fast = hidden_fast.square().sum() + context_fast.sum()
    grads_fast = torch.autograd.grad(loss_fast, [inputs, *cell.parameters()])

    context, hiddens = context0, []
    for t in range(inputs.shape[1]):
        hidden, context = cell.step(inputs[:, t], context)
        hiddens.append(hidden)
    hidden_ref = torch.stack(hiddens, dim=1)
    loss_ref = hidden_ref.square().sum() + context.sum()
    grads_ref = torch.autograd.grad(loss_ref, [inputs, *cell.parameters()])

    torch.testing.assert_close(hidden_fast, hidden_ref)
    torch.testing.assert_close(context_fast, context)
    for fast, ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(fast, ref)


def test_context_update_is_the_gated_layernorm_equation():
    torch.manual_seed(0)
    cell = prototype_cell(embedding_size=4, context_size=5, hidden_size=8, num_layers=1, context_clamp=0.5)
    hidden, context = torch.randn(2, 8), torch.randn(2, 5)
    delta, forget, inp = cell.context_proj(hidden).chunk(3, dim=-1)
    mixed = torch.sigmoid(forget) * context + torch.sigmoid(inp) * delta
    expected = torch.nn.functional.layer_norm(mixed, (5,), cell.context_norm.weight, cell.context_norm.bias)
    torch.testing.assert_close(cell.update_context(hidden, context), expected.clamp(-0.5, 0.5))
    assert cell.update_context(hidden, context).abs().max() <= 0.5


def test_context_carried_across_calls_equals_one_call():
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    ids = random_ids(2, 12)
    first = model(ids[:, :5], use_cache=True)
    second = model(ids[:, 5:], state=first.state, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), model(ids).logits)
    assert second.state.seen_tokens == 12


def test_state_size_does_not_grow_with_sequence_length():
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    short = model(random_ids(1, 4), use_cache=True).state
    long = model(random_ids(1, 200), use_cache=True).state
    assert short.nbytes() == long.nbytes() == 16 * 4  # one (1, C) fp32 context


def test_greedy_generate_equals_manual_loop_and_full_forward_argmax():
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    prompt = random_ids(2, 6)
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    # manual loop with the step API: the prompt is read once, then one token per step
    context, logits = None, None
    for t in range(prompt.shape[1]):
        logits, context = model.step(prompt[:, t], context)
    manual = [prompt]
    for _ in range(8):
        token = logits.argmax(-1)
        manual.append(token[:, None])
        logits, context = model.step(token, context)
    torch.testing.assert_close(generated, torch.cat(manual, dim=1))
    # and every generated token is the argmax of a full forward over what came before
    full = model(generated).logits
    assert torch.equal(full[:, 5:-1].argmax(-1), generated[:, 6:])


def test_generate_feeds_only_unseen_tokens():
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    lengths = []
    hook = model.model.register_forward_hook(lambda module, args, output: lengths.append(args[0].shape[1]))
    prompt = random_ids(1, 7)
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    hook.remove()
    assert lengths == [7, 1, 1, 1, 1]


def test_left_padded_generation_equals_unpadded():
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    long, short = random_ids(1, 7, seed=1), random_ids(1, 4, seed=2)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    together = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False)
    alone = model.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=6, do_sample=False)
    assert torch.equal(together[1, 7:], alone[0, 4:])


def test_beam_search_runs_and_keeps_the_best_greedy_prefix_shape():
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    prompt = random_ids(2, 5)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, num_beams=3, do_sample=False)
    assert out.shape == (2, 9) and torch.equal(out[:, :5], prompt)


def test_save_and_auto_load_give_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "new_llm"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, NewLLMForCausalLM)
    ids = random_ids(2, 9)
    assert torch.equal(model(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("bad", [{"hidden_size": 0}, {"context_size": -1}, {"dropout": 1.0}, {"num_hidden_layers": 1.5}])
def test_config_rejects_contradictions(bad):
    with pytest.raises(ValueError, match="NewLLMConfig"):
        NewLLMConfig(**bad)


def test_no_attention_and_no_positional_embedding():
    model = NewLLMForCausalLM(tiny_new_llm_config())
    names = [name for name, _ in model.named_modules()]
    assert not any("attn" in n or "attention" in n or "pos" in n for n in names)
    # the context is the whole state: the rest of a sequence read from the context after its first
    # tokens gives the logits of the whole, and claiming any other position changes nothing
    model.eval()
    ids = random_ids(2, 12)
    with torch.no_grad():
        whole = model(ids).logits
        head = model(ids[:, :5], use_cache=True).state
        for seen in (5, 0, 1000):
            rest = model(ids[:, 5:], state=RecurrentCache(head.states, seen)).logits
            torch.testing.assert_close(rest, whole[:, 5:])
        # and the same tokens from another context give other logits: the context is read
        other = model(ids[:, 5:], state=RecurrentCache((torch.randn_like(head.states[0]),), 5)).logits
    assert not torch.allclose(other, whole[:, 5:])


def _reference_scan(cell, inputs, context):
    hiddens = []
    for t in range(inputs.shape[1]):
        hidden, context = cell.step(inputs[:, t], context)
        hiddens.append(hidden)
    return torch.stack(hiddens, dim=1), context


@pytest.mark.parametrize("num_layers, residual, ffn_norm", [(1, False, False), (3, False, False), (3, True, False),
                                                        (3, False, True), (3, True, True)])  # fmt: skip
def test_fused_scan_matches_reference_forward_and_gradients(num_layers, residual, ffn_norm):
    from newllm.models.new_llm.scan import fused_scan

    torch.manual_seed(0)
    cell = prototype_cell(embedding_size=10, context_size=6, hidden_size=20, num_layers=num_layers, context_clamp=1.5,
                          residual=residual, ffn_norm=ffn_norm).double()  # fmt: skip
    assert cell.has_handwritten_backward
    with torch.no_grad():  # non-trivial LayerNorm affines and some clamped entries
        for norm in [cell.context_norm, *(cell.norms or [])]:
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-0.5, 0.5)
    inputs = torch.randn(4, 9, 10, dtype=torch.double, requires_grad=True)
    context0 = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
    head = torch.randn(20, dtype=torch.double)

    def loss_of(hidden, context):
        return (hidden * head).sin().sum() + (context * torch.arange(6.0, dtype=torch.double)).sum()

    params = [inputs, context0, *cell.parameters()]
    hidden_fast, context_fast = fused_scan(cell, inputs, context0)
    grads_fast = torch.autograd.grad(loss_of(hidden_fast, context_fast), params)
    hidden_ref, context_ref = _reference_scan(cell, inputs, context0)
    grads_ref = torch.autograd.grad(loss_of(hidden_ref, context_ref), params)
    assert (context_ref.abs() == 1.5).any(), "the test should exercise the clamp"
    torch.testing.assert_close(hidden_fast, hidden_ref)
    torch.testing.assert_close(context_fast, context_ref)
    names = ["inputs", "context0", *[n for n, _ in cell.named_parameters()]]
    for name, fast, ref in zip(names, grads_fast, grads_ref):
        torch.testing.assert_close(fast, ref, msg=lambda m: f"gradient of {name}: {m}")


@pytest.mark.parametrize("residual, ffn_norm, context_dropout", [(False, False, 0.0), (True, True, 0.0),
                                                              (False, False, 0.4), (True, True, 0.4)])  # fmt: skip
def test_fused_scan_gradients_with_dropout_pass_gradcheck(residual, ffn_norm, context_dropout):
    from newllm.models.new_llm.scan import fused_scan

    torch.manual_seed(0)
    cell = prototype_cell(embedding_size=5, context_size=4, hidden_size=7, num_layers=3, dropout=0.3, residual=residual,
                          ffn_norm=ffn_norm, context_dropout=context_dropout).double().train()  # fmt: skip
    inputs = torch.randn(2, 5, 5, dtype=torch.double, requires_grad=True)
    context0 = torch.randn(2, 4, dtype=torch.double, requires_grad=True)

    def run(inputs, context0):
        torch.manual_seed(1)  # the same dropout masks on every call
        return fused_scan(cell, inputs, context0)

    assert torch.autograd.gradcheck(run, (inputs, context0))


def test_training_forward_uses_the_fused_path_and_equals_eval_forward():
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()  # dropout 0: the two paths must agree
    ids = random_ids(2, 10)
    with torch.no_grad():
        reference = model(ids, labels=ids)
    fused = model(ids, labels=ids)
    assert fused.loss.grad_fn is not None
    torch.testing.assert_close(fused.logits, reference.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.loss, reference.loss, rtol=1e-5, atol=1e-5)


# the cell each hand-written scan covers (scan.py, scan_mlp.py), and a weight its backward computes in fp32
BF16_CELLS = {
    "prototype": ({}, lambda cell: cell.context_proj.weight),
    "mlp": (dict(block="mlp", embedding_size=32, hidden_size=32, context_size=32, mlp_ratio=2, tie_embeddings=True,
                 final_norm=True, candidate="tanh", context_clamp=0.0, forget_bias=1.0, dropout=0.2),
            lambda cell: cell.blocks[0].up.weight),
}  # fmt: skip


@pytest.mark.parametrize("name", BF16_CELLS)
def test_fused_path_trains_under_bf16_autocast(name):
    fields, weight = BF16_CELLS[name]
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config(**fields)).train()
    ids = random_ids(2, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert weight(model.model.cell).grad.dtype == torch.float32


def test_fused_scan_with_context_dropout_equals_the_reference_with_the_same_masks(monkeypatch):
    """Context dropout hides part of c from layer 1 only: forward and every gradient, mask for mask."""
    from newllm.models.new_llm import scan as scan_module

    torch.manual_seed(0)
    batch, steps, size_c = 4, 9, 6
    cell = prototype_cell(embedding_size=10, context_size=size_c, hidden_size=20, num_layers=3, context_dropout=0.5,
                          residual=True, ffn_norm=True).double().train()  # fmt: skip
    masks = (torch.rand(steps, batch, size_c, dtype=torch.double) > 0.5).double() / 0.5
    assert 0 < (masks == 0).sum() < masks.numel()
    monkeypatch.setattr(scan_module, "dropout_masks", lambda like, shape, p: masks if p > 0 else None)
    inputs = torch.randn(batch, steps, 10, dtype=torch.double, requires_grad=True)
    context0 = torch.randn(batch, size_c, dtype=torch.double, requires_grad=True)
    params = [inputs, context0, *cell.parameters()]

    def loss_of(hidden, context):
        return hidden.sin().sum() + (context * torch.arange(float(size_c), dtype=torch.double)).sum()

    hidden_fast, context_fast = scan_module.fused_scan(cell, inputs, context0)
    grads_fast = torch.autograd.grad(loss_of(hidden_fast, context_fast), params)

    class SameMasks(torch.nn.Module):  # the reference cell's context dropout, replaying `masks` step by step
        def __init__(self):
            super().__init__()
            self.t = 0

        def forward(self, context):
            self.t += 1
            return context * masks[self.t - 1]

    cell.context_dropout = SameMasks()
    hidden_ref, context_ref = _reference_scan(cell, inputs, context0)
    grads_ref = torch.autograd.grad(loss_of(hidden_ref, context_ref), params)
    assert cell.context_dropout.t == steps
    torch.testing.assert_close(hidden_fast, hidden_ref)
    torch.testing.assert_close(context_fast, context_ref)
    names = ["inputs", "context0", *[n for n, _ in cell.named_parameters()]]
    for name, fast, ref in zip(names, grads_fast, grads_ref):
        torch.testing.assert_close(fast, ref, msg=lambda m: f"gradient of {name}: {m}")


@pytest.mark.parametrize("fields", [{}, {"block": "mlp", "mlp_ratio": 2, "final_norm": True}], ids=["prototype", "mlp"])
def test_a_training_step_leaves_no_reference_cycle(fields):
    # The hand-written backwards must not hold their outputs as ctx attributes: that cycle (output -> grad_fn -> ctx
    # -> output) keeps each step's activations alive until Python's cycle collector runs, and a CPU recall run
    # grew by megabytes a step, to 8 GB. With the cycle gone, freeing the output frees the whole graph at once.
    import gc

    model = NewLLMForCausalLM(tiny_new_llm_config(**fields)).train()
    cell = model.model.cell
    assert cell.has_handwritten_backward or cell.has_mlp_backward  # the path under test
    ids = random_ids(2, 12)
    gc.collect()
    gc.disable()
    try:
        output = model(input_ids=ids, labels=ids)
        output.loss.backward()
        del output
        assert gc.collect() == 0
    finally:
        gc.enable()
