#!/usr/bin/env bash
# Every GPU measurement the project owes, in one run (issue 33): flash-attn varlen isolation, the
# LM head's loss (plain / chunked / liger), the speech tokenizer (ours vs naive), every LLM family
# (Llama, Qwen2/3, Mistral, OLMo-2 stand-ins) training 2 steps in bf16, MFU of a ~1B
# model. Writes bench_out/gpu_check.json and bench_out/gpu_check.md (after each measurement, so
# a run cut off by the timeout keeps what it measured). Sized for < 8 minutes on one H100.
# Usage: bench/gpu_check.sh [OUT_DIR]   (from the repo root; the venv's spiritlm or .venv/bin/spiritlm)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench_out}"
SPIRITLM="$(command -v spiritlm || echo .venv/bin/spiritlm)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 480 "$SPIRITLM" bench gpu --out "$OUT"
