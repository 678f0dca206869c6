#!/usr/bin/env bash
# The GPU checks, in one script run once on one GPU (an H100/H200), in this order:
#
#   1. velocitune-compare at GPU scale (benchmarks/compare_policies.py, one seed): a ~105M GPT
#      (8 layers, hidden 1024) pretrained here on the demo's replay-heavy blend, then CPT, the
#      default Velocitune and 2 static frontier points continued from it at equal tokens;
#   2. the project's GPT entry on the megatron-core wheel's megatron.training (0.17+, Python
#      3.12) through megatron_velocitune.launch, straight vs stopped-and-resumed
#      (examples/megatron_lm/run_single_gpu.sh wheel), once with the held-out estimator and once
#      with --velocitune-loss-source train;
#   3. benchmarks/bench_train_stream.py at hidden 1024, seq 1024: what the estimators cost a step.
#
# What each step took on an H200 (2026-12-04, docs/logs/gpu_checks_h200/): 1: 295 s; 2: about
# 330 s per estimator (4 process starts of 40-60 s each dominate); 3: 83 s; the machine's start
# and the wheels' install about a minute. That is more than one session's 15 device minutes and
# one call's 10: split it with STEPS, e.g. "1 3" in one call and "2-eval" then "2-train".
#
# Usage: examples/gpu_checks/run.sh OUT
#   OUT gets one log per step (1_compare.log, 1_compare.md, 1_compare_pareto.png,
#   2_megatron_training_eval.log, 2_megatron_training_train.log, 3_bench_train_stream.log) and
#   summary.txt (each step's status and wall time). A step whose log ends in "step done" is
#   skipped, so a second call reruns only what failed or did not run.
#
# Environment:
#   CORPUS_DIR  folder holding corpus/ (the demo's tokenized corpus: corpus.json, tokenizer.json,
#               general/man/pydocs/code .bin/.idx; default outputs/demo)
#   WORK        where the runs and checkpoints go (default OUT/work)
#   PYTHON      interpreter with torch, megatron-core and this repository's requirements
#               (default python3); this repository is put on PYTHONPATH
#   STEPS       the steps to run (default "1 2 3"; 2-eval and 2-train: one half of step 2)
#   GPU_CHECKS_DRY=1  tiny sizes, 1 rank: the whole script on a CPU in a few minutes (step 2 needs
#               CUDA, as Megatron-LM's train() does, and says so); tests/test_gpu_checks.py runs it
#   Sizes (GPU defaults; dry-run defaults in brackets): LAYERS 8 [2], HIDDEN 1024 [64], HEADS 16
#   [2], SEQ 256 [64], MBS 32 [4], GBS 32 [8], BASE_ITERS 300 [12], CPT_ITERS 100 [20], M 10 [4],
#   CPT_EVAL 5 [1], BASE_LR 6e-4, CPT_LR 3e-4, MLM_ITERS 100 [-], MLM_INTERVAL 10 [-], BENCH_LAYERS
#   8 [2], BENCH_HIDDEN 1024 [64], BENCH_SEQ 1024 [64], BENCH_MBS 4 [2], BENCH_GBS 32 [4],
#   BENCH_PAIRS 40 [3].
#
# On a GPU machine without network (the wheels it lacks carried in .whl; docs/using.md, "The GPU checks"):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site WORK=/tmp/gc CORPUS_DIR=.gpu bash examples/gpu_checks/run.sh $OUT
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mkdir -p "${1:?usage: examples/gpu_checks/run.sh OUT}" && cd "$1" && pwd)
WORK=$(mkdir -p "${WORK:-$OUT/work}" && cd "${WORK:-$OUT/work}" && pwd)
CORPUS_DIR=$(cd "${CORPUS_DIR:-$REPO/outputs/demo}" && pwd) || exit 1
CORPUS=$CORPUS_DIR/corpus
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PYTHONWARNINGS=ignore::UserWarning CUDA_DEVICE_MAX_CONNECTIONS=1
if [ ! -f "$CORPUS/corpus.json" ]; then
  echo "CORPUS_DIR=$CORPUS_DIR: no corpus/corpus.json in it (the demo's tokenized corpus)" >&2
  exit 1
fi

if [ "${GPU_CHECKS_DRY:-0}" = 1 ]; then
  : "${LAYERS:=2}" "${HIDDEN:=64}" "${HEADS:=2}" "${SEQ:=64}" "${MBS:=4}" "${GBS:=8}"
  : "${BASE_ITERS:=12}" "${CPT_ITERS:=20}" "${M:=4}" "${CPT_EVAL:=1}"
  : "${BENCH_LAYERS:=2}" "${BENCH_HIDDEN:=64}" "${BENCH_SEQ:=64}" "${BENCH_MBS:=2}"
  : "${BENCH_GBS:=4}" "${BENCH_PAIRS:=3}"
  export OMP_NUM_THREADS=1
