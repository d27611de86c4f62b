"""Tests for reporting.report: numbers, computed summary, missing sections, escaping, files."""

import ast
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest

import newllm.reporting
from newllm.reporting import load_results, render_report, write_report

SPEED = {"batch_size": 32, "seq_len": 64, "generated_tokens": 64, "device": "cpu", "dtype": "float32"}


def model_results(name, word_ppl, token_ppl, bpb, params, response_ppl, ms_batch, ms_token):
    """One model's results.json entry with the keys the evaluator writes."""
    return {
        "params": params,
        "architecture": {"hidden_size": 512, "num_hidden_layers": 3},
        "wikitext": {
            "test": {"loss": math.log(token_ppl), "token_ppl": token_ppl, "word_ppl": word_ppl,
                     "bits_per_byte": bpb, "tokens": 290000, "words": 245569, "bytes": 1256449},
            "best_epoch": 18, "epochs_run": 33, "train_seconds": 120.5,
            "history": f"{name}_wikitext/history.json",
            "curves": f"{name}_wikitext_training_curves.png",
            "checkpoint": f"best_{name}_wikitext",
        },
        "dailydialog": {
            "test": {"loss": 3.0, "token_ppl": 20.1, "response_ppl": response_ppl,
                     "tokens": 140000, "response_tokens": 120000},
            "best_epoch": 5, "epochs_run": 10, "train_seconds": 50.0,
            "history": f"{name}_dialog/history.json",
            "curves": f"{name}_dialog_training_curves.png",
            "checkpoint": f"best_{name}_dialog",
        },
        "speed": {"ms_per_batch": ms_batch, "ms_per_token": ms_token, **SPEED},
        "samples": [{"prompt": "hello how are you", "greedy": f"fine ({name})", "sampled": f"good ({name})"}],
    }


def make_results(new_llm_word=205.0, tinygpt2_word=180.0, lstm_word=250.0, sliced=False):
    return {
        "preset": "quick" if sliced else "full",
        "command": "newllm pipeline",
        "created": "2026-11-29T03:00:00Z",
        "device": "cpu",
        "tokenizer": {"kind": "bpe", "vocab_size": 8192, "fingerprint": "ab12cd",
                      "normalisation": "byte-level BPE"},
        "data": {
            "wikitext": {"variant": "tokens", "source": "wiki.test.tokens", "test_words": 245569,
                         "test_bytes": 1256449, "test_tokens": 290000, "sliced": sliced},
            "dailydialog": {"source": "dd", "test_dialogues": 1000, "test_tokens": 140000,
                            "test_response_tokens": 120000, "sliced": sliced},
        },
        "models": {
            "new_llm": model_results("new_llm", new_llm_word, 134.0, 1.5, 7_512_345, 22.3, 12.3, 0.8),
            "tinygpt2": model_results("tinygpt2", tinygpt2_word, 120.04, 1.4567, 7_400_000, 21.0, 10.1, 1.25),
            "lstm": model_results("lstm", lstm_word, 160.0, 1.7, 7_600_000, 30.0, 9.0, 0.5),
        },
    }


def summary(markdown):
    """The "In short" paragraph."""
    return next(line for line in markdown.splitlines() if line.startswith("**In short.**"))


