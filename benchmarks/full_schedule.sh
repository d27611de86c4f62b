#!/usr/bin/env bash
# The full schedule for every row of docs/results.md, each model and seed its own process, all side by
# side on one GPU: step 1 (WikiText-2), step 2 (DailyDialog) and step 3 (evaluation) in the run's folder.
#
#   benchmarks/full_schedule.sh RUNS_DIR            # returns when every run has ended; progress: RUNS_DIR/*.log
#   SEEDS="0" PLAN="full:new_llm full:tinygpt2" benchmarks/full_schedule.sh RUNS_DIR
#   MPS=1 DEADLINE=$(( $(date +%s) + 25 * 60 )) benchmarks/full_schedule.sh RUNS_DIR   # a GPU lease of ~27 min
#   newllm collect RUNS_DIR/*/ --out summary.json --markdown tables.md --plot val_ppl.png --plot-test test.png
#     (from each run's results.json: a row per preset and model, mean ± std over seeds, the validation curves)
#
# PLAN entries are <row>:<model>, or <row>:<model>:<seeds> for seeds of its own instead of SEEDS
# (comma-separated: PLAN="full_residual_norm_dropout4:new_llm:0 full_residual_norm_dropout5:new_llm:0,1,2").
# Rows: full (configs/full.toml), par (configs/full_parallel.toml),
# res (configs/full_residual_norm.toml), pard and resd (the same two with more dropout:
# configs/full_parallel_dropout.toml, configs/full_residual_norm_dropout.toml), prototype
# (configs/prototype.toml, the prototype's protocol; the row "seed", its earlier name, runs it too), or the
# name of any other preset in configs/ (a new variant needs no edit here, and `newllm collect` gives it a
# row of its own). PROTOTYPE_PLAN (earlier SEED_PLAN, still read) holds the prototype protocol's entries,
# run with seed 0 alone. FINETUNE=0 skips step 2:
# step 1, then the evaluation of its model. RESUME=1 runs the steps with --resume in existing run folders:
# a finished step is skipped, so a second pass after FINETUNE=0 adds step 2 (with the step-2 settings the
# presets hold by then, e.g. a tuned finetune.dropout) and evaluates again.
# Each run <row>_<model>_s<seed> logs `start`, `pretrain_done`, `finetune_done`, `evaluate_done` and
# `exit <code>` with Unix times, to follow the runs by (no report reads them). The tokenizer is trained
# once per preset and copied into every run, so all runs of a tokenizer share it exactly. PYTHON picks
# the interpreter that has newllm installed (default python3); EXTRA adds options to every newllm
# command. MPS=1 starts a CUDA MPS daemon for the runs (and stops it after), so that the processes share
# the GPU's SMs instead of taking turns: six runs under MPS each went nearly as fast per epoch as three
# without it (docs/performance.md).
# JOBS=N runs at most N at once, the next starting as one ends: every process holds its own CUDA context,
# compiled graphs and activations (3-5 GB each for the study's cells), and 27 of them overran an 80 GB H100,
# 13 ending in CUDA out-of-memory (docs/results/run_history.json). Without JOBS, a machine with an NVIDIA GPU
# runs as many at once as its free memory holds at GB_PER_RUN (6) GB each (launch.log says how many); JOBS=0
# starts all at once. A deadline counts from the launch, so a run that starts late gets less time.
# On a machine with several GPUs, one launch per GPU: CUDA_VISIBLE_DEVICES=1 MPS=1 benchmarks/full_schedule.sh
# RUNS_DIR (each launch its own daemon; the index is turned into the GPU's UUID, which MPS needs).
set -euo pipefail

root=${1:?usage: full_schedule.sh RUNS_DIR}
seeds=${SEEDS:-0 1 2}
plan=${PLAN-full:new_llm par:new_llm full:tinygpt2 full:lstm}  # PLAN="" for none (then PROTOTYPE_PLAN alone)
# the prototype protocol, seed 0 only; PROTOTYPE_PLAN="" for none
prototype_plan=${PROTOTYPE_PLAN-${SEED_PLAN-prototype:new_llm prototype:tinygpt2 prototype:lstm}}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python=${PYTHON:-python3}  # the interpreter that has newllm installed
newllm="$python -m newllm.cli"
read -r -a extra <<< "${EXTRA:-}"  # more CLI options for every command, e.g. EXTRA="--set pretrain.max_steps=2"
# DEADLINE (Unix time): each step gets a time limit STEP_MARGIN (60) seconds before it and ends with
# its best model so far (see step() below). A step still running at the deadline is killed; a run
# killed in step 2 is still evaluated on its step-1 model (about a minute on a GPU), and logs
# `deadline` and `exit 124`
deadline=${DEADLINE:-}
margin=${STEP_MARGIN:-60}  # seconds of a step's time before $DEADLINE left for start-up, its last evaluation and save

