"""Tokenizers: BPE round trip, special tokens, the prototype protocol, save/load and fingerprints."""

import random
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from newllm.data import (
    END_OF_TEXT,
    END_OF_TURN,
    SPEAKER_1,
    SPEAKER_2,
    DataFormatError,
    TokenizerMismatchError,
    check_same_tokenizer,
    describe_tokenizer,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    tokenizer_fingerprint,
    train_tokenizer,
)

SPECIAL_STRINGS = (END_OF_TEXT, SPEAKER_1, SPEAKER_2, END_OF_TURN)
PROTOTYPE_SPECIALS = ("<PAD>", "<UNK>", "<BOS>", "<EOS>")


def round_trip(tokenizer, text):
    return tokenizer.decode(tokenizer.encode(text).ids)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_text(tiny_tokenizer, text):
    assume(not any(special in text for special in SPECIAL_STRINGS))
    assert round_trip(tiny_tokenizer, text) == text


@pytest.mark.parametrize(
    "text",
    ["", "\n", " \n", "  two  spaces  ", "tab\tcarriage\r\nreturn", "naïve café 日本語 🙂", "\x00\x7f\u2028"],
)
def test_bpe_round_trips_awkward_text(tiny_tokenizer, text):
    assert round_trip(tiny_tokenizer, text) == text


def test_bpe_round_trips_its_corpus_and_uses_merges(tiny_tokenizer, tiny_corpus_lines):
    text = "".join(tiny_corpus_lines)
    ids = tiny_tokenizer.encode(text).ids
    assert tiny_tokenizer.decode(ids) == text
    # Fewer ids than bytes shows that the learned merges are applied.
    assert len(ids) < len(text.encode("utf-8"))


def test_bpe_has_the_requested_size(tiny_tokenizer):
    assert tiny_tokenizer.get_vocab_size() == 300


def test_bpe_rejects_a_vocabulary_without_room_for_bytes_and_specials(tiny_corpus_lines):
    assert train_tokenizer(tiny_corpus_lines, vocab_size=260).get_vocab_size() == 260
    with pytest.raises(ValueError, match="at least 260"):
        train_tokenizer(tiny_corpus_lines, vocab_size=259)


def test_unknown_kind_is_an_error(tiny_corpus_lines):
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'"):
        train_tokenizer(tiny_corpus_lines, kind="wordpiece")


def test_bpe_special_tokens_are_single_distinct_ids(tiny_tokenizer):
    ids = special_ids(tiny_tokenizer)
    by_string = {
        END_OF_TEXT: ids.end_of_text,
        SPEAKER_1: ids.speaker_1,
        SPEAKER_2: ids.speaker_2,
        END_OF_TURN: ids.end_of_turn,
    }
    for string, expected in by_string.items():
        assert tiny_tokenizer.encode(string).ids == [expected]
        assert tiny_tokenizer.encode(f"a{string}b").ids.count(expected) == 1
    assert len(set(by_string.values())) == 4
    assert ids.pad == ids.end_of_text


def test_special_ids_names_missing_tokens():
    bare = Tokenizer.from_str(train_tokenizer(["a b c\n"], vocab_size=260).to_str().replace(SPEAKER_2, "<|other|>"))
    with pytest.raises(ValueError, match=r"lacks special token\(s\) <\|speaker2\|>"):
        special_ids(bare)


def test_training_is_deterministic(tiny_corpus_lines, tiny_tokenizer):
    again = train_tokenizer(tiny_corpus_lines, vocab_size=300)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tiny_tokenizer)


# A corpus for the prototype protocol: 1,200 distinct words, of which the first 500 occur three times,
# the next 600 twice and the last 100 once, in shuffled order and partly upper-cased. Names are
# scattered over w0000 … w1199, so that code-point order differs from frequency order. The 993 word
# slots (1000 minus 7 special tokens) end inside the group seen twice, which shows how ties are broken.
PROTOTYPE_WORDS = [f"w{i * 7 % 1200:04d}" for i in range(1200)]


