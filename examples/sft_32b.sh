#!/usr/bin/env bash
# SRPO stage 1 (reflection SFT) for Qwen2.5-VL-32B on 4 nodes x 8 H100 (examples/sft_32b.yaml).
# Submit from the repository root (on a shared filesystem):  sbatch examples/sft_32b.sh
#
# Layout (sft_32b.yaml): TP=8 + sequence parallel, PP=2, CP=1 -> DP=2. Why it fits 80 GB: the language
# model's 32.76B params / (TP8 x PP2) = 2.05B per GPU -> bf16 weights 4.1 GB + fp32 grads 8.2 GB +
# fp32 master/Adam state 12 B/param = 24.6 GB sharded over DP2 = 12.3 GB (distributed optimizer),
# ~25 GB of state; the frozen vision tower ~1.4 GB; activations of 8k-token micro-batches (two 4k
# samples) with SP, 32 layers per stage, two in flight under 1F1B, ~17 GB; ~46 GB in all. TP=8 stays
# inside a node's NVLink, 40 heads / 8 KV groups divide by 8, 64 layers split 32 + 32. Node count:
# one node (TP8 only) needs 4.1B x 18 B = 74 GB of state per GPU, too much; two (TP8 x PP2 x DP1,
# Adam state not sharded: 36.9 GB of state, ~58 GB in all) fit, at half the speed: set --nodes=2
# below if nodes are scarce. Four give DP2 and are srpo_32b.sh's allocation. No rollout engine in SFT.
#
# Pre-emption/time limit: SLURM sends USR1 10 minutes before the end; the trainers finish their
# step, save a checkpoint and exit, and the job requeues itself and resumes from that checkpoint.
#SBATCH --job-name=srpo-sft-32b
#SBATCH --nodes=4
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
HF_DIR=${HF_DIR:-/checkpoints/Qwen2.5-VL-32B-Instruct}        # the base model, HF format
TRAIN_FILES=${TRAIN_FILES:-/data/reflection/sft.jsonl}        # the reflection set (comma-separated list)
OUTPUT_DIR=${OUTPUT_DIR:-/checkpoints/runs}                  # run dirs: <OUTPUT_DIR>/<recipe name>/
CONTAINER_IMAGE=${CONTAINER_IMAGE:-}                         # e.g. registry#srpo-mcore:latest (see Dockerfile); empty = host env
CONTAINER_MOUNTS=${CONTAINER_MOUNTS:-/checkpoints:/checkpoints,/data:/data,$SRPO_ROOT:$SRPO_ROOT}
PYTHON=${PYTHON:-python}                                     # interpreter in the job's environment
# ------------------------------------------------------------------------------------------------

CONFIG=examples/sft_32b.yaml
MODULE=srpo_mcore.sft
OVERRIDES=("model.hf_dir=$HF_DIR" "data.train_files=[$TRAIN_FILES]" "output_dir=$OUTPUT_DIR")
DEVICE=gpu
GPUS_PER_NODE=8
LOG_DIR=$OUTPUT_DIR/slurm-logs
# shellcheck source=slurm/launch.sh
source "$SRPO_ROOT/examples/slurm/launch.sh"
