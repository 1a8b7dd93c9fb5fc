#!/usr/bin/env bash
# One node, N processes with the DeepSpeed launcher:
#   train/launch_deepspeed.sh train/llama_1b_single_gpu.toml 8 --set steps=1000
# --no_local_rank: the rank comes from LOCAL_RANK (the spiritlm CLI takes no --local_rank before
# its subcommand). Several nodes: write a hostfile ("node1 slots=8" per line) and set HOSTFILE=path.
set -euo pipefail
RECIPE=${1:?usage: $0 RECIPE [NPROC] [--set k=v ...]}
shift
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then NPROC=$1; shift
else NPROC=$(python -c "import torch; print(max(1, torch.cuda.device_count()))"); fi
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$(pwd)/.torch_extensions}
if [[ -n "${HOSTFILE:-}" ]]; then
  exec deepspeed --hostfile "$HOSTFILE" --no_local_rank --module spiritlm train "$RECIPE" "$@"
fi
exec deepspeed --num_gpus "$NPROC" --no_local_rank --module spiritlm train "$RECIPE" "$@"
