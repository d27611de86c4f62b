"""Markdown report of a run, built from results.json and the histories beside it (no torch)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from newllm.reporting.plots import (
    model_label,
    ordered_models,
    plot_comparison,
    plot_speed,
    plot_training_curves,
    three_significant,
    write_atomic,
)

MISSING = "—"
# Always given a row or column, so a model that did not run shows up as dashes, not as absence.
EXPECTED_MODELS = ("new_llm", "tinygpt2", "lstm")
# results.json stage key → (human name, directory/file stem the pipeline uses).
STAGES = {"wikitext": ("WikiText-2", "wikitext"), "dailydialog": ("DailyDialog", "dialog")}
# Whitespace tokens plus one end-of-line per line of wiki.test.tokens: the count the
# word-level literature divides by, so our word PPL is comparable only if we match it.
WIKITEXT2_TEST_WORDS = 245_569

# figures maps an id to an image path relative to report.md: "wikitext_val_ppl",
# "dialog_val_ppl", "speed" for comparisons, "<model>/<stage>" for training curves.
Figures = Mapping[str, str]


# ---------------------------------------------------------------- loading


# results.json's layout version, written by step 3 as "schema": 2 added "provenance" (what the numbers came from:
# preset and config file, changed settings, seeds, command, commit, date, device, package versions); a file
# without "schema" is version 1 and reads the same. Added within version 2, optional so that older files still
# load: a model's training stages ("wikitext", "dailydialog") hold "best_val_ppl" and "per_epoch" (epoch,
# train_ppl, val_ppl, seconds).
RESULTS_SCHEMA = 2


def load_results(path: str | os.PathLike) -> dict:
    """Read results.json; ValueError naming the file if it is missing, malformed or of a newer layout."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"results file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read results file {path}: {e}") from e
    try:
        results = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"results file {path} is not valid JSON: {e}") from e
    if not isinstance(results, dict):
        raise ValueError(f"results file {path} must hold a JSON object, got {type(results).__name__}")
    if not isinstance(results.get("models", {}), dict):
        raise ValueError(f"results file {path}: 'models' must be an object mapping model name to results")
    schema = results.get("schema", 1)
    if not isinstance(schema, int) or schema > RESULTS_SCHEMA:
        raise ValueError(f"results file {path} has layout {schema!r}; this newllm reads up to {RESULTS_SCHEMA}: upgrade newllm")
    return results


def load_history(path: str | os.PathLike) -> list[dict]:
    """Read a history.json (list of per-epoch dicts); ValueError if missing or malformed."""
    path = Path(path)
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"history file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read history file {path}: {e}") from e
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise ValueError(f"history file {path} must hold a JSON list of per-epoch objects")
    return history


# ---------------------------------------------------------------- formatting


def _get(obj: Any, *keys: str) -> Any:
    """Nested lookup that yields None at the first missing key or non-dict level."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _models(results: Mapping[str, Any]) -> Mapping[str, Any]:
    """The per-model results, or an empty mapping if absent or malformed."""
    models = results.get("models")
    return models if isinstance(models, Mapping) else {}


def _section(obj: Any, *keys: str) -> Mapping[str, Any]:
    """A nested dict, or an empty one if absent or not a dict."""
    value = _get(obj, *keys)
    return value if isinstance(value, Mapping) else {}


def _code(text: Any) -> str:
    """Inline code span for paths and fingerprints; "—" when missing."""
    if text is None:
        return MISSING
    # Code spans cannot hold newlines, and a backtick would end the span early.
    text = str(text).replace("\n", " ").replace("`", "'")
    return f"`{text}`"


def _number(value: Any) -> float | None:
    """A JSON number as float; None for null, missing, bool or text."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _finite(value: Any) -> float | None:
    """A JSON number usable in comparisons (finite), else None."""
    x = _number(value)
    return x if x is not None and math.isfinite(x) else None


def _fixed(value: Any, decimals: int) -> str:
    """Fixed decimals with thousands separators; "—" when missing."""
    x = _number(value)
    if x is None:
        return MISSING
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:,.{decimals}f}"


def _ppl(value: Any) -> str:
    """Perplexity to one decimal."""
    return _fixed(value, 1)


