"""The fast paths (compiled steps, CUDA graphs, GreedyDecoder) compute the reference function.

The CPU tests run everywhere; the CUDA ones run on a GPU machine (`pytest tests/unit/models -k cuda`)
and are what the H200 run in docs/performance.md executed.
"""

import gc
import importlib.util

import pytest
import torch

from newllm.models.new_llm import NewLLMForCausalLM
from newllm.models.new_llm.decoding import GreedyDecoder, kernels_by_default
from newllm.models.new_llm.modeling import FAST_PATHS
from newllm.models.recurrent import RecurrentCache
from tests.unit.models.conftest import random_ids, tiny_new_llm_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_set_fast_path_rejects_unknown_modes():
    model = NewLLMForCausalLM(tiny_new_llm_config())
    with pytest.raises(ValueError, match="unknown fast path 'graph'"):
        model.set_fast_path("graph")
    with pytest.raises(ValueError, match="unknown fast path 'graph'"):
        model.set_fast_path("graph/autograd")


def test_a_fast_path_ending_in_autograd_turns_the_handwritten_backward_off_and_back_on():
    model = NewLLMForCausalLM(tiny_new_llm_config())
    assert model.set_fast_path("compiled+graphed/autograd").model.cell.handwritten_backward is False
    assert model.model.cell.cuda_graphs and model.model.cell.compile_steps
    assert model.set_fast_path("compiled+graphed").model.cell.handwritten_backward is True


@pytest.mark.parametrize("mode", FAST_PATHS)
def test_every_fast_path_on_cpu_gives_the_eager_loss_and_gradients(mode):
    torch.manual_seed(0)
    eager = NewLLMForCausalLM(tiny_new_llm_config())
    fast = NewLLMForCausalLM(tiny_new_llm_config()).set_fast_path(mode)
    fast.load_state_dict(eager.state_dict())
    ids = random_ids(3, 12)
    losses = []
    for model in (eager, fast):
        loss = model(ids, labels=ids).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), b in zip(eager.named_parameters(), fast.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=lambda m: f"{name}: {m}")


def test_no_grad_forward_takes_the_fused_scan_only_once_a_fast_path_is_set(monkeypatch):
    # Validation during training (set_fast_path) runs the fused forward; evaluation and generation
    # of a loaded model keep the reference loop, so that their numbers stay what they were.
    import newllm.models.new_llm.modeling as modeling

    calls = []
    real = modeling.fused_scan
    monkeypatch.setattr(modeling, "fused_scan", lambda *args: calls.append(1) or real(*args))
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config(residual=True, ffn_norm=True, dropout=0.2)).eval()
    ids = random_ids(3, 12)
    with torch.no_grad():
        reference = model(ids).logits
        assert calls == []
        model.set_fast_path("compiled+graphed")  # on CPU: the fused scan, eagerly
        torch.testing.assert_close(model(ids).logits, reference)
        assert calls == [1]
        padded = torch.ones_like(ids)
        padded[0, :2] = 0  # left padding needs the reference loop's per-step select
        model(ids, attention_mask=padded)
        assert calls == [1]


def _greedy_generate(model, ids, new_tokens):
    return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, pad_token_id=0)  # fmt: skip


def _decoder_generate(decoder, model, ids, new_tokens):
    """Prompt and `new_tokens` greedy tokens: the prompt read by the model's forward, the rest by `decoder`."""
    with torch.no_grad():
        output = model(ids, use_cache=True)
    first = output.logits[:, -1].argmax(-1)
    if new_tokens == 1:
        return torch.cat([ids, first[:, None]], dim=1)
    rest, _ = decoder.decode(output.state, first, new_tokens - 1)
    return torch.cat([ids, first[:, None], rest], dim=1)


def test_greedy_decoder_equals_generate():
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    ids = random_ids(3, 7)
    decoder = GreedyDecoder(model, batch_size=3, max_new_tokens=10)
    expected = _greedy_generate(model, ids, 10)
    torch.testing.assert_close(_decoder_generate(decoder, model, ids, 10), expected, rtol=0, atol=0)
    # reusable: a second, shorter run from another prompt
    other = random_ids(3, 4, seed=1)
    torch.testing.assert_close(_decoder_generate(decoder, model, other, 3), _greedy_generate(model, other, 3), rtol=0, atol=0)


