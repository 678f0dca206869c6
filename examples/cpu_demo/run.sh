#!/usr/bin/env bash
# The CPU demo (`make demo`): continual pre-training of a tiny GPT with Velocitune, on 2 gloo ranks.
#
#   0. real text by domain (Debian packages), tokenized with a 4k BPE into .bin/.idx
#   1. base model: pre-trained on a replay-heavy blend that holds a little of every domain
#      (general = the King James Bible 0.85, man + pydocs + code sharing 0.15), as a pretrained
#      LM has seen a little code and documentation
#   2. proxy run: continued on general (replay) + man + pydocs + code with the static,
#      token-proportional blend, for the first half of the budget, recording each domain's
#      held-out loss (--velocitune-policy static)
#   3. target losses: the Chinchilla fit L(D) = E + B / D^beta on the proxy run, predicted at
#      the full budget; a replay domain whose loss rose keeps the prediction of its rise as a
#      forgetting budget, and Velocitune holds it at that budget (the default rising-domain
#      rule, budget-hold; see docs/targets.md)
#   4. the Velocitune run: the same continual pre-training, weights updated every 20 iterations
#   5. a plot of the weights, eval losses and velocities, and the before/after loss table
#
# Usage: examples/cpu_demo/run.sh [OUT_DIR]   (default outputs/demo; finished steps are kept)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/demo}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore::UserWarning
RUN="$PY -m torch.distributed.run --nproc-per-node ${NPROC:-2} --master-port ${MASTER_PORT:-29555}"
CORPUS=$OUT/corpus
CPT_ITERS=${CPT_ITERS:-200}
GBS=32
SEQ=128

step() { printf '\n=== %s ===\n' "$*"; }
done_at() { [ -f "$1/latest_checkpointed_iteration.txt" ] && [ "$(cat "$1/latest_checkpointed_iteration.txt")" = "$2" ]; }
quiet() { grep --line-buffered -v -e 'Warning' -e 'warnings.warn' -e '^W[0-9]' || true; }

step "0. text and corpus"
bash examples/cpu_demo/get_text.sh "$OUT/text"
if [ ! -f "$CORPUS/corpus.json" ]; then
  $PY tools/prepare_corpus.py --output-dir "$CORPUS" --vocab-size 4096 --max-bytes-per-domain 2500000 \
    --domain general="$OUT/text/general" --domain man="$OUT/text/man" \
    --domain pydocs="$OUT/text/pydocs" --domain code="$OUT/text/code"
fi
BLEND=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['data_path'])" "$CORPUS/corpus.json")
# The base model's blend: general 0.85, the other domains sharing 0.15 in their token ratio.
BASE_BLEND=$($PY - "$CORPUS/corpus.json" <<'PY'
import json, sys
from megatron_velocitune.laws.comparison import replay_share_blend
domains = json.load(open(sys.argv[1]))["domains"]
w = replay_share_blend([d["tokens"] for d in domains], [0], 0.85)
print(" ".join(f"{x:.6f} {d['prefix']}" for x, d in zip(w, domains)))
PY
)

MODEL=(--num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length $SEQ
       --micro-batch-size 8 --global-batch-size $GBS --hidden-dropout 0 --attention-dropout 0
       --tokenizer-model "$CORPUS/tokenizer.json" --split 90,10,0 --num-workers 1
       --log-interval 25 --seed 1234)
CPT=(--load "$OUT/base" --finetune --data-path $BLEND --train-iters $CPT_ITERS
     --lr 1e-3 --lr-decay-style constant --lr-warmup-iters 10 --eval-interval 0
     --velocitune-eval-iters 4)

step "1. base model: general 0.85, a little of every other domain"
if ! done_at "$OUT/base" 300; then
  $RUN examples/pretrain_gpt.py "${MODEL[@]}" --data-path $BASE_BLEND --train-iters 300 \
    --lr 2e-3 --min-lr 2e-4 --lr-warmup-iters 30 --eval-interval 100 --eval-iters 4 \
    --velocitune-policy static --velocitune-update-interval 50 --velocitune-eval-iters 4 \
    --save "$OUT/base" --tensorboard-dir "$OUT/base/tb" 2>&1 | quiet
fi

step "2. proxy run: static token-proportional blend, first half of the budget"
if ! done_at "$OUT/proxy" $((CPT_ITERS / 2)); then
  rm -rf "$OUT/proxy"
  $RUN examples/pretrain_gpt.py "${MODEL[@]}" "${CPT[@]}" --exit-interval $((CPT_ITERS / 2)) \
    --velocitune-policy static --velocitune-update-interval 10 \
    --save "$OUT/proxy" --tensorboard-dir "$OUT/proxy/tb" 2>&1 | quiet
fi

step "3. target losses from the proxy run"
$PY tools/fit_target_loss.py "$OUT/proxy/tb/velocitune_trajectory.jsonl" \
  --budget-tokens $((CPT_ITERS * GBS * SEQ)) --rising-domains budget-hold \
  --output "$OUT/targets.json" --plot "$OUT/target_fit.png"

step "4. continual pre-training with Velocitune"
if ! done_at "$OUT/velocitune" $CPT_ITERS; then
  rm -rf "$OUT/velocitune"
  $RUN examples/pretrain_gpt.py "${MODEL[@]}" "${CPT[@]}" \
    --velocitune-policy velocity --velocitune-target-loss-file "$OUT/targets.json" \
    --velocitune-rising-rule budget-hold --velocitune-update-interval 20 --velocitune-min-weight 0.01 \
    --save "$OUT/velocitune" --tensorboard-dir "$OUT/velocitune/tb" 2>&1 | quiet
fi

step "5. plots"
$PY tools/plot_weights.py "$OUT/velocitune/tb/velocitune_trajectory.jsonl" \
  --labels velocitune --output "$OUT/weights.png"
cat <<EOF

Done.
  weights / eval loss / velocity plot: $OUT/weights.png (and .svg)
  target-loss fit:                     $OUT/target_fit.png
  JSONL trajectory:                    $OUT/velocitune/tb/velocitune_trajectory.jsonl
  TensorBoard logs:                    $OUT/velocitune/tb  ($PY -m tensorboard.main --logdir $OUT)
EOF