def _bpb(value: Any) -> str:
    """Bits per byte to three decimals."""
    return _fixed(value, 3)


def _count(value: Any) -> str:
    """Integer count with thousands separators, e.g. 245,569."""
    return _fixed(value, 0)


def _params(value: Any) -> str:
    """Parameter count as 7.51M / 812.00K."""
    x = _finite(value)
    if x is None:
        return MISSING
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{suffix}"
    return f"{x:.0f}"


def _ms(value: Any) -> str:
    """Milliseconds to three significant figures, without scientific notation."""
    x = _finite(value)
    return _fixed(value, 0) if x is None else three_significant(x)


def _duration(value: Any) -> str:
    """Seconds as "45 s", "2.0 min" or "1 h 05 min"."""
    x = _finite(value)
    if x is None:
        return MISSING
    if x < 60:
        return f"{x:.0f} s"
    if x < 3600:
        return f"{x / 60:.1f} min"
    hours, minutes = divmod(round(x / 60), 60)
    return f"{hours} h {minutes:02d} min"


def _epochs(section: Any) -> str:
    """Best and run epochs of a training stage, e.g. "18 / 33", or "18 / 33 (time limit)" for a stopped one."""
    best, run = _get(section, "best_epoch"), _get(section, "epochs_run")
    if best is None and run is None:
        return MISSING
    stopped = " (time limit)" if _get(section, "stopped") == "time_limit" else ""
    return f"{_count(best)} / {_count(run)}{stopped}"


def _percent_diff(value: float, reference: float) -> str:
    """Signed relative difference, e.g. "+1.5 %"."""
    return f"{(value / reference - 1) * 100:+.1f} %"