def test_greedy_decoder_hands_back_the_cache_a_forward_leaves():
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    ids = random_ids(2, 6)
    decoder = GreedyDecoder(model, batch_size=2, max_new_tokens=4)
    with torch.no_grad():
        prompt = model(ids[:, :5], use_cache=True)
        tokens, after = decoder.decode(prompt.state, ids[:, 5], 4)
        # The token and the first three new ones were fed: the state a forward over all of them leaves.
        expected = model(torch.cat([ids, tokens[:, :3]], dim=1), use_cache=True).state
    assert after.seen_tokens == expected.seen_tokens == 9
    torch.testing.assert_close(after.states[0], expected.states[0])


def test_greedy_decoder_rejects_bad_input():
    model = NewLLMForCausalLM(tiny_new_llm_config())
    with pytest.raises(ValueError, match="eval mode"):
        GreedyDecoder(model.train(), batch_size=1, max_new_tokens=4)
    decoder = GreedyDecoder(model.eval(), batch_size=2, max_new_tokens=4)
    with torch.no_grad():
        output = model(random_ids(2, 3), use_cache=True)
    first = output.logits[:, -1].argmax(-1)
    with pytest.raises(ValueError, match="new_tokens must be in 1..4"):
        decoder.decode(output.state, first, 5)
    one_row = RecurrentCache((output.state.states[0][:1],), 3)
    with pytest.raises(ValueError, match="built for batch 2"):
        decoder.decode(one_row, first[:1], 2)


def test_greedy_decoder_takes_the_decode_kernels_by_default_only_where_they_were_timed_faster():
    model = NewLLMForCausalLM(tiny_new_llm_config()).eval()
    assert GreedyDecoder(model, batch_size=1, max_new_tokens=4).kernels is None  # its device is the CPU
    assert not kernels_by_default(model, 1, torch.float32)
    cuda = torch.device("cuda")  # asked about, not used: the rule reads the device type and the cell
    # batch 1, float32, a cell the kernels cover: theirs wherever triton can be imported
    assert kernels_by_default(model, 1, torch.float32, cuda) == (importlib.util.find_spec("triton") is not None)
    for batch, dtype in ((32, torch.float32), (2, torch.float32), (1, torch.bfloat16)):
        assert not kernels_by_default(model, batch, dtype, cuda), (batch, dtype)
    assert not kernels_by_default(NewLLMForCausalLM(tiny_new_llm_config(residual=True)).eval(), 1, torch.float32, cuda)
    assert not kernels_by_default(model.train(), 1, torch.float32, cuda)


def _loss_and_grads(model, ids):
    loss = model(ids, labels=ids).loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss, grads


@cuda
@pytest.mark.parametrize("mode", ["compiled", "graphed", "compiled+graphed", "auto"])  # auto: kernel, then graphed
@pytest.mark.parametrize("options", [{}, {"residual": True, "ffn_norm": True}], ids=["prototype", "residual+norm"])
def test_cuda_fast_paths_match_eager_forward_and_gradients(mode, options):
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config(**options)).cuda()  # dropout 0: the same function
    ids = random_ids(4, 16).cuda()
    loss_ref, grads_ref = _loss_and_grads(model, ids)
    model.set_fast_path(mode)
    for _ in range(2):  # the first call captures, the second replays
        loss, grads = _loss_and_grads(model, ids)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
        for ref, fast in zip(grads_ref, grads):
            torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


# The MLP-block cell (block="mlp" with the options it is used with): scan_mlp.py's hand-written backward or
# autograd, compiled and captured as CUDA graphs
MLP_CELL = dict(block="mlp", embedding_size=32, hidden_size=32, context_size=32, mlp_ratio=2, tie_embeddings=True,
                final_norm=True, candidate="tanh", context_clamp=0.0, forget_bias=1.0)  # fmt: skip