def table_after(markdown, heading):
    """Rows (lists of cell strings) of the first table after a heading."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            # Split on pipes that are not escaped, the way a Markdown renderer does.
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif rows:
            break
    return rows[2:]  # drop header and alignment rows


def row(rows, label):
    return next(r for r in rows if r[0] == label)


def write_history(path, val_losses):
    path.parent.mkdir(parents=True, exist_ok=True)
    history = [
        {"epoch": i + 1, "train_loss": None if i == 0 else v - 0.1, "val_loss": v,
         "train_ppl": None if i == 0 else math.exp(v - 0.1), "val_ppl": math.exp(v),
         "lr": 5e-4, "seconds": 1.0}
        for i, v in enumerate(val_losses)
    ]
    path.write_text(json.dumps(history))


def images(markdown):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


# ---------------------------------------------------------------- numbers


def test_tables_show_each_models_numbers_formatted():
    md = render_report(make_results())
    wikitext = table_after(md, "## WikiText-2 test")
    assert row(wikitext, "New-LLM")[1:4] == ["134.0", "205.0", "1.500"]
    # The lowest value of each column is bolded.
    assert row(wikitext, "TinyGPT2")[1:4] == ["**120.0**", "**180.0**", "**1.457**"]
    assert row(wikitext, "LSTM")[1:4] == ["160.0", "250.0", "1.700"]
    assert row(wikitext, "New-LLM")[4] == "18 / 33"

    params = table_after(md, "## Models")
    assert row(params, "New-LLM")[1:3] == ["7.51M", "7,512,345"]
    assert row(params, "TinyGPT2")[1:4] == ["7.40M", "7,400,000", "-1.5 %"]

    dialog = table_after(md, "## DailyDialog test")
    assert row(dialog, "New-LLM")[1:3] == ["20.1", "22.3"]
    assert row(dialog, "TinyGPT2")[2] == "**21.0**"

    speed = table_after(md, "## Speed")
    assert row(speed, "New-LLM")[1:8] == ["12.3", "0.800", "32", "64", "64", "cpu", "float32"]
    assert row(speed, "LSTM")[1:3] == ["**9.00**", "**0.500**"]


def with_stream_results(results):
    """Add the stateful test entries evaluate() writes: carried state for the recurrent models, sliding window for GPT-2."""
    stateful = {"new_llm": (190.0, 125.0, 1.45), "tinygpt2": (170.0, 115.0, 1.4), "lstm": (240.0, 155.0, 1.68)}
    for name, (word_ppl, token_ppl, bpb) in stateful.items():
        if name == "tinygpt2":
            plan = {"method": "sliding_window", "window": 512, "stride": 256, "lanes": None}
        else:
            plan = {"method": "carried_state", "window": 512, "stride": None, "lanes": 8 if name == "new_llm" else 1}
        results["models"][name]["wikitext"]["test_stream"] = {
            **plan, "loss": math.log(token_ppl), "token_ppl": token_ppl, "word_ppl": word_ppl,
            "bits_per_byte": bpb, "tokens": 290000, "words": 245569, "bytes": 1256449,
        }
    results["data"]["wikitext"]["block_size"] = 128
    return results


def test_stateful_table_sets_carried_and_sliding_beside_reset():
    md = render_report(with_stream_results(make_results()))
    heading = "## WikiText-2 test with context across windows"
    assert "every 128-token window starts from nothing" in md
    stream = table_after(md, heading)
    assert row(stream, "New-LLM")[1:] == [
        "205.0", "190.0", "-7.3 %", "125.0", "1.450", "carried state, 8 lanes, 512 tokens per forward",
    ]
    assert row(stream, "TinyGPT2")[1:] == [
        "180.0", "**170.0**", "-5.6 %", "**115.0**", "**1.400**", "sliding window of 512, stride 256",
    ]
    assert row(stream, "LSTM")[6] == "carried state, 1 lane, 512 tokens per forward"
    assert "test word perplexity goes 205.0 → 190.0 for New-LLM, 180.0 → 170.0 for TinyGPT2" in summary(md)
    assert "**Stateful**" in md[md.index("## How these numbers are defined"):]
    # Between the reset table and the dialogue table.
    assert md.index("## WikiText-2 test\n") < md.index(heading) < md.index("## DailyDialog test")


def test_stateful_table_is_left_out_of_older_results_and_dashed_per_missing_model():
    md = render_report(make_results())
    assert "context across windows" not in md
    results = with_stream_results(make_results())
    del results["models"]["lstm"]["wikitext"]["test_stream"]
    stream = table_after(render_report(results), "## WikiText-2 test with context across windows")
    assert row(stream, "LSTM")[1:] == ["250.0"] + ["—"] * 5
    assert "for LSTM" not in summary(render_report(results))


def test_definitions_and_tokenizer_are_stated():
    md = render_report(make_results())
    definitions = md[md.index("## How these numbers are defined"):]
    for phrase in ("exp(total NLL / predicted tokens)", "exp(total NLL / words)", "245,569",
                   "ln 2", "UTF-8 bytes", "after the first", "end-of-turn", "vocabulary 8,192", "`ab12cd`"):
        assert phrase in definitions
    assert "not comparable with the literature" not in md


def test_the_prototypes_closed_word_vocabulary_is_flagged():
    results = make_results()
    results["tokenizer"] |= {"kind": "prototype", "vocab_size": 1000}
    definitions = render_report(results)[render_report(results).index("## How these numbers are defined"):]
    assert "outside its 1,000 entries to one `<UNK>`" in definitions and "not comparable with the literature" in definitions


def test_sliced_data_is_flagged():
    md = render_report(make_results(sliced=True))
    assert "not comparable with the literature" in md
    assert "sliced" in summary(md)


def test_wrong_word_count_is_flagged():
    results = make_results()
    results["data"]["wikitext"]["test_words"] = 240000
    assert "Check the word count" in render_report(results)


# ---------------------------------------------------------------- computed summary


def test_summary_names_best_model_and_ratio():
    text = summary(render_report(make_results(new_llm_word=205.0, tinygpt2_word=180.0, lstm_word=250.0)))
    assert "TinyGPT2 has the lowest WikiText-2 test word perplexity: 180.0" in text
    assert "New-LLM's word perplexity is 1.14× TinyGPT2's (14 % higher)" in text
    assert "7.51M vs 7.40M parameters" in text


def test_summary_follows_the_numbers_when_swapped():
    text = summary(render_report(make_results(new_llm_word=180.0, tinygpt2_word=205.0, lstm_word=250.0)))
    assert "New-LLM has the lowest WikiText-2 test word perplexity: 180.0" in text
    assert "TinyGPT2 has the lowest WikiText-2" not in text
    assert "New-LLM's word perplexity is 0.88× TinyGPT2's (12 % lower)" in text


def test_summary_when_lstm_wins_and_on_ties():
    assert "LSTM has the lowest WikiText-2" in summary(render_report(make_results(lstm_word=99.0)))
    tied = summary(render_report(make_results(new_llm_word=180.0, tinygpt2_word=180.0)))
    assert "New-LLM and TinyGPT2 tie for the lowest WikiText-2 test word perplexity: 180.0" in tied
    assert "equals TinyGPT2's" in tied


def test_summary_without_wikitext_numbers():
    results = make_results()
    for model in results["models"].values():
        del model["wikitext"]
    text = summary(render_report(results))
    assert "No model has a WikiText-2 test word perplexity" in text
    assert "×" not in text


# ---------------------------------------------------------------- missing sections


def test_missing_sections_render_as_dashes():
    results = make_results()
    del results["models"]["lstm"]
    del results["models"]["tinygpt2"]["dailydialog"]
    del results["models"]["new_llm"]["speed"]
    results["models"]["new_llm"]["wikitext"]["test"]["bits_per_byte"] = None
    md = render_report(results)
    assert row(table_after(md, "## WikiText-2 test"), "LSTM")[1:] == ["—"] * 5
    assert row(table_after(md, "## WikiText-2 test"), "New-LLM")[3] == "—"
    assert row(table_after(md, "## DailyDialog test"), "TinyGPT2")[1:] == ["—"] * 4
    assert row(table_after(md, "## Speed"), "New-LLM")[1:3] == ["—", "—"]
    assert row(table_after(md, "## Models"), "LSTM")[1:] == ["—"] * 4
    # LSTM has no numbers left, so the summary must not rank it.
    assert "TinyGPT2 has the lowest WikiText-2" in summary(md)
    assert "LSTM" not in summary(md)


def test_only_the_models_the_run_asked_for_get_rows():
    results = make_results()
    results["config"] = {"model": {"names": ["new_llm", "tinygpt2"]}}
    del results["models"]["lstm"]
    del results["models"]["new_llm"]  # asked for but missing: still a dashed row
    md = render_report(results)
    assert md.startswith("# New-LLM vs TinyGPT2 (full preset)")
    wikitext = table_after(md, "## WikiText-2 test")
    assert [r[0] for r in wikitext] == ["New-LLM", "TinyGPT2"]
    assert row(wikitext, "New-LLM")[1:] == ["—"] * 5
    assert "| LSTM |" not in md


def test_a_one_model_run_states_its_numbers_without_ranking():
    results = make_results()
    results["config"] = {"model": {"names": ["new_llm"]}}
    del results["models"]["lstm"], results["models"]["tinygpt2"]
    text = summary(render_report(results))
    assert text.startswith("**In short.** New-LLM's WikiText-2 test word perplexity is 205.0 (lower is better).")
    assert "New-LLM's DailyDialog response perplexity is 22.3." in text
    assert "only" not in text.lower()
    # asked for two, one missing: the sentence says only one has the number
    results["config"] = {"model": {"names": ["new_llm", "tinygpt2"]}}
    assert "Only New-LLM has a WikiText-2 test word perplexity: 205.0" in summary(render_report(results))


@pytest.mark.parametrize("results", [{}, {"models": {}}, {"models": {"new_llm": {"params": 7_512_345}}}])
def test_nearly_empty_results_still_render(results):
    md = render_report(results)
    assert md.startswith("# New-LLM vs TinyGPT2 vs LSTM")
    assert "No model has a WikiText-2 test word perplexity" in md
    assert "—" in md
    assert "## How these numbers are defined" in md


# ---------------------------------------------------------------- samples


def test_samples_side_by_side_greedy_then_sampled():
    md = render_report(make_results())
    assert md.index("### Greedy") < md.index("### Sampled")
    greedy = table_after(md, "### Greedy")
    assert greedy == [["hello how are you", "fine (new\\_llm)", "fine (tinygpt2)", "fine (lstm)"]]


def test_sample_text_is_escaped_in_tables():
    results = make_results()
    results["models"]["new_llm"]["samples"] = [
        {"prompt": "a | b", "greedy": "line one\nline two | three", "sampled": "<eot> *x* \\"}
    ]
    results["models"]["tinygpt2"]["samples"] = [{"prompt": "a | b", "greedy": ""}]
    md = render_report(results)
    greedy = table_after(md, "### Greedy")
    # Still one row with one cell per column: no pipe or newline broke the table.
    assert [len(r) for r in greedy] == [4, 4]
    a_b = row(greedy, "a \\| b")
    assert a_b[1:] == ["line one<br>line two \\| three", "*(empty)*", "—"]
    assert row(table_after(md, "### Sampled"), "a \\| b")[1:3] == ["&lt;eot&gt; \\*x\\* \\\\", "—"]


# ---------------------------------------------------------------- DailyDialog replies


def with_responses(results):
    """Add what evaluate() writes for the replies to the test contexts: per model, the human baseline, samples."""
    numbers = {"new_llm": (0.05, 0.125, 7.25, 3), "tinygpt2": (0.0625, 0.2, 9.0, 0), "lstm": (0.01, 0.02, 4.0, 40)}
    for name, (d1, d2, words, empty) in numbers.items():
        results["models"][name]["dailydialog"]["responses"] = {
            "distinct_1": d1, "distinct_2": d2, "mean_words": words, "n": 1000, "empty": empty,
            "checkpoint": f"best_{name}_dialog",
        }
    results["reference_responses"] = {"distinct_1": 0.15, "distinct_2": 0.5, "mean_words": 11.5, "n": 1000, "empty": 0}
    results["config"] = {"eval": {"max_new_tokens": 40}}
    results["dialog_samples"] = [
        {"dialogue": 0, "context_turns": 5, "context": ["Where is | the station ?", "Over there ."],
         "reference": "Thanks .", "replies": {"new_llm": "ok .", "tinygpt2": "", "lstm": "i see *you*"}},
        {"dialogue": 1, "context_turns": 1, "context": ["Hi ."], "reference": "Hello .", "replies": {"new_llm": "hi"}},
    ]
    return results


def test_replies_table_has_a_row_per_model_and_the_human_reference():
    md = render_report(with_responses(make_results()))
    replies = table_after(md, "## DailyDialog replies")
    assert [r[0] for r in replies] == ["New-LLM", "TinyGPT2", "LSTM", "*Human reference*"]
    assert row(replies, "New-LLM")[1:] == ["0.050", "0.125", "7.2", "1,000", "3"]
    assert row(replies, "TinyGPT2")[1:] == ["0.062", "0.200", "9.0", "1,000", "0"]  # not bolded: higher is not better
    assert row(replies, "*Human reference*")[1:] == ["0.150", "0.500", "11.5", "1,000", "0"]
    assert "each of 1,000 DailyDialog test dialogues" in md and "at most 40 tokens" in md
    # after the dialogue perplexities, before the speed
    assert md.index("## DailyDialog test") < md.index("## DailyDialog replies") < md.index("## Speed")
    assert (
        "Distinct-2 of the greedy DailyDialog replies is 0.125 for New-LLM, 0.200 for TinyGPT2 and 0.020 for LSTM, "
        "against 0.500 for the human replies." in summary(md)
    )
    assert "**Distinct-1/2**" in md[md.index("## How these numbers are defined"):]


def test_sample_dialogues_show_context_reference_and_each_model():
    md = render_report(with_responses(make_results()))
    first = table_after(md, "#### Test dialogue 1 (5 turns of context, the last 2 shown)")
    # turns 4 and 5 of 5: speakers B then A; the reply is B's
    assert first == [
        ["B", "Where is \\| the station ?"],
        ["A", "Over there ."],
        ["*Reference*", "Thanks ."],
        ["New-LLM", "ok ."],
        ["TinyGPT2", "*(empty)*"],
        ["LSTM", "i see \\*you\\*"],
    ]
    second = table_after(md, "#### Test dialogue 2 (1 turn of context)")
    assert second == [["A", "Hi ."], ["*Reference*", "Hello ."], ["New-LLM", "hi"], ["TinyGPT2", "—"], ["LSTM", "—"]]
    assert md.index("### Sample dialogues") < md.index("#### Test dialogue 1") < md.index("#### Test dialogue 2")


def test_replies_section_is_left_out_of_older_results_and_dashed_per_missing_model():
    md = render_report(make_results())
    assert "## DailyDialog replies" not in md and "distinct-2" not in summary(md).lower()
    results = with_responses(make_results())
    del results["models"]["lstm"]["dailydialog"]["responses"]
    del results["dialog_samples"]
    md = render_report(results)
    assert row(table_after(md, "## DailyDialog replies"), "LSTM")[1:] == ["—"] * 5
    assert "### Sample dialogues" not in md
    assert "for LSTM" not in summary(md)
    assert "the WikiText-2 model replied" not in md
    results["models"]["tinygpt2"]["dailydialog"]["responses"]["checkpoint"] = "best_tinygpt2_wikitext"
    assert "TinyGPT2: no DailyDialog checkpoint, so the WikiText-2 model replied." in render_report(results)


# ---------------------------------------------------------------- write_report


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as the pipeline leaves it: results.json plus some histories, no PNGs."""
    # Histories for a subset only: every PNG costs ~0.5 s, and a subset also covers absent ones.
    write_history(tmp_path / "new_llm_wikitext" / "history.json", [5.0, 4.6, 4.5, 4.7])
    write_history(tmp_path / "tinygpt2_wikitext" / "history.json", [4.9, 4.4, 4.6])
    write_history(tmp_path / "lstm_dialog" / "history.json", [3.5, 3.1])
    (tmp_path / "results.json").write_text(json.dumps(make_results()))
    return tmp_path


