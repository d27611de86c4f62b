"""decode_kernel.py: New-LLM's greedy step as a few Triton kernels (prototype and MLP-block cells) gives model.step's
logits, context and tokens. Run as the other kernel tests are: in Triton's CPU interpreter without a GPU, skipped
without triton (CI)."""

import pytest
import torch

triton = pytest.importorskip("triton", reason="the kernel path needs triton (CI does not install it)")
if not torch.cuda.is_available() and not triton.knobs.runtime.interpret:
    pytest.skip("no GPU and TRITON_INTERPRET is not 1: the kernels cannot run", allow_module_level=True)

from newllm.models.new_llm import NewLLMForCausalLM  # noqa: E402
from newllm.models.new_llm.decode_kernel import BLOCK_V, ROW_K, ROW_V, DecodeKernels  # noqa: E402
from newllm.models.new_llm.decoding import GreedyDecoder  # noqa: E402
from newllm.models.recurrent import RecurrentCache  # noqa: E402
from tests.unit.models.conftest import order_one_, tiny_new_llm_config  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _model(**overrides):
    """A tiny prototype-cell model with weights of order one (so that the logits are far apart, no near-ties)."""
    torch.manual_seed(0)
    return order_one_(NewLLMForCausalLM(tiny_new_llm_config(**overrides)).to(DEVICE).eval())


CASES = {
    # name: model overrides, batch
    "batch 1": ({}, 1),
    # batch 1 runs as products summed (ROW_N columns a program): widths not a multiple of its tiles, a vocabulary
    # over ragged head tiles, a layer wider than one ROW_K load
    "batch 1, ragged": ({"vocab_size": 3 * ROW_V + 5, "hidden_size": ROW_K + 24, "context_size": 70,
                         "context_clamp": 1.2, "num_hidden_layers": 3}, 1),  # fmt: skip
    "study cell, batch 1": ({"block": "mlp", "embedding_size": 40, "hidden_size": 40, "context_size": 24,
                             "mlp_ratio": 2, "tie_embeddings": True, "final_norm": True, "candidate": "tanh",
                             "context_clamp": 0.0, "forget_bias": 1.0}, 1),  # fmt: skip
    # 18 rows: two row blocks; a vocabulary over three head tiles, the last one ragged; a clamp that binds
    "two row blocks, ragged tiles": ({"vocab_size": 2 * BLOCK_V + 37, "hidden_size": 72, "context_size": 70,
                                      "context_clamp": 1.2, "num_hidden_layers": 3}, 18),  # fmt: skip
    "one layer, tied head": ({"num_hidden_layers": 1, "embedding_size": 48, "tie_embeddings": True}, 3),
    # the study's MLP-block cell: final norm, tanh candidate, no clamp, tied head
    "study cell": ({"block": "mlp", "embedding_size": 32, "hidden_size": 32, "context_size": 32, "mlp_ratio": 2,
                    "tie_embeddings": True, "final_norm": True, "candidate": "tanh", "context_clamp": 0.0,
                    "forget_bias": 1.0}, 2),  # fmt: skip
    # MLP blocks without a final norm, a clamp that binds, an untied head; two row blocks, ragged tiles
    "mlp blocks, clamp, tiles": ({"block": "mlp", "mlp_ratio": 2, "hidden_size": 72, "context_size": 70,
                                  "context_clamp": 1.2, "vocab_size": BLOCK_V + 9}, 18),  # fmt: skip
}


def _case(name):
    """CASES[name]'s model, its batch size, and a random token and context for each row."""
    overrides, batch = CASES[name]
    model = _model(**overrides)
    token = torch.randint(1, model.config.vocab_size, (batch,), device=DEVICE)
    return model, batch, token, torch.randn(batch, model.config.context_size, device=DEVICE)


@pytest.mark.parametrize("tail", [True, False], ids=["update in the head's launch", "update launched alone"])
@pytest.mark.parametrize("name", CASES)
def test_one_kernel_step_equals_model_step(name, tail):
    model, batch, token, context = _case(name)
    expected_logits, expected_context = model.step(token, context)
    kernels = DecodeKernels(model, batch, tail=tail)
    kernels.context.copy_(context)
    tokens = torch.zeros(batch, 4, dtype=torch.long, device=DEVICE)
    position = torch.tensor([2], device=DEVICE)
    logits = torch.empty(batch, model.config.vocab_size, device=DEVICE)
    fed = token.clone()
    kernels.step(fed, tokens, position, logits)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernels.context, expected_context, rtol=1e-5, atol=1e-5)
    if "clamp" in name:
        assert (expected_context.abs() == model.config.context_clamp).any()
    assert torch.equal(fed, expected_logits.argmax(-1))
    assert torch.equal(tokens[:, 2], fed) and not tokens[:, [0, 1, 3]].any()
    assert position.item() == 3  # the step advances it, in the kernel where one program runs (batch ≤ 16)
    assert not kernels.counter.any()  # the last program of each row block reset its count for the next step


