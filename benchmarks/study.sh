#!/usr/bin/env bash
# The context-vector study (docs/results.md): every family's chosen preset through all three steps with each
# seed, step 2's tuning grid included, in one launch on one GPU. The step-2 grid names each family's preset
# (configs/grids/study_finetune.toml: configs/study_<family>.toml); another grid runs another cell, e.g.
# GRID=configs/grids/study_finetune_best_cell.toml FAMILIES=new_llm, the ablation's best New-LLM cell.
#
#   MPS=1 DEADLINE=$(( $(date +%s) + 22 * 60 )) benchmarks/study.sh RUNS      # returns when all has ended
#   FAMILIES="new_llm tinygpt2 lstm" SEEDS="0 1 2" GRID=configs/grids/study_finetune.toml EXTRA="--set ..." \
#     PYTHON=python3 benchmarks/study.sh RUNS                                   # the defaults
#
# 1. Step 1 of every family and seed into RUNS/step1/<preset>_<family>_s<seed>/ (benchmarks/full_schedule.sh
#    with FINETUNE=0), each step-1 model then evaluated there: the WikiText-2 test numbers.
# 2. Step 2's grid (GRID) from each step-1 model as soon as it is saved, at every seed:
#    RUNS/step2_s<seed>/<point>/ (benchmarks/tune.py run --seed).
# 3. For each family, once its grids have ended, the point with the lowest DailyDialog validation loss at
#    seed 0 is chosen (GRID's rule; RUNS/step2_s0/choice_<family>.json), and that point's folder of every seed
#    is evaluated: all three steps' numbers. No other point's test split is read.
# The grid runs at seeds 1 and 2 too instead of after the choice: more GPU time, no waiting. The chosen point's
# runs there are the runs a launch after the choice would make (the same settings, the same seed). CHOICE_FIRST=1
# waits instead: the grid at seed 0 alone, then only the chosen point at the other seeds (fewer runs in all, for
# a GPU that the grid at every seed would keep busy longer than the wait costs). GUESS=<point> (with CHOICE_FIRST=1)
# starts that point at the other seeds beside seed 0's grid instead of after it; the choice is still seed 0's
# validation alone, and where it picks another point, that point runs at the other seeds then and the guess's
# runs are never evaluated.
#
# Progress: RUNS/study.log (seconds since the start, then the event) and each run's log. Then:
#   newllm collect RUNS/step1/*/ ...                       step 1 of every seed
#   python benchmarks/tune.py collect RUNS/step2_s0 --grid GRID --out grid.json     step 2's grid
#   newllm collect $(cat RUNS/chosen.txt) ...               all three steps, the chosen step 2
# MPS=1 starts a CUDA MPS daemon for every process of the study (benchmarks/mps.sh); DEADLINE (Unix time)
# gives every training step a time limit before it (full_schedule.sh and tune.py end a step there with its
# best model, marked stopped); EXTRA adds `--set FIELD=VALUE` options to every training and evaluation command.
set -euo pipefail

root=${1:?usage: study.sh RUNS_DIR}
mkdir -p "$root"
root=$(cd "$root" && pwd)  # before the cd below: RUNS_DIR is relative to where the script was called from
grid=$(realpath "${GRID:-$(dirname "$0")/../configs/grids/study_finetune.toml}")
cd "$(dirname "$0")/.."
families=${FAMILIES:-new_llm tinygpt2 lstm}
seeds=${SEEDS:-0 1 2}
python=${PYTHON:-python3}
read -r -a extra <<< "${EXTRA:-}"
deadline=${DEADLINE:-}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
t0=$(date +%s)
log() { echo "$(( $(date +%s) - t0 )) $*" >> "$root/study.log"; }
: > "$root/chosen.txt"
rm -f "$root/step1.ended"
log start

source benchmarks/mps.sh
if [ "${MPS:-0}" = 1 ]; then start_mps >> "$root/study.log" 2>&1; fi

grids=$(( $(wc -w <<< "$families") * $(wc -w <<< "$seeds") ))  # step-2 grids side by side, one per family and seed
declare -A preset  # each family's preset, as the grid names it
plan=""
for family in $families; do
  preset[$family]=$($python benchmarks/tune.py preset --grid "$grid" "$family")
  plan+="${preset[$family]}:$family "
