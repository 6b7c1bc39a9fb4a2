#!/usr/bin/env bash
# Shared SLURM launcher of srpo-mcore: sourced at the end of every sbatch script under examples/.
#
#   batch mode (the sbatch script sources this file): one `srun` step with one task per node; each
#   task re-runs this file in node mode. Requeue-safe: on the warning signal USR1 (ask for it with
#   `#SBATCH --signal=B:USR1@<seconds>`) it asks the trainers to stop, waits for them to save a
#   checkpoint and exit 0, then `scontrol requeue`s the job; the requeued job runs the same command
#   and the trainer resumes from <output_dir>/<name>/checkpoints/latest.
#   node mode (`launch.sh --node`, run by srun on every node): starts torchrun with a c10d rendezvous
#   on the first host of the job and, when the stop file appears, sends SIGTERM to the workers only.
#
# Why a stop file and not a Slurm signal: with proctrack/cgroup a signal to a step reaches every
# process of it, torchrun included, and torchrun answers SIGTERM by killing its workers after 30 s —
# too short for a 32B step to finish and save. The run dir is on a shared filesystem anyway.
#
# Inputs (set by the sbatch script; all but CONFIG have defaults):
#   CONFIG          recipe YAML (relative to SRPO_ROOT or absolute)
#   OVERRIDES       bash array of `key=value` overrides set by the script (paths of the user)
#   SRPO_OVERRIDES  extra whitespace-separated `key=value` overrides from the environment (no spaces
#                   inside a value; not glob-expanded)
#   GPUS_PER_NODE   processes per node (GPUs; the CPU recipe uses 2 processes), DEVICE gpu|cpu
#   MODULE          python module run by torchrun (srpo_mcore.train)
#   PYTHON          interpreter inside the job/container (torchrun runs as `$PYTHON -m torch.distributed.run`)
#   LOG_DIR         per-job logs: <LOG_DIR>/<job id>/node-<n>.log (appended across requeues)
#   CONTAINER_IMAGE, CONTAINER_MOUNTS   pyxis/enroot container for the step (optional)
#   RDZV_PORT       rendezvous port on the first node (default derived from the job id)
#   SRPO_DRY_RUN=1  print the srun and per-node torchrun command lines and exit (0). Outside a job
#                   (a login node) it shows the job as it would run on the sbatch script's
#                   `#SBATCH --nodes`, with placeholder host names and job id, and says so.
set -euo pipefail

: "${SRPO_ROOT:=${SLURM_SUBMIT_DIR:-$PWD}}"
: "${MODULE:=srpo_mcore.train}"
: "${GPUS_PER_NODE:=8}"
: "${DEVICE:=gpu}"
: "${PYTHON:=python}"
: "${LOG_DIR:=$SRPO_ROOT/logs}"
: "${CONTAINER_IMAGE:=}"
: "${CONTAINER_MOUNTS:=}"
: "${SRPO_OVERRIDES:=}"
: "${SRPO_DRY_RUN:=0}"
DRY_PLACEHOLDERS=0
if [ "$SRPO_DRY_RUN" = 1 ] && [ -z "${SLURM_JOB_ID:-}" ]; then
  # No allocation: take the node count from the sbatch script that sourced this file.
  script=${BASH_SOURCE[1]:-$0}
  nodes=$(sed -n 's/^#SBATCH[[:space:]]\{1,\}--nodes=\([0-9]\{1,\}\).*/\1/p' "$script" | head -n 1)
  SLURM_JOB_ID=0
  SLURM_JOB_NUM_NODES=${nodes:-1}
  DRY_PLACEHOLDERS=1
  echo "dry run without a SLURM allocation: the job as it would run on the ${SLURM_JOB_NUM_NODES} node(s) of" \
    "$(basename "$script")'s #SBATCH --nodes; host names (node-001, ...) and job id 0 are placeholders" >&2
fi
JOB_ID=${SLURM_JOB_ID:?launch.sh runs inside a SLURM job (sbatch); SRPO_DRY_RUN=1 shows the commands without one}
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
RDZV_PORT=${RDZV_PORT:-$((20000 + JOB_ID % 20000))}
JOB_LOG_DIR=$LOG_DIR/$JOB_ID
# One stop file per attempt: a requeued attempt must not see the previous attempt's request.
STOP_FILE=$JOB_LOG_DIR/stop.${SLURM_RESTART_COUNT:-0}

log() { echo "[launch $(date +%H:%M:%S)] $*" >&2; }

# Environment of the workers, set deliberately on GPU (each line says why).
gpu_env() {
  # Megatron's TP/SP communication overlap relies on kernels being issued in order on one queue.
  export CUDA_DEVICE_MAX_CONNECTIONS=1
  # Surface NCCL failures as errors (and kill the job) instead of hangs until the time limit.
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
  # NCCL frees collective buffers without CUDA recordStream: lower, more predictable peak memory.
  export TORCH_NCCL_AVOID_RECORD_STREAMS=1
  # Warnings only; set NCCL_DEBUG=INFO in the environment to debug topology/transport choices.
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  # InfiniBand adapters time out after 4.096 us * 2^22 (~17 s): rides out transient fabric hiccups.
  export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
  # NOT set: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True — vLLM's sleep-mode allocator (colocated
  # rollout frees its KV cache while training) refuses to run with it.
  # CPU threads per process (tokenizer, reward workers spawn their own): 8 x 8 = the 64 cores asked for.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
}

