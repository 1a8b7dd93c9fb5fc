#!/usr/bin/env bash
# One node (or one node of many), N processes with torchrun:
#   train/launch_torchrun.sh train/tiny_cpu.toml 2                 # 2 CPU processes on gloo
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=host0 train/launch_torchrun.sh train/llama2_7b.toml 8
set -euo pipefail
RECIPE=${1:?usage: $0 RECIPE [NPROC] [--set k=v ...]}
shift
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then NPROC=$1; shift
else NPROC=$(python -c "import torch; print(max(1, torch.cuda.device_count()))"); fi
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$(pwd)/.torch_extensions}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  --nproc_per_node "$NPROC" -m spiritlm train "$RECIPE" "$@"
