#!/usr/bin/env bash
# `newllm recall`'s sweep split into one process per family × sequence length × pairs × seed, JOBS of them side by
# side (MPS=1: under one MPS daemon, so they share the GPU's SMs), every seed 0 process first (ORDER=points: point
# by point, every seed of one before the next); then one recall.json and plot of all of them. The (length, pairs)
# points are the config's (RecallConfig.settings), or SEQ_LENS × PAIRS where either is given.
#
#   [CONFIG=configs/recall/sweep.toml] [MODELS="new_llm new_llm_mlp lstm mamba2 tinygpt2"] [SEQ_LENS="64 128" PAIRS="4 16"]
#   [SEEDS="0 1 2"] [ORDER=seeds|points] [JOBS=12] [MPS=1] [DEVICE=cuda] [DEADLINE=<epoch seconds>]
#   [RESUME=<an earlier sweep's recall.json>] benchmarks/recall_sweep.sh RUNS OUT
#
# RESUME continues a sweep that a deadline cut, on another day or machine: a process whose runs are all in that
# file (every width of the config) is not run again, and OUT merges that file's runs with the new ones.
# Why processes, not one `newllm recall`: New-LLM's scan is launch-bound, so one process leaves most of the
# GPU idle; and a process killed at DEADLINE loses only its own runs (recall.json is written at its end).
# RUNS/<model>_T<len>_p<pairs>_s<seed>/ holds each process's recall.json and log, RUNS/sweep.log what ran and how it
# ended; OUT gets `newllm recall-collect` of every recall.json that was written.
set -u
RUNS=${1:?usage: benchmarks/recall_sweep.sh RUNS OUT}
OUT=${2:?usage: benchmarks/recall_sweep.sh RUNS OUT}
CONFIG=${CONFIG:-configs/recall/sweep.toml}
MODELS=${MODELS:-new_llm new_llm_mlp lstm mamba2 tinygpt2}
SEEDS=${SEEDS:-0 1 2}
JOBS=${JOBS:-12}
DEVICE=${DEVICE:-cuda}
python=${PYTHON:-python}
# One intra-op thread per process unless told otherwise, as torchrun sets for its workers: JOBS processes
# with one thread per core each would oversubscribe the host.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f "$CONFIG" ] || { echo "recall_sweep.sh: no config $CONFIG" >&2; exit 2; }
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "recall_sweep.sh: JOBS must be a positive integer, got $JOBS" >&2; exit 2; }
# The config's points, or the product of SEQ_LENS and PAIRS where either is given (the other from the config)
POINTS=$($python -c 'import sys; from newllm.recall import load_recall_config as load
flags = {k: v.replace(" ", ",") for k, v in zip(("seq_lens", "pairs"), sys.argv[2:]) if v.strip()}
try:
    print(" ".join(f"{t}:{n}" for t, n in load(sys.argv[1], overrides=flags).settings()))
except ValueError as err:
    sys.exit(f"recall_sweep.sh: {err}")' "$CONFIG" "${SEQ_LENS:-}" "${PAIRS:-}") || exit 2
ORDER=${ORDER:-seeds}
points() { tr ' ' '\n' <<< "$POINTS" | sort -t: -k1,1n -k2,2n; }  # seq_len:pairs, shortest first
case "$ORDER" in
  # seed by seed, and within a seed the longest sequences first, so the slowest processes do not begin last
  seeds) ORDERED=$(for seed in $SEEDS; do points | tac | sed "s/\$/:$seed/"; done) ;;
  # point by point, shortest first, every seed of a point before the next: a deadline then leaves whole
  # points with all their seeds, and cuts the costliest
  points) ORDERED=$(points | while read -r point; do for seed in $SEEDS; do echo "$point:$seed"; done; done) ;;
  *) echo "recall_sweep.sh: ORDER must be seeds or points, got $ORDER" >&2; exit 2 ;;
esac
# The processes RESUME already holds, as "<model>_T<len>_p<pairs>_s<seed>" names
DONE=""
if [ -n "${RESUME:-}" ]; then
  DONE=$($python -c 'import json, sys; from newllm.recall import load_recall_config as load
config, path = sys.argv[1:]
try:
    with open(path, encoding="utf-8") as file:
        runs = json.load(file)["runs"]
    widths = {}
    for run in runs:
        name = "{}_T{}_p{}_s{}".format(*(run[key] for key in ("model", "seq_len", "pairs", "seed")))
        widths.setdefault(name, set()).add(run["width"])
except (OSError, ValueError, KeyError, TypeError) as err:
    sys.exit(f"recall_sweep.sh: RESUME={path} is not a readable recall.json ({type(err).__name__}: {err})")
wanted = set(load(config).widths)
for name, have in sorted(widths.items()):
    if have != wanted:  # rerunning it would put some widths in twice
        sys.exit(f"recall_sweep.sh: RESUME={path} has {name} at widths {sorted(have)}, the config asks {sorted(wanted)}")
print(" ".join(sorted(widths)))' "$CONFIG" "$RESUME") || exit 2
  # an earlier run's recall.json in RUNS would be merged along with RESUME's copy of it
  if compgen -G "$RUNS/*/recall.json" > /dev/null; then echo "recall_sweep.sh: with RESUME, RUNS must hold no recall.json yet: $RUNS" >&2; exit 2; fi
fi
mkdir -p "$RUNS"
log() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$RUNS/sweep.log"; }
if [ "${MPS:-0}" = 1 ]; then
  source "$(dirname "$0")/mps.sh"
  start_mps | tee -a "$RUNS/sweep.log"
fi

one() {  # model seq_len pairs seed: one process of the sweep, cut at DEADLINE
  local name="$1_T$2_p$3_s$4" limit=""
  if [ -n "${DEADLINE:-}" ]; then
    limit=$(( DEADLINE - $(date +%s) ))
    [ "$limit" -gt 0 ] || { log "$name: not started (deadline)"; return; }
    limit="timeout $limit"
  fi
  log "$name: started"
  $limit $python -m newllm.cli recall --device "$DEVICE" --config "$CONFIG" --models "$1" --seq-lens "$2" \
    --pairs "$3" --seeds "$4" --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1
  log "$name: ended ($?)"
}

for job in $ORDERED; do  # seq_len:pairs:seed
  IFS=: read -r T n seed <<< "$job"
  for model in $MODELS; do
    if [[ " $DONE " == *" ${model}_T${T}_p${n}_s$seed "* ]]; then log "${model}_T${T}_p${n}_s$seed: in RESUME, not run"; continue; fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    one "$model" "$T" "$n" "$seed" &
  done
done
wait
shopt -s nullglob
written=("$RUNS"/*/recall.json)
[ ${#written[@]} -gt 0 ] || [ -n "$DONE" ] || { log "no process wrote a recall.json"; exit 1; }
$python -m newllm.cli recall-collect ${RESUME:+"$RESUME"} "${written[@]}" --out "$OUT" > "$RUNS/collect.log" 2>&1
log "collected ${#written[@]} recall.json${RESUME:+ and $RESUME} into $OUT ($?)"