def escape_cell(text: Any) -> str:
    """Text made safe for one Markdown table cell: pipes, markup and newlines escaped."""
    if text is None:
        return MISSING
    text = str(text)
    if text == "":
        return "*(empty)*"  # an empty generation is a result, unlike a missing one
    # Backslash first, or the escapes added below would themselves be escaped.
    text = text.replace("\\", "\\\\")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "|*_`[]#":
        text = text.replace(ch, "\\" + ch)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")
    return text


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: int | None = None) -> list[str]:
    """Markdown table lines; the first `numeric` columns after the name are right-aligned."""
    numeric = len(headers) - 1 if numeric is None else numeric
    align = [":---"] + ["---:"] * numeric + [":---"] * (len(headers) - 1 - numeric)
    return [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _bold_best(cells: list[str], values: list[float | None]) -> list[str]:
    """Bold the lowest value of a column when at least two models have one."""
    present = [v for v in values if v is not None]
    # Bolding one of one, or all of a tie, would point at nothing.
    if len(present) < 2 or min(present) == max(present):
        return cells
    best = min(present)
    return [f"**{c}**" if v == best else c for c, v in zip(cells, values)]


def _column(
    models: Sequence[str], results_models: Mapping, keys: Sequence[str], fmt: Callable[[Any], str]
) -> list[str]:
    """One formatted table column over models, the lowest bolded."""
    raw = [_get(results_models.get(m), *keys) for m in models]
    return _bold_best([fmt(v) for v in raw], [_finite(v) for v in raw])


def _image(alt: str, rel_path: str) -> str:
    """Markdown image with a URL-quoted relative path."""
    return f"![{alt}]({quote(Path(rel_path).as_posix())})"


# ---------------------------------------------------------------- sections


def _model_names(results: Mapping[str, Any]) -> list[str]:
    """The models the run asked for (all three when the results do not say), then any others they hold.

    A model asked for but missing keeps its rows, dashed: its absence is news. One not asked for
    (`--models tinygpt2`) gets no rows at all.
    """
    asked = _get(results, "config", "model", "names")
    expected = list(asked) if isinstance(asked, (list, tuple)) and asked else list(EXPECTED_MODELS)
    return ordered_models(expected + [m for m in _models(results) if m not in expected])


def _sliced_sets(results: Mapping[str, Any]) -> list[str]:
    """Names of the test sets that were cut short (quick preset)."""
    return [STAGES.get(k, (k,))[0] for k, d in _section(results, "data").items() if _get(d, "sliced") is True]


def _ranking_sentence(values: Mapping[str, float], what: str, compared: int = 2) -> str | None:
    """Sentence naming the model with the lowest value, and the others in order.

    compared: how many models the run asked for; with one there is nothing to rank.
    """
    if not values:
        return None
    ranked = sorted(values.items(), key=lambda kv: kv[1])
    best = ranked[0][1]
    winners = [model_label(n) for n, v in ranked if v == best]
    runners_up = [f"{model_label(n)} {_ppl(v)}" for n, v in ranked if v != best]
    if len(ranked) == 1:
        if compared == 1:
            return f"{winners[0]}'s {what} is {_ppl(best)}"
        return f"only {winners[0]} has a {what}: {_ppl(best)}"
    if len(winners) > 1:
        lead = f"{_and(winners)} tie for the lowest {what}: {_ppl(best)}"
    else:
        lead = f"{winners[0]} has the lowest {what}: {_ppl(best)}"
    return lead + (f", against {_and(runners_up)}" if runners_up else "")


def _cut_short(sets: Sequence[str]) -> str:
    """'WikiText-2 test set was cut short', or '… and DailyDialog test sets were cut short'."""
    return f"{_and(sets)} test {'sets were' if len(sets) > 1 else 'set was'} cut short"


def _and(items: Sequence[str]) -> str:
    """Items joined for prose: A; A and B; A, B and C."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _ratio_clause(new: float | None, ref: float | None, what: str) -> str | None:
    """Clause comparing New-LLM's value with TinyGPT2's as a ratio; None if either is missing."""
    if new is None or ref is None or ref == 0:
        return None
    ratio = new / ref
    if ratio == 1:
        return f"New-LLM's {what} equals TinyGPT2's"
    direction = "higher" if ratio > 1 else "lower"
    return f"New-LLM's {what} is {ratio:.2f}× TinyGPT2's ({abs(ratio - 1) * 100:.0f} % {direction})"


def _summary(results: Mapping[str, Any], names: Sequence[str]) -> str:
    """One paragraph answering "which model wins, by how much", computed from the numbers."""
    models = _models(results)

    def metric(*keys: str) -> dict[str, float]:
        return {n: v for n in names if (v := _finite(_get(models.get(n), *keys))) is not None}

    sentences = []
    word = metric("wikitext", "test", "word_ppl")
    ranking = _ranking_sentence(word, "WikiText-2 test word perplexity", len(names))
    if ranking is None:
        sentences.append("No model has a WikiText-2 test word perplexity in these results.")
    else:
        sentences.append(f"{ranking} (lower is better).")
    ratio = _ratio_clause(word.get("new_llm"), word.get("tinygpt2"), "word perplexity")
    if ratio:
        params = metric("params")
        if "new_llm" in params and "tinygpt2" in params:
            ratio += f", at {_params(params['new_llm'])} vs {_params(params['tinygpt2'])} parameters"
        sentences.append(ratio + ".")
    stateful = metric("wikitext", "test_stream", "word_ppl")
    both = [n for n in names if n in word and n in stateful]
    changes = [f"{_ppl(word[n])} → {_ppl(stateful[n])} for {model_label(n)}" for n in both]
    if changes:
        sentences.append(f"with context across windows, test word perplexity goes {_and(changes)}.")
    response = _ranking_sentence(
        metric("dailydialog", "test", "response_ppl"), "DailyDialog response perplexity", len(names)
    )
    if response:
        sentences.append(f"{response}.")
    distinct = metric("dailydialog", "responses", "distinct_2")
    if distinct:
        parts = [f"{_distinct(v)} for {model_label(n)}" for n, v in distinct.items()]
        human = _finite(_get(results, "reference_responses", "distinct_2"))
        against = f", against {_distinct(human)} for the human replies" if human is not None else ""
        sentences.append(f"distinct-2 of the greedy DailyDialog replies is {_and(parts)}{against}.")
    per_token = metric("speed", "ms_per_token")
    if "new_llm" in per_token and "tinygpt2" in per_token:
        sentences.append(
            f"New-LLM takes {_ms(per_token['new_llm'])} ms/token against TinyGPT2's "
            f"{_ms(per_token['tinygpt2'])} ms/token."
        )
    if sliced := _sliced_sets(results):
        sentences.append(
            f"The {_and(sliced)} test data were sliced, "
            "so these numbers are not comparable with published ones."
        )
    # Capitalise after the fact: ranking sentences start lower-case for reuse mid-sentence.
    return " ".join(s[0].upper() + s[1:] for s in sentences)


def _provenance(results: Mapping[str, Any]) -> list[str]:
    """Where the numbers come from: preset, command, time, device."""
    parts = []
    if results.get("preset"):
        parts.append(f"preset {_code(results['preset'])}")
    if results.get("command"):
        parts.append(f"command {_code(results['command'])}")
    if results.get("created"):
        parts.append(f"created {escape_cell(results['created'])}")
    if results.get("device"):
        parts.append(f"device {escape_cell(results['device'])}")
    provenance = results.get("provenance") if isinstance(results.get("provenance"), dict) else {}
    seeds = provenance.get("seeds")
    if isinstance(seeds, dict) and seeds:
        parts.append("seeds " + ", ".join(f"{escape_cell(str(k))} {escape_cell(str(v))}" for k, v in seeds.items()))
    if provenance.get("commit"):
        parts.append(f"commit {_code(str(provenance['commit']))}")
    return [f"Run: {', '.join(parts)}.", ""] if parts else []


def _params_section(results: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """Parameter counts, relative to New-LLM since the comparison is at equal size."""
    models = _models(results)
    ref = _finite(_get(models.get("new_llm"), "params"))
    rows = []
    for n in names:
        params = _finite(_get(models.get(n), "params"))
        arch = _get(models.get(n), "architecture")
        arch_text = MISSING
        if isinstance(arch, Mapping) and arch:
            arch_text = ", ".join(f"{k} {v}" for k, v in arch.items())
        if n == "new_llm":
            diff = "reference" if params is not None else MISSING
        else:
            diff = _percent_diff(params, ref) if params is not None and ref else MISSING
        rows.append([model_label(n), _params(params), _count(params), diff, escape_cell(arch_text)])
    return [
        "## Models",
        "",
        *_table(["Model", "Parameters", "Exact", "vs New-LLM", "Architecture"], rows, numeric=3),
        "",
    ]


def _stage_section(
    results: Mapping[str, Any],
    names: Sequence[str],
    stage: str,
    columns: Sequence[tuple[str, str, Callable[[Any], str]]],
    figure: str | None,
) -> list[str]:
    """Test-set table for one stage plus its validation comparison plot."""
    models = _models(results)
    stage_name = STAGES[stage][0]
    table_columns = [_column(names, models, (stage, "test", key), fmt) for _, key, fmt in columns]
    rows = []
    for i, n in enumerate(names):
        section = _get(models.get(n), stage)
        rows.append(
            [model_label(n), *(col[i] for col in table_columns), _epochs(section),
             _duration(_get(section, "train_seconds"))]
        )
    headers = ["Model", *(h for h, _, _ in columns), "Best / run epochs", "Train time"]
    lines = [f"## {stage_name} test", "", *_table(headers, rows), ""]
    if figure:
        lines += [_image(f"{stage_name} validation perplexity per epoch, all models", figure), ""]
    return lines


def _stream_method(stream: Any) -> str:
    """How a test_stream entry was scored, e.g. "carried state, 8 lanes, 512 tokens per forward"."""
    method, window = _get(stream, "method"), _get(stream, "window")
    if method == "carried_state":
        lanes = _get(stream, "lanes")
        lanes_text = "1 lane" if lanes == 1 else f"{_count(lanes)} lanes"
        return f"carried state, {lanes_text}, {_count(window)} tokens per forward"
    if method == "sliding_window":
        return f"sliding window of {_count(window)}, stride {_count(_get(stream, 'stride'))}"
    return escape_cell(method)


def _stream_section(results: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """WikiText-2 test scored again with context across windows, beside the reset-every-window numbers."""
    models = _models(results)
    if not any(isinstance(_get(models.get(n), "wikitext", "test_stream"), Mapping) for n in names):
        return []  # results written before stateful evaluation existed
    stateful_word = _column(names, models, ("wikitext", "test_stream", "word_ppl"), _ppl)
    stateful_token = _column(names, models, ("wikitext", "test_stream", "token_ppl"), _ppl)
    stateful_bpb = _column(names, models, ("wikitext", "test_stream", "bits_per_byte"), _bpb)
    rows = []
    for i, n in enumerate(names):
        reset = _finite(_get(models.get(n), "wikitext", "test", "word_ppl"))
        stream = _get(models.get(n), "wikitext", "test_stream")
        stateful = _finite(_get(stream, "word_ppl"))
        change = _percent_diff(stateful, reset) if stateful is not None and reset else MISSING
        method = _stream_method(stream) if isinstance(stream, Mapping) else MISSING
        rows.append(
            [model_label(n), _ppl(reset), stateful_word[i], change, stateful_token[i], stateful_bpb[i], method]
        )
    block = _get(results, "data", "wikitext", "block_size")
    window = f"{_count(block)}-token window" if _finite(block) is not None else "window"
    headers = [
        "Model", "Word PPL, reset", "Word PPL, stateful", "Change", "Token PPL, stateful", "Bits/byte, stateful",
        "Method",
    ]
    return [
        "## WikiText-2 test with context across windows",
        "",
        f"*Reset*: every {window} starts from nothing (the table above). *Stateful*: the same tokens again, "
        "the recurrent models carrying their state from window to window along the test stream, TinyGPT2 "
        "sliding a window as long as its training windows over it; the Method column gives the settings.",
        "",
        *_table(headers, rows, numeric=5),
        "",
    ]


def _distinct(value: Any) -> str:
    """distinct-n (a fraction) to three decimals."""
    return _fixed(value, 3)


def _speaker(turn: int) -> str:
    """A for the dialogue's first, third, ... turn, B for the others (the fine-tuning format's speakers)."""
    return "A" if turn % 2 == 0 else "B"


def _dialog_sample(number: int, sample: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """One test dialogue: its last context turns, the human reply and each model's, one row each."""
    context = _get(sample, "context")
    context = [str(turn) for turn in context] if isinstance(context, list) else []
    turns = _finite(_get(sample, "context_turns"))
    first = int(turns) - len(context) if turns is not None and turns >= len(context) else None
    index = _finite(_get(sample, "dialogue"))
    title = f"#### Test dialogue {int(index) + 1 if index is not None else f'sample {number}'}"
    if turns is not None:
        title += f" ({_count(turns)} turn{'s' if turns != 1 else ''} of context"
        title += f", the last {len(context)} shown)" if 0 < len(context) < turns else ")"
    rows = [
        [_speaker(first + j) if first is not None else MISSING, escape_cell(turn)] for j, turn in enumerate(context)
    ]
    rows.append(["*Reference*", escape_cell(_get(sample, "reference"))])
    replies = _section(sample, "replies")
    rows += [[model_label(n), escape_cell(replies.get(n))] for n in names]
    return [title, "", *_table(["Speaker", "Turn"], rows, numeric=0), ""]