def test_write_report_embeds_existing_relative_images(run_dir):
    path = write_report(load_results(run_dir / "results.json"), run_dir)
    assert path == run_dir / "report.md"
    md = path.read_text(encoding="utf-8")
    embedded = images(md)
    assert sorted(embedded) == sorted([
        "wikitext_val_ppl.png", "dialog_val_ppl.png", "speed.png",
        "new_llm_wikitext_training_curves.png", "tinygpt2_wikitext_training_curves.png",
        "lstm_dialog_training_curves.png",
    ])
    for rel in embedded:
        image = run_dir / rel
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 5_000
    curves = table_after(md, "## Training curves")
    assert [r[0] for r in curves] == ["New-LLM", "TinyGPT2", "LSTM"]
    assert row(curves, "LSTM")[1] == "—"
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_write_report_keeps_existing_curves_and_notes_corrupt_history(run_dir):
    existing = run_dir / "new_llm_wikitext_training_curves.png"
    existing.write_bytes(b"\x89PNG\r\n\x1a\n made by the trainer")
    (run_dir / "tinygpt2_wikitext" / "history.json").write_text("{not json")
    md = write_report(load_results(run_dir / "results.json"), run_dir).read_text(encoding="utf-8")
    assert existing.read_bytes() == b"\x89PNG\r\n\x1a\n made by the trainer"
    assert "new_llm_wikitext_training_curves.png" in images(md)
    assert "## Notes" in md and "tinygpt2\\_wikitext" in md
    assert "tinygpt2_wikitext_training_curves.png" not in images(md)


