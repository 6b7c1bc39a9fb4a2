#!/usr/bin/env bash
# SRPO stage 1 (reflection SFT) for Qwen2.5-VL-7B on 1 node x 8 H100 (examples/sft_7b.yaml).
# Submit from the repository root (on a shared filesystem):  sbatch examples/sft_7b.sh
#
# Layout (sft_7b.yaml): TP=2 + sequence parallel, PP=1, CP=1 -> DP=4. Why it fits 80 GB: 7.6B params / TP2
# = 3.8B per GPU -> bf16 weights 7.6 GB + fp32 grads 15 GB + Adam/master state 12 B/param sharded over DP4
# = 11 GB (distributed optimizer), ~34 GB of state; the frozen vision tower ~1.3 GB; activations of
# 16k-token micro-batches (4k-token samples) with SP stay well under 30 GB. No rollout engine in SFT.
#
# Pre-emption/time limit: SLURM sends USR1 10 minutes before the end; the trainers finish their
# step, save a checkpoint and exit, and the job requeues itself and resumes from that checkpoint.
#SBATCH --job-name=srpo-sft-7b
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
##SBATCH --account=CHANGE_ME      # remove one '#' to set your account
##SBATCH --partition=CHANGE_ME    # remove one '#' to set your partition

# shellcheck disable=SC2034  # CONFIG, OVERRIDES, DEVICE, ... are read by slurm/launch.sh (sourced at the end)

# ---- what a user edits -----------------------------------------------------------------------
SRPO_ROOT=${SRPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}          # this repository (shared filesystem)
HF_DIR=${HF_DIR:-/checkpoints/Qwen2.5-VL-7B-Instruct}         # the base model, HF format
TRAIN_FILES=${TRAIN_FILES:-/data/reflection/sft.jsonl}        # the reflection set (comma-separated list)
OUTPUT_DIR=${OUTPUT_DIR:-/checkpoints/runs}                  # run dirs: <OUTPUT_DIR>/<recipe name>/
CONTAINER_IMAGE=${CONTAINER_IMAGE:-}                         # e.g. registry#srpo-mcore:latest (see Dockerfile); empty = host env
CONTAINER_MOUNTS=${CONTAINER_MOUNTS:-/checkpoints:/checkpoints,/data:/data,$SRPO_ROOT:$SRPO_ROOT}
PYTHON=${PYTHON:-python}                                     # interpreter in the job's environment
# ------------------------------------------------------------------------------------------------

CONFIG=examples/sft_7b.yaml
MODULE=srpo_mcore.sft
OVERRIDES=("model.hf_dir=$HF_DIR" "data.train_files=[$TRAIN_FILES]" "output_dir=$OUTPUT_DIR")
DEVICE=gpu
GPUS_PER_NODE=8
LOG_DIR=$OUTPUT_DIR/slurm-logs
# shellcheck source=slurm/launch.sh
source "$SRPO_ROOT/examples/slurm/launch.sh"