def _prompted(name):
    """CASES[name]'s model and batch size, the cache after a 5-token prompt, and a first token for each row."""
    overrides, batch = CASES[name]
    model = _model(**overrides)
    prompt = torch.randint(1, model.config.vocab_size, (batch, 5), device=DEVICE)
    with torch.no_grad():
        state = model(prompt, use_cache=True).state
    return model, batch, state, torch.randint(1, model.config.vocab_size, (batch,), device=DEVICE)


@pytest.mark.parametrize("name", CASES)
def test_greedy_decoder_on_the_kernels_gives_the_reference_tokens(name):
    model, batch, state, first = _prompted(name)
    reference, after = GreedyDecoder(model, batch, 6, kernels=False).decode(state, first, 6)  # model.step's
    fast, fast_after = GreedyDecoder(model, batch, 6, kernels=True).decode(state, first, 6)
    assert torch.equal(fast, reference)
    torch.testing.assert_close(fast_after.states[0], after.states[0], rtol=1e-5, atol=1e-5)
    assert isinstance(fast_after, RecurrentCache) and fast_after.seen_tokens == after.seen_tokens


@pytest.mark.parametrize("name", ["batch 1", "study cell", "two row blocks, ragged tiles"])
def test_the_update_in_the_heads_launch_decodes_as_the_update_launched_alone(name):
    # several steps in a row: the counters each step leaves must let the next step's last program find itself
    model, batch, first, context = _case(name)
    results = []
    for tail in (False, True):
        kernels = DecodeKernels(model, batch, tail=tail)
        kernels.context.copy_(context)
        token, tokens = first.clone(), torch.zeros(batch, 5, dtype=torch.long, device=DEVICE)
        position = torch.zeros(1, dtype=torch.long, device=DEVICE)
        for _ in range(5):
            kernels.step(token, tokens, position)
        results.append((tokens, kernels.context.clone(), position.item()))
    (split, split_context, split_at), (fused, fused_context, fused_at) = results
    assert torch.equal(fused, split) and split_at == fused_at == 5
    torch.testing.assert_close(fused_context, split_context, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["batch 1", "batch 1, ragged", "study cell, batch 1"])
def test_a_bf16_head_reads_bf16_weights_and_picks_the_best_of_its_own_logits(name):
    # head_dtype=bf16: the head's weights are a bf16 copy, so the logits move by bf16's rounding and no further, the
    # token is the argmax of those logits, and the context (which the head does not touch) is float32's exactly
    model, batch, token, context = _case(name)
    expected_logits, expected_context = model.step(token, context)
    kernels = DecodeKernels(model, batch, head_dtype=torch.bfloat16)
    assert kernels.head[0].dtype == torch.bfloat16 and kernels.head[1].dtype == torch.float32
    kernels.context.copy_(context)
    tokens = torch.zeros(batch, 2, dtype=torch.long, device=DEVICE)
    logits = torch.empty(batch, model.config.vocab_size, device=DEVICE)
    fed = token.clone()
    kernels.step(fed, tokens, torch.zeros(1, dtype=torch.long, device=DEVICE), logits)
    scale = expected_logits.abs().max().item()
    torch.testing.assert_close(logits, expected_logits, rtol=0.0, atol=0.02 * scale)
    assert (logits - expected_logits).abs().max() > 1e-6 * scale  # the rounding is there: bf16 weights were read
    assert torch.equal(fed, logits.argmax(-1)) and torch.equal(tokens[:, 0], fed)
    torch.testing.assert_close(kernels.context, expected_context, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="head_dtype must be torch.float32 or torch.bfloat16"):
        DecodeKernels(model, batch, head_dtype=torch.float16)


