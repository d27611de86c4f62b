"""respond / respond_batch / sample_responses: greedy == manual argmax loop, batched == one at a time, stop tokens,
prompt checks, seeded sampling."""

import copy
import functools
from types import SimpleNamespace

import pytest
import torch

from newllm.data.dailydialog import format_prompt
from newllm.data.tokenizer import special_ids, train_tokenizer
from newllm.evaluation import generation
from newllm.evaluation.decoding import Decoder
from newllm.evaluation.generation import Sample, prompt_ids, respond, respond_batch, sample_responses
from newllm.models.registry import MODEL_NAMES

from tests.tiny_models import build_tiny_models

VOCAB = 300
POSITIONS = 128  # GPT-2's; short, so that a long prompt overflows it cheaply

LINES = [
    "hello how are you today ?",
    "i am fine thank you . and you ?",
    "what do you do for a living ?",
    "i work in a small restaurant near the station .",
    "can you help me find a good book about music ?",
] * 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(LINES, "bpe", vocab_size=VOCAB)


@pytest.fixture(scope="module")
def tiny_models(tokenizer):
    special = special_ids(tokenizer)
    return build_tiny_models(VOCAB, POSITIONS, end_of_text=special.end_of_text, pad=special.pad)


def with_bias(model, token_bias: dict[int, float]):
    """A copy of `model` whose head adds `token_bias` to the logits of some tokens."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for token, bias in token_bias.items():
            model.get_output_embeddings().bias[token] += bias
    return model


def spy_on_decoder(monkeypatch) -> list:
    """Record the prompts each decoder `respond` makes is given, and the tokens it generates."""
    calls = []

    class Spy(Decoder):
        def prefill(self, input_ids, attention_mask=None, **kwargs):
            calls.append({"input_ids": input_ids, "attention_mask": attention_mask})
            return super().prefill(input_ids, attention_mask, **kwargs)

        def generate(self, logits, *args, **kwargs):
            calls[-1]["output"] = super().generate(logits, *args, **kwargs)
            return calls[-1]["output"]

    monkeypatch.setattr(generation, "Decoder", Spy)
    return calls


def test_greedy_equals_manual_argmax_loop(tokenizer, tiny_models):
    special = special_ids(tokenizer)
    # No special token can win, so the reply runs its full length and the comparison covers every step.
    model = with_bias(tiny_models["new_llm"], {token: -1e4 for token in {*vars(special).values()}})
    turns = ["hello how are you today ?"]
    ids = format_prompt(tokenizer, turns)
    model.eval()
    new = []
    with torch.no_grad():
        for _ in range(12):
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]  # (V,)
            new.append(int(logits.argmax()))
    expected = tokenizer.decode(new, skip_special_tokens=True).strip()
    assert expected

    model.train()  # respond must switch dropout off itself, and then give the mode back
    first = respond(model, tokenizer, turns, max_new_tokens=12)
    assert model.training
    assert first == expected
    assert respond(model, tokenizer, turns, max_new_tokens=12) == first


@pytest.mark.parametrize("stop", ["end_of_turn", "end_of_text"])
def test_reply_stops_at_stop_token(tokenizer, tiny_models, monkeypatch, stop):
    special = special_ids(tokenizer)
    stop_id = getattr(special, stop)
    model = with_bias(tiny_models["new_llm"], {stop_id: 1e4})
    calls = spy_on_decoder(monkeypatch)
    assert respond(model, tokenizer, ["hello"], max_new_tokens=20) == ""
    # One token and done: the decoder was told that this token ends the reply.
    assert calls[0]["output"].tolist() == [[stop_id]]


@pytest.mark.parametrize("turns", [[""], ["  \n\t "], [], ["\x00\x1b"]])
def test_empty_prompt_raises(tokenizer, tiny_models, turns):
    with pytest.raises(ValueError, match="empty prompt"):
        respond(tiny_models["new_llm"], tokenizer, turns)


@pytest.mark.parametrize("turns", ["hello", [42], ["hello", None], None])
def test_non_string_turns_raise(tokenizer, tiny_models, turns):
    with pytest.raises(TypeError):
        respond(tiny_models["new_llm"], tokenizer, turns)


def test_control_characters_are_removed(tokenizer, tiny_models):
    model = tiny_models["new_llm"]
    dirty = ["hello\x00 how\nare\x1b you\r\n ?\t"]
    clean = ["hello how are you ?"]
    assert prompt_ids(model, tokenizer, dirty, 10) == prompt_ids(model, tokenizer, clean, 10)
    assert respond(model, tokenizer, dirty, max_new_tokens=5) == respond(model, tokenizer, clean, max_new_tokens=5)


def test_long_prompt_is_trimmed_for_gpt2_only(tokenizer, tiny_models, monkeypatch):
    turns = [" ".join(LINES[:20]), "and then ?"]
    full = format_prompt(tokenizer, turns)
    assert len(full) > POSITIONS  # GPT-2 would index past its position table

    gpt2 = tiny_models["tinygpt2"]
    calls = spy_on_decoder(monkeypatch)
    assert isinstance(respond(gpt2, tokenizer, turns, max_new_tokens=8), str)
    fed = calls[0]["input_ids"][0].tolist()
    assert fed == full[-(POSITIONS - 8) :]  # the end of the prompt, next speaker's token last

    new_llm = tiny_models["new_llm"]
    calls.clear()
    respond(new_llm, tokenizer, turns, max_new_tokens=8)
    assert calls[0]["input_ids"][0].tolist() == full  # a recurrent model reads the whole prompt

    with pytest.raises(ValueError):
        respond(gpt2, tokenizer, turns, max_new_tokens=POSITIONS)


def test_gpt2_prompt_stops_at_the_positions_it_was_trained_on(tokenizer, tiny_models, monkeypatch):
    turns = [" ".join(LINES[:20]), "and then ?"]
    gpt2 = tiny_models["tinygpt2"]
    monkeypatch.setattr(gpt2.config, "trained_positions", POSITIONS // 2, raising=False)
    assert prompt_ids(gpt2, tokenizer, turns, 8) == format_prompt(tokenizer, turns)[-(POSITIONS // 2 - 8) :]


def test_sampling_is_seeded_and_leaves_global_rng_alone(tokenizer, tiny_models):
    model = tiny_models["new_llm"]
    turns = ["what do you do for a living ?"]
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = respond(model, tokenizer, turns, do_sample=True, seed=3, max_new_tokens=15)
    again = respond(model, tokenizer, turns, do_sample=True, seed=3, max_new_tokens=15)
    assert torch.equal(torch.get_rng_state(), before)
    assert first == again
    # The seed is really what drives sampling: other seeds give other replies.
    others = {respond(model, tokenizer, turns, do_sample=True, seed=s, max_new_tokens=15) for s in range(4, 8)}
    assert others - {first}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sample_responses_for_every_model(tokenizer, tiny_models, name):
    model = tiny_models[name]
    prompts = ["hello how are you today ?", "can you help me ?"]
    samples = sample_responses(model, tokenizer, prompts, max_new_tokens=6)
    assert [s.prompt for s in samples] == prompts
    assert all(isinstance(s, Sample) and isinstance(s.greedy, str) and isinstance(s.sampled, str) for s in samples)
    assert samples[0].greedy == respond(model, tokenizer, [prompts[0]], max_new_tokens=6)
    assert samples[0].sampled == respond(model, tokenizer, [prompts[0]], max_new_tokens=6, do_sample=True)
    with pytest.raises(TypeError):
        sample_responses(model, tokenizer, prompts, do_sample=True)


# ---------------------------------------------------------------- respond_batch

CONVERSATIONS = [
    ["what do you do for a living ?", "i work in a small restaurant near the station .", "can you help me ?"],
    ["hello"],
    ["hello how are you today ?", "i am fine thank you . and you ?"],
]


def without_special_tokens(model, tokenizer):
    """A copy of `model` that never writes a special token, so that every reply runs its full length."""
    model = copy.deepcopy(model)
    forward = model.forward
    special = sorted(set(vars(special_ids(tokenizer)).values()))

    @functools.wraps(forward)  # the decoder reads forward's signature (GPT-2's cache argument, logits_to_keep)
    def forward_without_special(*args, **kwargs):
        output = forward(*args, **kwargs)
        output.logits[..., special] = -1e4
        return output

    model.forward = forward_without_special
    return model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batched_replies_equal_one_at_a_time(tokenizer, tiny_models, monkeypatch, name):
    model = without_special_tokens(tiny_models[name], tokenizer)
    expected = [respond(model, tokenizer, turns, max_new_tokens=8) for turns in CONVERSATIONS]
    assert all(expected)  # full-length replies: every step of the padded rows is compared
    calls = spy_on_decoder(monkeypatch)
    model.train()
    assert respond_batch(model, tokenizer, CONVERSATIONS, max_new_tokens=8, batch_size=3) == expected
    assert model.training  # dropout was off for the replies and the mode is given back
    (call,) = calls
    lengths = sorted(len(prompt_ids(model, tokenizer, turns, 8)) for turns in CONVERSATIONS)
    mask = call["attention_mask"]
    # One batch, the shorter prompts padded on the left: the mask is 0 on the pads, then 1 to the end.
    assert mask.shape == (3, lengths[-1])
    assert mask.sum(1).tolist() == lengths
    assert torch.equal(mask, mask.sort(dim=1).values)


class EchoModel:
    """Replies with the first turn of its own prompt, then a stray word (through `EchoDecoder`): shows
    which reply went where."""

    config = SimpleNamespace()  # no max_position_embeddings: prompts are never cut

    def __init__(self, tokenizer):
        self.training = False
        self.batches = []  # the prompt lengths of each batch decoded
        self.junk = tokenizer.encode(" hello", add_special_tokens=False).ids

    def to(self, device):
        return self

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self


class EchoDecoder:
    """The decoder `respond_batch` gets for an `EchoModel`: the same calls, replies made up from the prompt."""

    def __init__(self, model, options):
        assert not options.do_sample
        self.model, self.options = model, options

    def prefill(self, input_ids, attention_mask):
        self.model.batches.append(attention_mask.sum(1).tolist())
        # pad == end_of_text: only the mask tells the prompt from its padding
        self.prompts = [[t for t, keep in zip(ids, mask) if keep] for ids, mask in zip(input_ids.tolist(), attention_mask.tolist())]

    def generate(self, logits, stop_ids, pad_id):
        n = self.options.max_new_tokens
        # speaker, first turn, end_of_turn, speaker, ...: the reply is cut at that end_of_turn
        return torch.tensor([(prompt[1:] + self.model.junk * n)[:n] for prompt in self.prompts])


@pytest.fixture
def echo(tokenizer, monkeypatch):
    monkeypatch.setattr(generation, "Decoder", EchoDecoder)
    return EchoModel(tokenizer)


def test_batches_group_similar_lengths_and_replies_keep_their_order(tokenizer, echo):
    conversations = [
        ["can you help me find a good book about music ?"],
        ["hello", "hello how are you today ?"],
        ["i am fine thank you . and you ?", "what do you do for a living ?", "hello"],
        ["hello how are you today ?"],
        ["i work in a small restaurant near the station ."],
    ]
    replies = respond_batch(echo, tokenizer, conversations, max_new_tokens=40, batch_size=2)
    assert replies == [turns[0] for turns in conversations]
    lengths = [len(prompt_ids(echo, tokenizer, turns, 40)) for turns in conversations]
    assert [len(batch) for batch in echo.batches] == [2, 2, 1]
    assert [n for batch in echo.batches for n in batch] == sorted(lengths)


def test_stray_tokens_after_the_end_of_turn_are_cut(tokenizer, echo):
    # Only 3 new tokens: speaker + 2 tokens of the first turn, no end_of_turn yet, so nothing is cut.
    (short,) = respond_batch(echo, tokenizer, [["hello how are you today ?"]], max_new_tokens=3)
    assert short and "hello how are you today ?".startswith(short)
    # Room for the end_of_turn: the stray "hello" tokens after it are not part of the reply.
    assert respond_batch(echo, tokenizer, [["what ?"]], max_new_tokens=30) == ["what ?"]


def test_no_conversations_generate_nothing(tokenizer, echo):
    assert respond_batch(echo, tokenizer, [], max_new_tokens=5) == []
    assert echo.batches == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"batch_size": 0}, ValueError),
        ({"batch_size": 2.5}, ValueError),
        ({"max_new_tokens": 0}, ValueError),
        ({"conversations": "hello"}, TypeError),
        ({"conversations": ["hello"]}, TypeError),  # a list of str is one conversation, not several
        ({"conversations": [["hello"], [""]]}, ValueError),
    ],
)
def test_respond_batch_rejects_bad_arguments(tokenizer, echo, kwargs, error):
    arguments = {"conversations": [["hello"]], **kwargs}
    with pytest.raises(error):
        respond_batch(echo, tokenizer, **arguments)
