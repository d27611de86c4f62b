"""`newllm` command line: the only module that parses argv or prints for humans."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
import traceback
from pathlib import PurePath

# Errors of the input or the machine: newllm raises them with a message meant for the user.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, RuntimeError)
# torch's zip writer and safetensors report a full disk in these words, not as OSError(ENOSPC)
DISK_FULL_TEXTS = ("No space left on device", "StorageFull", "Disk quota exceeded", "unexpected pos", "file write failed")
# torch.save(obj, f), safetensors' save_file(tensors, filename), open(file) ...: the file a writer was given
PATH_ARGUMENTS = ("filename", "file", "f", "path", "save_directory")
STEP_COMMANDS = {
    "pretrain": "step 1: train every model on WikiText-2",
    "finetune": "step 2: fine-tune the step-1 checkpoints on DailyDialog",
    "evaluate": "step 3: perplexities, sample responses, speed -> results.json, report.md",
    "pipeline": "steps 1, 2 and 3 in order",
}


def _experiment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", "--config", default="full", help="preset name in configs/ or a .toml path (default: full)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one setting, e.g. --set pretrain.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--output-dir", help="where checkpoints, curves and the report go (default: checkpoints)")
    parser.add_argument("--data-dir", help="folder holding wikitext-2/ and dailydialog/ (default: $NEWLLM_DATA_DIR; if unset ./data, ../shared/data, the Hub)")
    parser.add_argument("--models", help="comma-separated models of new_llm,tinygpt2,lstm,mamba2 (default: the first three)")
    parser.add_argument("--wikitext", choices=("tokens", "raw"), help="WikiText-2 variant (default: tokens)")
    parser.add_argument(
        "--tokenizer",
        type=lambda kind: "prototype" if kind == "seed" else kind,  # its earlier name, still accepted
        choices=("bpe", "prototype"),
        help="tokenizer kind: bpe (default) or prototype (the prototype's 1,000 words; seed is its earlier name)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _program_options(parser: argparse.ArgumentParser, default) -> None:
    # on the program and on every command, so that `newllm pretrain -q` works like `newllm -q pretrain`
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="only warnings and errors")
    parser.add_argument("--debug", action="store_true", default=default, help="errors with their full traceback")


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs from their last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="start again where a run already exists")
    parser.add_argument(
        "--report-to",
        choices=("none", "tensorboard", "wandb"),
        help="track training with the Trainer's integration (tensorboard: logs under each run folder's runs/)",
    )


def build_parser(script: str | None = None) -> argparse.ArgumentParser:
    """The `newllm` parser; `script`: a scripts/ wrapper standing for one command, named in that command's usage."""
    parser = argparse.ArgumentParser(
        prog="newllm",
        description="New-LLM (one fixed-size context vector, no attention) vs GPT-2 and an LSTM of the same size.",
    )
    _program_options(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:  # one line in `newllm --help` and atop its own
        return commands.add_parser(name, help=text, description=text)

    for name, help_text in STEP_COMMANDS.items():
        sub = command(name, help_text)
        _experiment_options(sub)
        if name != "evaluate":
            _training_options(sub)
    bench = command("bench", "training throughput and generation latency of all models, side by side")
    bench.add_argument("--quick", action="store_true", help="tiny sizes: seconds on a CPU (what CI runs)")
    bench.add_argument("--device", default="auto", help="cpu, cuda ... (default: auto)")
    bench.add_argument(
        "--output-dir",
        default="benchmarks/results",
        help="where bench.json and the plots go (default: benchmarks/results, ignored by git)",
    )
    bench.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a BenchConfig field, e.g. --set batch_sizes=64,256 --set compile_modes=eager",
    )
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    collect = command("collect", "many runs' results.json -> one table, mean ± std over seeds per preset and model")
    collect.add_argument("runs", nargs="+", metavar="RUN",
                         help="run folders (holding results.json), results.json files, or summaries of --out")
    collect.add_argument("--replace", action="store_true",
                         help="a run named later replaces an earlier one of the same preset, model and seed")
    collect.add_argument("--out", help="write the summary JSON here")
    collect.add_argument("--markdown", help="write the Markdown tables here (they are printed either way)")
    collect.add_argument("--plot", help="draw validation perplexity per epoch of every run here (PNG)")
    collect.add_argument("--plot-test", help="draw WikiText-2 test word perplexity per row, a dot per seed, here (PNG)")
    _recall_options(command("recall", "multi-query associative recall: accuracy against the bytes of state carried"))
    recall_collect = command("recall-collect", "several recall.json -> one, with its table and figures")
    recall_collect.add_argument("files", nargs="+", metavar="RECALL_JSON", help="recall.json files of `newllm recall`")
    recall_collect.add_argument("--out", required=True, help="where the merged recall.json and its figures go")
    recall_collect.add_argument("--best-rate", action="store_true",
                                help="keep, per model, width and point, the learning rate of best mean validation "
                                     "accuracy over seeds (sweeps run at several --lr, merged); every run goes to "
                                     "OUT/all_rates")  # fmt: skip
    gen = command("generate", "one prompt -> one response from a checkpoint")
    gen.add_argument("--checkpoint", required=True, help="a model folder, e.g. checkpoints/best_new_llm_dialog")
    gen.add_argument("prompt", help="what the first speaker says")
    gen.add_argument("--max-new-tokens", type=int, default=40, help="longest reply in tokens (default: 40)")
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (the default here)")
    _sampling_options(gen, "with --sample")
    chat = command("chat", "talk with a checkpoint turn by turn (/reset, /quit)")
    chat.add_argument("--checkpoint", required=True, help="a model folder, e.g. checkpoints/best_new_llm_dialog")
    chat.add_argument("--max-new-tokens", type=int, default=40, help="longest reply in tokens (default: 40)")
    chat.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling (the default here)")
    _sampling_options(chat, "unless --greedy")
    for sub in commands.choices.values():
        _program_options(sub, default=argparse.SUPPRESS)  # absent: the program-level value stands
        if script is not None:
            sub.prog = script
    return parser