@pytest.mark.parametrize("name", ["two row blocks, ragged tiles", "study cell"])
def test_a_bf16_head_asked_for_at_a_larger_batch_keeps_the_float32_head(name):
    # above batch 1 the bf16 tiles slowed the step down (DecodeKernels' docstring): the float32 head, its logits exact
    model, batch, token, context = _case(name)
    expected_logits, _ = model.step(token, context)
    kernels = DecodeKernels(model, batch, head_dtype=torch.bfloat16)
    assert kernels.head_dtype == kernels.head[0].dtype == torch.float32
    kernels.context.copy_(context)
    logits = torch.empty(batch, model.config.vocab_size, device=DEVICE)
    kernels.step(token.clone(), torch.zeros(batch, 2, dtype=torch.long, device=DEVICE),
                 torch.zeros(1, dtype=torch.long, device=DEVICE), logits)  # fmt: skip
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_cells_and_settings_the_decode_kernels_cannot_take_are_refused():
    with pytest.raises(ValueError, match="prototype cell"):
        GreedyDecoder(_model(residual=True), 2, 4, kernels=True)
    with pytest.raises(ValueError, match="MLP-block cell with one context scale"):
        GreedyDecoder(_model(block="mlp", context_scales=2), 2, 4, kernels=True)
    with pytest.raises(ValueError, match="the decode kernels compute the final norm as a LayerNorm, not final_norm_type 'rms'"):
        GreedyDecoder(_model(block="mlp", final_norm=True, final_norm_type="rms"), 2, 4, kernels=True)
    with pytest.raises(ValueError, match="float32"):
        GreedyDecoder(_model(), 2, 4, dtype=torch.bfloat16, kernels=True)
    with pytest.raises(ValueError, match="head_dtype is the decode kernels'"):
        GreedyDecoder(_model(), 1, 4, head_dtype=torch.bfloat16)


def test_the_shared_decoding_path_takes_the_kernels_and_gives_the_forward_paths_tokens():
    from newllm.evaluation.decoding import Decoder, SamplingOptions

    model = _model()
    greedy = SamplingOptions(max_new_tokens=5, do_sample=False)
    prompt = torch.randint(1, model.config.vocab_size, (2, 7), device=DEVICE)
    plain, fast = Decoder(model, greedy), Decoder(model, greedy, graphed=True, kernels=True)
    expected = plain.generate(plain.prefill(prompt))
    assert torch.equal(fast.generate(fast.prefill(prompt)), expected)
    assert fast.backend.kernels is not None
    # a bf16 head through the same path: batch 2 keeps the float32 head, so the same tokens
    bf16 = Decoder(model, greedy, graphed=True, kernels=True, head_dtype=torch.bfloat16)
    assert torch.equal(bf16.generate(bf16.prefill(prompt)), expected)
    with pytest.raises(ValueError, match="kernels"):
        Decoder(model, greedy, kernels=True)  # not graphed


@pytest.mark.parametrize("tail", [True, False], ids=["update in the head's launch", "update launched alone"])
@pytest.mark.parametrize("name", ["batch 1", "batch 1, ragged", "study cell, batch 1", "two row blocks, ragged tiles"])
def test_a_step_launches_one_kernel_per_dependent_phase(name, tail, monkeypatch):
    # one launch per prototype layer, or two per MLP block (its norm read inside W_1's matmul), then the two matmuls
    # on h_L together (the final norm read inside), the row-wise end (context update, token, position) in their
    # launch's last program or, without the tail, in a launch of its own
    import newllm.models.new_llm.decode_kernel as decode_kernel

    counts = {}

    class Counted:
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            counts[self.name] = counts.get(self.name, 0) + 1
            return self.kernel[grid]

    for attribute in [a for a in dir(decode_kernel) if a.endswith("_kernel")]:
        monkeypatch.setattr(decode_kernel, attribute, Counted(getattr(decode_kernel, attribute), attribute))
    overrides, batch = CASES[name]
    model = _model(**overrides)
    cell = model.model.cell
    launches = (len(cell.layers) if cell.blocks is None else 1 + 2 * len(cell.blocks)) + (1 if tail else 2)
    kernels = DecodeKernels(model, batch, tail=tail)
    tokens = torch.zeros(batch, 2, dtype=torch.long, device=DEVICE)
    position = torch.zeros(1, dtype=torch.long, device=DEVICE)
    kernels.step(torch.ones(batch, dtype=torch.long, device=DEVICE), tokens, position)
    assert sum(counts.values()) == launches, counts
    assert counts["_proj_head_kernel"] == 1 and counts.get("_update_pick_kernel", 0) == (0 if tail else 1)
    assert position.item() == 1
