"""Fixtures shared by all tests: a tiny corpus, its BPE tokenizer, tiny dialogues, the real data directory, and a
loader for the scripts in benchmarks/."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter (test_new_llm_kernel.py). It has to be chosen
# before triton is first imported, and torch imports triton as soon as anything loads torch._dynamo
# (transformers does), so here, before any newllm model module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from newllm.data.tokenizer import train_tokenizer  # noqa: E402
from newllm.data.wikitext import find_data_dir  # noqa: E402

# 30 lines with 238 distinct lower-cased words: enough for 40 BPE merges beyond the 260 fixed entries.
TINY_TEXT = """\
The old lighthouse stood on a rocky island at the edge of the cold northern sea .
Every night its keeper climbed ninety stone steps to light the great lamp .
Ships passing in the dark relied on that steady beam to avoid the hidden reefs .
In winter , storms arrived from the west and waves crashed against the walls .
The keeper kept a journal , writing down the weather , the wind and every vessel he saw .
His daughter , Mara , learned to read the clouds before she could read a book .
She knew that thin high clouds meant rain would follow within a day or two .
One autumn evening a small fishing boat lost its engine near the southern rocks .
Mara saw the flare first and ran down to wake her father .
Together they rowed through the rough water , guided only by the lamp above them .
The two fishermen were cold and frightened but nobody was hurt .
By morning the sea was calm again , and gulls circled over the quiet harbour .
News of the rescue travelled quickly along the coast to the nearest village .
The villagers brought bread , cheese , apples and warm blankets to the island .
Years later , Mara became the keeper herself when her father grew too old for the stairs .
She replaced the oil lamp with an electric light and installed a radio .
Still , she climbed the ninety steps each evening , as her father always had .
Scientists visited the island to study birds , seals and the strange green moss .
They measured the temperature of the water and counted the fish in nets .
Their reports showed that the sea was slowly getting warmer every decade .
Mara listened carefully and added their numbers to the old family journal .
Children from the village school sometimes came on a summer trip by ferry .
They asked many questions about ghosts , pirates , treasure and shipwrecks .
Mara laughed and told them the truth : the sea itself is the real treasure .
When the government decided to automate the lighthouse , Mara refused to leave .
She argued that machines cannot notice a flare , a shout or a lonely swimmer .
In the end they allowed her to stay as a guardian and teacher .
Today the journal rests in a glass case at the village museum .
Visitors read the careful handwriting and imagine the long dark nights .
Outside , the beam still turns slowly , sweeping across the restless water .
"""

TINY_DIALOGUES = (
    ("Hello , how are you ?", "Fine , thanks . And you ?", "Cold . The wind is strong today ."),
    ("Did you see the flare ?", "Yes , near the southern rocks !"),
    ("Is the lamp lit ?",),
    ("Where is Mara ?", "At the museum .", "Why ?", "She is reading the old journal .", "Ah , I see ."),
)

# Everything the integration tests read.
REAL_DATA_FILES = (
    "wikitext-2/wiki.train.tokens",
    "wikitext-2/wiki.valid.tokens",
    "wikitext-2/wiki.test.tokens",
    "wikitext-2-raw/wiki.valid.raw",
    "wikitext-2-raw/wiki.test.raw",
    "dailydialog/dialogues_train.txt",
    "dailydialog/dialogues_validation.txt",
    "dailydialog/dialogues_test.txt",
)


@pytest.fixture
def tiny_corpus_lines() -> list[str]:
    """30 English lines (238 distinct lower-cased words), each ending in "\\n" like TextSplit.lines."""
    return TINY_TEXT.splitlines(keepends=True)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE of 300 entries with all special tokens, trained on the tiny corpus; shared: don't reconfigure."""
    return train_tokenizer(TINY_TEXT.splitlines(keepends=True), kind="bpe", vocab_size=300)


@pytest.fixture
def tiny_dialogues() -> list[list[str]]:
    """Four short dialogues of one to five utterances."""
    return [list(dialogue) for dialogue in TINY_DIALOGUES]


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The directory holding the real WikiText-2 and DailyDialog files; skips without it, fails under CI=true."""
    beside_repo = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    for directory in (find_data_dir(), beside_repo):
        if directory is not None and all((directory / name).is_file() for name in REAL_DATA_FILES):
            return directory
    message = f"real data not found: need {', '.join(REAL_DATA_FILES)} under $NEWLLM_DATA_DIR, ./data or {beside_repo}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, so the real data must be present: {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: tiny models gain nothing from more, and on a busy CPU
    those threads wait on each other (a forward of microseconds of work then takes hundreds of ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
