"""decode_loop.py: a whole greedy continuation in one persistent launch gives, token for token, what the stepped
decode kernels and model.step give. In Triton's CPU interpreter the launch is one program (its barriers are met at
once), so these check the phases' arithmetic and order; on CUDA the same tests run one program per SM (and 2 and 7),
and the barrier between them is what they check too. Skipped without triton (CI)."""

import pytest
import torch

triton = pytest.importorskip("triton", reason="the kernel path needs triton (CI does not install it)")
if not torch.cuda.is_available() and not triton.knobs.runtime.interpret:
    pytest.skip("no GPU and TRITON_INTERPRET is not 1: the kernels cannot run", allow_module_level=True)

from newllm.models.new_llm.decode_kernel import DecodeKernels  # noqa: E402
from newllm.models.new_llm.decode_loop import DecodeLoop  # noqa: E402
from newllm.models.new_llm.decoding import GreedyDecoder  # noqa: E402
from tests.unit.models.test_new_llm_decode_kernel import CASES, DEVICE, _case, _model, _prompted  # noqa: E402

STEPS = 5
# The loop's context against the stepped kernels': the same tile functions, but compiled into another kernel, where
# Triton may lay a row's sums out over the threads differently, so on a GPU the last bits can differ (up to 4.1e-6
# for the MLP-block case at 18 rows on an H100; the interpreter gives equality). The tokens must be equal.
CONTEXT_TOL = dict(rtol=1e-5, atol=1e-5)


def _stepped(model, batch, first, context, steps, head_dtype=torch.float32):
    """`steps` greedy tokens and the context after them from DecodeKernels.step, one launch sequence a token."""
    kernels = DecodeKernels(model, batch, head_dtype=head_dtype)
    kernels.context.copy_(context)
    token, tokens = first.clone(), torch.zeros(batch, steps, dtype=torch.long, device=DEVICE)
    position = torch.zeros(1, dtype=torch.long, device=DEVICE)
    for _ in range(steps):
        kernels.step(token, tokens, position)
    return tokens, kernels.context.clone()


def _looped(model, batch, first, context, steps, head_dtype=torch.float32, programs=None, room=0):
    """The same from one DecodeLoop launch (tokens has `room` columns more than it fills); the loop too."""
    kernels = DecodeKernels(model, batch, head_dtype=head_dtype)
    kernels.context.copy_(context)
    loop = DecodeLoop(kernels, programs=programs)
    token, tokens = first.clone(), torch.zeros(batch, steps + room, dtype=torch.long, device=DEVICE)
    loop.run(token, tokens, steps)
    assert torch.equal(token, tokens[:, steps - 1])  # the last token is left in `token`, as a step leaves it
    assert not tokens[:, steps:].any()  # nothing past new_tokens
    return tokens[:, :steps], kernels.context.clone(), loop


def _barriers_per_token(model):
    """Phases a token: layer 1, each further prototype layer or two per MLP block, the head's, the update's."""
    cell = model.model.cell
    return 1 + (2 * len(cell.blocks) if cell.blocks is not None else len(cell.layers) - 1) + 2


@pytest.mark.parametrize("name", CASES)
def test_one_launch_decodes_as_the_stepped_kernels(name):
    model, batch, first, context = _case(name)
    expected, expected_context = _stepped(model, batch, first, context, STEPS)
    tokens, after, loop = _looped(model, batch, first, context, STEPS, room=2)
    assert torch.equal(tokens, expected)
    torch.testing.assert_close(after, expected_context, **CONTEXT_TOL)
    # every program passed every barrier of every token: the phases the kernel ran are the model's
    assert loop.barriers_per_token == _barriers_per_token(model)
    assert loop.arrived.item() == loop.programs * STEPS * _barriers_per_token(model)
    if DEVICE == "cpu":
        assert loop.programs == 1


