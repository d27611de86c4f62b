#!/usr/bin/env bash
# How much work `newllm recall` processes side by side on one GPU do, against one at a time: what
# benchmarks/recall_sweep.sh's JOBS should be. Each family's training step is timed alone first, then for each N
# of JOBS_LIST, N processes (the families in turn) time the same window (benchmarks/recall_step_times.py
# --start-at, LEAD seconds after their launch, time enough to import and warm up).
#
#   [CONFIG=configs/recall/sweep.toml] [MODELS="new_llm new_llm_mlp lstm mamba2 tinygpt2"] [JOBS_LIST="2 4 8 14"]
#   [WIDTH=256] [SEQ_LEN=64] [STEPS=50] [LEAD=40] [MPS=1] [DEVICE=cuda] benchmarks/recall_side_by_side.sh OUT
#
# OUT/side_by_side.json and the printed table give, for each N, every process's slowdown against its family alone
# and the work rate: the sum over the processes of (step alone / step side by side), 1 for one at a time.
# OUT/alone_<model>.json and OUT/jobs<N>_<i>.json are the processes' own, with their logs beside them.
set -u
OUT=${1:?usage: benchmarks/recall_side_by_side.sh OUT}
CONFIG=${CONFIG:-configs/recall/sweep.toml}
MODELS=${MODELS:-new_llm new_llm_mlp lstm mamba2 tinygpt2}
JOBS_LIST=${JOBS_LIST:-2 4 8 14}
WIDTH=${WIDTH:-256} SEQ_LEN=${SEQ_LEN:-64} STEPS=${STEPS:-50} LEAD=${LEAD:-40} DEVICE=${DEVICE:-cuda}
python=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one intra-op thread a process, as in the sweep
[ -f "$CONFIG" ] || { echo "recall_side_by_side.sh: no config $CONFIG" >&2; exit 2; }
for value in $JOBS_LIST "$WIDTH" "$SEQ_LEN" "$STEPS" "$LEAD"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || {
    echo "recall_side_by_side.sh: JOBS_LIST, WIDTH, SEQ_LEN, STEPS and LEAD must be positive integers, got $value" >&2
    exit 2
  }
done
mkdir -p "$OUT"
if [ "${MPS:-0}" = 1 ]; then
  source "$(dirname "$0")/mps.sh"
  start_mps
fi

timed() {  # out.json model [start_at]: one process of recall_step_times.py
  $python "$(dirname "$0")/recall_step_times.py" --config "$CONFIG" --models "$2" --widths "$WIDTH" \
    --seq-lens "$SEQ_LEN" --steps "$STEPS" --device "$DEVICE" ${3:+--start-at "$3"} --out "$1" > "${1%.json}.log" 2>&1
}

for model in $MODELS; do
  timed "$OUT/alone_$model.json" "$model" || { echo "recall_side_by_side.sh: $model alone failed: $OUT/alone_$model.log" >&2; exit 1; }
done
read -r -a models <<< "$MODELS"
for n in $JOBS_LIST; do
  start=$(( $(date +%s) + LEAD ))
  for ((i = 0; i < n; i++)); do timed "$OUT/jobs${n}_$i.json" "${models[i % ${#models[@]}]}" "$start" & done
  wait
done

$python - "$OUT" $JOBS_LIST <<'PY'
import json, sys
from pathlib import Path

out, jobs = Path(sys.argv[1]), [int(n) for n in sys.argv[2:]]
alone, device = {}, {}
for path in sorted(out.glob("alone_*.json")):
    timed = json.loads(path.read_text(encoding="utf-8"))
    alone[timed["rows"][0]["model"]] = timed["rows"][0]["ms_per_step"]
    device = {key: timed[key] for key in ("device", "gpu", "torch")}
rounds = []
print("| processes side by side | finished | slowdown of each | work rate (1 = one at a time) |")
print("| ---: | ---: | --- | ---: |")
for n in jobs:
    processes = []
    for i in range(n):
        path = out / f"jobs{n}_{i}.json"
        if path.is_file():  # a process that failed has its log only
            row = json.loads(path.read_text(encoding="utf-8"))["rows"][0]
            processes.append({"model": row["model"], "ms_per_step": row["ms_per_step"],
                              "slowdown": row["ms_per_step"] / alone[row["model"]]})
    rate = sum(1 / p["slowdown"] for p in processes)
    rounds.append({"jobs": n, "finished": len(processes), "processes": processes, "work_rate": rate})
    slow = [p["slowdown"] for p in processes]
    span = f"{min(slow):.1f}–{max(slow):.1f}" if slow else "–"
    print(f"| {n} | {len(processes)} | {span} | {rate:.2f} |")
(out / "side_by_side.json").write_text(json.dumps({**device, "alone_ms_per_step": alone, "rounds": rounds},
                                                  indent=1) + "\n", encoding="utf-8")
PY
