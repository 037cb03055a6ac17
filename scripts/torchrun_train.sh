#!/usr/bin/env bash
# Plain torchrun launch of `cogqa train` (DDP; add --fsdp for FSDP2 fully_shard).
#
# One node, all GPUs:      scripts/torchrun_train.sh data/slimpajama-8k runs/470M-h8-1 --size 470M --heads 8 --kv-heads 1
# CPU smoke test (gloo):   NPROC=2 scripts/torchrun_train.sh DATA OUT --layers 2 --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --lr 3e-3 --tokens 100k
# Several nodes: run this on every node with NNODES, NODE_RANK and MASTER_ADDR (rank 0's address) set.
# A killed job continues where it stopped when started again with --resume.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DATA_DIR OUT_DIR [cogqa train options...]" >&2
  exit 2
fi
DATA=$1; OUT=$2; shift 2
NPROC=${NPROC:-$(python -c 'import torch; print(torch.cuda.device_count() or 2)')}
NNODES=${NNODES:-1}
if [ "$NNODES" -gt 1 ]; then
  RDZV=(--nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" --rdzv_backend c10d --rdzv_endpoint "${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}")
else
  RDZV=(--standalone)
fi
# one CPU thread per process unless told otherwise (torchrun's default too)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec torchrun "${RDZV[@]}" --nproc_per_node "$NPROC" -m cogqa train --data "$DATA" --out "$OUT" "$@"
