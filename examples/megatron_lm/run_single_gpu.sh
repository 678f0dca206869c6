#!/usr/bin/env bash
# Megatron-LM's own pretrain_gpt.py with Velocitune, through the launcher (no edit of Megatron-LM),
# on one GPU: a static proxy run, target losses fitted on it, then the Velocitune run for ITERS
# iterations once straight through and once stopped at ITERS/2 and resumed, and a comparison of the
# two weight trajectories.
#
# Usage: examples/megatron_lm/run_single_gpu.sh MEGATRON_LM_DIR|wheel CORPUS_DIR [OUT_DIR]
#   MEGATRON_LM_DIR: a Megatron-LM checkout (core_v0.14 .. main): its pretrain_gpt.py; its dataset
#                    helpers are compiled at start-up by Megatron-LM itself (needs pybind11 and a
#                    C++ compiler) unless already built
#   wheel:           the installed megatron-core wheel's own megatron.training (0.17+, Python
#                    3.12) through examples/megatron_lm/pretrain_gpt_velocitune.py
#   CORPUS_DIR:      velocitune-prepare-corpus output (corpus.json, tokenizer.json, <domain>.bin/.idx),
#                    e.g. the CPU demo's outputs/demo/corpus
# Environment: PYTHON (default python3, with torch+CUDA, numpy, scipy), ITERS (default 300),
#   INTERVAL (update interval m, default 20), EXTRA_ARGS (more flags for every run, e.g.
#   "--velocitune-loss-source train").
#
# The model is tiny (4 layers, hidden 256, seq 256) and trained from scratch: the point is the
# adapter in Megatron-LM's real loop (flags, dataset substitution, updates every m iterations with
# the loader restarted at the consumed position, sidecar checkpoints, resume), not the model.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
if [ "${1:?Megatron-LM checkout, or wheel}" = wheel ]; then
  MLM=$REPO ENTRY=examples/megatron_lm/pretrain_gpt_velocitune.py
else
  MLM=$(cd "$1" && pwd) ENTRY=pretrain_gpt.py
fi
CORPUS=$(cd "${2:?corpus dir}" && pwd)
OUT=${3:-$REPO/outputs/megatron_lm_gpu}
PY=${PYTHON:-python3}
ITERS=${ITERS:-300}
INTERVAL=${INTERVAL:-20}
PROXY_ITERS=$((ITERS / 2))
SEQ=256
GBS=32
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_MAX_CONNECTIONS=1 PYTHONWARNINGS=ignore
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"

