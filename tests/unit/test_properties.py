"""Property tests: tokenizers and the prompt path take any text; only documented errors come out.

The documented errors are ValueError for a prompt that is empty after cleaning, one that is not
valid UTF-8 (lone surrogates, as argv bytes arrive), or a `max_new_tokens` leaving no room in
GPT-2's positions; TypeError for turns that aren't a list of str.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from newllm.data.tokenizer import (
    END_OF_TEXT,
    END_OF_TURN,
    PROTOTYPE_EOS,
    SPEAKER_1,
    SPEAKER_2,
    special_ids,
    train_tokenizer,
)
from newllm.evaluation.generation import prompt_ids, respond
from newllm.models import BaselineShape, build_model, matched_configs

from ..conftest import TINY_TEXT
from .models.conftest import tiny_new_llm_config

SPECIAL_STRINGS = (END_OF_TEXT, SPEAKER_1, SPEAKER_2, END_OF_TURN)
POSITIONS = 64  # GPT-2's, small so that long prompts must be cut

# Bounded and without per-example deadlines: a busy CPU makes single examples slow, not wrong.
BOUNDED = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MODEL_BOUNDED = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any text without surrogates (Hypothesis' default alphabet), control characters and separators included.
any_text = st.text()
# Short pieces repeated: strings of up to ~20,000 characters without generating them character by character.
long_text = st.builds(lambda piece, times: piece * times, st.text(min_size=1, max_size=12), st.integers(1, 2000))
# Text that always holds at least one lone surrogate, as Python decodes invalid UTF-8 argv bytes.
surrogate_text = st.builds(
    lambda before, bad, after: before + bad + after,
    st.text(max_size=10),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.text(max_size=10),
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prototype_tokenizer():
    return train_tokenizer(TINY_TEXT.splitlines(keepends=True), kind="prototype", vocab_size=100)


@pytest.fixture(scope="module")
def models(tiny_tokenizer):
    """Tiny New-LLM, GPT-2 (64 positions) and LSTM over the tiny tokenizer's 300 ids."""
    assert tiny_tokenizer.get_vocab_size() == 300
    configs = matched_configs(tiny_new_llm_config(), shape=BaselineShape(gpt2_positions=POSITIONS, dropout=0.0))
    torch.manual_seed(0)
    return {name: build_model(name, config).eval() for name, config in configs.items()}


# ---------------------------------------------------------------- tokenizers


@BOUNDED
@given(text=st.one_of(any_text, long_text))
def test_bpe_round_trips_any_text_with_ids_in_range(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text, add_special_tokens=False).ids
    assert all(0 <= i < tiny_tokenizer.get_vocab_size() for i in ids)
    assume(not any(special in text for special in SPECIAL_STRINGS))
    assert tiny_tokenizer.decode(ids) == text


@BOUNDED
@given(text=st.one_of(any_text, long_text, st.sampled_from(SPECIAL_STRINGS).map(lambda s: f"a {s} b")))
def test_prototype_tokenizer_never_fails_and_marks_every_line_end(prototype_tokenizer, text):
    ids = prototype_tokenizer.encode(text).ids
    assert all(0 <= i < prototype_tokenizer.get_vocab_size() for i in ids)
    assert isinstance(prototype_tokenizer.decode(ids), str)
    if "<" not in text:
        assert ids.count(prototype_tokenizer.token_to_id(PROTOTYPE_EOS)) == text.count("\n")


# ---------------------------------------------------------------- the prompt path


@BOUNDED
# the longest reply a position-embedding model may be asked for: half its positions (the prompt keeps the rest)
@given(turns=st.lists(st.one_of(any_text, long_text), min_size=1, max_size=3),
       max_new_tokens=st.integers(1, POSITIONS // 2))  # fmt: skip
@pytest.mark.parametrize("name", ["tinygpt2", "new_llm"])
def test_prompt_ids_take_any_turns_and_fit_the_positions(tiny_tokenizer, models, name, turns, max_new_tokens):
    model = models[name]
    try:
        ids = prompt_ids(model, tiny_tokenizer, turns, max_new_tokens)
    except ValueError as err:
        # Only a turn that control characters and whitespace reduce to nothing is refused.
        assert str(err) == "empty prompt" or str(err).startswith("turn ")
        assert any(not "".join(ch for ch in t if ch.isprintable()).strip() for t in turns)
        return
    special = special_ids(tiny_tokenizer)
    assert all(0 <= i < model.config.vocab_size for i in ids)
    assert ids[-1] == (special.speaker_1 if len(turns) % 2 == 0 else special.speaker_2)
    if name == "tinygpt2":
        assert 1 <= len(ids) <= POSITIONS - max_new_tokens
    else:
        assert ids[0] == special.end_of_text  # recurrent models read the whole prompt


@BOUNDED
@given(text=surrogate_text)
def test_a_prompt_with_lone_surrogates_is_a_value_error(tiny_tokenizer, models, text):
    with pytest.raises(ValueError, match="^the prompt is not valid UTF-8 text"):
        prompt_ids(models["new_llm"], tiny_tokenizer, [text], 5)


@BOUNDED
@given(turn=st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text(), max_size=2)))
def test_a_turn_that_is_not_a_str_is_a_type_error(tiny_tokenizer, models, turn):
    with pytest.raises(TypeError):
        prompt_ids(models["lstm"], tiny_tokenizer, ["hello", turn], 5)


@BOUNDED
@given(turns=st.one_of(st.text(), st.none(), st.integers(), st.binary()))
def test_turns_that_are_not_a_list_are_a_type_error(tiny_tokenizer, models, turns):
    with pytest.raises(TypeError):
        prompt_ids(models["lstm"], tiny_tokenizer, turns, 5)


@MODEL_BOUNDED
@given(text=st.one_of(any_text, st.builds(lambda p, n: p * n, st.text(min_size=1, max_size=8), st.integers(1, 150))))
@pytest.mark.parametrize("name", ["new_llm", "tinygpt2", "lstm"])
def test_respond_answers_any_text_with_a_str(tiny_tokenizer, models, name, text):
    try:
        reply = respond(models[name], tiny_tokenizer, [text], max_new_tokens=3)
    except ValueError as err:
        assert str(err) == "empty prompt"
        assert not "".join(ch for ch in text if ch.isprintable()).strip()
        return
    assert isinstance(reply, str)
    assert not any(special in reply for special in SPECIAL_STRINGS)
