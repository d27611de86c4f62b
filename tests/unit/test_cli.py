"""The command line: one clear line and exit status 1 for bad input, nothing written."""

import pytest

from newllm.cli import build_parser, main
from newllm.data.tokenizer import save_tokenizer
from newllm.pipeline import _command_line


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


def test_bench_quick_writes_json_plots_and_prints_the_table(capsys, tmp_path):
    import json

    assert main(["bench", "--quick", "--device", "cpu", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "New-LLM/TinyGPT2" in out and "ms_per_token" in out
    results = json.loads((tmp_path / "bench.json").read_text())
    assert {row["model"] for row in results["training"]} == {"new_llm", "tinygpt2", "lstm"}
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
    assert _command_line() == expected
