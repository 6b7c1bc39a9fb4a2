#!/usr/bin/env bash
# SRPO stage 2 (GRPO) on the tiny random Qwen2.5-VL, through the same SLURM machinery as the big runs:
# 1 node, 2 CPU processes (the recipe's TP=2), no GPU. Submit from the repository root:
#
#   .venv/bin/python -m srpo_mcore.data.synthetic --out data/synthetic --n-train 64 --n-test 16 --seed 0
#   sbatch examples/grpo_tiny_cpu.sh
#
# Extra recipe overrides: SRPO_OVERRIDES="train.steps=3 rollout.n=4" sbatch examples/grpo_tiny_cpu.sh
# Logs: <OUTPUT_DIR>/slurm-logs/<job id>/node-0.log; run dir: <OUTPUT_DIR>/grpo-tiny-cpu/.
#SBATCH --job-name=srpo-tiny-cpu
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=00:30:00
#SBATCH --signal=B:USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

# shellcheck disable=SC2034  # CONFIG, OVERRIDES, DEVICE, ... are read by slurm/launch.sh (sourced at the end)

# ---- what a user edits -----------------------------------------------------------------------
SRPO_ROOT=${SRPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}              # this repository (shared filesystem)
PYTHON=${PYTHON:-$SRPO_ROOT/.venv/bin/python}                   # the environment of tools/env.sh
HF_DIR=${HF_DIR:-}                                              # empty: build the tiny random checkpoint
TRAIN_FILES=${TRAIN_FILES:-$SRPO_ROOT/data/synthetic/train.jsonl}
OUTPUT_DIR=${OUTPUT_DIR:-$SRPO_ROOT/runs}
# ------------------------------------------------------------------------------------------------

if [ -z "$HF_DIR" ]; then HF_DIR=$("$PYTHON" -m srpo_mcore.tiny.checkpoints gqa); fi
CONFIG=examples/grpo_tiny_cpu.yaml
OVERRIDES=("model.hf_dir=$HF_DIR" "data.train_files=[$TRAIN_FILES]" "output_dir=$OUTPUT_DIR")
DEVICE=cpu
GPUS_PER_NODE=2  # processes per node: the recipe's parallel.tp
LOG_DIR=$OUTPUT_DIR/slurm-logs
# shellcheck source=slurm/launch.sh
source "$SRPO_ROOT/examples/slurm/launch.sh"
