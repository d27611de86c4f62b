"""The command line: one clear line and exit status 1 for bad input, nothing written."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from newllm.cli import build_parser, main
from newllm.data.tokenizer import save_tokenizer
from newllm.pipeline.setup import command_line


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("newllm: error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_unknown_preset(capsys):
    assert main(["pretrain", "--preset", "nope"]) == 1
    assert "unknown preset 'nope'" in _error(capsys)


def test_unknown_setting(capsys, tmp_path):
    assert main(["pretrain", "--preset", "quick", "--set", "pretrain.lrr=1", "--output-dir", str(tmp_path)]) == 1
    assert "unknown setting 'pretrain.lrr'" in _error(capsys)


def test_missing_data_dir(capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["pretrain", "--preset", "quick", "--data-dir", str(tmp_path / "nowhere"), "--output-dir", str(out)]) == 1
    assert "not found" in _error(capsys)
    assert not (out / "tokenizer.json").exists()


@pytest.mark.parametrize("command", ["pretrain", "evaluate"])
@pytest.mark.parametrize(
    "models, message",
    [
        ("", "model.names: no model given; choose one or more of new_llm, tinygpt2, lstm, mamba2"),
        (",", "model.names: no model given; choose one or more of new_llm, tinygpt2, lstm, mamba2"),
        ("gpt", "model.names: unknown model 'gpt'; choose from new_llm, tinygpt2, lstm, mamba2"),
    ],
    ids=["empty", "comma", "unknown"],
)
def test_an_empty_or_unknown_models_list_is_refused_before_any_work(capsys, tmp_path, command, models, message):
    (tmp_path / "report.md").write_text("the last run's report\n")  # evaluate must not replace it
    assert main([command, "--preset", "quick", "--models", models, "--output-dir", str(tmp_path)]) == 1
    assert _error(capsys) == f"newllm: error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]  # no tokenizer trained, nothing written
    assert (tmp_path / "report.md").read_text() == "the last run's report\n"


def test_finetune_without_tokenizer(capsys, tmp_path):
    assert main(["finetune", "--preset", "quick", "--output-dir", str(tmp_path)]) == 1
    assert "run `newllm pretrain`" in _error(capsys)


def test_finetune_without_step_one_checkpoint_never_trains_from_scratch(capsys, tmp_path, tiny_tokenizer):
    save_tokenizer(tiny_tokenizer, tmp_path)
    args = ["finetune", "--preset", "quick", "--set", "data.vocab_size=300", "--output-dir", str(tmp_path)]
    assert main(args) == 1
    assert "step-1 checkpoint" in _error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]


def test_tokenizer_of_another_kind_in_the_output_dir(capsys, tmp_path, tiny_tokenizer):
    save_tokenizer(tiny_tokenizer, tmp_path)
    assert main(["evaluate", "--preset", "quick", "--output-dir", str(tmp_path)]) == 1
    assert "use another --output-dir" in _error(capsys)


def test_a_forgotten_preset_is_named_from_experiment_json(capsys, tmp_path, tiny_tokenizer):
    save_tokenizer(tiny_tokenizer, tmp_path)
    (tmp_path / "experiment.json").write_text('{"step": "pretrain", "config": {"preset": "quick"}}')
    assert main(["evaluate", "--output-dir", str(tmp_path)]) == 1  # the default preset is full
    assert "this folder was run with --preset quick" in _error(capsys)


def test_training_the_full_preset_on_a_cpu_warns_first(caplog, tmp_path):
    args = ["pretrain", "--device", "cpu", "--data-dir", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path)]
    assert main(args) == 1  # no data here: the warning must come before anything is read
    assert "training the full preset on a CPU takes days" in caplog.text
    caplog.clear()
    assert main([*args, "--preset", "quick"]) == 1
    assert "takes days" not in caplog.text


@pytest.mark.parametrize("option, message", [(["--top-p", "2"], "top_p must be in (0, 1]"),
                                             (["--temperature", "0"], "temperature must be > 0")])
def test_generate_checks_its_sampling_options_before_loading(capsys, tmp_path, option, message):
    assert main(["generate", "--checkpoint", str(tmp_path / "nothing"), "--sample", *option, "hi"]) == 1
    assert message in _error(capsys)  # not "does not exist": checked before the checkpoint


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--temperature", "0.5", "hi"], "--temperature has no effect without --sample (greedy decoding)"),
        (["chat", "--greedy", "--top-k", "5", "--top-p", "0.5"], "--top-k and --top-p have no effect with --greedy"),
    ],
)
def test_sampling_options_for_greedy_decoding_are_refused(capsys, tmp_path, argv, message):
    assert main([argv[0], "--checkpoint", str(tmp_path / "nothing"), *argv[1:]]) == 1
    assert _error(capsys) == f"newllm: error: {message}"


@pytest.mark.parametrize(
    "argv, quiet",
    [(["-q", "evaluate"], True), (["evaluate", "-q"], True), (["chat", "--checkpoint", "x", "--quiet"], True),
     (["evaluate"], False)],
)  # fmt: skip
def test_quiet_before_or_after_the_command(argv, quiet):
    assert build_parser().parse_args(argv).quiet is quiet


def test_generate_with_missing_checkpoint(capsys, tmp_path):
    assert main(["generate", "--checkpoint", str(tmp_path / "nothing"), "hello"]) == 1
    assert "does not exist" in _error(capsys)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrain", "--preset", "quick", "--device", "gpu"], "unknown device 'gpu'"),
        (["generate", "--checkpoint", "x", "--device", "gpu", "hi"], "unknown device 'gpu'"),
        (["chat", "--checkpoint", "x", "--device", "meta"], "device 'meta' is not supported"),
        (["bench", "--quick", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_a_device_torch_cannot_use_is_refused_before_any_work(capsys, tmp_path, argv, message):
    assert main([*argv, "--output-dir", str(tmp_path / "out")] if argv[0] in ("pretrain", "bench") else argv) == 1
    assert message in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_cuda_without_a_gpu_is_one_line_not_a_traceback(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["generate", "--checkpoint", "x", "--device", "cuda", "hi"]) == 1
    assert "PyTorch sees no CUDA device" in _error(capsys)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("pretrain", "finetune", "evaluate", "pipeline", "generate"):
        assert command in out


@pytest.mark.parametrize(
    "command, description",
    [
        ("bench", "training throughput and generation latency of all models, side by side"),
        ("generate", "one prompt -> one response from a checkpoint"),
        ("chat", "talk with a checkpoint turn by turn (/reset, /quit)"),
    ],
)
def test_every_command_describes_itself_in_its_help(capsys, command, description):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.split("\n\n")[1] == description  # the paragraph after the usage


# the child prints, as its last line, the exit status and which of torch and transformers it imported
NO_TORCH_CHILD = """
import sys
from newllm.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_info:
    code = exit_info.code
