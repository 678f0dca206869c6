# Shared plumbing of the Velocitune Slurm jobs (sourced by reasoning.sbatch / systemstack.sbatch).
#
# The setting script defines, before sourcing this file:
#   MODEL_ARGS   the architecture flags of the base model (Megatron-LM names)
#   TRAIN_ARGS   batch, schedule, optimizer, parallelism (the paper's hyper-parameters)
#   TRAIN_ITERS  the main run's iterations;  PROXY_ITERS the proxy run's (Table 8's sample ratio)
#   GBS, SEQ     global batch size (sequences) and sequence length
#   RUN_ROOT     where the three steps write (proxy/, targets.json, main/)
# and calls `run_step "$STEP"` with STEP in proxy | fit | main.
#
# Environment (all steps):
#   MEGATRON_LM    Megatron-LM checkout inside the container (default /opt/Megatron-LM, as the
#                  project's Dockerfile installs it)
#   CONTAINER      container image for pyxis/enroot (srun --container-image); empty: run on the
#                  host environment (then megatron-velocitune and Megatron-LM must be importable)
#   MOUNTS         --container-mounts for pyxis (default: the run root and the data folders)
#   BASE_CKPT      the base model as a Megatron-LM checkpoint, e.g. converted from Hugging Face
#                  with Megatron-LM's own tools/checkpoint/convert.py --model-type GPT
#                  --loader llama_mistral --saver core (--target-tensor-parallel-size = TP below)
#   TOKENIZER      the base model's Hugging Face tokenizer folder
#   DATA_PATH      "W1 PREFIX1 W2 PREFIX2 ..." one weighted .bin/.idx prefix per domain, the
#                  token-proportional starting blend (velocitune-prepare-corpus prints it)
set -euo pipefail

MEGATRON_LM=${MEGATRON_LM:-/opt/Megatron-LM}
: "${BASE_CKPT:?set BASE_CKPT to the base model's Megatron-LM checkpoint}"
: "${TOKENIZER:?set TOKENIZER to the base model's Hugging Face tokenizer folder}"
: "${DATA_PATH:?set DATA_PATH to 'W1 PREFIX1 W2 PREFIX2 ...' (one prefix per domain)}"
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1)
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}

export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron-LM's requirement for TP/SP comm overlap
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

container_flags() {
  if [ -n "${CONTAINER:-}" ]; then
    local mounts=${MOUNTS:-$RUN_ROOT:$RUN_ROOT}
    echo "--container-image=$CONTAINER --container-mounts=$mounts --container-workdir=$MEGATRON_LM"
  fi
}

# Data, evaluation, logging and checkpointing: identical for the proxy and the main run, so that
# the proxy's held-out losses are the main run's first steps under the static blend.
common_args() {
  local out=$1
  # --data-path and the split hold out 0.2% of every domain's documents: each domain's
  # validation split is its held-out set S_eval,i (Velocitune evaluates eval_iters micro-batches
  # of it per DP rank every m iterations, the same ones each time).
  echo --data-path $DATA_PATH --split 998,2,0 \
    --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$TOKENIZER" \
    --dataloader-type single --num-workers 2 --data-cache-path "$RUN_ROOT/index-cache" \
    --eval-interval 1000 --eval-iters 10 \
    --log-interval 10 --log-throughput --tensorboard-dir "$out/tb" \
    --save "$out/ckpt" --save-interval 500 --ckpt-format torch_dist \
    --velocitune-update-interval 150 --velocitune-eval-iters 10 --velocitune-log-dir "$out"
}

# Start from the base model (weights only) or resume this run's own latest checkpoint, whose
# velocitune_state.json sidecar restores the weight history.
load_args() {
  local out=$1
  if [ -f "$out/ckpt/latest_checkpointed_iteration.txt" ]; then
    echo --load "$out/ckpt"
  else
    echo --load "$BASE_CKPT" --finetune --no-load-optim --no-load-rng --auto-detect-ckpt-format
  fi
}

megatron() {
  # One torchrun per node; the launcher installs Velocitune into pretrain_gpt.py unchanged.
  # shellcheck disable=SC2046
  srun --kill-on-bad-exit=1 --ntasks-per-node=1 $(container_flags) \
    bash -c "cd $MEGATRON_LM && python -m torch.distributed.run \
      --nproc-per-node $GPUS_PER_NODE --nnodes ${SLURM_NNODES:-1} --node-rank \$SLURM_NODEID \
      --master-addr $MASTER_ADDR --master-port $MASTER_PORT \
      -m megatron_velocitune.launch pretrain_gpt.py $*"
}

run_step() {
  local step=$1 proxy="$RUN_ROOT/proxy" main="$RUN_ROOT/main"
  mkdir -p "$RUN_ROOT"
  case "$step" in
    proxy)
      # Token-proportional static blend, the first 51% (Reasoning) or 58% (SystemStack) of the
      # budget (Table 8's proxy sample ratio); the LR schedule is the main
      # run's (decay over TRAIN_ITERS) so the recorded curve is the main run's first part.
      # Policy static: no reweighting, each domain's held-out loss recorded every m iterations
      # (and L_init measured once at iteration 0).
      megatron ${MODEL_ARGS} ${TRAIN_ARGS} --train-iters "$PROXY_ITERS" \
        --lr-decay-iters "$TRAIN_ITERS" \
        $(common_args "$proxy") $(load_args "$proxy") --velocitune-policy static
      ;;
    fit)
      # L(D) = E + B / D^beta per domain on the proxy's evaluations (all of them: the proxy is
      # the budget's first 51% or 58%), predicted at the main run's full token budget. A replay
      # domain whose loss rises gets L_init * (1 - 1%) (see docs/targets.md, "Replay domains").
      local budget=$((TRAIN_ITERS * GBS * SEQ))
      # shellcheck disable=SC2046
      srun --ntasks=1 $(container_flags) bash -c "velocitune-fit-targets \
        $proxy/velocitune_trajectory.jsonl --budget-tokens $budget --fit-fraction 1.0 \
        --min-tokens $((150 * GBS * SEQ)) --rising-domains hold-initial \
        --output $RUN_ROOT/targets.json --plot $RUN_ROOT/targets.png && \
        python -c \"
import sys
from megatron_velocitune.core.arguments import write_loss_file
from megatron_velocitune.core.trajectory import read_trajectory
h = read_trajectory(sys.argv[1]).header
write_loss_file(sys.argv[2], h['domains'], h.get('initial_loss_full') or h['initial_loss'], source=sys.argv[1])
\" $proxy/velocitune_trajectory.jsonl $RUN_ROOT/initial.json"
      ;;
    main)
      # Velocitune: every 150 iterations, velocity-guided reweighting towards the targets. The
      # full-set initial losses are the proxy's iteration-0 measurement (same base model, same
      # held-out sets), which spares the main run a full held-out evaluation; the velocity's own
      # L_init is measured on the main run's evaluation subset (a few micro-batches).
      megatron ${MODEL_ARGS} ${TRAIN_ARGS} --train-iters "$TRAIN_ITERS" \
        $(common_args "$main") $(load_args "$main") --velocitune-policy velocity \
        --velocitune-target-loss-file "$RUN_ROOT/targets.json" \
        --velocitune-initial-loss-file "$RUN_ROOT/initial.json"
      ;;
    *)
      echo "unknown step '$step' (proxy | fit | main)" >&2
      exit 2
      ;;
  esac
}
