#!/bin/bash
# Submit a setting's three steps as dependent Slurm jobs: proxy -> fit -> main.
#
#   BASE_CKPT=... TOKENIZER=... DATA_PATH="W1 P1 W2 P2 ..." CONTAINER=... \
#     examples/slurm/submit.sh reasoning|systemstack [extra sbatch options]
#
# The fit step needs no GPU: it runs as one task on one node. Every variable above is exported
# to the jobs (sbatch's default --export=ALL).
set -euo pipefail
SETTING=${1:?usage: submit.sh reasoning|systemstack [sbatch options]}
shift
HERE=$(dirname "$(readlink -f "$0")")
export VELOCITUNE_SLURM_DIR=$HERE
SCRIPT="$HERE/$SETTING.sbatch"
[ -f "$SCRIPT" ] || { echo "no such setting: $SETTING ($SCRIPT)" >&2; exit 2; }
: "${BASE_CKPT:?}" "${TOKENIZER:?}" "${DATA_PATH:?}"
proxy=$(sbatch --parsable "$@" "$SCRIPT" proxy)
fit=$(sbatch --parsable "$@" --dependency=afterok:$proxy --nodes=1 --gpus-per-node=0 \
  --time=02:00:00 --job-name="velocitune-$SETTING-fit" "$SCRIPT" fit)
main=$(sbatch --parsable "$@" --dependency=afterok:$fit "$SCRIPT" main)
echo "submitted $SETTING: proxy $proxy -> fit $fit -> main $main"