def prototype_corpus() -> list[str]:
    tokens = [word for i, word in enumerate(PROTOTYPE_WORDS) for _ in range(3 if i < 500 else 2 if i < 1100 else 1)]
    random.Random(0).shuffle(tokens)
    tokens = [token.upper() if j % 7 == 0 else token for j, token in enumerate(tokens)]
    return [" ".join(tokens[start : start + 10]) + "\n" for start in range(0, len(tokens), 10)]


@pytest.fixture(scope="module")
def prototype_tokenizer():
    return train_tokenizer(prototype_corpus(), kind="prototype", vocab_size=1000)


def test_prototype_vocabulary_is_exactly_the_requested_size_with_the_prototype_specials(prototype_tokenizer):
    vocab = prototype_tokenizer.get_vocab()
    assert prototype_tokenizer.get_vocab_size() == len(vocab) == 1000
    assert sorted(vocab.values()) == list(range(1000))
    for token in (*PROTOTYPE_SPECIALS, SPEAKER_1, SPEAKER_2, END_OF_TURN):
        assert token in vocab


def test_prototype_keeps_the_most_frequent_words_with_ties_in_code_point_order(prototype_tokenizer):
    vocab = prototype_tokenizer.get_vocab()
    kept = {word for word in vocab if word.startswith("w")}
    assert kept == set(PROTOTYPE_WORDS[:500]) | set(sorted(PROTOTYPE_WORDS[500:1100])[:493])


def test_prototype_special_ids_map_to_prototype_tokens(prototype_tokenizer):
    ids = special_ids(prototype_tokenizer)
    assert ids.end_of_text == prototype_tokenizer.token_to_id("<EOS>")
    assert ids.pad == prototype_tokenizer.token_to_id("<PAD>")
    assert ids.speaker_1 == prototype_tokenizer.token_to_id(SPEAKER_1)
    assert len({ids.end_of_text, ids.pad, ids.speaker_1, ids.speaker_2, ids.end_of_turn}) == 5


def test_prototype_encodes_lower_cased_words_unknowns_and_one_eos_per_line(prototype_tokenizer):
    known = PROTOTYPE_WORDS[:3]
    text = f"{known[0].upper()} {known[1]}\n{known[2]} {PROTOTYPE_WORDS[-1]}\n\nnever-seen"
    encoding = prototype_tokenizer.encode(text)
    assert encoding.tokens == [known[0], known[1], "<EOS>", known[2], "<UNK>", "<EOS>", "<EOS>", "<UNK>"]
    assert encoding.tokens.count("<EOS>") == text.count("\n")
    assert len(encoding.ids) == len(text.split()) + text.count("\n")


def test_prototype_decoding_shows_unknown_words_but_drops_padding(prototype_tokenizer):
    ids = [special_ids(prototype_tokenizer).pad, *prototype_tokenizer.encode(f"never-seen {PROTOTYPE_WORDS[0]}").ids]
    assert prototype_tokenizer.decode(ids) == f"<UNK> {PROTOTYPE_WORDS[0]}"


def test_prototype_needs_enough_distinct_words(tiny_corpus_lines):
    with pytest.raises(DataFormatError, match=r"^corpus.txt is too small to train a prototype tokenizer of 1000 entries: "
                       r"it yields \d+ entries \(\d+ distinct words, 993 needed\)"):
        train_tokenizer(tiny_corpus_lines, kind="prototype", vocab_size=1000, source="corpus.txt")


def test_bpe_refuses_a_text_with_fewer_merges_than_asked(tiny_corpus_lines):
    with pytest.raises(DataFormatError) as caught:
        train_tokenizer(tiny_corpus_lines, vocab_size=8192, source="corpus.txt")
    match = re.fullmatch(r"corpus.txt is too small to train a bpe tokenizer of 8192 entries: it yields (\d+) entries; "
                         r"use more text or a smaller data.vocab_size", str(caught.value))  # fmt: skip
    assert match, caught.value
    learned = int(match.group(1))
    assert 260 < learned < 8192
    # the count it names is what the text can give: asking for exactly that many succeeds
    assert train_tokenizer(tiny_corpus_lines, vocab_size=learned).get_vocab_size() == learned


