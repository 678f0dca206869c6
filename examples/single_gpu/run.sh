#!/usr/bin/env bash
# One GPU, NCCL, megatron-core's DDP and optimizer: the demo's Velocitune continual pre-training
# (step 4 of examples/cpu_demo/run.sh) for 300 iterations, once straight through and once stopped
# at 150 and resumed, then a comparison of the two weight trajectories.
#
# Usage: examples/single_gpu/run.sh CORPUS_DIR BASE_CKPT TARGETS_JSON [OUT_DIR]
#   CORPUS_DIR: prepare_corpus output (corpus.json, tokenizer.json, <domain>.bin/.idx)
#   BASE_CKPT:  the demo's base model checkpoint (--save of step 1)
set -euo pipefail
cd "$(dirname "$0")/../.."
CORPUS=${1:?corpus dir}; BASE=${2:?base checkpoint}; TARGETS=${3:?targets json}; OUT=${4:-outputs/gpu}
PY=${PYTHON:-python3}
RUN="$PY -m torch.distributed.run --nproc-per-node 1 --master-port ${MASTER_PORT:-29600}"
export PYTHONWARNINGS=ignore::UserWarning
ITERS=${ITERS:-300}
# The corpus manifest holds the weights; the prefixes are wherever CORPUS_DIR is now.
BLEND=$($PY -c "
import json, os, sys
m = json.load(open(os.path.join(sys.argv[1], 'corpus.json')))
print(' '.join(f'{w:.6f} {os.path.join(sys.argv[1], d[\"name\"])}' for w, d in zip(m['weights'], m['domains'])))
" "$CORPUS")

ARGS=(--num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 128
      --micro-batch-size 8 --global-batch-size 32 --hidden-dropout 0 --attention-dropout 0
      --tokenizer-model "$CORPUS/tokenizer.json" --split 90,10,0 --num-workers 2
      --log-interval 50 --seed 1234 --data-path $BLEND --train-iters $ITERS
      --lr 1e-3 --lr-decay-style constant --lr-warmup-iters 10 --eval-interval 0
      --velocitune-policy velocity --velocitune-target-loss-file "$TARGETS"
      --velocitune-update-interval 20 --velocitune-eval-iters 4 --velocitune-min-weight 0.01)

nvidia-smi -L 2>/dev/null || echo "no GPU: running on CPU (gloo)"
# Each run starts fresh (a new run never writes over another's checkpoints: docs/reliability.md).
rm -rf "$OUT/full" "$OUT/parts"
echo "=== straight through: $ITERS iterations ==="
$RUN examples/pretrain_gpt.py "${ARGS[@]}" --load "$BASE" --finetune \
  --save "$OUT/full" --tensorboard-dir "$OUT/full/tb"
echo "=== stopped at $((ITERS / 2)) ==="
$RUN examples/pretrain_gpt.py "${ARGS[@]}" --load "$BASE" --finetune --exit-interval $((ITERS / 2)) \
  --save "$OUT/parts" --tensorboard-dir "$OUT/parts/tb"
echo "=== resumed to $ITERS ==="
$RUN examples/pretrain_gpt.py "${ARGS[@]}" --load "$OUT/parts" \
  --save "$OUT/parts" --tensorboard-dir "$OUT/parts/tb"
echo "=== compare ==="
$PY - "$OUT" <<'EOF'
import json, os, sys
from megatron_velocitune.core.trajectory import read_trajectory
out = sys.argv[1]
a = read_trajectory(os.path.join(out, "full/tb/velocitune_trajectory.jsonl")).updates
b = read_trajectory(os.path.join(out, "parts/tb/velocitune_trajectory.jsonl")).updates
same = [x["weights"] == y["weights"] and x["start_sample"] == y["start_sample"] for x, y in zip(a, b)]
print(f"updates: straight {len(a)}, stopped+resumed {len(b)}; bit-identical weights at "
      f"{sum(same)}/{len(same)} updates")
worst = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x["weights"], y["weights"]))
print(f"largest weight difference: {worst:.3e}")
print("final blend:", dict(zip(read_trajectory(os.path.join(out, "full/tb/velocitune_trajectory.jsonl")).domains, a[-1]["weights"])))
EOF