@cuda
@pytest.mark.parametrize("handwritten", [True, False], ids=["scan_mlp", "autograd"])
@pytest.mark.parametrize("mode", ["compiled", "graphed", "compiled+graphed", "auto"])  # auto: kernel_mlp.py
def test_cuda_fast_paths_match_eager_for_the_mlp_cell(mode, handwritten):
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config(**MLP_CELL)).cuda()
    model.model.cell.handwritten_backward = handwritten
    ids = random_ids(4, 16).cuda()
    with torch.no_grad():
        logits_ref = model(ids).logits
    loss_ref, grads_ref = _loss_and_grads(model, ids)
    model.set_fast_path(mode)
    for _ in range(2):  # capture, then replay
        loss, grads = _loss_and_grads(model, ids)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
        for ref, fast in zip(grads_ref, grads):
            torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, logits_ref, rtol=1e-5, atol=1e-5)
    if "graphed" in mode:
        assert len(model.model.cell._scan_graphs) == 2  # training and validation


AUTOGRAD_CELLS = {
    "mlp cell": MLP_CELL,
    "mlp, dropouts": {**MLP_CELL, "dropout": 0.2, "context_dropout": 0.1},
    "linear, tanh, final norm": dict(candidate="tanh", final_norm=True, residual=True, ffn_norm=True, num_hidden_layers=3),
    "linear, no clamp": dict(context_clamp=0.0, dropout=0.2),
    "mlp, rms final norm": {**MLP_CELL, "final_norm_type": "rms"},
    "linear, centring final norm": dict(final_norm=True, final_norm_type="center", residual=True),
}


@pytest.mark.parametrize("name", AUTOGRAD_CELLS)
def test_cell_step_along_t_is_the_reference_scan(name):
    """scan.autograd_scan's pure step function, eagerly on CPU: the same outputs and gradients as `cell.scan`
    (with dropout on, the same masks cannot be drawn: then eval mode, dropout off)."""
    from newllm.models.new_llm.scan import autograd_scan

    torch.manual_seed(0)
    cell = NewLLMForCausalLM(tiny_new_llm_config(**AUTOGRAD_CELLS[name])).model.cell.eval()
    embeddings = torch.randn(3, 9, cell.embedding_size, requires_grad=True)
    context = torch.randn(3, cell.context_size)
    outputs = [cell.scan(embeddings, context), autograd_scan(cell, embeddings, context)]
    weights = torch.randn_like(outputs[0][0]), torch.randn_like(outputs[0][1])
    grads = []
    for hidden, last in outputs:
        loss = (hidden * weights[0]).sum() + (last * weights[1]).sum()
        grads.append(torch.autograd.grad(loss, [embeddings, *cell.parameters()]))
    torch.testing.assert_close(outputs[1], outputs[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a)


def test_cell_step_draws_each_layers_dropout_mask_where_the_reference_drops():
    """Training mode: every mask multiplies; the scan's mean output over many draws matches dropout off."""
    from newllm.models.new_llm.scan import autograd_scan

    torch.manual_seed(0)
    cell = NewLLMForCausalLM(tiny_new_llm_config(**{**MLP_CELL, "dropout": 0.5})).model.cell
    embeddings, context = torch.randn(1, 2, cell.embedding_size).expand(4000, 2, -1), torch.zeros(4000, cell.context_size)
    with torch.no_grad():
        dropped = autograd_scan(cell.train(), embeddings, context)[0]
        clean = autograd_scan(cell.eval(), embeddings, context)[0]
    assert not torch.allclose(dropped[0], dropped[1])
    torch.testing.assert_close(dropped[:, 0].mean(0), clean[0, 0], atol=0.1, rtol=0)


@cuda
def test_cuda_mlp_cell_under_bf16_and_its_dropout_masks():
    # Under bf16 autocast the scan still runs in fp32 (as every fast path does): the loss stays within bf16's
    # rounding of eager's; with dropout on, each replay draws new masks.
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config(**MLP_CELL)).cuda()
    ids = random_ids(4, 16).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(ids, labels=ids).loss
        model.set_fast_path("compiled+graphed")
        fast = [model(ids, labels=ids).loss for _ in range(2)]
    for loss in fast:
        torch.testing.assert_close(loss, eager, rtol=2e-2, atol=0)
    dropped = NewLLMForCausalLM(tiny_new_llm_config(**{**MLP_CELL, "dropout": 0.3})).cuda().train()
    dropped.set_fast_path("compiled+graphed")
    losses = [dropped(ids, labels=ids).loss.item() for _ in range(3)]
    assert len(set(losses)) == 3, losses


