"""The real WikiText-2 and DailyDialog files: published counts, lossless BPE, the prototype protocol, windows."""

import pytest
import torch

from newllm.data import (
    DialogWindows,
    StreamWindows,
    count_targets,
    encode_dialogue,
    encode_text,
    load_dailydialog,
    load_wikitext,
    train_tokenizer,
)

pytestmark = pytest.mark.integration

# Figures from /work/shared/data/SOURCES.md: lines, and whitespace tokens plus one <eos> per line.
WIKITEXT = {"train": (36_718, 2_088_628), "valid": (3_760, 217_646), "test": (4_358, 245_569)}
# Dialogues and __eou__-delimited utterances.
DAILYDIALOG = {"train": (11_118, 87_171), "validation": (1_000, 8_069), "test": (1_000, 7_740)}


@pytest.fixture(scope="module")
def wikitext(real_data_dir):
    return {split: load_wikitext(split, data_dir=real_data_dir) for split in WIKITEXT}


@pytest.mark.parametrize("split", WIKITEXT)
def test_wikitext_counts_match_the_published_figures(wikitext, split):
    n_lines, n_words = WIKITEXT[split]
    assert len(wikitext[split].lines) == n_lines
    assert wikitext[split].n_words == n_words


@pytest.mark.parametrize("split", ["valid", "test"])
def test_raw_wikitext_has_the_same_counts(real_data_dir, split):
    raw = load_wikitext(split, variant="raw", data_dir=real_data_dir)
    assert (len(raw.lines), raw.n_words) == WIKITEXT[split]
    assert not any("<unk>" in line for line in raw.lines)


@pytest.mark.parametrize("split", DAILYDIALOG)
def test_dailydialog_counts_with_nothing_skipped(real_data_dir, split):
    dialogues = load_dailydialog(split, data_dir=real_data_dir)
    assert (len(dialogues.dialogues), dialogues.n_utterances, dialogues.skipped) == (*DAILYDIALOG[split], 0)


def test_bpe_trained_on_a_train_slice_round_trips_the_test_file(wikitext):
    tokenizer = train_tokenizer(wikitext["train"].head(2_000).lines, vocab_size=2_048)
    head = wikitext["test"].head(200)
    text = "".join(head.lines)
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.decode(encode_text(tokenizer, head)[1:].tolist()) == text


def test_prototype_protocol_gives_one_token_per_word_and_line(wikitext):
    prototype = train_tokenizer(wikitext["train"].lines, kind="prototype", vocab_size=1_000)
    assert prototype.get_vocab_size() == 1_000
    stream = encode_text(prototype, wikitext["test"])
    # The leading end_of_text is one <EOS> more than the published count.
    assert len(stream) == WIKITEXT["test"][1] + 1
    windows = StreamWindows(stream, block_size=256, drop_last=False)
    assert count_targets(windows) == WIKITEXT["test"][1]


def test_every_real_dialogue_encodes_and_windows(real_data_dir, wikitext):
    tokenizer = train_tokenizer(wikitext["train"].head(2_000).lines, vocab_size=2_048)
    dialogues = load_dailydialog("validation", data_dir=real_data_dir)
    encoded = [encode_dialogue(tokenizer, utterances) for utterances in dialogues.dialogues]
    windows = DialogWindows(encoded, block_size=128)
    assert count_targets(windows) == sum(len(ids) - 1 for ids, _ in encoded)
    # Every response of every dialogue is scored: at least one text token and its end of turn.
    assert sum(sum(mask) for _, mask in encoded) >= 2 * (dialogues.n_utterances - len(dialogues.dialogues))
    assert torch.cat([w["response_mask"] for w in windows]).max().item() == 1
