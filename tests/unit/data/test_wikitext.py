"""WikiText-2 loading: file search order, exact lines and counts, Hub fallback, errors, and encode_text."""

import re
import sys
import types

import pytest
import torch

from newllm.data import (
    DataFormatError,
    DataNotFoundError,
    TextSplit,
    encode_text,
    find_data_dir,
    load_wikitext,
    special_ids,
    train_tokenizer,
)
from newllm.data.dailydialog import load_dailydialog
from newllm.data.wikitext import HUB_ID

# Shaped like the real file: a blank " \n" line, a heading, a line with a double space, non-ASCII text.
SAMPLE = " \n = Valkyria Chronicles = \n \n The game  was released in 2011 , in Japan ( 日本 ) . \n"
SAMPLE_LINES = (
    " \n",
    " = Valkyria Chronicles = \n",
    " \n",
    " The game  was released in 2011 , in Japan ( 日本 ) . \n",
)
# 0 + 4 + 0 + 13 whitespace tokens, plus one end of line for each of the 4 lines.
SAMPLE_WORDS = 17 + 4


def write(root, relative, content):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A working directory with no ./data and no ../shared/data, $NEWLLM_DATA_DIR unset, and no datasets."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("NEWLLM_DATA_DIR", raising=False)
    # None in sys.modules makes `import datasets` fail as it does where datasets isn't installed.
    monkeypatch.setitem(sys.modules, "datasets", None)
    return tmp_path


def fake_datasets(monkeypatch, load_dataset):
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_reads_lines_exactly_with_counts(isolated):
    path = write(isolated / "d", "wikitext-2/wiki.test.tokens", SAMPLE)
    split = load_wikitext("test", data_dir=isolated / "d")
    assert split == TextSplit("test", SAMPLE_LINES, str(path))
    assert split.n_words == SAMPLE_WORDS
    assert split.n_bytes == len(SAMPLE.encode("utf-8")) > len(SAMPLE)


def test_only_newline_ends_a_line(isolated):
    write(isolated / "d", "wikitext-2/wiki.valid.tokens", "a\rb\u2028c \x0b d\nlast line without newline")
    split = load_wikitext("valid", data_dir=isolated / "d")
    assert split.lines == ("a\rb\u2028c \x0b d\n", "last line without newline")
    assert "".join(split.lines) == "a\rb\u2028c \x0b d\nlast line without newline"


def test_validation_is_an_alias_of_valid_and_raw_reads_the_raw_folder(isolated):
    write(isolated / "d", "wikitext-2/wiki.valid.tokens", "tokens <unk>\n")
    write(isolated / "d", "wikitext-2-raw/wiki.valid.raw", "raw word\n")
    assert load_wikitext("validation", data_dir=isolated / "d").name == "valid"
    assert load_wikitext("validation", data_dir=isolated / "d").lines == ("tokens <unk>\n",)
    assert load_wikitext("valid", variant="raw", data_dir=isolated / "d").lines == ("raw word\n",)


@pytest.mark.parametrize(
    "split, variant, message",
    [("dev", "tokens", "unknown WikiText-2 split 'dev'"), ("test", "bpe", "unknown WikiText-2 variant 'bpe'")],
)
def test_unknown_split_or_variant(isolated, split, variant, message):
    with pytest.raises(ValueError, match=message):
        load_wikitext(split, variant)


def test_search_order_argument_then_env_then_dot_data_then_shared(isolated, monkeypatch):
    places = {name: isolated / name for name in ("arg", "env", "work/data", "shared/data")}
    for name, directory in places.items():
        write(directory, "wikitext-2/wiki.test.tokens", f"from {name}\n")
    monkeypatch.setenv("NEWLLM_DATA_DIR", str(places["env"]))
    assert find_data_dir(places["arg"]) == places["arg"]
    assert load_wikitext("test", data_dir=places["arg"]).lines == ("from arg\n",)
    assert find_data_dir() == places["env"]
    assert load_wikitext("test").lines == ("from env\n",)
    monkeypatch.delenv("NEWLLM_DATA_DIR")
    assert find_data_dir().resolve() == places["work/data"].resolve()
    assert load_wikitext("test").lines == ("from work/data\n",)
    (places["work/data"] / "wikitext-2" / "wiki.test.tokens").unlink()
    # ./data exists but lacks the file, so the search goes on to ../shared/data.
    assert load_wikitext("test").lines == ("from shared/data\n",)


def test_find_data_dir_is_none_when_nothing_exists(isolated):
    assert find_data_dir(isolated / "nowhere") is None


def test_explicit_data_dir_is_the_only_place_looked_at(isolated, monkeypatch):
    write(isolated / "shared" / "data", "wikitext-2/wiki.test.tokens", "would hide a typo\n")
    with pytest.raises(DataNotFoundError) as raised:
        load_wikitext("test", data_dir=isolated / "typo")
    message = str(raised.value)
    assert str(isolated / "typo" / "wikitext-2" / "wiki.test.tokens") in message
    assert "Hub" not in message and "shared" not in message


