#!/usr/bin/env bash
# `newllm recall`'s sweep split into one process per run (family × sequence length × pairs × seed × width), JOBS of
# them side by side (MPS=1: under one MPS daemon, so they share the GPU's SMs), every seed 0 process first
# (ORDER=points: point by point, every seed of one before the next), the widest first within a seed; then one
# recall.json and plot of all of them. The (length, pairs) points are the config's (RecallConfig.settings), or
# SEQ_LENS × PAIRS where either is given.
#
#   [CONFIG=configs/recall/sweep.toml] [MODELS="new_llm new_llm_mlp lstm mamba2 tinygpt2"] [SEQ_LENS="64 128" PAIRS="4 16"]
#   [SEEDS="0 1 2"] [ORDER=seeds|points] [JOBS=12] [MPS=1] [DEVICE=cuda] [DEADLINE=<epoch seconds> [MIN_LEFT=0]]
#   [RATES="1e-3 3e-3"] [RESUME=<an earlier sweep's recall.json>] [ESTIMATE=<a recall.json>] benchmarks/recall_sweep.sh RUNS OUT
#
# RATES gives every family the same grid of learning rates (one process per rate, the config's lr otherwise):
# OUT/all_rates/ merges every run, and OUT keeps, per model, width and point, the rate of best mean validation
# accuracy over the seeds (`newllm recall-collect --best-rate`; the test set takes no part).
# RESUME continues a sweep that a deadline cut, on another day or machine: a run that file holds is not run again,
# and OUT merges that file's runs with the new ones. With RATES, RESUME is the earlier OUT/all_rates/recall.json, which
# holds every rate.
#
# Why processes, not one `newllm recall`: New-LLM's scan is launch-bound, so one process leaves most of the
# GPU idle (on an H100, 14 side by side did about 1.5 times the work of one at a time: docs/recall.md); and a
# process killed at DEADLINE loses only its own run. MIN_LEFT (seconds) starts no process with less than that left
# before DEADLINE: one that would be killed anyway only slows the others. ESTIMATE (RESUME's file unless set; "" for
# none) judges each run's time from the step times that file records (`estimated_seconds` in src/newllm/recall.py):
# a run longer than the time left is not started, and the next, shorter ones fill the time instead. Why one run a process: a family's widths run side by side,
# not one after another, so the slowest family's point ends sooner and a deadline's tail is one run long.
# RUNS/<model>_T<len>_p<pairs>_s<seed>_w<width>[_lr<rate>]/ holds each process's recall.json and log, RUNS/sweep.log
# what ran and how it ended; OUT gets `newllm recall-collect` of every recall.json that was written.
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
MIN_LEFT=${MIN_LEFT:-0}
[[ "$MIN_LEFT" =~ ^[0-9]+$ ]] || { echo "recall_sweep.sh: MIN_LEFT must be a whole number of seconds, got $MIN_LEFT" >&2; exit 2; }
[[ "${DEADLINE:-0}" =~ ^[0-9]+$ ]] || {
  echo "recall_sweep.sh: DEADLINE must be a Unix time in whole seconds, e.g. \$(( \$(date +%s) + 1500 )); got $DEADLINE" >&2; exit 2
}
if [ -n "${RATES:-}" ]; then  # as Python prints them (3e-3 -> 0.003), the spelling of the runs' "lr" in names
  RATES=$($python -c 'import sys
try:
    rates = [float(rate) for rate in sys.argv[1:]]
except ValueError as err:
    sys.exit(f"recall_sweep.sh: RATES: {err}")
if not all(rate > 0 for rate in rates):
    sys.exit("recall_sweep.sh: RATES must be positive")
print(" ".join(f"{rate:g}" for rate in rates))' $RATES) || exit 2
fi
# an earlier run's recall.json in RUNS would be merged along with RESUME's copy of it
if [ -n "${RESUME:-}" ] && compgen -G "$RUNS/*/recall.json" > /dev/null; then
  echo "recall_sweep.sh: with RESUME, RUNS must hold no recall.json yet: $RUNS" >&2; exit 2
fi
ESTIMATE=${ESTIMATE-${RESUME:-}}
# One Python start (it imports torch) for four lines: the config's (seq_len, pairs) points, or the product of
# SEQ_LENS and PAIRS where either is given (the other from the config); the runs RESUME already holds, by their
# process names; the config's widths, widest first; and each model × length × width's estimated seconds
PLAN=$($python -c 'import json, sys; from newllm.recall import estimated_seconds, load_recall_config as load
config, seq_lens, pairs, resume, rates, estimate, models = sys.argv[1:]
flags = {k: v.replace(" ", ",") for k, v in (("seq_lens", seq_lens), ("pairs", pairs)) if v.strip()}
try:
    settings = load(config, overrides=flags)
except ValueError as err:
    sys.exit(f"recall_sweep.sh: {err}")
held = []  # process names of the runs RESUME holds
if resume:
    try:
        with open(resume, encoding="utf-8") as file:
            for run in json.load(file)["runs"]:
                if rates and "valid_accuracy" not in run:  # --best-rate would refuse it after the whole sweep
                    sys.exit(f"recall_sweep.sh: RESUME={resume} has runs without valid_accuracy (checked on the "
                             f"test set): with RATES each rate is chosen on validation, so they cannot join")
                name = "{}_T{}_p{}_s{}_w{}".format(*(run[k] for k in ("model", "seq_len", "pairs", "seed", "width")))
                if run["width"] not in settings.widths:  # not this sweep: rerunning it would not replace it
                    sys.exit(f"recall_sweep.sh: RESUME={resume} has {name}, the config asks widths "
                             f"{sorted(settings.widths)}")
                held.append(name + (f"_lr{run['"'"'lr'"'"']:g}" if rates else ""))
    except (OSError, ValueError, KeyError, TypeError) as err:
        sys.exit(f"recall_sweep.sh: RESUME={resume} is not a readable recall.json ({type(err).__name__}: {err})")
known = []  # the runs whose step times judge how long each run takes
if estimate:
    try:
        with open(estimate, encoding="utf-8") as file:
            known = json.load(file)["runs"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        sys.exit(f"recall_sweep.sh: ESTIMATE={estimate} is not a readable recall.json ({type(err).__name__}: {err})")
needs = ((m, t, w, estimated_seconds(known, m, t, w, settings.steps))
         for m in models.split() for t in {t for t, _ in settings.settings()} for w in settings.widths)
print(" ".join(f"{t}:{n}" for t, n in settings.settings()))
print(" ".join(sorted(held)))
print(" ".join(str(w) for w in sorted(settings.widths, reverse=True)))
print(" ".join(f"{m}_T{t}_w{w}={s:.0f}" for m, t, w, s in needs if s is not None))' "$CONFIG" "${SEQ_LENS:-}" \
  "${PAIRS:-}" "${RESUME:-}" "${RATES:-}" "$ESTIMATE" "$MODELS") || exit 2
POINTS=$(sed -n 1p <<< "$PLAN")
DONE=$(sed -n 2p <<< "$PLAN")
WIDTHS=$(sed -n 3p <<< "$PLAN")
declare -A NEED  # model_T<len>_w<width> -> estimated seconds of one run
for estimate in $(sed -n 4p <<< "$PLAN"); do NEED[${estimate%=*}]=${estimate#*=}; done
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
mkdir -p "$RUNS"
log() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$RUNS/sweep.log"; }
if [ "${MPS:-0}" = 1 ]; then
  source "$(dirname "$0")/mps.sh"
  start_mps | tee -a "$RUNS/sweep.log"
fi

left() { echo $(( DEADLINE - $(date +%s) )); }  # seconds to DEADLINE

one() {  # model seq_len pairs seed width [rate]: one process of the sweep, cut at DEADLINE
  local name="$1_T$2_p$3_s$4_w$5${6:+_lr$6}" limit=""
  if [ -n "${DEADLINE:-}" ]; then
    limit=$(left)
    limit="timeout $(( limit > 1 ? limit : 1 ))"
  fi
  $limit $python -m newllm.cli recall --device "$DEVICE" --config "$CONFIG" --models "$1" --seq-lens "$2" \
    --pairs "$3" --seeds "$4" --widths "$5" ${6:+--lr "$6"} --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1
  log "$name: ended ($?)"
}

for job in $ORDERED; do  # seq_len:pairs:seed
  IFS=: read -r T n seed <<< "$job"
  for width in $WIDTHS; do for model in $MODELS; do for rate in ${RATES:-config}; do
    [ "$rate" = config ] && rate=""  # the config's own lr
    name="${model}_T${T}_p${n}_s${seed}_w$width${rate:+_lr$rate}"
    if [[ " $DONE " == *" $name "* ]]; then log "$name: in RESUME, not run"; continue; fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    # decided and logged here, not in the background, so that sweep.log lists the processes in this order
    if [ -n "${DEADLINE:-}" ] && [ "$(left)" -le "$MIN_LEFT" ]; then  # MIN_LEFT >= 0: a passed deadline too
      log "$name: not started (deadline)"; continue
    fi
    need=${NEED[${model}_T${T}_w$width]:-}
    if [ -n "${DEADLINE:-}" ] && [ -n "$need" ] && [ "$need" -gt "$(left)" ]; then
      log "$name: not started (needs about $need s, $(left) s left)"; continue
    fi
    log "$name: started"
    one "$model" "$T" "$n" "$seed" "$width" $rate &
  done; done; done
done
wait
shopt -s nullglob
written=("$RUNS"/*/recall.json)
[ ${#written[@]} -gt 0 ] || [ -n "$DONE" ] || { log "no process wrote a recall.json"; exit 1; }
$python -m newllm.cli recall-collect ${RESUME:+"$RESUME"} "${written[@]}" ${RATES:+--best-rate} --out "$OUT" \
  > "$RUNS/collect.log" 2>&1
log "collected ${#written[@]} recall.json${RESUME:+ and $RESUME} into $OUT${RATES:+ (each rate chosen on validation; every run in $OUT/all_rates)} ($?)"
