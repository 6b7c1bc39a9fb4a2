#!/usr/bin/env bash
# The whole SRPO pipeline on the synthetic task (the README's main job, examples/srpo_tiny_cpu.yaml) as a
# SLURM job: 1 node, 2 CPUs, no GPU. Submit from the repository root, after tools/env.sh:
#
#   sbatch examples/srpo_tiny_cpu.sh
#   DEMO_ARGS="--set grpo.train.steps=10" sbatch examples/srpo_tiny_cpu.sh
#
# One srun step runs `python -m srpo_mcore.demo`, which starts each training stage under torchrun on
# this node (2 processes, TP=2). No requeue: the pipeline is resumable by stage, so submitting the same
# job again continues an interrupted run (finished stages are skipped, a trainer resumes from its
# checkpoint). Report: <OUTPUT_DIR>/srpo-tiny-cpu/report.md; stage logs next to it under logs/.
#SBATCH --job-name=srpo-demo
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=00:45:00
#SBATCH --output=slurm-%x-%j.out
##SBATCH --account=CHANGE_ME      # remove one '#' to set your account
##SBATCH --partition=CHANGE_ME    # remove one '#' to set your partition
set -euo pipefail

# ---- what a user edits -----------------------------------------------------------------------
SRPO_ROOT=${SRPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}              # this repository (shared filesystem)
PYTHON=${PYTHON:-$SRPO_ROOT/.venv/bin/python}                   # the environment of tools/env.sh
OUTPUT_DIR=${OUTPUT_DIR:-$SRPO_ROOT/runs}                       # run dir: <OUTPUT_DIR>/srpo-tiny-cpu/
DEMO_ARGS=${DEMO_ARGS:-}                                        # more demo flags, space-separated
# ------------------------------------------------------------------------------------------------
: "${SRPO_DRY_RUN:=0}"

read -r -a extra <<<"$DEMO_ARGS"  # split on whitespace; read does no glob expansion
CMD=("$PYTHON" -m srpo_mcore.demo --config "$SRPO_ROOT/examples/srpo_tiny_cpu.yaml" --set "output_dir=$OUTPUT_DIR"
  --no-progress "${extra[@]}")
SRUN=(srun --nodes=1 --ntasks=1 --kill-on-bad-exit=1)
# srun of Slurm 22.05-23.02 does not inherit the job's --cpus-per-task: pass it on explicitly.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then SRUN+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi

if [ "$SRPO_DRY_RUN" = 1 ]; then
  printf 'srun:'; printf ' %q' "${SRUN[@]}"; echo
  printf 'demo:'; printf ' %q' "${CMD[@]}"; echo
  echo "dry run (SRPO_DRY_RUN=1): the commands above were printed, nothing was run" >&2
  exit 0
fi
: "${SLURM_JOB_ID:?srpo_tiny_cpu.sh runs inside a SLURM job (sbatch)}"
cd "$SRPO_ROOT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "[srpo-demo $(date +%H:%M:%S)] job $SLURM_JOB_ID: ${SRUN[*]} ${CMD[*]}" >&2
"${SRUN[@]}" "${CMD[@]}"