def test_a_data_dir_named_in_the_environment_is_the_only_place_looked_at(isolated, monkeypatch):
    write(isolated / "shared" / "data", "wikitext-2/wiki.test.tokens", "would hide a typo\n")
    monkeypatch.setenv("NEWLLM_DATA_DIR", str(isolated / "env-typo"))
    with pytest.raises(DataNotFoundError, match=r"the data directory .*env-typo does not exist") as raised:
        load_wikitext("test")
    assert "Hub" not in str(raised.value) and "shared" not in str(raised.value)
    with pytest.raises(DataNotFoundError, match="env-typo does not exist"):
        load_dailydialog("test")


def test_missing_everywhere_names_every_place_in_one_line(isolated, monkeypatch):
    monkeypatch.delenv("NEWLLM_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError) as raised:
        load_wikitext("test")
    message = str(raised.value)
    assert isinstance(raised.value, FileNotFoundError)
    assert "\n" not in message
    for expected in (
        "$NEWLLM_DATA_DIR (not set)",
        str(isolated / "work" / "data" / "wikitext-2" / "wiki.test.tokens"),
        str(isolated / "shared" / "data" / "wikitext-2" / "wiki.test.tokens"),
        f"{HUB_ID} wikitext-2-v1 split test (datasets not installed)",
    ):
        assert expected in message


def test_missing_with_env_unset_says_so(isolated):
    with pytest.raises(DataNotFoundError, match=r"\$NEWLLM_DATA_DIR \(not set\)"):
        load_wikitext("valid", variant="raw")


def test_hub_failure_reports_the_first_line_of_the_error(isolated, monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nTraceback details")

    fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(DataNotFoundError, match="ConnectionError: Couldn't reach the Hub\\)$"):
        load_wikitext("train", variant="raw")


def test_hub_fallback_restores_blank_lines(isolated, monkeypatch):
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return {"text": ["", " = Title = \n", "", " Body text . \n"]}

    fake_datasets(monkeypatch, load_dataset)
    split = load_wikitext("valid", variant="raw")
    assert calls == [((HUB_ID, "wikitext-2-raw-v1"), {"split": "validation"})]
    assert split.lines == (" \n", " = Title = \n", " \n", " Body text . \n")
    assert split.n_words == 3 + 3 + 4  # "= Title =" and "Body text ." plus 4 line ends
    assert HUB_ID in split.source


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"), (b"caf\xc3\xa9 ok\nbad \xff byte\n", "is not UTF-8 \\(invalid byte at offset 13\\)")],
)
def test_empty_or_non_utf8_file_is_a_format_error_naming_it(isolated, content, message):
    path = write(isolated / "d", "wikitext-2/wiki.test.tokens", content)
    with pytest.raises(DataFormatError, match=f"^{re.escape(str(path))} {message}") as raised:
        load_wikitext("test", data_dir=isolated / "d")
    assert isinstance(raised.value, ValueError)


def test_head_keeps_name_and_notes_the_slice():
    split = TextSplit("train", SAMPLE_LINES, "/data/wiki.train.tokens")
    head = split.head(2)
    assert head.lines == SAMPLE_LINES[:2]
    assert head.name == "train"
    assert head.source.startswith(split.source) and "2 lines" in head.source
    assert split.head(100).lines == SAMPLE_LINES
    with pytest.raises(ValueError):
        split.head(-1)


def test_encode_text_is_end_of_text_then_each_line_in_order(tiny_tokenizer, tiny_corpus_lines):
    split = TextSplit("test", tuple(tiny_corpus_lines), "memory")
    stream = encode_text(tiny_tokenizer, split)
    assert stream.dtype == torch.int64 and stream.dim() == 1
    expected = [special_ids(tiny_tokenizer).end_of_text]
    for line in tiny_corpus_lines:
        expected += tiny_tokenizer.encode(line).ids
    assert stream.tolist() == expected
    assert tiny_tokenizer.decode(stream[1:].tolist()) == "".join(tiny_corpus_lines)


def test_encode_text_of_a_head_is_a_prefix(tiny_tokenizer, tiny_corpus_lines):
    split = TextSplit("test", tuple(tiny_corpus_lines), "memory")
    full, head = encode_text(tiny_tokenizer, split), encode_text(tiny_tokenizer, split.head(7))
    assert torch.equal(full[: len(head)], head)


def test_prototype_stream_has_one_token_per_word_and_line(tiny_corpus_lines):
    split = TextSplit("test", (*tiny_corpus_lines, " \n", " double  spaced \n"), "memory")
    prototype = train_tokenizer(split.lines, kind="prototype", vocab_size=7 + 100)
    stream = encode_text(prototype, split)
    # The leading end_of_text is <EOS> too, so the stream is one longer than the word count.
    assert len(stream) == split.n_words + 1
    assert (stream == prototype.token_to_id("<EOS>")).sum().item() == len(split.lines) + 1