def _recall_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes: under a minute on a CPU (what CI runs)")
    parser.add_argument("--config", help="a .toml of RecallConfig fields (default: configs/recall/sweep.toml; none with --quick)")
    # each a comma-separated list that replaces the config's
    for flag, text in [("models", "new_llm,new_llm_mlp,tinygpt2,lstm"), ("widths", "model widths, multiples of 16"),
                       ("seq-lens", "sequence lengths"), ("pairs", "key-value pairs per sequence"), ("seeds", "seeds")]:
        parser.add_argument(f"--{flag}", help=f"comma-separated {text}")
    parser.add_argument("--steps", help="most optimizer steps per run (fewer at the target accuracy)")
    parser.add_argument("--lr", help="peak learning rate of every family")
    parser.add_argument("--weight-decay", help="AdamW's weight decay for every family (default: the config's, 0.1)")
    parser.add_argument("--option", action="append", default=[], metavar="MODEL.ARGUMENT=VALUE",
                        help="a config argument of one family over its width rule, e.g. new_llm.context_size=512 "
                             "(repeatable; over the config file's [options.<model>])")  # fmt: skip
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--out", default="benchmarks/results/recall", help="where recall.json and recall.png go")


def _recall(args) -> int:
    from newllm.recall import DEFAULT_CONFIG, load_recall_config, run_recall
    from newllm.reporting.recall_plot import (
        format_recall_splits,
        format_recall_table,
        write_recall_json,
        write_recall_outputs,
    )

    flags = {key: getattr(args, key) for key in ("models", "widths", "seq_lens", "pairs", "seeds", "steps", "lr",
                                               "weight_decay")}
    path = args.config or (None if args.quick else DEFAULT_CONFIG)
    config = load_recall_config(path, quick=args.quick, overrides={k: v for k, v in flags.items() if v is not None},
                                options=args.option)  # fmt: skip
    given = {"config": args.config, **flags, "device": args.device, "out": args.out}
    command = ["newllm recall", *(["--quick"] if args.quick else []), *(f"--option {o}" for o in args.option)]
    command += [f"--{key.replace('_', '-')} {value}" for key, value in given.items() if value is not None]
    # each finished run is on disk at once (recall.json, "complete": false); the figures come at the end
    results = run_recall(config, args.device, command=" ".join(command),
                         on_run=lambda partial: write_recall_json(partial, args.out))
    paths = write_recall_outputs(results, args.out)
    print(format_recall_table(results))
    if splits := format_recall_splits(results):
        print("\n" + splits)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _recall_collect(args) -> int:
    import json
    from pathlib import Path

    from newllm.recall import with_keyless
    from newllm.reporting.recall_plot import (
        choose_rates,
        format_rate_choice,
        format_recall_splits,
        format_recall_table,
        merge_recall_results,
        write_recall_outputs,
    )

    parts = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"{path}: no such recall.json")
        try:
            parts.append(with_keyless(json.loads(path.read_text(encoding="utf-8"))))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
    results = merge_recall_results(parts)
    paths = []
    if args.best_rate:  # every rate kept beside the choice: a later sweep resumes from it (benchmarks/recall_sweep.sh)
        every, results = results, choose_rates(results)
        paths += write_recall_outputs(every, Path(args.out) / "all_rates")
    paths += write_recall_outputs(results, args.out)
    if args.best_rate:
        print("Learning rates chosen on validation accuracy (mean over seeds):\n" + format_rate_choice(results) + "\n")
    print(format_recall_table(results))
    if splits := format_recall_splits(results):
        print("\n" + splits)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _sampling_options(parser: argparse.ArgumentParser, when: str) -> None:
    # default None: a value given where it has no effect (greedy decoding) is an error, not silently ignored
    parser.add_argument("--temperature", type=float, help=f"softmax temperature, {when} (default: 0.8)")
    parser.add_argument("--top-k", type=int, help=f"sample from the k likeliest tokens, 0 = all, {when} (default: 50)")
    parser.add_argument("--top-p", type=float, help=f"nucleus sampling mass, {when} (default: 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default: 0)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... or auto (default: cpu)")


