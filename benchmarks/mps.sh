# Sourced by benchmarks/full_schedule.sh and benchmarks/study.sh (needs $python, the interpreter that has torch).
# start_mps starts one CUDA MPS daemon for the processes the script launches (they inherit its pipe directory),
# checks that a CUDA client can use it, and quits it when the script exits; without MPS, processes on one GPU
# take turns instead of sharing its SMs (docs/performance.md).

gpu_uuids() {  # a CUDA_VISIBLE_DEVICES list with each index replaced by that GPU's UUID (an unknown index stays)
  local listing entry uuid out=() entries
  listing=$(nvidia-smi --query-gpu=index,uuid --format=csv,noheader 2> /dev/null || true)  # lines "1, GPU-..."
  IFS=, read -r -a entries <<< "$1"
  for entry in "${entries[@]}"; do
    uuid=$(awk -F', ' -v i="$entry" '$1 == i {print $2}' <<< "$listing")
    out+=("${uuid:-$entry}")
  done
  (IFS=,; echo "${out[*]}")
}

start_mps() {  # MPS=1: one MPS daemon for this schedule's processes; without it they time-slice the GPU
  command -v nvidia-cuda-mps-control > /dev/null || { echo "MPS: nvidia-cuda-mps-control not found, running without"; return; }
  # The MPS server numbers the GPUs it sees from 0: under a daemon started with CUDA_VISIBLE_DEVICES=1 a client
  # asking for index 1 finds no GPU. A UUID names the same GPU to the daemon and its clients.
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    CUDA_VISIBLE_DEVICES=$(gpu_uuids "$CUDA_VISIBLE_DEVICES")
    export CUDA_VISIBLE_DEVICES
    echo "MPS: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
  fi
  export CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/newllm-mps-$$} CUDA_MPS_LOG_DIRECTORY=${CUDA_MPS_LOG_DIRECTORY:-/tmp/newllm-mps-$$-log}
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d; then
    trap 'echo quit | nvidia-cuda-mps-control' EXIT
    if timeout 90 $python -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
      echo "MPS: on ($CUDA_MPS_PIPE_DIRECTORY)"; return
    fi
    echo quit | nvidia-cuda-mps-control; trap - EXIT
  fi
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  echo "MPS: the daemon or a CUDA client failed, running without"
}
