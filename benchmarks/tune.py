"""The tuning grid: every model family trained on the same grid of settings, chosen on validation only.

    python benchmarks/tune.py run RUNS_DIR [--grid configs/grids/study.toml] [--only new_llm] [--points NAME,...]
        [--gpus 0,1] [--mps] [--deadline UNIX]
        [--pretrained STEP1_RUNS] [--seed N] [NEWLLM OPTIONS, e.g. --set FIELD=VALUE]
    python benchmarks/tune.py collect RUNS_DIR [--previous SUMMARY.json] [--commit SHA] --out docs/results/study_grid.json
    python benchmarks/tune.py plot SUMMARY.json --out docs/results/study_grid_val_ppl.png
    python benchmarks/tune.py preset new_llm --grid configs/grids/study_finetune.toml    # study_new_llm
    python benchmarks/tune.py write-preset docs/results/study_peers_grid_h200.json mamba2 --name study_mamba2 \
        --out configs/study_mamba2.toml       # a family's chosen step-1 point as the preset its seeds run

A grid file names a preset, a seed, the axes every family shares and, per family, axes of its own and
settings that follow another (configs/grids/study.toml). `run` trains the tokenizer once, then runs
step 1 (`newllm pretrain`) of every point side by side, one process each, spread over the GPUs
(`--mps` starts a CUDA MPS daemon so that the processes share each GPU's SMs instead of taking turns;
`--deadline` gives every run a time limit, after which it ends with its best model, marked stopped;
`--jobs` caps how many run at once, by default as many as the GPUs' free memory holds at `--gb-per-run`
GB each (else the grid's `gb_per_run`, else 6), counted when `run` starts: launches started side by side
split it with `--share N`, since none sees what the others' points will take; a point that runs out of
GPU memory all the same runs again, from the start, once every other point has ended).
`collect` reads each point's history and writes one JSON: the points with their best validation
loss and perplexity, and the chosen point of each family (lowest validation loss). The test split is
never read: the chosen settings are run with 3 seeds through all three steps afterwards.

A grid with `step = "finetune"` tunes step 2 the same way, on DailyDialog validation: each family names
its own preset (its chosen step-1 point), and `run --pretrained DIR` starts every point from the step-1
run folder `DIR/<preset>_<family>_s<seed>/` (as benchmarks/full_schedule.sh names them): its tokenizer
and its best step-1 checkpoint are linked into the point's folder, then `newllm finetune` runs there
(configs/grids/study_finetune.toml).

A grid larger than one GPU lease runs in parts (`--only FAMILY,...`). A lease's run folders go with
its machine, so collect into the lease's output in every call, and start the next part's collect
from the last summary (`--previous`): its points stand wherever the new folders hold none. The
device copy's git metadata may be older than the code it runs: pass `--commit` there. Collected on another
machine than the one that ran (runs copied back), pass `--ran-on` too: the default is this machine's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MARGIN = 60  # seconds before --deadline left to each run for its last evaluation and save
POLL_S = 2.0  # seconds between looks at the running points
STAGE_OF_STEP = {"pretrain": "wikitext", "finetune": "dialog"}  # the run folder's stage each step trains


def load_grid(path: Path) -> dict:
    """The grid file, checked: a preset, a seed, shared axes and a table per family."""
    grid = tomllib.loads(path.read_text(encoding="utf-8"))
    unknown = set(grid) - {"preset", "seed", "step", "axes", "families", "gb_per_run"}
    if unknown or "families" not in grid:
        raise SystemExit(f"{path}: a grid needs families (and may have preset, seed, step, axes, gb_per_run); unknown: "
                         f"{sorted(unknown)}")  # fmt: skip
    if step_of(grid) not in STAGE_OF_STEP:
        raise SystemExit(f"{path}: step must be pretrain or finetune, got {grid['step']!r}")
    if step_of(grid) == "pretrain" and "preset" not in grid:
        raise SystemExit(f"{path}: a step-1 grid names the preset its one tokenizer is trained by")
    for family, table in grid["families"].items():
        extra = set(table) - {"axes", "follow", "preset"}
        if extra:
            raise SystemExit(f"{path}: families.{family} may hold axes, follow and preset, not {sorted(extra)}")
        if "preset" not in table and "preset" not in grid:
            raise SystemExit(f"{path}: families.{family} has no preset, and the grid names none")
    return grid


def step_of(grid: dict) -> str:
    """The step a grid tunes: "pretrain" (the default) or "finetune"."""
    return grid.get("step", "pretrain")


def family_preset(grid: dict, family: str) -> str:
    """The preset a family's points start from: its own, else the grid's."""
    return grid["families"][family].get("preset", grid.get("preset"))


def points(grid: dict, only: str | None = None, names: str | None = None) -> list[dict]:
    """Every (family, settings) of the grid (of the families in `only`, comma-separated), named by its settings;
    with `names` (comma-separated point names) only those points."""
    families = grid["families"]
    wanted = [f for f in only.split(",") if f] if only else list(families)
    unknown = sorted(set(wanted) - set(families))
    if unknown:
        raise SystemExit(f"tune.py: --only names {', '.join(unknown)}, not in the grid ({', '.join(families)})")
    out = []
    for family, table in families.items():
        if family not in wanted:
            continue
        axes = {**grid.get("axes", {}), **table.get("axes", {})}
        for values in itertools.product(*axes.values()):
            settings = dict(zip(axes, values))
            for target, source in table.get("follow", {}).items():
                settings[target] = settings[source]
            name = "_".join([family] + [f"{key.rsplit('.', 1)[-1]}{value}" for key, value in zip(axes, values)])
            out.append({"name": name, "family": family, "settings": settings})
    if names:
        wanted_names = [n for n in names.split(",") if n]
        missing = sorted(set(wanted_names) - {p["name"] for p in out})
        if missing:
            raise SystemExit(f"tune.py: --points names {', '.join(missing)}, not a point of the grid here "
                             f"({', '.join(p['name'] for p in out)})")
        out = [p for p in out if p["name"] in wanted_names]
    return out


def command(grid: dict, point: dict, runs_dir: Path, python: str, time_limit: float | None,
            extra: tuple[str, ...] = ()) -> list[str]:
    step = step_of(grid)
    cmd = [python, "-m", "newllm.cli", step, "--preset", family_preset(grid, point["family"]), "--models",
           point["family"], "--output-dir", str(runs_dir / point["name"]), "--no-progress", "--set",
           f"{step}.seed={grid.get('seed', 0)}"]  # fmt: skip
    for key, value in point["settings"].items():
        cmd += ["--set", f"{key}={value}"]
    cmd += extra  # the same for every point: how it runs, not what is tuned
    if time_limit is not None:
        cmd += ["--set", f"{step}.time_limit={max(time_limit, 1):.0f}"]
    return cmd


def link_pretrained(grid: dict, point: dict, pretrained: Path, out: Path) -> None:
    """A step-2 point's folder starts as its family's step-1 run: that run's tokenizer, and its best step-1
    checkpoint linked in (read, never written, by `newllm finetune`)."""
    family = point["family"]
    source = pretrained / f"{family_preset(grid, family)}_{family}_s{grid.get('seed', 0)}"
    checkpoint = source / f"best_{family}_wikitext"
    if not checkpoint.is_dir() or not (source / "tokenizer.json").is_file():
        raise SystemExit(f"tune.py: {point['name']} starts from {checkpoint} and its tokenizer.json: not found")
    shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
    link = out / checkpoint.name
    if not link.exists():
        link.symlink_to(checkpoint.resolve(), target_is_directory=True)


def query_gpus(field: str) -> list[str] | None:
    """One nvidia-smi field of every GPU, in index order, or None without nvidia-smi."""
    try:
        listing = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return [line.strip() for line in listing.splitlines() if line.strip()]


def gpu_uuids() -> list[str]:
    """The GPUs' UUIDs in index order (what an MPS client's CUDA_VISIBLE_DEVICES must name), or []."""
    return query_gpus("uuid") or []


def free_gpu_mib(gpus: list[str]) -> int | None:
    """The least free memory (MiB) of the GPUs the points run on (the first GPU without --gpus), or None without
    nvidia-smi."""
    listing = query_gpus("memory.free")
    if not listing or not all(line.isdigit() for line in listing):
        return None
    free = [int(line) for line in listing]
    return min([free[int(g)] for g in gpus if g.isdigit() and int(g) < len(free)] or free[:1])


def gb_per_run(args, grid: dict) -> float:
    """GPU memory a point needs: --gb-per-run, else the grid's `gb_per_run` (what its family was measured to take),
    else $GB_PER_RUN, else 6."""
    if args.gb_per_run is not None:
        return args.gb_per_run
    return float(grid.get("gb_per_run", os.environ.get("GB_PER_RUN", 6)))


def jobs_at_once(args, n_points: int, gpus: list[str], gb: float = 6.0) -> int:
    """How many points run at once: --jobs (0: all), else as many as this launch's share of the GPUs' free memory
    holds at `gb` each (every process holds its own CUDA context, compiled graphs and activations: step-2 points
    started beside other runs ran out of memory), else all. `--share N`: N launches started side by side (study.sh's
    grid at each seed) split the free memory, since none of them sees what the others' points will take."""
    if args.jobs is not None:
        return args.jobs or n_points
    free = free_gpu_mib(gpus)
    if free is None or gb <= 0:
        return n_points
    share = free // args.share
    jobs = max(1, share // int(gb * 1024)) * max(1, len(gpus))
    split = f" (1/{args.share} of {free})" if args.share > 1 else ""
    print(f"jobs {min(jobs, n_points)} at once: {share} MiB of GPU memory free{split}, {gb:g} GB a run "
          f"(--jobs sets it)", flush=True)  # fmt: skip
    return min(jobs, n_points)


def ran_out_of_memory(log: Path) -> bool:
    """Whether a point's run ended on CUDA running out of memory (its log's last lines say so)."""
    return "CUDA out of memory" in log.read_text(encoding="utf-8", errors="replace")[-4000:]


def train_tokenizer(grid: dict, runs_dir: Path) -> Path:
    """One tokenizer for every point, trained as the preset says (the pipeline reuses a tokenizer.json it finds)."""
    path = runs_dir / "tokenizer.json"
    if not path.is_file():
        from newllm.config import load_config
        from newllm.pipeline import load_wikitext_splits, prepare_tokenizer

        config = dataclasses.replace(load_config(grid["preset"]), output_dir=str(runs_dir))
        prepare_tokenizer(config, load_wikitext_splits(config, ("train",))["train"])  # writes runs_dir/tokenizer.json
    return path


def run(args) -> int:
    if args.share < 1:
        raise SystemExit(f"tune.py: --share counts the launches side by side, at least 1, got {args.share}")
    grid = load_grid(Path(args.grid))
    if args.seed is not None:  # the same grid at another seed: each point's seed and, step 2, its step-1 run
        grid["seed"] = args.seed
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    grid_points = points(grid, args.only, args.points)
    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else []
    if args.dry_run:
        for i, point in enumerate(grid_points):
            gpu = f"GPU {gpus[i % len(gpus)]}: " if gpus else ""
            print(gpu + " ".join(command(grid, point, runs_dir, args.python, None, args.overrides)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    mps = None
    if args.mps:
        env["CUDA_MPS_PIPE_DIRECTORY"] = str(runs_dir / ".mps")
        env["CUDA_MPS_LOG_DIRECTORY"] = str(runs_dir / ".mps-log")
        for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
            Path(env[key]).mkdir(exist_ok=True)
        mps = subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env).returncode == 0
        print(f"MPS: {'on' if mps else 'failed to start, running without'}", flush=True)
    uuids = gpu_uuids()
    finetuning = step_of(grid) == "finetune"
    if finetuning and not args.pretrained:
        raise SystemExit("tune.py: a step-2 grid starts from step-1 runs: pass --pretrained DIR")
    tokenizer = None if finetuning else train_tokenizer(grid, runs_dir)
    jobs = jobs_at_once(args, len(grid_points), gpus, gb_per_run(args, grid))
    waiting = list(enumerate(grid_points))
    running, codes, out_of_memory, retried = [], {}, [], set()
    while waiting or running or out_of_memory:
        if not waiting and not running:
            # points that ran out of GPU memory (others' runs held it: study.sh starts step 2 beside step 1's last
            # evaluations) run again once every other point has ended, one at a time
            waiting, out_of_memory, jobs = out_of_memory, [], 1
        # start points while fewer than `jobs` run: the next starts as one ends, so none waits for the slowest
        while waiting and len(running) < jobs:
            i, point = waiting.pop(0)
            limit = None if args.deadline is None else args.deadline - time.time() - MARGIN
            if limit is not None and limit <= 0:
                codes[point["name"]] = "not started before the deadline"
                continue
            out = runs_dir / point["name"]
            out.mkdir(exist_ok=True)
            if finetuning:
                link_pretrained(grid, point, Path(args.pretrained), out)
            else:
                shutil.copy(tokenizer, out / "tokenizer.json")
            point_env = dict(env)
            if gpus:
                gpu = gpus[i % len(gpus)]
                point_env["CUDA_VISIBLE_DEVICES"] = uuids[int(gpu)] if gpu.isdigit() and int(gpu) < len(uuids) else gpu
            log = open(runs_dir / f"{point['name']}.log", "w")
            cmd = command(grid, point, runs_dir, args.python, limit, args.overrides)
            if point["name"] in retried:
                cmd.append("--overwrite")  # from the start, not from whatever the failed run left
            running.append((i, point, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=point_env), log))
            print(f"started {point['name']}", flush=True)
        for entry in list(running):
            i, point, process, log = entry
            code = process.poll()
            if code is None and args.deadline is not None and time.time() >= args.deadline:
                process.kill()
                process.wait()
                code = "killed at the deadline"
            if code is not None:
                codes[point["name"]] = code
                log.close()
                running.remove(entry)
                if code != 0 and point["name"] not in retried and ran_out_of_memory(Path(log.name)):
                    retried.add(point["name"])
                    out_of_memory.append((i, point))
                    Path(log.name).rename(runs_dir / f"{point['name']}.out_of_memory.log")
                    print(f"{point['name']} ran out of GPU memory: it runs again once the others end", flush=True)
        time.sleep(POLL_S if running else 0)
    (runs_dir / "exit_codes.json").write_text(json.dumps(codes, indent=2))
    if mps:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=env)
    failed = {name: code for name, code in codes.items() if code != 0}
    print(f"done; failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


def read_point(runs_dir: Path, point: dict, step: str = "pretrain") -> dict:
    """A point's result from its run folder: best validation loss and epoch, epochs run, time, stopped or not."""
    stage = runs_dir / point["name"] / f"{point['family']}_{STAGE_OF_STEP[step]}"
    row = {**point, "complete": False}
    history_path = stage / "history.json"
    if history_path.is_file():
        history = json.loads(history_path.read_text(encoding="utf-8"))
        if history:
            best = min(history, key=lambda r: r["val_loss"])
            row |= {
                "best_epoch": best["epoch"],
                "epochs_run": len(history),
                "val_loss": best["val_loss"],
                "val_ppl": math.exp(best["val_loss"]),
                "val_ppl_by_epoch": [round(math.exp(r["val_loss"]), 3) for r in history],
                "seconds_per_epoch": [r.get("seconds") for r in history],
            }
    experiment = runs_dir / point["name"] / "experiment.json"
    if experiment.is_file():  # the seed the point ran with: `run --seed` overrides the grid's
        seed = json.loads(experiment.read_text(encoding="utf-8")).get("config", {}).get(step, {}).get("seed")
        if seed is not None:
            row["seed"] = seed
    marker = stage / "complete.json"
    if marker.is_file():
        meta = json.loads(marker.read_text(encoding="utf-8"))
        row |= {"complete": "stopped" not in meta, "parameters": meta.get("parameters"),
                "train_seconds": meta.get("train_seconds")}  # fmt: skip
        if "stopped" in meta:
            row["stopped"] = meta["stopped"]
    return row


def provenance(commit: str | None = None, device: str | None = None) -> dict:
    if commit is None:
        from newllm.pipeline.setup import git_commit

        commit = git_commit()
    if device is None:
        device = ""
        try:
            import torch

            device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
        except ImportError:
            pass
    return {"date": datetime.date.today().isoformat(), "commit": commit or None, "device": device}


def collect(args) -> int:
    grid = load_grid(Path(args.grid))
    runs_dir = Path(args.runs_dir)
    rows = [read_point(runs_dir, p, step_of(grid)) for p in points(grid)]
    if args.previous:
        try:
            previous = json.loads(Path(args.previous).read_text(encoding="utf-8"))
            earlier = {row["name"]: row for row in previous["points"]}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"tune.py: --previous {args.previous}: not a summary of this script ({err})") from None
        rows = [row if "val_loss" in row or row["name"] not in earlier else earlier[row["name"]] for row in rows]
    chosen = {}
    for family in grid["families"]:
        done = [r for r in rows if r["family"] == family and "val_loss" in r]
        if done:
            chosen[family] = min(done, key=lambda r: r["val_loss"])["name"]
    summary = {"grid": grid, "provenance": provenance(args.commit, args.ran_on), "points": rows, "chosen": chosen}
    text = json.dumps(summary, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    for row in rows:
        ppl = f"{row['val_ppl']:8.2f}" if "val_ppl" in row else "       -"
        print(f"{row['name']:55s} {ppl}  epochs {row.get('epochs_run', 0):>3}  best {row.get('best_epoch', '-')}"
              f"{'' if row['complete'] else '  (incomplete)'}")  # fmt: skip
    print("chosen:", json.dumps(chosen))
    return 0


def plot(args) -> int:
    """Validation perplexity per epoch of every point of a summary: the chosen point of each family bold, the
    others thin in the same colour, on a log scale (the families lie a factor of two apart)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from newllm.reporting.plots import model_color, model_label, ordered_models, save_figure

    try:
        summary = json.loads(Path(args.summary).read_text(encoding="utf-8"))
        rows, chosen = summary["points"], summary["chosen"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"tune.py: {args.summary}: not a summary of this script ({err})") from None
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    families = ordered_models({row["family"] for row in rows})
    for index, family in enumerate(families):
        color = model_color(family, index)
        for row in (r for r in rows if r["family"] == family and r.get("val_ppl_by_epoch")):
            best = row["name"] == chosen.get(family)
            ppl = row["val_ppl_by_epoch"]
            ax.plot(range(1, len(ppl) + 1), ppl, color=color, lw=2.2 if best else 0.8, alpha=1.0 if best else 0.45,
                    label=f"{model_label(family)}: {row['val_ppl']:.2f} (chosen)" if best else None)  # fmt: skip
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks([40, 50, 60, 80, 100, 150, 200])
    ax.set_ylim(top=min(ax.get_ylim()[1], 250))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation token perplexity (log scale)")
    ax.set_title("The study grid: every point of every family (thin), the one chosen on validation (bold)", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    print(f"wrote {save_figure(fig, args.out)}")
    return 0


def print_preset(args) -> int:
    grid = load_grid(Path(args.grid))
    if args.family not in grid["families"]:
        raise SystemExit(f"tune.py: {args.grid} has no family {args.family} (it has {', '.join(grid['families'])})")
    print(family_preset(grid, args.family))
    return 0


def toml_value(value) -> str:
    """A setting as TOML writes it (the grid's values: numbers, booleans, strings)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a TOML basic string is a JSON string


def preset_text(summary: dict, family: str, name: str, source: str) -> str:
    """A step-1 summary's chosen point of `family` as a preset over the grid's: the point's settings, and step 1's
    weight decay kept by step 2, as every family's preset keeps it; step 2's learning rate stays its own (a step-2
    grid tunes it where the family has no dropout)."""
    grid = summary["grid"]
    if step_of(grid) != "pretrain":
        raise SystemExit(f"tune.py: {source} is a step-2 grid's summary; a preset is written from step 1's choice")
    chosen = summary["chosen"].get(family)
    point = next((p for p in summary["points"] if p["name"] == chosen), None)
    if point is None:
        raise SystemExit(f"tune.py: {source} chose no point of {family} (it chose {', '.join(summary['chosen']) or 'none'})")
    if not point["complete"]:
        raise SystemExit(f"tune.py: {source}: {family}'s chosen point {chosen} did not finish; a stopped point is no choice")
    sections: dict[str, dict] = {}
    for key, value in point["settings"].items():
        section, field = key.split(".", 1)
        sections.setdefault(section, {})[field] = value
    if "weight_decay" in sections.get("pretrain", {}):
        sections.setdefault("finetune", {})["weight_decay"] = sections["pretrain"]["weight_decay"]
    described = ", ".join(f"{key} = {toml_value(value)}" for key, value in point["settings"].items())
    lines = [f"# {family}'s point of the step-1 grid, chosen on validation ({source}):",
             f"# the grid's preset with {described}.", "# Step 2 keeps step 1's weight decay, as it does for every family.",
             f'base = "{grid["preset"]}"', f'preset = "{name}"']  # fmt: skip
    for section, fields in sections.items():
        lines += ["", f"[{section}]", *(f"{field} = {toml_value(value)}" for field, value in fields.items())]
    return "\n".join(lines) + "\n"


def write_preset(args) -> int:
    try:
        summary = json.loads(Path(args.summary).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SystemExit(f"tune.py: {args.summary}: not a readable summary ({err})") from None
    if not isinstance(summary, dict) or not {"grid", "points", "chosen"} <= set(summary):
        raise SystemExit(f"tune.py: {args.summary}: not a summary of `tune.py collect` (it needs grid, points and chosen)")
    text = preset_text(summary, args.family, args.name, args.summary)
    out = Path(args.out) if args.out else ROOT / "configs" / f"{args.name}.toml"
    if out.exists() and out.read_text(encoding="utf-8") != text and not args.overwrite:
        raise SystemExit(f"tune.py: {out} exists and differs: pass --overwrite to replace it")
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("run", "collect"):
        p = sub.add_parser(name)
        p.add_argument("runs_dir")
        p.add_argument("--grid", default=str(ROOT / "configs" / "grids" / "study.toml"))
    run_p = sub.choices["run"]
    run_p.add_argument("--only", default=None, help="comma-separated families: run only their points")
    run_p.add_argument("--points", default=None,
                       help="comma-separated point names (e.g. new_llm_dropout0.1): run only those, e.g. the point "
                            "seed 0 chose at the other seeds")
    run_p.add_argument("--gpus", default="", help="comma-separated GPU indices, points spread round-robin")
    run_p.add_argument("--mps", action="store_true")
    run_p.add_argument("--jobs", type=int, default=None,
                       help="at most this many points at once, the next starting as one ends (0: all); default: as "
                            "many as the GPUs' free memory holds at --gb-per-run each, all without a GPU")
    run_p.add_argument("--gb-per-run", type=float, default=None,
                       help="GPU memory a point needs, for the default --jobs (default: the grid's gb_per_run, else "
                            "$GB_PER_RUN, else 6)")
    run_p.add_argument("--share", type=int, default=1,
                       help="this many launches start side by side on the GPUs: each counts 1/N of the free memory")
    run_p.add_argument("--deadline", type=float, default=None, help="Unix time by which every run must have ended")
    run_p.add_argument("--python", default=sys.executable)
    run_p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    run_p.add_argument("--pretrained", default=None, help="step-2 grids: the folder of the step-1 runs they start from")
    run_p.add_argument("--seed", type=int, default=None, help="instead of the grid file's seed")
    collect_p = sub.choices["collect"]
    collect_p.add_argument("--out", default=None)
    collect_p.add_argument("--previous", default=None, help="an earlier summary whose points stand where RUNS_DIR has none")
    collect_p.add_argument("--commit", default=None, help="the commit that ran (default: git rev-parse HEAD here)")
    collect_p.add_argument("--ran-on", default=None, help="the device that ran the points (default: this machine's GPU or CPU)")
    preset_p = sub.add_parser("preset", help="print the preset a family of the grid starts from (benchmarks/study.sh)")
    preset_p.add_argument("family")
    preset_p.add_argument("--grid", default=str(ROOT / "configs" / "grids" / "study_finetune.toml"))
    write_p = sub.add_parser("write-preset", help="a family's chosen step-1 point as a preset (configs/NAME.toml)")
    write_p.add_argument("summary")
    write_p.add_argument("family")
    write_p.add_argument("--name", required=True, help="the preset's name, e.g. study_mamba2")
    write_p.add_argument("--out", default=None, help="default: configs/NAME.toml")
    write_p.add_argument("--overwrite", action="store_true", help="replace an existing, different file")
    plot_p = sub.add_parser("plot", help="validation perplexity per epoch of every point of a summary")
    plot_p.add_argument("summary")
    plot_p.add_argument("--out", required=True)
    # run: options it does not know go to every point's newllm command, as full_schedule.sh's EXTRA
    # (`--set finetune.fast_path=compiled+graphed/autograd`, `--device cpu`)
    args, args.overrides = parser.parse_known_args(argv)
    if args.overrides and args.action != "run":
        parser.error(f"unrecognized arguments: {' '.join(args.overrides)}")
    actions = {"run": run, "collect": collect, "plot": plot, "preset": print_preset, "write-preset": write_preset}
    return actions[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
