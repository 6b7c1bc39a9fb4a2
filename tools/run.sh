#!/usr/bin/env bash
# The main job on its embedded default: set up the pinned environment (if missing) and run it.
#
#   tools/run.sh                       2 CPU processes, examples/tiny_cpu.yaml (TP=2 + SP)
#   NPROC=1 tools/run.sh --set parallel.tp=1 --set parallel.sequence_parallel=false
#
# Today the main job is the Megatron-Core smoke run (srpo_mcore/smoke.py); the end-to-end SRPO
# pipeline (issue #11) replaces it here when it lands.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$("$ROOT/tools/env.sh")
cd "$ROOT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$VENV/bin/torchrun" --standalone --nproc_per_node "${NPROC:-2}" -m srpo_mcore.smoke \
  --config "${CONFIG:-examples/tiny_cpu.yaml}" "$@"