@pytest.mark.parametrize("name", ["batch 1", "batch 1, ragged", "study cell, batch 1"])
def test_a_bf16_head_in_the_loop_picks_what_the_stepped_bf16_head_picks(name):
    model, batch, first, context = _case(name)
    expected, expected_context = _stepped(model, batch, first, context, STEPS, head_dtype=torch.bfloat16)
    tokens, after, loop = _looped(model, batch, first, context, STEPS, head_dtype=torch.bfloat16)
    assert loop.kernels.head_dtype == torch.bfloat16
    assert torch.equal(tokens, expected)
    torch.testing.assert_close(after, expected_context, **CONTEXT_TOL)


@pytest.mark.parametrize("name", ["batch 1", "study cell", "two row blocks, ragged tiles"])
def test_the_greedy_decoder_in_one_launch_gives_the_reference_tokens_and_cache(name):
    model, batch, state, first = _prompted(name)
    reference, after = GreedyDecoder(model, batch, 8, kernels=False).decode(state, first, 6)  # model.step's
    decoder = GreedyDecoder(model, batch, 8, kernels=True, persistent=True)
    assert decoder.graph is None and decoder.loop is not None  # one launch: nothing to replay
    for _ in range(2):  # a second decode starts again from the state it is given
        fast, fast_after = decoder.decode(state, first, 6)
        assert torch.equal(fast, reference)
        torch.testing.assert_close(fast_after.states[0], after.states[0], rtol=1e-5, atol=1e-5)
        assert fast_after.seen_tokens == after.seen_tokens


@pytest.mark.skipif(DEVICE != "cuda", reason="several programs need a GPU: the interpreter runs them one by one")
@pytest.mark.parametrize("programs", [2, 7])
@pytest.mark.parametrize("name", ["batch 1, ragged", "two row blocks, ragged tiles", "mlp blocks, clamp, tiles"])
def test_any_number_of_programs_shares_the_tiles_between_barriers(name, programs):
    # fewer programs than tiles: each takes every `programs`-th tile of a phase, and the barrier still holds
    model, batch, first, context = _case(name)
    expected, expected_context = _stepped(model, batch, first, context, STEPS)
    tokens, after, loop = _looped(model, batch, first, context, STEPS, programs=programs)
    assert loop.programs == programs
    assert torch.equal(tokens, expected)
    torch.testing.assert_close(after, expected_context, **CONTEXT_TOL)


def test_what_the_loop_cannot_do_is_refused_in_one_line():
    model, batch, first, context = _case("batch 1")
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="off CUDA the decode loop runs as one program"):
            DecodeLoop(DecodeKernels(model, batch), programs=2)
    loop = DecodeLoop(DecodeKernels(model, batch))
    with pytest.raises(ValueError, match=r"new_tokens must be in 1\.\.3, got 4"):
        loop.run(first.clone(), torch.zeros(batch, 3, dtype=torch.long, device=DEVICE), 4)
    # past what the int32 barrier counter can count in one launch (checked before any launch)
    most = (2**31 - 1) // (loop.programs * loop.barriers_per_token)
    with pytest.raises(ValueError, match=f"one launch decodes at most {most:,} tokens"):
        too_long = torch.zeros(batch, 1, dtype=torch.long, device=DEVICE).expand(batch, most + 1)
        loop.run(first.clone(), too_long, most + 1)
    with pytest.raises(ValueError, match="pass kernels=True too"):
        GreedyDecoder(model, batch, 4, persistent=True)


def test_the_shared_decoding_path_takes_the_loop_and_gives_the_forward_paths_tokens():
    from newllm.evaluation.decoding import Decoder, SamplingOptions

    model = _model()
    greedy = SamplingOptions(max_new_tokens=5, do_sample=False)
    prompt = torch.randint(1, model.config.vocab_size, (2, 7), device=DEVICE)
    plain, fast = Decoder(model, greedy), Decoder(model, greedy, graphed=True, kernels=True, persistent=True)
    assert torch.equal(fast.generate(fast.prefill(prompt)), plain.generate(plain.prefill(prompt)))
    assert fast.backend.loop is not None
    with pytest.raises(ValueError, match="persistent is the decode kernels' loop"):
        Decoder(model, greedy, graphed=True, persistent=True)