def test_prototype_does_not_count_special_strings_as_words():
    lines = [f"{SPEAKER_1} a a b\n", "<EOS> c\n"]
    tokenizer = train_tokenizer(lines, kind="prototype", vocab_size=7 + 4)
    assert sorted(tokenizer.get_vocab().values()) == list(range(11))
    # "<EOS>" in text is lower-cased into an ordinary word; only line ends make the <EOS> token.
    assert {"a", "b", "c", "<eos>"} <= set(tokenizer.get_vocab())


@pytest.mark.parametrize("kind, size", [("bpe", 300), ("prototype", 1000)])
def test_save_then_load_keeps_fingerprint_and_kind(tmp_path, tiny_tokenizer, prototype_tokenizer, kind, size):
    tokenizer = tiny_tokenizer if kind == "bpe" else prototype_tokenizer
    path = save_tokenizer(tokenizer, tmp_path / "run" / "tok")
    assert path == tmp_path / "run" / "tok" / "tokenizer.json"
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]
    for source in (path, path.parent):
        loaded = load_tokenizer(source)
        assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tokenizer)
        assert describe_tokenizer(loaded) == describe_tokenizer(tokenizer)
        assert describe_tokenizer(loaded)["kind"] == kind
        assert describe_tokenizer(loaded)["vocab_size"] == size
        assert special_ids(loaded) == special_ids(tokenizer)


def test_save_overwrites_and_leaves_no_temporary_file(tmp_path, tiny_tokenizer, tiny_corpus_lines):
    other = train_tokenizer(tiny_corpus_lines, vocab_size=280)
    save_tokenizer(tiny_tokenizer, tmp_path)
    save_tokenizer(other, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    assert tokenizer_fingerprint(load_tokenizer(tmp_path)) == tokenizer_fingerprint(other)


def test_load_missing_tokenizer_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tokenizer.json")):
        load_tokenizer(tmp_path)


def test_load_corrupt_tokenizer_names_the_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(DataFormatError, match="corrupt tokenizer file .*tokenizer.json"):
        load_tokenizer(tmp_path)


def test_fingerprint_ignores_padding_settings_but_not_vocabulary(tiny_tokenizer, tiny_corpus_lines):
    padded = Tokenizer.from_str(tiny_tokenizer.to_str())
    padded.enable_padding(pad_id=0, pad_token=END_OF_TEXT)
    assert tokenizer_fingerprint(padded) == tokenizer_fingerprint(tiny_tokenizer)
    smaller = train_tokenizer(tiny_corpus_lines, vocab_size=299)
    assert tokenizer_fingerprint(smaller) != tokenizer_fingerprint(tiny_tokenizer)


def test_check_same_tokenizer_passes_for_a_copy_and_names_where_otherwise(tiny_tokenizer, tiny_corpus_lines):
    check_same_tokenizer(tiny_tokenizer, Tokenizer.from_str(tiny_tokenizer.to_str()), "checkpoint")
    # Same size, different merges: trained on the corpus upper-cased.
    other = train_tokenizer([line.upper() for line in tiny_corpus_lines], vocab_size=300)
    assert other.get_vocab_size() == tiny_tokenizer.get_vocab_size()
    with pytest.raises(TokenizerMismatchError, match="^finetune checkpoint: tokenizer differs") as raised:
        check_same_tokenizer(tiny_tokenizer, other, "finetune checkpoint")
    assert isinstance(raised.value, ValueError)


def test_describe_tokenizer(tiny_tokenizer):
    description = describe_tokenizer(tiny_tokenizer)
    assert description == {
        "kind": "bpe",
        "vocab_size": 300,
        "fingerprint": tokenizer_fingerprint(tiny_tokenizer),
        "normalisation": description["normalisation"],
    }
    assert description["normalisation"].endswith(".") and "\n" not in description["normalisation"]
