#!/usr/bin/env bash
# Evaluation with the paper's protocol (python -m srpo_mcore.eval: greedy, <=4096 new tokens, last
# <answer>) on MathVista, MathVerse, MathVision and MMMU-Pro, on one GPU of one node.
# Submit from the repository root (on a shared filesystem):  sbatch examples/eval.sh
#   (or MODEL=/checkpoints/runs/srpo-grpo-7b/hf OUT=/checkpoints/eval/srpo-7b sbatch examples/eval.sh)
#
# Why not slurm/launch.sh: the evaluator is one process with one in-process vLLM engine, not a
# torchrun job, and it cannot save half-way, so the launcher's torchrun and save-then-requeue
# machinery do not apply. One srun step runs it, with the launcher's pyxis flags; no requeue: the
# outputs appear (atomically) at the end. Rerun with EVAL_ARGS="--limit 50" for a quick look.
# Memory: 7B in bf16 is 16.6 GB of weights, the rest of --gpu-memory-utilization 0.85 is KV cache.
# 32B (67 GB of weights) on one 80 GB GPU needs EVAL_ARGS="--gpu-memory-utilization 0.95" (~10 GB of
# KV cache left; slow, not tried): the evaluator has no tensor-parallel engine yet.
#
# SRPO_DRY_RUN=1 bash examples/eval.sh   prints the srun and eval command lines and exits.
#SBATCH --job-name=srpo-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%x-%j.out
##SBATCH --account=CHANGE_ME      # remove one '#' to set your account
##SBATCH --partition=CHANGE_ME    # remove one '#' to set your partition
set -euo pipefail

# ---- what a user edits -----------------------------------------------------------------------
SRPO_ROOT=${SRPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}          # this repository (shared filesystem)
MODEL=${MODEL:-/checkpoints/runs/srpo-grpo-7b/hf}            # HF checkpoint, or a training checkpoint (exported first)
DATA_ROOT=${DATA_ROOT:-/data/bench}                          # local copies of the benchmarks (layout: eval --help)
BENCHMARKS=${BENCHMARKS:-mathvista,mathverse,mathvision,mmmu_pro}  # name[:split],...
PROMPT=${PROMPT:-srpo}                                       # system prompt: srpo | plain | none
OUT=${OUT:-/checkpoints/eval/srpo-grpo-7b}                   # samples.jsonl, summary.json, summary.md
EVAL_ARGS=${EVAL_ARGS:-}                                     # more eval flags, space-separated (e.g. --limit 50)
CONTAINER_IMAGE=${CONTAINER_IMAGE:-}                         # e.g. registry#srpo-mcore:latest (see Dockerfile); empty = host env
CONTAINER_MOUNTS=${CONTAINER_MOUNTS:-/checkpoints:/checkpoints,/data:/data,$SRPO_ROOT:$SRPO_ROOT}
PYTHON=${PYTHON:-python}                                     # interpreter in the job's environment
# ------------------------------------------------------------------------------------------------
: "${SRPO_DRY_RUN:=0}"

read -r -a extra <<<"$EVAL_ARGS"  # split on whitespace; read does no glob expansion
CMD=(
  "$PYTHON" -m srpo_mcore.eval --model "$MODEL" --benchmarks "$BENCHMARKS" --data-root "$DATA_ROOT"
  --prompt "$PROMPT" --out "$OUT" "${extra[@]}"
)
SRUN=(srun --nodes=1 --ntasks=1 --kill-on-bad-exit=1)
# srun of Slurm 22.05-23.02 does not inherit the job's --cpus-per-task: pass it on explicitly.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then SRUN+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
if [ -n "$CONTAINER_IMAGE" ]; then
  SRUN+=(--container-image="$CONTAINER_IMAGE" --container-workdir="$SRPO_ROOT")
  if [ -n "$CONTAINER_MOUNTS" ]; then SRUN+=(--container-mounts="$CONTAINER_MOUNTS"); fi
fi

if [ "$SRPO_DRY_RUN" = 1 ]; then
  printf 'srun:'; printf ' %q' "${SRUN[@]}"; echo
  printf 'eval:'; printf ' %q' "${CMD[@]}"; echo
  echo "dry run (SRPO_DRY_RUN=1): the commands above were printed, nothing was run" >&2
  exit 0
fi
: "${SLURM_JOB_ID:?eval.sh runs inside a SLURM job (sbatch)}"
cd "$SRPO_ROOT"
echo "[eval $(date +%H:%M:%S)] job $SLURM_JOB_ID: ${SRUN[*]} ${CMD[*]}" >&2
"${SRUN[@]}" "${CMD[@]}"
