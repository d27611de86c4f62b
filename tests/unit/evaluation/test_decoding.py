"""Decoder: the shared prefill → step → sample path gives generate()'s tokens for every model, greedy and
seeded; chunked prefill, stop tokens, the graphed backend, rewinding and the sliding window."""

import inspect

import pytest
import torch

from newllm.evaluation.decoding import (
    Decoder,
    SamplingOptions,
    cache_argument,
    cache_bytes,
    has_graphed_backend,
    output_cache,
)
from newllm.models.registry import MODEL_NAMES, MODELS

from tests.tiny_models import build_tiny_models

VOCAB = 200
POSITIONS = 48  # GPT-2's
PAD = 0
GREEDY = SamplingOptions(max_new_tokens=8, do_sample=False)
SAMPLED = SamplingOptions(max_new_tokens=8, temperature=1.3, top_k=40, top_p=0.9)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    built = build_tiny_models(VOCAB, POSITIONS, end_of_text=PAD, pad=PAD, dropout=0.0)
    return {name: model.eval() for name, model in built.items()}


def left_padded(lengths, seed=0):
    """(ids, mask) of random prompts of `lengths`, padded on the left to the longest."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=generator)  # (B, T); 0 is the pad
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    return ids.masked_fill(mask == 0, PAD), mask


def hf_generate(model, ids, mask, options):
    """The new tokens transformers' generate() gives with these options."""
    sampling = {"temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p}
    output = model.generate(ids, attention_mask=mask, max_new_tokens=options.max_new_tokens, pad_token_id=PAD,
                            do_sample=options.do_sample, **(sampling if options.do_sample else {}))  # fmt: skip
    return output[:, ids.shape[1] :]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cache_names(models, name):
    model = models[name]
    argument = cache_argument(model)
    assert (argument == "state") is MODELS[name].carries_state
    assert argument in inspect.signature(model.forward).parameters
    output = model(input_ids=torch.tensor([[3, 4]]), use_cache=True)
    assert output_cache(output) is output[argument if argument in output else "past_key_values"]
    assert cache_bytes(output_cache(output)) > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_tokens_equal_generate_on_left_padded_prompts(models, name, options):
    model = models[name]
    ids, mask = left_padded([9, 4, 7])
    torch.manual_seed(5)  # the decoder draws from the global RNG, as generate() does
    decoder = Decoder(model, options)
    # end-of-text (the pad) stops a row in both, as the config's eos_token_id tells generate()
    tokens = decoder.generate(decoder.prefill(ids, mask), stop_ids=[PAD], pad_id=PAD)
    torch.manual_seed(5)
    assert torch.equal(tokens, hf_generate(model, ids, mask, options))
    # every picked token but the last was fed
    assert decoder.length == ids.shape[1] + tokens.shape[1] - 1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_chunked_prefill_equals_one_pass(models, name):
    ids, mask = left_padded([23, 17])
    whole = Decoder(models[name], GREEDY)
    chunked = Decoder(models[name], GREEDY)
    torch.testing.assert_close(chunked.prefill(ids, mask, chunk=5), whole.prefill(ids, mask), rtol=1e-5, atol=1e-5)
    assert torch.equal(chunked.generate(chunked.step(ids[:, -1])), whole.generate(whole.step(ids[:, -1])))


def test_stop_tokens_end_rows_and_pad_the_rest(models):
    model = models["new_llm"]
    ids, mask = left_padded([6, 6, 6], seed=1)
    free = Decoder(model, GREEDY)
    tokens = free.generate(free.prefill(ids, mask))  # (3, 8): nothing stops it
    stop = int(tokens[0, 2])
    rows_with_stop = [int(row.tolist().index(stop)) if stop in row.tolist() else None for row in tokens]
    decoder = Decoder(model, GREEDY)
    stopped = decoder.generate(decoder.prefill(ids, mask), stop_ids=[stop], pad_id=PAD)
    for row, first in zip(range(3), rows_with_stop):
        end = tokens.shape[1] if first is None else first + 1
        assert stopped[row, :end].tolist() == tokens[row, :end].tolist()  # the same tokens up to the stop
        assert set(stopped[row, end:].tolist()) <= {PAD}  # pads after it
    # Decoding ended once every row was done.
    expected_width = tokens.shape[1] if None in rows_with_stop else max(rows_with_stop) + 1
    assert stopped.shape[1] == expected_width
    with pytest.raises(ValueError, match="pad_id"):
        decoder.generate(decoder.step(stopped[:, -1]), stop_ids=[stop])


def test_seeded_generator_reproduces_and_seeds_matter(models):
    ids, mask = left_padded([5])

    def draw(seed):
        decoder = Decoder(models["lstm"], SAMPLED, generator=torch.Generator().manual_seed(seed))
        return decoder.generate(decoder.prefill(ids, mask)).tolist()

    assert draw(3) == draw(3)
    assert any(draw(seed) != draw(3) for seed in range(4, 8))


def test_graphed_backend_gives_the_forward_path_tokens_and_cache(models):
    model = models["new_llm"]
    assert has_graphed_backend(model) and not has_graphed_backend(models["lstm"])
    ids, mask = left_padded([8, 5])
    plain, graphed = Decoder(model, GREEDY), Decoder(model, GREEDY, graphed=True)
    expected = plain.generate(plain.prefill(ids, mask))
    assert torch.equal(graphed.generate(graphed.prefill(ids, mask)), expected)
    assert graphed.backend is not None  # on CPU it steps eagerly: the same code a CUDA graph captures
    assert graphed.length == plain.length
    assert graphed.cache.seen_tokens == plain.cache.seen_tokens
    torch.testing.assert_close(graphed.cache.states[0], plain.cache.states[0])
    with pytest.raises(ValueError, match="New-LLM's and GPT-2's"):
        Decoder(models["lstm"], GREEDY, graphed=True)
    with pytest.raises(ValueError, match="head_dtype is the decode kernels' head"):  # the graphed step has no copy
        Decoder(model, GREEDY, graphed=True, head_dtype=torch.bfloat16)


def test_gpt2_static_cache_backend_gives_the_forward_path_tokens_and_cache(models):
    # TinyGPT2's graphed backend: a static key/value cache copied from the left-padded prompt's, stepped by
    # hand over GPT-2's own modules. The same tokens as the forward path, twice over (timing rewinds and
    # decodes again), and the same cache after: the next step's logits agree.
    model = models["tinygpt2"]
    assert has_graphed_backend(model)
    ids, mask = left_padded([8, 5])
    plain, graphed = Decoder(model, GREEDY), Decoder(model, GREEDY, graphed=True)
    expected = plain.generate(plain.prefill(ids, mask))
    logits = graphed.prefill(ids, mask)
    start = graphed.mark()
    assert graphed.backend is not None
    assert torch.equal(graphed.generate(logits), expected)
    graphed.rewind(start)
    assert torch.equal(graphed.generate(logits), expected)
    assert (graphed.length, graphed.cache.get_seq_length()) == (plain.length, plain.cache.get_seq_length())
    assert torch.equal(graphed.mask, plain.mask)
    following = expected[:, -1]
    torch.testing.assert_close(graphed.step(following), plain.step(following), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_rewind_restarts_from_the_prompt(models, name):
    decoder = Decoder(models[name], GREEDY)
    logits = decoder.prefill(*left_padded([10, 7]))
    prompt_bytes, start = cache_bytes(decoder.cache), decoder.mark()
    first = decoder.generate(logits)
    decoder.rewind(start)
    assert cache_bytes(decoder.cache) == prompt_bytes and decoder.length == 10
    assert torch.equal(decoder.generate(logits), first)


def test_sliding_window_rebuilds_from_the_last_tokens(models):
    model = models["tinygpt2"]
    decoder = Decoder(model, GREEDY, keep=30)
    ids, _ = left_padded([40], seed=2)
    decoder.prefill(ids)
    more, _ = left_padded([12], seed=3)
    logits = decoder.prefill(more)  # 52 > 48 positions: rebuilt from the last 30 of the 52
    assert decoder.window.shape[1] == decoder.length == 30
    assert decoder.window.tolist() == torch.cat([ids, more], dim=1)[:, -30:].tolist()
    fresh = Decoder(model, GREEDY).prefill(decoder.window)
    torch.testing.assert_close(logits, fresh)
    with pytest.raises(ValueError, match="keep"):
        Decoder(models["new_llm"], GREEDY, keep=30)  # no positions to run out of


def test_bad_prompts_are_refused(models):
    with pytest.raises(ValueError, match="prompt must be"):
        Decoder(models["new_llm"], GREEDY).prefill(torch.zeros(2, 0, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the backends capture CUDA graphs")
@pytest.mark.parametrize("name", ["new_llm", "tinygpt2"])
def test_cuda_graphed_backends_replay_the_forward_paths_tokens(models, name):
    model = models[name].cuda()
    try:
        ids, mask = (t.cuda() for t in left_padded([8, 5]))
        plain, graphed = Decoder(model, GREEDY), Decoder(model, GREEDY, graphed=True)
        expected = plain.generate(plain.prefill(ids, mask))
        logits = graphed.prefill(ids, mask)
        start = graphed.mark()
        assert graphed.backend.graph is not None  # captured, not stepped eagerly
        for _ in range(2):  # a replay after a rewind, as timing does
            assert torch.equal(graphed.generate(logits), expected)
            graphed.rewind(start)
    finally:
        model.cpu()