@cuda
def test_cuda_graphed_decoder_equals_generate_for_the_mlp_cell():
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config(**MLP_CELL)).cuda().eval()
    ids = random_ids(2, 9).cuda()
    decoder = GreedyDecoder(model, batch_size=2, max_new_tokens=12)
    assert decoder.graph is not None
    torch.testing.assert_close(_decoder_generate(decoder, model, ids, 12), _greedy_generate(model, ids, 12), rtol=0, atol=0)


@cuda
@pytest.mark.parametrize("mode", ["compiled", "graphed", "compiled+graphed"])
def test_cuda_fast_paths_match_eager_under_no_grad_between_training_steps(mode):
    # validation between training steps: a forward-only capture beside the training one
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config(residual=True, ffn_norm=True)).cuda()
    ids = random_ids(4, 16).cuda()
    with torch.no_grad():
        logits_ref = model(ids).logits
    loss_ref, grads_ref = _loss_and_grads(model, ids)
    model.set_fast_path(mode)
    for _ in range(2):
        loss, grads = _loss_and_grads(model, ids)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
        for ref, fast in zip(grads_ref, grads):
            torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            for batch in (ids, ids[:3]):  # and a short last batch
                torch.testing.assert_close(model(batch).logits, logits_ref[: len(batch)], rtol=1e-5, atol=1e-5)
    if "graphed" in mode:
        assert len(model.model.cell._scan_graphs) == 3  # training, validation, short validation


@cuda
@pytest.mark.parametrize("options", [{"dropout": 0.3}, {"dropout": 0.0, "context_dropout": 0.3}], ids=["hidden", "context"])
def test_cuda_graphed_scan_draws_new_dropout_masks_each_replay(options):
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config(**options)).cuda().train().set_fast_path("graphed")
    assert model.model.cell.has_handwritten_backward
    ids = random_ids(4, 16).cuda()
    losses = [model(ids, labels=ids).loss.item() for _ in range(3)]
    assert len(set(losses)) == 3, losses


@cuda
def test_cuda_graphed_decoder_equals_eager_decoder():
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config()).cuda().eval()
    ids = random_ids(2, 9).cuda()
    decoder = GreedyDecoder(model, batch_size=2, max_new_tokens=12)
    assert decoder.graph is not None
    expected = _greedy_generate(model, ids, 12)
    torch.testing.assert_close(_decoder_generate(decoder, model, ids, 12), expected, rtol=0, atol=0)


@cuda
def test_cuda_greedy_decoder_at_batch_1_takes_the_decode_kernels_by_default_and_equals_generate():
    pytest.importorskip("triton", reason="the decode kernels need triton")
    torch.manual_seed(0)
    model = NewLLMForCausalLM(tiny_new_llm_config()).cuda().eval()
    ids = random_ids(1, 9).cuda()
    decoder = GreedyDecoder(model, batch_size=1, max_new_tokens=12)
    assert decoder.kernels is not None and decoder.graph is not None
    torch.testing.assert_close(_decoder_generate(decoder, model, ids, 12), _greedy_generate(model, ids, 12), rtol=0, atol=0)
    assert GreedyDecoder(model, batch_size=2, max_new_tokens=12).kernels is None  # batch 2: the graph


@cuda
def test_cuda_decoders_built_one_after_another_hold_no_memory():
    # Each capture once ran on a new side stream, and PyTorch keeps a cuBLAS workspace (33 MiB on an
    # H200) per stream for good: bench's graphed rows grew by that much each.
    model = NewLLMForCausalLM(tiny_new_llm_config()).cuda().eval()
    ids = random_ids(1, 9).cuda()

    def build_and_release():
        decoder = GreedyDecoder(model, batch_size=1, max_new_tokens=4, kernels=False)  # the graph's capture
        _decoder_generate(decoder, model, ids, 4)
        del decoder
        gc.collect()
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    first = build_and_release()
    assert [build_and_release() for _ in range(3)] == [first] * 3