done
( code=0
  FINETUNE=0 SEEDS="$seeds" PLAN="$plan" PROTOTYPE_PLAN="" MPS=0 PYTHON=$python DEADLINE=$deadline \
    EXTRA="${EXTRA:-}" benchmarks/full_schedule.sh "$root/step1" > "$root/step1.out" 2>&1 || code=$?
  log "step 1 ended ($code)"
  touch "$root/step1.ended" ) &  # what grid_at waits for where a run never started (a bad preset, a failed tokenizer)

grid_at() {  # family seed [point]: step 2's grid (or only that point of it) from this seed's step-1 model, once saved
  local family=$1 seed=$2 points=${3:-} step1=$root/step1/${preset[$1]}_$1_s$2.log
  until grep -q '^pretrain_done' "$step1" 2> /dev/null; do
    if grep -q '^exit' "$step1" 2> /dev/null || { [ -f "$root/step1.ended" ] && ! grep -q '^pretrain_done' "$step1" 2> /dev/null; } \
      || { [ -n "$deadline" ] && [ "$(date +%s)" -ge "$deadline" ]; }; then
      log "$family seed $seed: no step-1 model, no step 2"; return 0
    fi
    sleep 5
  done
  log "$family seed $seed: step 2 grid started${points:+ ($points only)}"
  local code=0
  # every family's grid at every seed starts about together: each counts its share of the free memory
  $python benchmarks/tune.py run "$root/step2_s$seed" --grid "$grid" --only "$family" ${points:+--points "$points"} --seed "$seed" \
    --share "$grids" --pretrained "$root/step1" --python "$python" ${deadline:+--deadline "$deadline"} "${extra[@]}" \
    > "$root/step2_s${seed}_$family.out" 2>&1 || code=$?
  log "$family seed $seed: step 2 grid ended ($code)"
}

family_study() {  # family: its grids at every seed, the choice at seed 0, the chosen point of each seed evaluated
  local family=$1 seed choice point settings
  if [ "${CHOICE_FIRST:-0}" = 1 ]; then
    if [ -n "${GUESS:-}" ]; then  # the guessed point at the other seeds, side by side with seed 0's grid
      for seed in $seeds; do if [ "$seed" != 0 ]; then grid_at "$family" "$seed" "$GUESS" & fi; done
    fi
    grid_at "$family" 0
  else
    for seed in $seeds; do grid_at "$family" "$seed" & done
    wait
  fi
  choice=$root/step2_s0/choice_$family.json
  $python benchmarks/tune.py collect "$root/step2_s0" --grid "$grid" --out "$choice" > /dev/null 2>&1 || true
  point=$($python -c "import json, sys; print(json.load(open(sys.argv[1]))['chosen'].get(sys.argv[2], ''))" \
    "$choice" "$family" 2> /dev/null || true)
  if [ -z "$point" ]; then log "$family: no step-2 point finished at seed 0, nothing chosen"; return 0; fi
  # the chosen point's settings as --set options, e.g. "--set finetune.dropout=0.2"
  read -r -a settings <<< "$($python -c "import json, sys
points = json.load(open(sys.argv[1]))['points']
print(' '.join(f'--set {k}={v}' for p in points if p['name'] == sys.argv[2] for k, v in p['settings'].items()))" "$choice" "$point")"
  log "$family: chose $point (${settings[*]})"
  if [ "${CHOICE_FIRST:-0}" = 1 ]; then
    wait  # the guess's runs, if any
    if [ "$point" != "${GUESS:-}" ]; then
      for seed in $seeds; do if [ "$seed" != 0 ]; then grid_at "$family" "$seed" "$point" & fi; done
      wait
    fi
  fi
  for seed in $seeds; do
    local dir=$root/step2_s$seed/$point
    if [ ! -d "$dir/best_${family}_dialog" ]; then log "$family seed $seed: no step-2 model in $dir"; continue; fi
    (
      code=0
      $python -m newllm.cli evaluate --preset "${preset[$family]}" --models "$family" --output-dir "$dir" --no-progress \
        --set pretrain.seed="$seed" --set finetune.seed="$seed" "${settings[@]}" "${extra[@]}" \
        > "$dir/evaluate.log" 2>&1 || code=$?
      log "$family seed $seed: evaluated $point ($code)"
      if [ $code = 0 ]; then echo "$dir" >> "$root/chosen.txt"; fi
    ) &
  done
  wait
}

for family in $families; do family_study "$family" & done
wait
if [ ! -s "$root/chosen.txt" ]; then log "failed: nothing was evaluated (see step1.out and the runs' logs)"; exit 1; fi
log done
