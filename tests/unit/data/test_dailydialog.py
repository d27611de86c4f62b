"""DailyDialog: parsing and skipping malformed lines, Hub fallback, errors, dialogue ids and response mask."""

import re
import sys
import types

import pytest

from newllm.data import (
    DataFormatError,
    DataNotFoundError,
    DialogSplit,
    encode_dialogue,
    format_prompt,
    load_dailydialog,
    special_ids,
    train_tokenizer,
)
from newllm.data.dailydialog import HUB_ID, HUB_REVISION

GOOD = [
    "Hey man , you wanna buy some weed ? __eou__ Some what ? __eou__ Weed ! __eou__\n",
    "Hello . __eou__\n",
    "  Padded  utterance .   __eou__   Reply .__eou__   \n",
    "Last line has no newline . __eou__ Yes __eou__",
]
GOOD_PARSED = [
    ("Hey man , you wanna buy some weed ?", "Some what ?", "Weed !"),
    ("Hello .",),
    ("Padded  utterance .", "Reply ."),
    ("Last line has no newline .", "Yes"),
]
MALFORMED = [
    "\n",  # blank line
    "No marker at all .\n",  # no __eou__
    "   __eou__  __eou__ \n",  # markers but no utterance
    "First . __eou__  __eou__ Third . __eou__\n",  # empty utterance in the middle
]


def write(root, relative, content):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A working directory with no ./data and no ../shared/data, $NEWLLM_DATA_DIR unset, and no datasets."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("NEWLLM_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)
    return tmp_path


def test_parses_good_lines_and_skips_and_counts_malformed_ones(isolated):
    # Malformed lines are placed between good ones so that skipping cannot disturb the order.
    lines = [GOOD[0], MALFORMED[0], GOOD[1], MALFORMED[1], MALFORMED[2], GOOD[2], MALFORMED[3], GOOD[3]]
    path = write(isolated / "d", "dailydialog/dialogues_train.txt", "".join(lines))
    split = load_dailydialog("train", data_dir=isolated / "d")
    assert split == DialogSplit("train", tuple(GOOD_PARSED), str(path), skipped=len(MALFORMED))
    assert split.n_utterances == 3 + 1 + 2 + 2


def test_valid_is_an_alias_of_validation(isolated):
    write(isolated / "d", "dailydialog/dialogues_validation.txt", GOOD[1])
    split = load_dailydialog("valid", data_dir=isolated / "d")
    assert split.name == "validation" and split.dialogues == (("Hello .",),)
    with pytest.raises(ValueError, match="unknown DailyDialog split 'dev'"):
        load_dailydialog("dev")


def test_a_file_of_only_malformed_lines_is_a_format_error(isolated):
    path = write(isolated / "d", "dailydialog/dialogues_test.txt", "".join(MALFORMED))
    message = f"^{re.escape(str(path))} holds no well-formed dialogue \\(4 malformed\\)"
    with pytest.raises(DataFormatError, match=message):
        load_dailydialog("test", data_dir=isolated / "d")


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"Hi \xe9 __eou__\n", "is not UTF-8")])
def test_empty_or_non_utf8_file_is_a_format_error_naming_it(isolated, content, message):
    path = write(isolated / "d", "dailydialog/dialogues_test.txt", content)
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))} {message}"):
        load_dailydialog("test", data_dir=isolated / "d")


def test_explicit_data_dir_is_the_only_place_looked_at(isolated):
    with pytest.raises(DataNotFoundError, match="dialogues_test.txt \\(--data-dir\\)$"):
        load_dailydialog("test", data_dir=isolated / "typo")


def test_missing_everywhere_names_every_place(isolated):
    with pytest.raises(DataNotFoundError) as raised:
        load_dailydialog("validation")
    message = str(raised.value)
    assert "\n" not in message
    for expected in (
        "$NEWLLM_DATA_DIR (not set)",
        str(isolated / "work" / "data" / "dailydialog" / "dialogues_validation.txt"),
        str(isolated / "shared" / "data" / "dailydialog" / "dialogues_validation.txt"),
        f"{HUB_ID}@{HUB_REVISION} split validation (datasets not installed)",
    ):
        assert expected in message


def test_hub_fallback_reads_the_parquet_conversion(isolated, monkeypatch):
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return {"dialog": [["Say , Jim ? ", " Sure . "], [" ", ""], ["Bye . "]]}

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    split = load_dailydialog("test")
    assert calls == [((HUB_ID,), {"revision": HUB_REVISION, "split": "test"})]
    assert split.dialogues == (("Say , Jim ?", "Sure ."), ("Bye .",))
    assert split.skipped == 1
    assert HUB_ID in split.source