def test_write_report_without_histories_embeds_no_missing_images(tmp_path):
    results = make_results()
    for model in results["models"].values():
        del model["speed"]
    md = write_report(results, tmp_path).read_text(encoding="utf-8")
    assert images(md) == []
    assert "## Training curves" not in md
    assert "| New-LLM | 134.0 |" in md


def test_write_report_is_atomic(tmp_path, monkeypatch):
    report = tmp_path / "report.md"
    report.write_text("previous report")

    def replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", replace)
    results = make_results()
    for model in results["models"].values():
        del model["speed"]  # no PNGs, so the failing replace is the report's own
    with pytest.raises(OSError, match="disk full"):
        write_report(results, tmp_path)
    assert report.read_text() == "previous report"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- load_results


def test_load_results_round_trip(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(make_results()))
    assert load_results(tmp_path / "results.json") == make_results()


def test_load_results_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found.*results.json"):
        load_results(tmp_path / "results.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"models": ', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"models": [1]}', "'models'"),
    ],
)
def test_load_results_malformed(tmp_path, text, message):
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_results(path)


# ---------------------------------------------------------------- layering


def test_reporting_imports_no_torch_and_no_other_newllm_module():
    package = Path(newllm.reporting.__file__).parent
    allowed_roots = {"matplotlib", "newllm"}
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                root = module.split(".")[0]
                assert root in allowed_roots or root in sys.stdlib_module_names, (source, module)
                if root == "newllm":
                    assert module.startswith("newllm.reporting"), (source, module)


