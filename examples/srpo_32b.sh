#!/usr/bin/env bash
# STATUS: the launch lines are tested (dry run); the GPU paths it relies on (FP8 through Transformer
# Engine, rollout engines of 4 GPUs inside the 32-GPU job) are written against the real APIs and have
# a gpu test tier, which has not run on a multi-GPU machine yet.
# SRPO stage 2 (GRPO + reflection reward) for Qwen2.5-VL-32B on 4 nodes x 8 H100 (examples/grpo_32b.yaml).
# Submit from the repository root (on a shared filesystem):  sbatch examples/srpo_32b.sh
#
# Layout: see the header of examples/grpo_32b.yaml (TP=8 + SP, PP=2, CP=1 -> DP=2; rollout_tp=4;
# FP8 "hybrid" linear layers through Transformer Engine), with the memory budget per GPU.
#
# Pre-emption/time limit: SLURM sends USR1 10 minutes before the end; the trainers finish their
# step, save a checkpoint and exit, and the job requeues itself and resumes from that checkpoint.
#SBATCH --job-name=srpo-32b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
##SBATCH --account=CHANGE_ME      # remove one '#' to set your account
##SBATCH --partition=CHANGE_ME    # remove one '#' to set your partition

# shellcheck disable=SC2034  # CONFIG, OVERRIDES, DEVICE, ... are read by slurm/launch.sh (sourced at the end)

# ---- what a user edits -----------------------------------------------------------------------
SRPO_ROOT=${SRPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}          # this repository (shared filesystem)
HF_DIR=${HF_DIR:-/checkpoints/srpo-32b-sft}                   # stage-1 SFT model, HF format
TRAIN_FILES=${TRAIN_FILES:-/data/srpo_rl/train.parquet}      # RL prompts (comma-separated list)
OUTPUT_DIR=${OUTPUT_DIR:-/checkpoints/runs}                  # run dirs: <OUTPUT_DIR>/<recipe name>/
CONTAINER_IMAGE=${CONTAINER_IMAGE:-}                         # e.g. registry#srpo-mcore:latest (see Dockerfile); empty = host env
CONTAINER_MOUNTS=${CONTAINER_MOUNTS:-/checkpoints:/checkpoints,/data:/data,$SRPO_ROOT:$SRPO_ROOT}
PYTHON=${PYTHON:-python}                                     # interpreter in the job's environment
# ------------------------------------------------------------------------------------------------

CONFIG=examples/grpo_32b.yaml
OVERRIDES=("model.hf_dir=$HF_DIR" "data.train_files=[$TRAIN_FILES]" "output_dir=$OUTPUT_DIR")
DEVICE=gpu
GPUS_PER_NODE=8
LOG_DIR=$OUTPUT_DIR/slurm-logs
# shellcheck source=slurm/launch.sh
source "$SRPO_ROOT/examples/slurm/launch.sh"