print(code, sorted({"torch", "transformers"} & set(sys.modules)))
"""


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        (["pretrain", "--help"], 0),
        (["bench", "--help"], 0),
        (["chat"], 2),  # --checkpoint missing
        (["evaluate", "--tokenizer", "chars"], 2),
        (["pretrain", "--preset", "quick", "--models", ","], 1),
        (["evaluate", "--preset", "nope"], 1),
    ],
    ids=["help", "pretrain-help", "bench-help", "usage-error", "bad-choice", "empty-models", "unknown-preset"],
)
def test_help_and_argument_errors_import_neither_torch_nor_transformers(tmp_path, argv, code):
    # importing them takes seconds; `newllm --help` took 9 s when the package imported its models eagerly
    child = subprocess.run(
        [sys.executable, "-c", NO_TORCH_CHILD, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert child.stdout.splitlines()[-1] == f"{code} []", child.stdout + child.stderr
    assert list(tmp_path.iterdir()) == []


def test_import_newllm_is_light_and_registers_the_models_on_first_use():
    child = """
import sys
import newllm
assert "transformers" not in sys.modules
assert newllm.models.MODEL_NAMES == ("new_llm", "tinygpt2", "lstm", "mamba2")  # loads the subpackage: registration
from transformers import AutoConfig
print(AutoConfig.for_model("new_llm").model_type, AutoConfig.for_model("newllm_lstm").model_type)
"""
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["new_llm", "newllm_lstm"], result.stderr


def test_bench_writes_by_default_where_git_ignores():
    # committed measurements live in docs/performance/; a quick run must not leave untracked files
    repo = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    default = build_parser().parse_args(["bench"]).output_dir
    for name in ("bench.json", "bench_throughput.png"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{default}/{name}"], cwd=repo)
        assert ignored.returncode == 0, f"{default}/{name} is not ignored by git"


@pytest.mark.parametrize("script", ["train_wikitext.py", "finetune_dialog.py", "evaluate_comparison.py"])
def test_scripts_name_themselves_in_their_usage(script):
    path = Path(__file__).resolve().parents[2] / "scripts" / script
    child = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith(f"usage: {script} [-h]")


def test_bench_quick_writes_json_plots_and_prints_the_table(capsys, tmp_path, monkeypatch):
    import datetime
    import json

    args = ["bench", "--quick", "--device", "cpu", "--output-dir", str(tmp_path), "--no-progress"]
    monkeypatch.setattr(sys, "argv", ["/site-packages/newllm/cli.py", *args])  # as `python -m newllm.cli` leaves it
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "New-LLM/TinyGPT2" in out and "ms_per_token" in out
    results = json.loads((tmp_path / "bench.json").read_text())
    assert {row["model"] for row in results["training"]} == {"new_llm", "tinygpt2", "lstm"}
    # provenance: the command as typed (its subcommand included), the commit key and when it ran
    assert results["command"] == "newllm " + " ".join(args)
    assert "commit" in results and datetime.datetime.fromisoformat(results["date"]).tzinfo is not None
    assert (tmp_path / "bench_throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_an_unknown_setting(capsys, tmp_path):
    assert main(["bench", "--quick", "--set", "batch_size=3", "--output-dir", str(tmp_path)]) == 1
    assert "unknown setting 'batch_size'" in _error(capsys)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/x/src/newllm/cli.py", "evaluate", "--preset", "full"], "newllm evaluate --preset full"),
        (["/x/bin/newllm", "pretrain", "--set", "a=b c"], "newllm pretrain --set 'a=b c'"),
        (["scripts/train_wikitext.py"], "train_wikitext.py"),
    ],
)
def test_results_name_the_command_as_typed(monkeypatch, argv, expected):
    monkeypatch.setattr("sys.argv", argv)
    assert command_line() == expected


def test_report_to_reaches_both_training_stages_and_nothing_else():
    from newllm.cli import _config_from_args, build_parser

    config = _config_from_args(build_parser().parse_args(["pretrain", "--preset", "quick", "--report-to", "tensorboard"]))
    assert (config.pretrain.report_to, config.finetune.report_to) == ("tensorboard", "tensorboard")
    plain = _config_from_args(build_parser().parse_args(["pretrain", "--preset", "quick"]))
    assert (plain.pretrain.report_to, plain.finetune.report_to) == ("none", "none")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--report-to", "mlflow"])