def _sampling(args, do_sample: bool, greedy_when: str):
    """SamplingOptions from generate/chat's flags; a sampling flag given for greedy decoding is an error."""
    from newllm.evaluation.chat import SamplingOptions
    from newllm.evaluation.generation import check_reply_length

    check_reply_length(args.max_new_tokens, None, "--max-new-tokens")  # the model's own limit once it is loaded
    given = {name: getattr(args, name) for name in ("temperature", "top_k", "top_p") if getattr(args, name) is not None}
    if given and not do_sample:
        flags = " and ".join(f"--{name.replace('_', '-')}" for name in given)
        raise ValueError(f"{flags} {'has' if len(given) == 1 else 'have'} no effect {greedy_when}")
    return SamplingOptions(args.max_new_tokens, do_sample, seed=args.seed, **given)


def _config_from_args(args):
    from newllm.config import load_config

    overrides = list(args.overrides)
    for flag, key in [
        ("output_dir", "output_dir"),
        ("data_dir", "data.data_dir"),
        ("models", "model.names"),
        ("wikitext", "data.wikitext"),
        ("tokenizer", "data.tokenizer"),
        ("device", "device"),
    ]:
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    report_to = getattr(args, "report_to", None)
    if report_to is not None:  # both stages: a flag for the command, not per stage
        overrides += [f"pretrain.report_to={report_to}", f"finetune.report_to={report_to}"]
    config = load_config(args.preset, overrides)
    if args.tokenizer == "prototype" and not any(o.startswith("data.vocab_size=") for o in args.overrides):
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, vocab_size=1000))
    return config


def _generate(args) -> int:
    from newllm.evaluation.generation import check_reply_length, respond
    from newllm.models.registry import usable_positions
    from newllm.pipeline import device_from_name
    from newllm.training.checkpoint import load_checkpoint

    # checked like chat's options (--top-p 2 or --temperature 0 is an error), before the model is loaded
    options = _sampling(args, do_sample=args.sample, greedy_when="without --sample (greedy decoding)")
    args.device = device_from_name(args.device)
    model, tokenizer = load_checkpoint(args.checkpoint, device=args.device)
    check_reply_length(args.max_new_tokens, usable_positions(model), "--max-new-tokens")
    reply = respond(model, tokenizer, [args.prompt], **dataclasses.asdict(options), device=args.device)
    print(reply)
    if not reply:
        print("newllm: the model ended its turn without a word (try --sample)", file=sys.stderr)
    return 0


def _chat(args) -> int:
    from newllm.evaluation.chat import COMMANDS, ChatSession, clean_line
    from newllm.evaluation.generation import check_reply_length
    from newllm.models.registry import MODEL_TYPES, usable_positions
    from newllm.pipeline import device_from_name
    from newllm.training.checkpoint import load_checkpoint

    options = _sampling(args, do_sample=not args.greedy, greedy_when="with --greedy")
    args.device = device_from_name(args.device)
    model, tokenizer = load_checkpoint(args.checkpoint, device=args.device)
    check_reply_length(args.max_new_tokens, usable_positions(model), "--max-new-tokens")
    session = ChatSession(model, tokenizer, options, device=args.device)
    try:
        import readline  # noqa: F401  (line editing and history on the arrow keys for input())
    except ImportError:
        pass  # not on every platform; plain input() still works
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # invalid UTF-8 becomes U+FFFD instead of a crash
    commands = ", ".join(f"{name} {text}" for name, text in COMMANDS.items())
    # the project's name (tinygpt2, lstm), not the config.json model_type (gpt2, newllm_lstm)
    name = {model_type: name for name, model_type in MODEL_TYPES.items()}[model.config.model_type]
    print(f"chatting with {name} from {args.checkpoint}; {commands}")
    try:
        while True:
            try:
                line = clean_line(input("you> "))
            except EOFError:
                print()
                return 0
            command = line.split()[0] if line.startswith("/") else None
            if not line:
                continue
            if command == "/quit":
                return 0
            if command == "/reset":
                session.reset()
                print("(new conversation)")
            elif command is not None:
                print(f"unknown command {command}; {commands}")
            else:
                print(f"bot> {session.reply(line)}", flush=True)
    except KeyboardInterrupt:
        print()  # Ctrl-C leaves the chat like Ctrl-D: nothing to resume
        return 0


