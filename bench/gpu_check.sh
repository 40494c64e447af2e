#!/usr/bin/env bash
# The GPU check, in one go (<= 10 minutes on one H200-class GPU): packed against solo
# ResNet18/34/50/101 at 224x224, batch 16, in fp32 and in bf16 autocast + channels_last; the
# alternative of several solo runs per GPU as separate processes (ResNet18 and ResNet50); the
# paper grid's projected GPU-hours with the best measured setting; and `score` throughput on
# resnet18 at 224 from JPEGs, --workers 0 against 8 and the model-only bound. Its output is the
# tables to put in BENCHMARKS.md ("Packed training", "Scoring at dataset scale").
#
#   bash bench/gpu_check.sh                 # uses python3 and the checkout's camgap (no install needed
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh      # beyond torch and torchvision)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
# 1. packs of K = 1..16 for every architecture of the paper's grid, and the grid's projection
timeout 330 "$PY" bench/bench_pack.py --device cuda --parts 2 3 --archs resnet18 resnet34 resnet50 resnet101 \
    --r18-k 1 4 8 16 --r18-steps 10
# 2. the same runs as separate processes on the one GPU, against the best pack
timeout 150 "$PY" bench/bench_pack.py --device cuda --parts 2 4 --archs resnet18 resnet50 --r18-k 1 8 \
    --r18-steps 10 --procs 2 4 8
# 3. score throughput: 2,000 JPEGs of 500x375 -> resnet18 at 224 on the GPU, decoding in 0 or 8 workers
timeout 110 "$PY" bench/bench_score_workers.py --device cuda --arch resnet18 --size 224 --images 2000 \
    --workers 0,8 --batch-size 64