configs=$(cd "$(dirname "$0")/../configs" && pwd)
preset() {
  case $1 in
    full) echo full ;; par) echo full_parallel ;; res) echo full_residual_norm ;; seed) echo prototype ;;
    pard) echo full_parallel_dropout ;; resd) echo full_residual_norm_dropout ;;
    *) if [[ $1 =~ ^[a-z0-9_]+$ && -f $configs/$1.toml ]]; then echo "$1"; else echo "unknown row $1" >&2; exit 2; fi ;;
  esac
}
finetune=${FINETUNE:-1}  # 0: no step 2 (a row explored on WikiText-2 alone); its step-1 model is evaluated
resume=()
if [ "${RESUME:-0}" = 1 ]; then resume=(--resume); fi  # for pretrain and finetune; evaluate always starts afresh

run() {  # row model seed
  local row=$1 model=$2 seed=$3 preset dir log
  preset=$(preset "$row")
  dir=$root/${row}_${model}_s${seed}
  log=$root/${row}_${model}_s${seed}.log
  mkdir -p "$dir"
  cp "$root/tokenizer_$preset.json" "$dir/tokenizer.json"
  # both seeds on every command, so that experiment.json and results.json record the run's seed
  local common=(--preset "$preset" --models "$model" --output-dir "$dir" --no-progress
                --set pretrain.seed="$seed" --set finetune.seed="$seed" "${extra[@]}")
  {
    echo "start $(date +%s)"
    local code=0
    step pretrain && echo "pretrain_done $(date +%s)" || code=$?
    if [ $code = 0 ] && [ "$finetune" != 0 ]; then step finetune && echo "finetune_done $(date +%s)" || code=$?; fi
    # past the deadline in step 2: evaluate step 1's model, so that its WikiText-2 numbers are not lost
    if [ $code = 0 ] || { [ $code = 124 ] && [ -d "$dir/best_${model}_wikitext" ]; }; then
      if [ $code = 124 ]; then echo "deadline $(date +%s)"; fi
      $newllm evaluate "${common[@]}" && echo "evaluate_done $(date +%s)" || code=$?
    fi
    echo "exit $code $(date +%s)"
  } > "$log" 2>&1
}

step() {  # pretrain or finetune, with run()'s options. With $DEADLINE the step gets a time limit
  # (`<step>.time_limit`) STEP_MARGIN seconds before it, for start-up, the last evaluation and the save: it
  # then ends with its best model so far, marked "stopped": "time_limit", and is evaluated as usual.
  # One still running at the deadline is killed (exit status 124).
  local left="" limit=()
  if [ -n "$deadline" ]; then
    left=$((deadline - $(date +%s)))
    [ "$left" -gt 0 ] || return 124
    limit=(--set "$1.time_limit=$(( left > margin ? left - margin : 1 ))")
  fi
  ${left:+timeout "$left"} $newllm "$1" "${common[@]}" "${limit[@]}" "${resume[@]}"
}

# start_mps (MPS=1): one CUDA MPS daemon for the runs, checked with a CUDA client, stopped at exit
source "$(dirname "$0")/mps.sh"

mkdir -p "$root"
echo "start $(date +%s)" > "$root/launch.log"
if [ "${MPS:-0}" = 1 ]; then start_mps >> "$root/launch.log" 2>&1; fi
needed=$(for entry in $plan $prototype_plan; do preset "${entry%%:*}"; done | sort -u)
for name in $needed; do  # one tokenizer per preset (the BPE ones come out the same)
  $python - "$name" "$root/tokenizer_$name.json" <<'PY' >> "$root/launch.log" 2>&1
import dataclasses, shutil, sys, tempfile
from newllm.config import load_config
from newllm.pipeline import load_wikitext_splits, prepare_tokenizer
with tempfile.TemporaryDirectory() as out:
    config = dataclasses.replace(load_config(sys.argv[1]), output_dir=out)
    prepare_tokenizer(config, load_wikitext_splits(config, ("train",))["train"])
    shutil.copy(f"{out}/tokenizer.json", sys.argv[2])
PY
done
# at most this many runs at once (0: all at once); the rest start as runs end. Unset on a machine with an
# NVIDIA GPU: as many as the (first visible) GPU's free memory holds at GB_PER_RUN (6) GB each
gpu=${CUDA_VISIBLE_DEVICES:-}
if [ -n "${JOBS:-}" ]; then
  jobs_max=$JOBS
elif free=$(nvidia-smi ${gpu:+-i "${gpu%%,*}"} --query-gpu=memory.free --format=csv,noheader,nounits 2> /dev/null |
            head -n 1) && [[ $free =~ ^[0-9]+$ ]]; then
  jobs_max=$(( free / (${GB_PER_RUN:-6} * 1024) ))
  [ "$jobs_max" -ge 1 ] || jobs_max=1
  echo "jobs $jobs_max at once: $free MiB of GPU memory free, ${GB_PER_RUN:-6} GB a run (JOBS=N sets it)" >> "$root/launch.log"
else
  jobs_max=0
fi
throttle() { while [ "$jobs_max" -gt 0 ] && [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || true; done; }
for entry in $plan; do
  IFS=: read -r row model own <<< "$entry"
  own=${own//,/ }
  for seed in ${own:-$seeds}; do throttle; run "$row" "$model" "$seed" & done
done
for entry in $prototype_plan; do IFS=: read -r row model _ <<< "$entry"; throttle; run "$row" "$model" 0 & done
wait
echo "all_done $(date +%s)" >> "$root/launch.log"
