#!/usr/bin/env bash
# SRPO stage 2 (GRPO + reflection reward) for Qwen2.5-VL-7B on 1 node x 8 H100 (examples/grpo_7b.yaml).
# Submit from the repository root (on a shared filesystem):  sbatch examples/srpo_7b.sh
#
# Layout (grpo_7b.yaml): TP=2 + sequence parallel, PP=1, CP=1 -> DP=4; rollout_tp=1 (one colocated
# vLLM engine per GPU). Memory per GPU (python -m srpo_mcore.plan --config examples/grpo_7b.yaml
# --set model.preset=7b): bf16 weights 8.3 GB + fp32 grads 15.2 GB + Adam/master state 12 B/param
# sharded over DP4 11.4 GB + activations of a 16k-token micro batch with SP and the MLP recomputed
# 15.7 GB + fp32 logits 10 GB = 60.6 GB in the train phase; 62.9 GB in the rollout phase (trainer
# state + the engine's gpu_memory_utilization=0.35, 28 GB: 15 GB weights + KV cache). Without
# recompute the activations would be 61 GB (106 GB in all: it would not fit).
#
# Pre-emption/time limit: SLURM sends USR1 10 minutes before the end; the trainers finish their
# step, save a checkpoint and exit, and the job requeues itself and resumes from that checkpoint.
#SBATCH --job-name=srpo-7b
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
HF_DIR=${HF_DIR:-/checkpoints/srpo-7b-sft}                   # stage-1 SFT model, HF format
TRAIN_FILES=${TRAIN_FILES:-/data/srpo_rl/train.parquet}      # RL prompts (comma-separated list)
OUTPUT_DIR=${OUTPUT_DIR:-/checkpoints/runs}                  # run dirs: <OUTPUT_DIR>/<recipe name>/
CONTAINER_IMAGE=${CONTAINER_IMAGE:-}                         # e.g. registry#srpo-mcore:latest (see Dockerfile); empty = host env
CONTAINER_MOUNTS=${CONTAINER_MOUNTS:-/checkpoints:/checkpoints,/data:/data,$SRPO_ROOT:$SRPO_ROOT}
PYTHON=${PYTHON:-python}                                     # interpreter in the job's environment
# ------------------------------------------------------------------------------------------------

CONFIG=examples/grpo_7b.yaml
OVERRIDES=("model.hf_dir=$HF_DIR" "data.train_files=[$TRAIN_FILES]" "output_dir=$OUTPUT_DIR")
DEVICE=gpu
GPUS_PER_NODE=8
LOG_DIR=$OUTPUT_DIR/slurm-logs
# shellcheck source=slurm/launch.sh
source "$SRPO_ROOT/examples/slurm/launch.sh"
