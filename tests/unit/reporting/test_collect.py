"""`newllm collect`: runs' results.json into rows of mean ± sample std over seeds."""

import json
import statistics

import pytest

from newllm.cli import main
from newllm.reporting.collect import collect, markdown_table


def _results(folder, preset, seed, word_ppl, params=1000, schema=2):
    folder.mkdir(parents=True)
    results = {"preset": preset, "config": {"pretrain": {"seed": seed}},
               "models": {"new_llm": {"params": params, "wikitext": {"test": {"word_ppl": word_ppl, "token_ppl": 9.0}}}}}  # fmt: skip
    if schema == 2:
        results |= {"schema": 2, "provenance": {"preset": preset, "seeds": {"pretrain": seed}, "commit": "abc"}}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_rows_average_over_seeds_with_the_sample_std(tmp_path):
    runs = [_results(tmp_path / f"s{seed}", "study", seed, ppl) for seed, ppl in ((2, 120.0), (0, 118.0), (1, 125.0))]
    runs.append(_results(tmp_path / "other", "full", 0, 150.0, schema=1))  # an older results.json: its config's seed
    summary = collect(runs)
    study, full = summary["rows"]
    assert (study["preset"], study["seeds"], study["params"]) == ("study", [0, 1, 2], 1000)
    stat = study["wikitext_test_word_ppl"]
    assert stat["mean"] == pytest.approx(121.0) and stat["std"] == pytest.approx(statistics.stdev([118, 120, 125]))
    assert (full["seeds"], full["wikitext_test_word_ppl"]["std"]) == ([0], None)
    assert "dailydialog_test_token_ppl" not in study  # measured by no run: absent, not zero
    table = markdown_table(summary)
    assert "121.0 ± 3.6" in table and "| `full` | New-LLM | 1 | 1,000 | 150.0 |" in table


def test_one_seed_twice_in_a_row_is_an_error_not_an_average(tmp_path):
    runs = [_results(tmp_path / "a", "study", 0, 120.0), _results(tmp_path / "b", "study", 0, 130.0)]
    with pytest.raises(ValueError, match="both study/new_llm seed 0"):
        collect(runs)


def test_the_command_writes_the_summary_and_fails_in_one_line(tmp_path, capsys):
    run = _results(tmp_path / "s0", "study", 0, 120.0)
    out = tmp_path / "summary.json"
    assert main(["collect", str(run), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["seeds"] == [0]
    assert "120.0" in capsys.readouterr().out
    assert main(["collect", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("newllm: error: results file not found") and "\n" not in err