# The blend (token-proportional weights from the manifest; prefixes wherever CORPUS_DIR is now)
# and the vocabulary size (NullTokenizer: the .bin files are already tokenized).
read -r BLEND VOCAB < <($PY - "$CORPUS" <<'PYEOF'
import json, os, sys
root = sys.argv[1]
m = json.load(open(os.path.join(root, "corpus.json")))
blend = " ".join(f"{w:.6f} {os.path.join(root, d['name'])}" for w, d in zip(m["weights"], m["domains"]))
tok = json.load(open(os.path.join(root, "tokenizer.json")))
ids = list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])]
print(blend.replace(" ", ","), max(ids) + 1)
PYEOF
)
BLEND=${BLEND//,/ }

megatron() {
  # One process; the launcher installs the plugin and runs pretrain_gpt.py as __main__. The full
  # output goes to $LOG; the iteration, update, checkpoint and error lines are echoed.
  local from
  from=$(wc -l < "$LOG")
  local status=0
  (cd "$MLM" && $PY -m torch.distributed.run --nproc-per-node 1 \
    --master-port "${MASTER_PORT:-29610}" -m megatron_velocitune.launch "$ENTRY" "$@") \
    >> "$LOG" 2>&1 || status=$?
  tail -n +$((from + 1)) "$LOG" | grep -E \
    "velocitune|iteration +[0-9]+/|validation loss|saved checkpoint|loaded checkpoint|Error" \
    | grep -v -E "UserWarning|warnings.warn" || true
  if [ "$status" != 0 ]; then
    tail -n 40 "$LOG"
    echo "run failed (exit $status): see $LOG" >&2
    exit 1
  fi
}

ARGS=(--num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length $SEQ
      --max-position-embeddings $SEQ --micro-batch-size 8 --global-batch-size $GBS
      --transformer-impl local --no-gradient-accumulation-fusion --no-masked-softmax-fusion
      --no-bias-gelu-fusion --no-bias-dropout-fusion --no-persist-layer-norm
      --attention-dropout 0.0 --hidden-dropout 0.0
      --tokenizer-type NullTokenizer --vocab-size "$VOCAB"
      --data-path $BLEND --split 90,10,0 --num-workers 2 --data-cache-path "$OUT/index-cache"
      --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-iters 20 --lr-decay-iters $ITERS
      --weight-decay 0.01 --clip-grad 1.0 --seed 1234
      --eval-interval 100 --eval-iters 4 --log-interval 25 --save-interval 50
      --velocitune-update-interval $INTERVAL --velocitune-eval-iters 4
      ${EXTRA_ARGS:-})

nvidia-smi -L || true
start=$(date +%s)
echo "=== 1. proxy: static token-proportional blend, $PROXY_ITERS iterations, losses recorded ==="
rm -rf "$OUT/proxy"
megatron "${ARGS[@]}" --train-iters $PROXY_ITERS --velocitune-policy static \
  --save "$OUT/proxy/ckpt" --tensorboard-dir "$OUT/proxy/tb"

echo "=== 2. target losses at the full budget ==="
$PY -m megatron_velocitune.cli.fit_target_loss "$OUT/proxy/tb/velocitune_trajectory.jsonl" \
  --budget-tokens $((ITERS * GBS * SEQ)) --fit-fraction 1.0 --rising-domains hold-initial \
  --output "$OUT/targets.json" | tee -a "$LOG"

VT=("${ARGS[@]}" --train-iters $ITERS --velocitune-policy velocity --velocitune-min-weight 0.01
    --velocitune-target-loss-file "$OUT/targets.json")
echo "=== 3. Velocitune, straight through: $ITERS iterations ==="
rm -rf "$OUT/full"
megatron "${VT[@]}" --save "$OUT/full/ckpt" --tensorboard-dir "$OUT/full/tb"

echo "=== 4. Velocitune, stopped at $PROXY_ITERS ==="
rm -rf "$OUT/parts"
megatron "${VT[@]}" --exit-interval $PROXY_ITERS --save "$OUT/parts/ckpt" \
  --tensorboard-dir "$OUT/parts/tb"
echo "=== 5. ... and resumed to $ITERS ==="
megatron "${VT[@]}" --load "$OUT/parts/ckpt" --save "$OUT/parts/ckpt" \
  --tensorboard-dir "$OUT/parts/tb"

echo "=== 6. compare ==="
$PY - "$OUT" <<'PYEOF' | tee -a "$LOG"
import os, sys
from megatron_velocitune.core.trajectory import read_trajectory
out = sys.argv[1]
full = read_trajectory(os.path.join(out, "full/tb/velocitune_trajectory.jsonl"))
parts = read_trajectory(os.path.join(out, "parts/tb/velocitune_trajectory.jsonl"))
a, b = full.updates, parts.updates
same = [x["weights"] == y["weights"] and x["start_sample"] == y["start_sample"] for x, y in zip(a, b)]
print(f"updates: straight {len(a)}, stopped+resumed {len(b)}; bit-identical weights at "
      f"{sum(same)}/{len(same)} updates")
worst = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x["weights"], y["weights"]))
print(f"largest weight difference: {worst:.3e}")
print("initial blend:", dict(zip(full.domains, [round(w, 4) for w in full.header["weights"]])))
print("final blend:  ", dict(zip(full.domains, [round(w, 4) for w in a[-1]["weights"]])))
print("sidecars:", sorted(d for d in os.listdir(os.path.join(out, "parts/ckpt"))
                          if os.path.exists(os.path.join(out, "parts/ckpt", d, "velocitune_state.json"))))
PYEOF
echo "wall time: $(( $(date +%s) - start )) s (full log: $LOG)"
