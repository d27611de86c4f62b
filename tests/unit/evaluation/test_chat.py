"""ChatSession: only new tokens are fed, the carried state is exact, reset, constant state, GPT-2 window."""

import io

import pytest
import torch

from newllm.cli import main
from newllm.data.tokenizer import special_ids
from newllm.evaluation.chat import ChatSession, SamplingOptions, clean_line
from newllm.models.registry import build_model
from newllm.training.checkpoint import save_checkpoint

from tests.tiny_models import build_tiny_models

POSITIONS = 64  # GPT-2's; short, so that a few turns overflow it
TURNS = ["Hello , how are you ?", "Did you see the flare near the rocks ?", "Where is Mara today ?"]
GREEDY = SamplingOptions(max_new_tokens=6, do_sample=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_models(tiny_tokenizer):
    models = build_tiny_models(tiny_tokenizer.get_vocab_size(), POSITIONS, dropout=0.0)
    return {name: model.eval() for name, model in models.items()}


def with_stop_bias(model, token: int, bias: float):
    """`model`, changed in place, with `bias` added to one token's logit."""
    with torch.no_grad():
        model.get_output_embeddings().bias[token] += bias
    return model


def record_input_lengths(model):
    """(a list that every forward of `model` appends its input length to, the hook's handle)."""
    lengths = []

    def hook(_module, _args, kwargs):
        lengths.append(kwargs["input_ids"].shape[1])  # (1, T): T tokens fed

    return lengths, model.register_forward_pre_hook(hook, with_kwargs=True)


def from_scratch_greedy(model, ids: list[int], max_new_tokens: int, stops: set[int]) -> list[int]:
    """Greedy reply by full forwards over the whole history, no cache: the reference for the carried state."""
    ids, reply = list(ids), []
    with torch.no_grad():
        while len(reply) < max_new_tokens:
            token = int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
            if token in stops:
                break
            reply.append(token)
            ids.append(token)
    return reply


def user_turn(tokenizer, text: str) -> list[int]:
    special = special_ids(tokenizer)
    words = tokenizer.encode(" " + text, add_special_tokens=False).ids
    return [special.speaker_1, *words, special.end_of_turn, special.speaker_2]


def held(session) -> list[int]:
    """The ids GPT-2's cache holds in `session`."""
    return session.decoder.window[0].tolist()


def test_second_turn_feeds_only_the_new_tokens(tiny_models, tiny_tokenizer):
    model = tiny_models["new_llm"]
    session = ChatSession(model, tiny_tokenizer, GREEDY)
    session.reply(TURNS[0])
    lengths, handle = record_input_lengths(model)
    try:
        session.reply(TURNS[1])
    finally:
        handle.remove()
    # The user's turn + speaker token, then one token per generated token and the closing end_of_turn.
    assert lengths[0] == len(user_turn(tiny_tokenizer, TURNS[1]))
    assert lengths[1:] == [1] * (len(session.last_reply_ids) + 1)


@pytest.mark.parametrize("name", ["new_llm", "lstm", "tinygpt2"])
def test_replies_equal_a_greedy_decode_over_the_whole_history(tiny_models, tiny_tokenizer, name):
    model = tiny_models[name]
    special = special_ids(tiny_tokenizer)
    stops = {special.end_of_turn, special.end_of_text}
    session = ChatSession(model, tiny_tokenizer, GREEDY)
    history = [special.end_of_text]
    # Two turns stay inside GPT-2's positions; past them the window test below takes over.
    for turn in TURNS if name != "tinygpt2" else TURNS[:2]:
        history += user_turn(tiny_tokenizer, turn)
        expected = from_scratch_greedy(model, history, GREEDY.max_new_tokens, stops)
        reply = session.reply(turn)
        assert session.last_reply_ids == expected
        assert reply == clean_line(tiny_tokenizer.decode(expected, skip_special_tokens=True))
        history += expected + [special.end_of_turn]
    assert session.tokens_seen == len(history)


@pytest.mark.parametrize("options", [GREEDY, SamplingOptions(max_new_tokens=6, temperature=1.5, seed=3)])
def test_reset_restores_the_first_conversation(tiny_models, tiny_tokenizer, options):
    session = ChatSession(tiny_models["new_llm"], tiny_tokenizer, options)
    first = [session.reply(turn) for turn in TURNS]
    session.reset()
    assert session.tokens_seen == 0 and session.state_bytes() == 0
    assert [session.reply(turn) for turn in TURNS] == first


@pytest.mark.parametrize("name", ["new_llm", "lstm"])
def test_recurrent_state_size_is_constant(tiny_models, tiny_tokenizer, name):
    session = ChatSession(tiny_models[name], tiny_tokenizer, GREEDY)
    sizes = []
    for turn in TURNS * 3:
        session.reply(turn)
        sizes.append(session.state_bytes())
    assert sizes[0] > 0 and len(set(sizes)) == 1


def test_gpt2_window_is_rebuilt_past_n_positions(tiny_models, tiny_tokenizer):
    model = tiny_models["tinygpt2"]
    session = ChatSession(model, tiny_tokenizer, GREEDY)
    sizes = []
    for turn in TURNS * 4:
        session.reply(turn)
        assert len(held(session)) <= POSITIONS
        sizes.append(session.state_bytes())
        if len(sizes) == 1:
            bytes_per_token = sizes[0] // session.tokens_seen  # no rebuild yet: the cache holds every token
    assert session.tokens_seen > 2 * POSITIONS
    assert max(sizes) <= bytes_per_token * POSITIONS
    # When the next user turn cannot fit, the cache is rebuilt over the last tokens, leaving room for the reply:
    # that reply is the one a fresh forward over the kept window gives.
    new = user_turn(tiny_tokenizer, TURNS[0])
    while len(held(session)) + len(new) <= POSITIONS:
        session.reply(TURNS[1])
    kept = (held(session) + new)[-session.decoder.keep :]
    special = special_ids(tiny_tokenizer)
    expected = from_scratch_greedy(model, kept, GREEDY.max_new_tokens, {special.end_of_turn, special.end_of_text})
    session.reply(TURNS[0])
    assert session.last_reply_ids == expected


def test_gpt2_window_stays_inside_the_positions_it_was_trained_on(tiny_models, tiny_tokenizer, monkeypatch):
    model = tiny_models["tinygpt2"]
    monkeypatch.setattr(model.config, "trained_positions", POSITIONS // 2, raising=False)
    session = ChatSession(model, tiny_tokenizer, GREEDY)
    for turn in TURNS * 4:
        session.reply(turn)
        assert len(held(session)) <= POSITIONS // 2
    assert session.tokens_seen > POSITIONS


def test_reply_stops_at_end_of_turn_and_closes_the_turn(tiny_models, tiny_tokenizer):
    special = special_ids(tiny_tokenizer)
    model = with_stop_bias(build_model("new_llm", tiny_models["new_llm"].config).eval(), special.end_of_turn, 100.0)
    session = ChatSession(model, tiny_tokenizer, GREEDY)
    assert session.reply(TURNS[0]) == ""
    assert session.tokens_seen == 1 + len(user_turn(tiny_tokenizer, TURNS[0])) + 1


def test_control_characters_and_empty_turns(tiny_models, tiny_tokenizer):
    assert clean_line("  hi\x1b[A there\x00\t ") == "hi [A there"
    session = ChatSession(tiny_models["new_llm"], tiny_tokenizer, GREEDY)
    with pytest.raises(ValueError, match="empty turn"):
        session.reply(" \x07 \n")
    assert session.tokens_seen == 0


@pytest.mark.parametrize(
    "bad", [{"max_new_tokens": 0}, {"temperature": 0.0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}]
)
def test_sampling_options_reject_nonsense(bad):
    with pytest.raises(ValueError):
        SamplingOptions(**bad)


@pytest.mark.parametrize("flags", [["--temperature", "0"], ["--top-p", "2"]])
def test_cli_chat_reports_bad_options_in_one_line(capsys, tmp_path, flags):
    assert main(["chat", "--checkpoint", str(tmp_path / "missing"), *flags]) == 1
    assert capsys.readouterr().err.startswith("newllm: error: ")


def test_cli_chat_without_checkpoint(capsys, tmp_path):
    assert main(["chat", "--checkpoint", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["new_llm", "tinygpt2", "lstm"])
def test_cli_chat_names_the_model_as_the_project_does(capsys, monkeypatch, tmp_path, tiny_models, tiny_tokenizer, name):
    path = save_checkpoint(tiny_models[name], tiny_tokenizer, tmp_path / name)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # end of input at the first prompt: leaves like Ctrl-D
    # 20: the tiny GPT-2 reads 64 positions, and a reply may take half of them
    assert main(["chat", "--checkpoint", str(path), "--max-new-tokens", "20"]) == 0
    assert capsys.readouterr().out.startswith(f"chatting with {name} from {path};")  # not gpt2 or newllm_lstm