def _responses_section(results: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """distinct-1/2 and length of the greedy replies to the DailyDialog test contexts, then sample dialogues."""
    models = _models(results)
    reference = _section(results, "reference_responses")
    samples = results.get("dialog_samples")
    samples = [s for s in samples if isinstance(s, Mapping)] if isinstance(samples, list) else []
    if not reference and not any(isinstance(_get(models.get(n), "dailydialog", "responses"), Mapping) for n in names):
        return []  # results written before replies were scored
    rows = []
    for label, numbers in [*((model_label(n), _get(models.get(n), "dailydialog", "responses")) for n in names),
                           ("*Human reference*", reference)]:
        rows.append([
            label, _distinct(_get(numbers, "distinct_1")), _distinct(_get(numbers, "distinct_2")),
            _fixed(_get(numbers, "mean_words"), 1), _count(_get(numbers, "n")), _count(_get(numbers, "empty")),
        ])
    max_tokens = _get(results, "config", "eval", "max_new_tokens")
    cap = f", at most {_count(max_tokens)} tokens" if _finite(max_tokens) is not None else ""
    lines = [
        "## DailyDialog replies",
        "",
        f"Every model replied once (greedy{cap}) to each of {_count(_get(reference, 'n'))} DailyDialog test "
        "dialogues without its last turn; that last turn is the human reference. Distinct-n is the share of "
        "the replies' n-grams that are different: higher means more varied wording, not better replies.",
        "",
        *_table(["Model", "Distinct-1", "Distinct-2", "Mean words", "Replies", "Empty"], rows),
        "",
    ]
    # The pipeline falls back to the step-1 checkpoint (best_<model>_wikitext) when fine-tuning is missing.
    unfinetuned = [
        model_label(n) for n in names
        if str(_get(models.get(n), "dailydialog", "responses", "checkpoint") or "").endswith("_wikitext")
    ]
    if unfinetuned:
        lines += [f"{_and(unfinetuned)}: no DailyDialog checkpoint, so the WikiText-2 model replied.", ""]
    if samples:
        lines += [
            "### Sample dialogues",
            "",
            "The first test dialogues: the end of the context, then the human reply and each model's in its "
            "place. A and B are the two speakers; every reply is the next speaker's turn.",
            "",
        ]
        for number, sample in enumerate(samples, 1):
            lines += _dialog_sample(number, sample, names)
    return lines


def _speed_section(results: Mapping[str, Any], names: Sequence[str], figure: str | None) -> list[str]:
    """Timings with the settings they were measured under, plus the bar chart."""
    models = _models(results)
    per_batch = _column(names, models, ("speed", "ms_per_batch"), _ms)
    per_token = _column(names, models, ("speed", "ms_per_token"), _ms)
    rows = []
    for i, n in enumerate(names):
        speed = _get(models.get(n), "speed")
        setting = [_count(_get(speed, k)) for k in ("batch_size", "seq_len", "generated_tokens")]
        device = [escape_cell(_get(speed, k)) for k in ("device", "dtype")]
        rows.append([model_label(n), per_batch[i], per_token[i], *setting, *device])
    headers = ["Model", "ms/batch", "ms/token", "Batch", "Seq len", "Generated tokens", "Device", "dtype"]
    lines = ["## Speed", "", *_table(headers, rows, numeric=5), ""]
    if figure:
        lines += [_image("Milliseconds per batch and per token, all models", figure), ""]
    return lines


def _curves_section(names: Sequence[str], figures: Figures) -> list[str]:
    """Per-model training curves, one row per model, pre-training beside fine-tuning."""
    rows = []
    for n in names:
        cells = []
        for stage, (stage_name, _) in STAGES.items():
            rel = figures.get(f"{n}/{stage}")
            cells.append(_image(f"{model_label(n)} {stage_name} training curves", rel) if rel else MISSING)
        if any(c != MISSING for c in cells):
            rows.append([model_label(n), *cells])
    if not rows:
        return []
    headers = ["Model", *(f"{name} (loss, perplexity)" for name, _ in STAGES.values())]
    return ["## Training curves", "", *_table(headers, rows, numeric=0), ""]


def _samples_section(results: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """Greedy then sampled responses, one row per prompt, models side by side."""
    models = _models(results)
    by_model: dict[str, dict[str, Mapping]] = {}
    prompts: list[str] = []
    for n in names:
        samples = _get(models.get(n), "samples")
        for s in samples if isinstance(samples, list) else []:
            if not isinstance(s, Mapping) or "prompt" not in s:
                continue
            prompt = str(s["prompt"])
            by_model.setdefault(n, {})[prompt] = s
            if prompt not in prompts:
                prompts.append(prompt)
    if not prompts:
        return ["## Sample responses", "", f"{MISSING} (no samples in these results)", ""]
    lines = ["## Sample responses", ""]
    headers = ["Prompt", *(model_label(n) for n in names)]
    for decoding in ("greedy", "sampled"):
        rows = [
            [escape_cell(p), *(escape_cell(_get(by_model.get(n), p, decoding)) for n in names)]
            for p in prompts
        ]
        lines += [f"### {decoding.capitalize()}", ""]
        if decoding == "sampled":
            sampling = _section(results, "config", "eval")
            settings = ", ".join(f"{key.replace('_', '-')} {sampling[key]}" for key in ("temperature", "top_k", "top_p")
                                 if key in sampling)  # fmt: skip
            lines += [
                f"Sampled{f' ({settings})' if settings else ''}, every prompt from the same seed (0), so a run "
                "repeats exactly; near-identical replies to different prompts mean the model barely reads the prompt.",
                "",
            ]
        lines += [*_table(headers, rows, numeric=0), ""]
    return lines


def _definitions(results: Mapping[str, Any]) -> list[str]:
    """How each number is computed, with the counts this run divided by."""
    wikitext = _section(results, "data", "wikitext")
    dialog = _section(results, "data", "dailydialog")
    tok = _section(results, "tokenizer")
    words = _get(wikitext, "test_words")
    word_note = f"this run: {_count(words)}" if words is not None else "this run's count not recorded"
    lines = [
        "## How these numbers are defined",
        "",
        "All models are scored on the same test files; every number but distinct-n is lower-is-better.",
        "",
        "- **Token PPL** = exp(total NLL / predicted tokens). Comparable across models only "
        "because all three share one tokenizer.",
        "- **Word PPL** = exp(total NLL / words), where words = whitespace tokens + one end-of-line "
        f"per line ({WIKITEXT2_TEST_WORDS:,} for the full WikiText-2 test set; {word_note}). "
        "Independent of the tokenizer (one that keeps the text whole), so comparable with word-level results.",
        "- **Bits per byte** = total NLL / ln 2 / UTF-8 bytes of the test file "
        f"({_count(_get(wikitext, 'test_bytes'))} bytes here).",
        "- **Stateful** (WikiText-2 test) = the NLL summed over the same tokens, each predicted with "
        "context across window boundaries: New-LLM and the LSTM carry their state from one window to the "
        "next along the whole test stream (cut into lanes run side by side, each starting from a reset "
        "state), TinyGPT2 slides a window as long as its training windows (the positions it was trained "
        "on) with a stride, so that each token has at least window − stride tokens before it. Divided by the same token, word and byte counts.",
        "- **Response PPL** (DailyDialog) = exp(NLL / tokens) over the utterances after the first "
        "of each dialogue (text + end-of-turn token), i.e. the turns a chat model must produce "
        f"({_count(_get(dialog, 'test_response_tokens'))} response tokens in "
        f"{_count(_get(dialog, 'test_dialogues'))} dialogues here).",
        "- **Distinct-1/2** (DailyDialog replies; Li et al. 2016) = distinct n-grams / all n-grams, over all "
        "replies together, n-grams taken within a reply; words are the whitespace tokens of the lower-cased "
        "reply, punctuation included. Higher is more varied (the exception to lower-is-better); "
        "**mean words** counts an empty reply as 0.",
        f"- **Tokenizer**: {escape_cell(tok.get('kind', MISSING))}, "
        f"vocabulary {_count(tok.get('vocab_size'))}, "
        f"fingerprint {_code(tok.get('fingerprint'))}; "
        # older results.json say "None: …"; every version ends its sentence with "."
        f"{escape_cell(str(tok.get('normalisation', 'normalisation not recorded')).removeprefix('None: ').rstrip('.'))}.",
        "- **Data**: WikiText-2 "
        f"{escape_cell(wikitext.get('variant', MISSING))} from {_code(wikitext.get('source'))}, "
        f"{_count(_get(wikitext, 'test_tokens'))} test tokens; DailyDialog from "
        f"{_code(dialog.get('source'))}, {_count(_get(dialog, 'test_tokens'))} test tokens.",
        "",
    ]
    if tok.get("kind") == "prototype":
        lines += [
            "> **A closed word vocabulary.** The prototype's tokenizer lower-cases the text and maps every word "
            f"outside its {_count(tok.get('vocab_size'))} entries to one `<UNK>`: each such word is one outcome, "
            "so word PPL and bits per byte here are easier than over the text itself and "
            "**not comparable with the literature**.",
            "",
        ]
    if _sliced_sets(results):
        lines += [
            f"> **Sliced data.** The {_cut_short(_sliced_sets(results))} (as the quick "
            "preset does): the numbers check that the pipeline works and are "
            "**not comparable with the literature**.",
            "",
        ]
    elif (
        _finite(words) is not None
        and wikitext.get("variant") == "tokens"
        and int(words) != WIKITEXT2_TEST_WORDS
    ):
        # The full tokens file should give exactly this count; a mismatch means word PPL is off.
        lines += [
            f"> **Check the word count.** {_count(words)} words differs from the "
            f"{WIKITEXT2_TEST_WORDS:,} of the full WikiText-2 test set, so word PPL is not "
            "comparable with published numbers.",
            "",
        ]
    return lines


# ---------------------------------------------------------------- report


def render_report(
    results: Mapping[str, Any], figures: Figures | None = None, notes: Sequence[str] = ()
) -> str:
    """Markdown report of the results; images only for the paths given in figures."""
    figures = figures or {}
    names = _model_names(results)
    preset = results.get("preset")
    title = " vs ".join(model_label(n) for n in names) + (f" ({preset} preset)" if preset else "")
    lines = [f"# {title}", "", f"**In short.** {_summary(results, names)}", ""]
    if sliced := _sliced_sets(results):
        lines += [
            f"> **Sliced data:** the {_cut_short(sliced)}; "
            "not comparable with the literature.",
            "",
        ]
    lines += _provenance(results)
    lines += _params_section(results, names)
    lines += _stage_section(
        results, names, "wikitext",
        [
            ("Token PPL", "token_ppl", _ppl),
            ("Word PPL", "word_ppl", _ppl),
            ("Bits/byte", "bits_per_byte", _bpb),
        ],
        figures.get("wikitext_val_ppl"),
    )
    lines += _stream_section(results, names)
    lines += _stage_section(
        results, names, "dailydialog",
        [("Token PPL", "token_ppl", _ppl), ("Response PPL", "response_ppl", _ppl)],
        figures.get("dialog_val_ppl"),
    )
    lines += _responses_section(results, names)
    lines += _speed_section(results, names, figures.get("speed"))
    lines += _curves_section(names, figures)
    lines += _samples_section(results, names)
    lines += _definitions(results)
    if notes:
        lines += ["## Notes", "", *(f"- {escape_cell(n)}" for n in notes), ""]
    return "\n".join(lines)


def _inside(out_dir: Path, rel: str) -> Path | None:
    """out_dir / rel if it stays inside out_dir (results.json paths are relative to it)."""
    path = (out_dir / rel).resolve()
    return path if path.is_relative_to(out_dir.resolve()) else None


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write out_dir/report.md with comparison plots made from the histories under out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = _models(results)
    figures: dict[str, str] = {}
    notes: list[str] = []
    histories: dict[str, dict[str, list[dict]]] = {stage: {} for stage in STAGES}
    for name in _model_names(results):
        for stage, (stage_name, stem) in STAGES.items():
            section = _get(models.get(name), stage)
            # Fall back to the pipeline's layout: histories of a stage that wrote no results still show.
            history_rel = _get(section, "history") or f"{name}_{stem}/history.json"
            curves_rel = _get(section, "curves") or f"{name}_{stem}_training_curves.png"
            history_path = _inside(out_dir, history_rel)
            history = []
            if history_path is None:
                notes.append(f"{model_label(name)} {stage_name}: history {history_rel!r} is outside {out_dir}.")
            elif history_path.is_file():
                try:
                    history = load_history(history_path)
                except ValueError as e:
                    notes.append(f"{e}; its curves are left out.")
            if history:
                histories[stage][name] = history
            curves_path = _inside(out_dir, curves_rel)
            if curves_path is None:
                notes.append(f"{model_label(name)} {stage_name}: curves {curves_rel!r} are outside {out_dir}.")
                continue
            if not curves_path.is_file() and history:
                plot_training_curves(history, curves_path, f"{model_label(name)} — {stage_name}")
            if curves_path.is_file():
                figures[f"{name}/{stage}"] = curves_path.relative_to(out_dir.resolve()).as_posix()
    for stage, fig_id in (("wikitext", "wikitext_val_ppl"), ("dailydialog", "dialog_val_ppl")):
        if histories[stage]:
            plot_comparison(histories[stage], out_dir / f"{fig_id}.png",
                            f"{STAGES[stage][0]}: validation perplexity per epoch")
            figures[fig_id] = f"{fig_id}.png"
    if any(isinstance(_get(m, "speed"), Mapping) for m in models.values()):
        plot_speed(results, out_dir / "speed.png")
        figures["speed"] = "speed.png"
    text = render_report(results, figures, notes)
    return write_atomic(out_dir / "report.md", text.encode("utf-8"))
