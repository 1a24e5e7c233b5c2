#!/usr/bin/env bash
# Two machines with 8 GPUs each train Llama-3-8B in full with DeepSpeed ZeRO-3 (16 processes).
# Run this script on both machines, the same everywhere except NODE_RANK (0 on the first, 1 on the second).
# `llmtune train` relaunches itself under torchrun with these variables; rank 0 writes output_dir.
#   machine A:  NODE_RANK=0 bash examples/multinode/llama3_8b_full_ds3_2nodes.sh
#   machine B:  NODE_RANK=1 bash examples/multinode/llama3_8b_full_ds3_2nodes.sh
set -euo pipefail
export NNODES=2                               # machines in the job
export NODE_RANK="${NODE_RANK:?set NODE_RANK to 0 or 1}"
export NPROC_PER_NODE="${NPROC_PER_NODE:-8}"  # GPUs per machine
export MASTER_ADDR="${MASTER_ADDR:-10.0.0.1}" # machine A's address, reachable from machine B
export MASTER_PORT="${MASTER_PORT:-29500}"    # a free port on machine A
llmtune train examples/train_full/llama3_8b_full_sft_ds3.yaml "$@"