fi
: "${LAYERS:=8}" "${HIDDEN:=1024}" "${HEADS:=16}" "${SEQ:=256}" "${MBS:=32}" "${GBS:=32}"
: "${BASE_ITERS:=300}" "${CPT_ITERS:=100}" "${M:=10}" "${CPT_EVAL:=5}"
: "${BASE_LR:=6e-4}" "${CPT_LR:=3e-4}" "${MLM_ITERS:=100}" "${MLM_INTERVAL:=10}"
: "${BENCH_LAYERS:=8}" "${BENCH_HIDDEN:=1024}" "${BENCH_SEQ:=1024}" "${BENCH_MBS:=4}"
: "${BENCH_GBS:=32}" "${BENCH_PAIRS:=40}"

# The steps asked for, step 2 as its two halves.
steps() { for s in ${STEPS:-1 2 3}; do if [ "$s" = 2 ]; then echo 2-eval 2-train; else echo "$s"; fi; done; }
for step in $(steps); do
  case $step in
    1 | 2-eval | 2-train | 3) ;;
    *) echo "STEPS=${STEPS}: unknown step $step (1, 2, 2-eval, 2-train or 3)" >&2; exit 1 ;;
  esac
done
has_cuda=$($PY -c 'import torch; print(int(torch.cuda.is_available()))')
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
summary "=== $(date -u +%FT%TZ) gpu_checks: cuda=$has_cuda; $( (nvidia-smi -L 2>/dev/null || echo 'no GPU') | head -1)"

failed=0
SKIPPED=3 # a step's exit status when it cannot run here (its log's last line says why)
# run_step NAME LOG CMD...: CMD's output to OUT/LOG, unless that log already ends in "step done".
run_step() {
  local name=$1 log=$OUT/$2 start rc
  shift 2
  if [ -f "$log" ] && [ "$(tail -n 1 "$log")" = "step done" ]; then
    summary "$name: done before, kept ($log)"
    return 0
  fi
  start=$(date +%s)
  "$@" > "$log" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    echo "step done" >> "$log"
    summary "$name: ok in $(($(date +%s) - start)) s"
  elif [ "$rc" = "$SKIPPED" ]; then
    summary "$name: skipped, $(tail -n 1 "$log")"
  else
    failed=1
    summary "$name: FAILED (exit $rc) after $(($(date +%s) - start)) s; the end of $log:"
    tail -n 30 "$log" | tee -a "$OUT/summary.txt"
  fi
  return 0
}

compare() {
  $PY "$REPO/benchmarks/compare_policies.py" --python "$PY" --corpus-dir "$CORPUS_DIR" \
    --out "$WORK/compare" --seeds 1 --methods default --frontier 0.1 0.6 --nproc 1 \
    --num-layers "$LAYERS" --hidden-size "$HIDDEN" --num-attention-heads "$HEADS" \
    --seq-length "$SEQ" --micro-batch-size "$MBS" --global-batch-size "$GBS" \
    --base-iters "$BASE_ITERS" --base-lr "$BASE_LR" --cpt-iters "$CPT_ITERS" --cpt-lr "$CPT_LR" \
    --update-interval "$M" --cpt-eval-interval "$CPT_EVAL" || return
  # What the base's and one run's iterations took (the sizes above were chosen from these).
  grep -h -m 3 "elapsed time per iteration" "$WORK/compare/base/log.txt" || true
  cp "$WORK/compare/table.md" "$OUT/1_compare.md"
  cp "$WORK/compare/pareto.png" "$OUT/1_compare_pareto.png" 2>/dev/null || true
}

megatron_training() {
  if [ "$has_cuda" != 1 ]; then
    echo "Megatron-LM's train() needs CUDA: this step runs on a GPU machine"
    return $SKIPPED
  fi
  ITERS=$MLM_ITERS INTERVAL=$MLM_INTERVAL EXTRA_ARGS="$1" PYTHON=$PY \
    bash "$REPO/examples/megatron_lm/run_single_gpu.sh" wheel "$CORPUS" "$WORK/mlm$2"
}

bench() {
  $PY "$REPO/benchmarks/bench_train_stream.py" --corpus "$CORPUS" --pairs "$BENCH_PAIRS" \
    --num-layers "$BENCH_LAYERS" --hidden-size "$BENCH_HIDDEN" --num-attention-heads "$HEADS" \
    --seq-length "$BENCH_SEQ" --micro-batch-size "$BENCH_MBS" --global-batch-size "$BENCH_GBS"
}

for step in $(steps); do
  case $step in
    1) run_step "1 compare (${LAYERS}x${HIDDEN}, seq $SEQ)" 1_compare.log compare ;;
    2-eval) run_step "2 megatron.training, held-out" 2_megatron_training_eval.log \
         megatron_training "" _eval ;;
    2-train) run_step "2 megatron.training, train stream" 2_megatron_training_train.log \
         megatron_training "--velocitune-loss-source train" _train ;;
    3) run_step "3 bench_train_stream (hidden $BENCH_HIDDEN, seq $BENCH_SEQ)" \
         3_bench_train_stream.log bench ;;
  esac
done
exit $failed