def _bench(args) -> int:
    from newllm.config import parse_overrides, replace_fields
    from newllm.evaluation.bench import BenchConfig, quick_bench_config, run_bench
    from newllm.pipeline import device_from_name
    from newllm.pipeline.setup import command_line, git_commit, utc_now
    from newllm.reporting.bench_report import format_bench_table, write_bench_outputs

    config = quick_bench_config() if args.quick else BenchConfig()
    config = replace_fields(config, parse_overrides(args.overrides))
    device = device_from_name(args.device)
    results = run_bench(config, device, progress=not args.no_progress)
    # provenance beside the numbers, as every results JSON carries it
    results |= {"command": command_line(), "commit": git_commit(), "date": utc_now()}
    paths = write_bench_outputs(results, args.output_dir)
    print(format_bench_table(results))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _collect(args) -> int:
    import json
    from pathlib import Path

    from newllm.reporting.collect import (
        collect,
        markdown_table,
        plot_test,
        plot_validation,
    )

    summary = collect(args.runs, replace=args.replace)
    for entry in summary.get("replaced", []):
        print(f"replaced {entry['run']}: {entry['path']} by {entry['by']}")
    table = markdown_table(summary)
    print(table, end="")
    for path, text in ((args.out, json.dumps(summary, indent=1) + "\n"), (args.markdown, table)):
        if path:
            Path(path).write_text(text, encoding="utf-8")
    for path, plot in ((args.plot, plot_validation), (args.plot_test, plot_test)):
        if path:
            print(f"wrote {plot(summary, path)}")
    return 0


def _run(args) -> int:
    if args.command == "collect":  # reads JSON only: no torch
        return _collect(args)
    if args.command == "recall-collect":
        return _recall_collect(args)
    # a bad preset, setting or --models fails here, before seconds of importing torch and transformers
    config = _config_from_args(args) if args.command in STEP_COMMANDS else None
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # per-file load/save bars; training keeps its own
    if args.command == "generate":
        return _generate(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "chat":
        return _chat(args)
    if args.command == "recall":
        return _recall(args)
    from newllm import pipeline

    progress = not args.no_progress
    if args.command == "evaluate":
        pipeline.evaluate(config, progress=progress)
        return 0
    step = {"pretrain": pipeline.pretrain, "finetune": pipeline.finetune, "pipeline": pipeline.run_pipeline}
    step[args.command](config, resume=args.resume, overwrite=args.overwrite, progress=progress)
    return 0


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _file_of(err: BaseException) -> str | None:
    """The file `err` was raised about: OSError's filename, else the path the innermost writer was given.

    torch.save, safetensors and a failing write() name no file; the path is still an argument of the
    frame that raised (or of one around it), so the traceback holds it.
    """
    if isinstance(err, OSError) and err.filename:
        return os.fspath(err.filename)
    for frame, _ in reversed(list(traceback.walk_tb(err.__traceback__))):
        for name in PATH_ARGUMENTS:
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)):
                return os.fspath(value)
        if isinstance(frame.f_locals.get("self"), PurePath):  # Path.write_text, Path.open ...
            return str(frame.f_locals["self"])
    return None


def describe_error(err: Exception) -> str:
    """The one line that reports `err`: the disk, a permission, newllm's own message, else an unexpected error."""
    text = _first_line(err)
    disk_full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    if disk_full or (not isinstance(err, ValueError) and any(words in text for words in DISK_FULL_TEXTS)):
        where = _file_of(err) or "a file"
        return f"the disk is full: could not write {where} ({text}); free some space and run again (training continues with --resume)"
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "the file system is read-only" if err.errno == errno.EROFS else "permission denied"
        return f"{_file_of(err) or 'a file'}: {reason}; check the folder's permissions or choose another --output-dir"
    if isinstance(err, EXPECTED_ERRORS):
        return text
    if isinstance(err, OSError):
        return f"{_file_of(err) or 'a file'}: {err.strerror or text}"
    return f"unexpected {type(err).__name__}: {text} (a bug: run with --debug for the traceback and report it)"


def main(argv: list[str] | None = None, script: str | None = None) -> int:
    args = build_parser(script).parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="[newllm] %(message)s", stream=sys.stderr
    )
    try:
        return _run(args)
    except Exception as err:
        if args.debug:
            raise
        print(f"newllm: error: {describe_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "recall":  # no --resume: each finished run is already on disk
            print(f"newllm: interrupted; the runs finished so far are in {PurePath(args.out) / 'recall.json'}",
                  file=sys.stderr)  # fmt: skip
        else:
            print("newllm: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