def test_head_keeps_the_first_dialogues():
    split = DialogSplit("train", tuple(GOOD_PARSED), "file", skipped=2)
    head = split.head(2)
    assert head.dialogues == tuple(GOOD_PARSED[:2]) and head.name == "train" and head.skipped == 2
    assert "2 dialogues" in head.source


def expected_layout(tokenizer, utterances):
    """The documented layout, built the plain way."""
    special = special_ids(tokenizer)
    ids, mask = [special.end_of_text], [0]
    for k, utterance in enumerate(utterances):
        text = tokenizer.encode(" " + utterance).ids
        ids += [(special.speaker_1, special.speaker_2)[k % 2]] + text + [special.end_of_turn]
        mask += [0] + [1 if k else 0] * (len(text) + 1)
    return ids + [special.end_of_text], mask + [0]


def test_encode_dialogue_layout_and_response_mask(tiny_tokenizer, tiny_dialogues):
    special = special_ids(tiny_tokenizer)
    for utterances in tiny_dialogues:
        ids, mask = encode_dialogue(tiny_tokenizer, utterances)
        assert (ids, mask) == expected_layout(tiny_tokenizer, utterances)
        assert ids[0] == ids[-1] == special.end_of_text
        assert ids.count(special.end_of_turn) == len(utterances)
        speakers = [i for i in ids if i in (special.speaker_1, special.speaker_2)]
        assert speakers == [(special.speaker_1, special.speaker_2)[k % 2] for k in range(len(utterances))]
        # Masked tokens, minus the end-of-turn markers, decode to exactly the responses.
        scored = [i for i, m in zip(ids, mask) if m and i != special.end_of_turn]
        assert tiny_tokenizer.decode(scored) == "".join(" " + u for u in utterances[1:])
        assert sum(m for i, m in zip(ids, mask) if i == special.end_of_turn) == len(utterances) - 1
        framing = (special.end_of_text, special.speaker_1, special.speaker_2)
        assert all(m == 0 for i, m in zip(ids, mask) if i in framing)


def test_a_single_utterance_has_nothing_to_score(tiny_tokenizer):
    ids, mask = encode_dialogue(tiny_tokenizer, ["Is the lamp lit ?"])
    assert len(ids) == len(mask) and not any(mask)
    with pytest.raises(ValueError, match="at least one utterance"):
        encode_dialogue(tiny_tokenizer, [])


def test_encode_dialogue_works_with_the_prototype_tokenizer(tiny_corpus_lines, tiny_dialogues):
    prototype = train_tokenizer(tiny_corpus_lines, kind="prototype", vocab_size=7 + 50)
    ids, mask = encode_dialogue(prototype, tiny_dialogues[0])
    assert ids[0] == ids[-1] == prototype.token_to_id("<EOS>")
    # Prototype tokens are whitespace words, so each utterance costs its word count plus speaker and end of turn.
    assert len(ids) == 2 + sum(len(u.split()) + 2 for u in tiny_dialogues[0])
    assert len(mask) == len(ids)


def test_format_prompt_ends_with_the_next_speaker(tiny_tokenizer):
    special = special_ids(tiny_tokenizer)
    assert format_prompt(tiny_tokenizer, ["hello how are you"]) == [
        special.end_of_text,
        special.speaker_1,
        *tiny_tokenizer.encode(" hello how are you").ids,
        special.end_of_turn,
        special.speaker_2,
    ]
    assert format_prompt(tiny_tokenizer, ["a", "b"])[-1] == special.speaker_1


def test_format_prompt_is_a_prefix_of_the_encoded_dialogue(tiny_tokenizer, tiny_dialogues):
    # Generation must see exactly what training saw up to the reply.
    for utterances in tiny_dialogues:
        ids, _ = encode_dialogue(tiny_tokenizer, utterances)
        for k in range(1, len(utterances)):
            prompt = format_prompt(tiny_tokenizer, utterances[:k])
            assert ids[: len(prompt)] == prompt


@pytest.mark.parametrize(
    "turns, message", [([], "^empty prompt$"), (["  ", "\n"], "^empty prompt$"), (["hi", " "], "turn 1")]
)
def test_format_prompt_rejects_empty_turns(tiny_tokenizer, turns, message):
    with pytest.raises(ValueError, match=message):
        format_prompt(tiny_tokenizer, turns)