cpu_env() {
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one core per process on the tiny CPU recipe
  export CUDA_VISIBLE_DEVICES=""
}

# The command every node runs: torchrun, rendezvous at the first host of the job's node list.
torchrun_cmd() {
  local head=node-001
  if [ "$DRY_PLACEHOLDERS" = 0 ]; then head=$(scontrol show hostnames "${SLURM_JOB_NODELIST:?}" | head -n 1); fi
  local -a sets=() extra=()
  local kv
  for kv in "${OVERRIDES[@]}"; do sets+=(--set "$kv"); done
  read -r -a extra <<<"$SRPO_OVERRIDES"  # split on whitespace; read does no glob expansion
  for kv in "${extra[@]}"; do sets+=(--set "$kv"); done
  CMD=(
    "$PYTHON" -m torch.distributed.run
    --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE"
    --rdzv_backend=c10d --rdzv_endpoint="$head:$RDZV_PORT" --rdzv_id="$JOB_ID"
    --max_restarts=0
    -m "$MODULE" --config "${CONFIG:?set CONFIG to a recipe}" "${sets[@]}"
  )
}

srun_cmd() {
  SRUN=(
    srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1
    --open-mode=append --output="$JOB_LOG_DIR/node-%n.log"
  )
  # srun of Slurm 22.05-23.02 does not inherit the job's --cpus-per-task: pass it on explicitly.
  if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    SRUN+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  elif [ "$DEVICE" = cpu ]; then
    SRUN+=(--cpus-per-task="$GPUS_PER_NODE")
  fi
  if [ -n "$CONTAINER_IMAGE" ]; then
    SRUN+=(--container-image="$CONTAINER_IMAGE" --container-workdir="$SRPO_ROOT")
    if [ -n "$CONTAINER_MOUNTS" ]; then SRUN+=(--container-mounts="$CONTAINER_MOUNTS"); fi
  fi
  SRUN+=(bash "$SRPO_ROOT/examples/slurm/launch.sh" --node)
}

# ---- node mode: one per node, under srun ----------------------------------------------------
run_node() {
  if [ "$DEVICE" = cpu ]; then cpu_env; else gpu_env; fi
  torchrun_cmd
  cd "$SRPO_ROOT"
  log "node $(hostname) (${SLURM_NODEID:-0}/$NNODES): ${CMD[*]}"
  "${CMD[@]}" &
  local tr=$! stopped=0
  while kill -0 "$tr" 2>/dev/null; do
    if [ "$stopped" = 0 ] && [ -e "$STOP_FILE" ]; then
      # SIGTERM to the workers (children of this torchrun) only: they finish the step, save, exit 0.
      log "stop requested: SIGTERM to the workers of torchrun $tr"
      pkill -TERM -P "$tr" || true
      stopped=1
    fi
    sleep 1
  done
  wait "$tr"
}

# ---- batch mode: the sbatch script ------------------------------------------------------------
REQUEUE=0
on_usr1() {
  log "USR1 (time limit/pre-emption warning): asking the trainers to save and stop"
  REQUEUE=1
  touch "$STOP_FILE"
}

run_batch() {
  trap on_usr1 USR1  # first: an untrapped USR1 would end the batch shell without a checkpoint
  mkdir -p "$JOB_LOG_DIR"
  rm -f "$STOP_FILE"
  srun_cmd
  log "job $JOB_ID attempt ${SLURM_RESTART_COUNT:-0} on $NNODES node(s): ${SRUN[*]}"
  "${SRUN[@]}" &
  local step=$! rc=0
  # `wait` returns early (status > 128) when a trapped signal arrives: wait again until srun ends.
  while true; do
    rc=0
    wait "$step" || rc=$?
    kill -0 "$step" 2>/dev/null || break
  done
  log "training step exited with $rc"
  # (A warning that lands after the last step requeues a finished run: the rerun resumes at the end
  # and exits at once.)
  if [ "$REQUEUE" = 1 ] && [ "$rc" = 0 ]; then
    log "checkpoint saved; requeueing job $JOB_ID (it resumes from the latest checkpoint)"
    scontrol requeue "$JOB_ID"
  fi
  return "$rc"
}

if [ "${1:-}" = --node ]; then
  # srun passes the batch script's environment, so CONFIG, DEVICE, ... (exported below) arrive here.
  read -r -a OVERRIDES <<<"${SRPO_SCRIPT_OVERRIDES:-}"
  run_node
  exit $?
fi

declare -p OVERRIDES >/dev/null 2>&1 || OVERRIDES=()
# Arrays do not travel through the environment: pass the script's overrides to node mode as a string.
export SRPO_SCRIPT_OVERRIDES="${OVERRIDES[*]}"
export SRPO_ROOT MODULE GPUS_PER_NODE DEVICE PYTHON LOG_DIR CONFIG SRPO_OVERRIDES RDZV_PORT
if [ "$SRPO_DRY_RUN" = 1 ]; then
  srun_cmd
  torchrun_cmd
  printf 'srun:'; printf ' %q' "${SRUN[@]}"; echo
  printf 'torchrun:'; printf ' %q' "${CMD[@]}"; echo
  echo "dry run (SRPO_DRY_RUN=1): the commands above were printed, nothing was run" >&2
  exit 0
fi
run_batch
exit $?