def test_sliced_sets_read_as_plural_and_the_tokenizer_line_ends_once():
    results = make_results(sliced=True)
    results["tokenizer"]["normalisation"] = "None: byte-level BPE over the raw UTF-8 bytes."  # an older results.json
    md = render_report(results)
    assert "WikiText-2 and DailyDialog test sets were cut short" in md and "test set was" not in md
    tokenizer_line = next(line for line in md.splitlines() if line.startswith("- **Tokenizer**"))
    assert tokenizer_line.endswith("; byte-level BPE over the raw UTF-8 bytes.")


def test_the_sampled_table_says_how_it_was_sampled():
    results = make_results()
    results["config"] = {"eval": {"temperature": 0.8, "top_k": 50, "top_p": 0.95}}
    md = render_report(results)
    section = md[md.index("### Sampled"):]
    assert "Sampled (temperature 0.8, top-k 50, top-p 0.95), every prompt from the same seed (0)" in section
    assert section.index("every prompt from the same seed") < section.index("| Prompt |")


def test_results_of_a_newer_layout_are_refused_in_one_line(tmp_path):
    from newllm.reporting.report import RESULTS_SCHEMA

    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": RESULTS_SCHEMA + 1, "models": {}}))
    with pytest.raises(ValueError, match="upgrade newllm"):
        load_results(path)
    path.write_text(json.dumps({"models": {}}))  # no schema: the first layout, still read
    assert load_results(path) == {"models": {}}
