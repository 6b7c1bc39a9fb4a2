#!/usr/bin/env bash
# The main job on its embedded default: set up the pinned environment (if missing) and run the whole
# SRPO pipeline on the synthetic task (examples/srpo_tiny_cpu.yaml): stage 0 -> reflection set ->
# reflection SFT -> GRPO -> test-split measurements -> runs/srpo-tiny-cpu/report.md.
#
#   tools/run.sh                                   the demo (resumes an interrupted run; --fresh restarts)
#   tools/run.sh --set grpo.train.steps=10         any recipe field (python -m srpo_mcore.demo --help)
#   tools/run.sh --smoke                           the older Megatron-Core smoke job (examples/tiny_cpu.yaml)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$("$ROOT/tools/env.sh")
cd "$ROOT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "${1:-}" = "--smoke" ]; then
  shift
  exec "$VENV/bin/torchrun" --standalone --nproc_per_node "${NPROC:-2}" -m srpo_mcore.smoke \
    --config "${CONFIG:-examples/tiny_cpu.yaml}" "$@"
fi
exec "$VENV/bin/python" -m srpo_mcore.demo "$@"
