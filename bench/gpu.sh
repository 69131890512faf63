#!/usr/bin/env bash
# bench/gpu.sh [--dry-run] [--data PATH] [--results-dir DIR] [--budget-s 480]
#
# The GPU benchmarks in at most 8 minutes on one GPU, in this order: the device (nvidia-smi, torch's device
# name) and its GEMM peak; training throughput and MFU against BART in bf16 at the benchmark and the paper's base
# dimensions; generation at batch 1 and 32; 3 minutes of pretraining configs/pretrain/shakespeare-gpu.yaml and the
# val nats/char it reaches (building the corpus from --data, default ../shared/data, when data/ lacks it); the
# serving benchmark at concurrency 64. One JSON lands in bench/results/ (`python -m bench.docs` renders it).
# Each step and its sizes are in bench/gpu.py.
#
# --dry-run: the same steps on the CPU at toy sizes, in under 2 minutes (for CI).
#
# Downloads nothing: it runs the venv it finds (.venv, or $PYTHON) with the `bench` and `serve` extras installed,
# and transformers and datasets offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if ! "$PYTHON" -c "import torch, transformers, seq2seq" 2>/dev/null; then
    echo "bench/gpu.sh: $PYTHON lacks torch, transformers or seq2seq: carry a venv with the project and its bench" \
         "extra installed (pip install -e '.[bench,serve]'), or set PYTHON" >&2
    exit 2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PYTHON" -m bench.gpu "$@"
