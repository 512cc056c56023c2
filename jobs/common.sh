# shellcheck shell=bash
# Shared logic of jobs/*.sbatch: argument handling, the torch distributed env from SLURM, the
# container prefix, and the srun launch. Sourced, never run.
#
# Environment read here (all optional):
#   EMPO_CONTAINER_RUNTIME  none (default) | apptainer | singularity | podman | charliecloud | pyxis
#   EMPO_CONTAINER_IMAGE    image: SIF file / docker ref (podman, pyxis) / directory (charliecloud)
#   EMPO_CONTAINER_BINDS    extra binds, comma-separated SRC[:DST[:OPTS]]; the project root and the
#                           submit directory are always bound at their own paths
#   EMPO_CONTAINER_ARGS     extra words for the runtime (e.g. "--env-host" for podman)
#   EMPO_BIN                the empo executable (default: `empo`, looked up on PATH in the container)
#   EMPO_TASKS_PER_NODE     tasks per node of a training stage (default: $SLURM_GPUS_ON_NODE, else 1)
#   EMPO_DRY_RUN=1          print the exact command line instead of running it, exit 0
#   MASTER_PORT             rendezvous port (default: 10000 + job id % 50000)
# Needs EMPO_HOME (the project root) set by the wrapper before sourcing.

empo_die() {
  echo "empo job: error: $*" >&2
  exit 2
}

# empo_parse_args STAGE ARGS...: CONFIG [seed=S] [variant=V] [stage=NAME] [KEY=VALUE | --opt ...]
# Sets EMPO_CONFIG, EMPO_SEED, EMPO_VARIANT, EMPO_STAGE and the array EMPO_ARGS (everything else,
# in order, each word kept whole).
empo_parse_args() {
  local stage=$1
  shift
  [[ $# -ge 1 && $1 != *=* && $1 != -* ]] \
    || empo_die "usage: sbatch [SBATCH OPTIONS] jobs/$stage.sbatch CONFIG [seed=S] [KEY=VALUE ...]"
  EMPO_CONFIG=$1
  shift
  EMPO_SEED="" EMPO_VARIANT="" EMPO_STAGE=""
  EMPO_ARGS=()
  local a
  for a in "$@"; do
    case $a in
      seed=*) EMPO_SEED=${a#seed=} ;;
      variant=*) EMPO_VARIANT=${a#variant=} ;;
      stage=*) EMPO_STAGE=${a#stage=} ;;
      *) EMPO_ARGS+=("$a") ;;
    esac
  done
  [[ -z $EMPO_SEED || $EMPO_SEED =~ ^[0-9]+$ ]] || empo_die "seed must be an integer, got '$EMPO_SEED'"
}

# The torch distributed rendezvous, shared by every task of the job (per-task RANK, LOCAL_RANK and
# WORLD_SIZE are set in each task by empo_launch, from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS).
empo_distributed_env() {
  if [[ -z ${MASTER_ADDR:-} ]]; then
    if [[ -n ${SLURM_JOB_NODELIST:-} ]] && command -v scontrol >/dev/null; then
      MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    else
      MASTER_ADDR=127.0.0.1
    fi
  fi
  MASTER_PORT=${MASTER_PORT:-$((10000 + ${SLURM_JOB_ID:-0} % 50000))}
  export MASTER_ADDR MASTER_PORT
}

# empo_container_prefix: sets the array EMPO_PREFIX (runtime words before the command) and
# EMPO_SRUN_CONTAINER (srun options, pyxis only).
empo_container_prefix() {
  local runtime=${EMPO_CONTAINER_RUNTIME:-none} image=${EMPO_CONTAINER_IMAGE:-}
  local -a binds=() extra=()
  local b name
  EMPO_PREFIX=()
  EMPO_SRUN_CONTAINER=()
  [[ $runtime == none ]] && return 0
  [[ -n $image ]] || empo_die "EMPO_CONTAINER_RUNTIME=$runtime needs EMPO_CONTAINER_IMAGE"
  binds=("$EMPO_HOME:$EMPO_HOME")
  [[ $PWD == "$EMPO_HOME" ]] || binds+=("$PWD:$PWD")
  if [[ -n ${EMPO_CONTAINER_BINDS:-} ]]; then
    IFS=, read -r -a extra <<<"$EMPO_CONTAINER_BINDS"
    binds+=("${extra[@]}")
  fi
  # one bind per destination (runtimes refuse duplicates); the first one wins
  local -A seen=()
  local -a unique=()
  local dst
  for b in "${binds[@]}"; do
    [[ -n $b ]] || continue
    dst=${b#*:}
    dst=${dst%%:*}
    [[ -n ${seen[$dst]:-} ]] && continue
    seen[$dst]=1
    unique+=("$b")
  done
  binds=("${unique[@]}")
  local -a args=()
  # shellcheck disable=SC2206  # EMPO_CONTAINER_ARGS is meant to be split into words
  local -a user_args=(${EMPO_CONTAINER_ARGS:-})
  case $runtime in
    apptainer | singularity)
      [[ -e $image || $image == *://* ]] || empo_die "container image not found: $image"
      for b in "${binds[@]}"; do args+=(--bind "$b"); done
      command -v nvidia-smi >/dev/null 2>&1 && args+=(--nv)
      EMPO_PREFIX=("$runtime" exec "${args[@]}" "${user_args[@]}" --pwd "$PWD" "$image")
      ;;
    podman)
      for b in "${binds[@]}"; do args+=(-v "$b"); done
      # pass the job's environment the stage needs (not PATH/HOME: the image has its own); the
      # per-task torch variables are set just before podman starts (empo_launch)
      args+=(-e RANK -e LOCAL_RANK -e WORLD_SIZE -e LOCAL_WORLD_SIZE -e MASTER_ADDR -e MASTER_PORT)
      for name in $(compgen -e); do
        case $name in
          SLURM_* | EMPO_* | HF_* | TRANSFORMERS_* | TOKENIZERS_* | TORCH_* | NCCL_* | CUDA_VISIBLE_DEVICES \
            | OMP_NUM_THREADS | WANDB_*) args+=(-e "$name") ;;
        esac
      done
      [[ ${SLURM_GPUS_ON_NODE:-0} -gt 0 ]] && args+=(--device nvidia.com/gpu=all)
      EMPO_PREFIX=(podman run --rm --network=host --ipc=host --security-opt=label=disable "${args[@]}" "${user_args[@]}" -w "$PWD" "$image")
      ;;
    charliecloud)
      [[ -d $image ]] || empo_die "charliecloud image directory not found: $image"
      export USER=${USER:-$(id -un)}   # ch-run refuses to start without it
      for b in "${binds[@]}"; do args+=(-b "${b%%:ro}"); done
      EMPO_PREFIX=(ch-run "${args[@]}" "${user_args[@]}" -c "$PWD" "$image" --)
      ;;
    pyxis)
      local IFS=,
      EMPO_SRUN_CONTAINER=(--container-image="$image" --container-mounts="${binds[*]}"
        --container-workdir="$PWD" "${user_args[@]}")
      ;;
    *) empo_die "unknown EMPO_CONTAINER_RUNTIME '$runtime' (allowed: none, apptainer, singularity, podman, charliecloud, pyxis)" ;;
  esac
}

# empo_launch TASKS_PER_NODE CMD...: run CMD as TASKS_PER_NODE tasks on every node of the job
# (srun), each with RANK/LOCAL_RANK/WORLD_SIZE from SLURM, inside the container. Outside SLURM
# (bash jobs/x.sbatch ...) it runs one task directly. Exit status = the command's.
empo_launch() {
  local per_node=$1
  shift
  local nodes=${SLURM_JOB_NUM_NODES:-1}
  empo_distributed_env
  empo_container_prefix
  # per task: torchrun-style env from the task's SLURM vars, then exec the (container) command
  local task_env='export RANK=${SLURM_PROCID:-0} LOCAL_RANK=${SLURM_LOCALID:-0} WORLD_SIZE=${SLURM_NTASKS:-1} LOCAL_WORLD_SIZE=${SLURM_NTASKS_PER_NODE:-1}; exec "$@"'
  local -a cmd
  if [[ -n ${SLURM_JOB_ID:-} ]] && command -v srun >/dev/null; then
    local -a srun_args=(--nodes="$nodes" --ntasks-per-node="$per_node" --ntasks=$((nodes * per_node))
      --kill-on-bad-exit=1)
    [[ -n ${SLURM_CPUS_PER_TASK:-} ]] && srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
    if [[ ${EMPO_CONTAINER_RUNTIME:-none} == pyxis ]]; then
      # the per-task shell runs inside the container
      cmd=(srun "${srun_args[@]}" "${EMPO_SRUN_CONTAINER[@]}" bash -c "$task_env" empo-task "$@")
    else
      cmd=(srun "${srun_args[@]}" bash -c "$task_env" empo-task "${EMPO_PREFIX[@]}" "$@")
    fi
  else
    cmd=(bash -c "$task_env" empo-task "${EMPO_PREFIX[@]}" "$@")
  fi
  if [[ ${EMPO_DRY_RUN:-0} == 1 ]]; then
    echo "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT"
    printf 'command:'
    printf ' %q' "${EMPO_PREFIX[@]}" "$@"
    printf '\nlaunch:'
    printf ' %q' "${cmd[@]}"
    printf '\n'
    return 0
  fi
  echo "empo job ${SLURM_JOB_ID:-local} on $(hostname -s): $(printf '%q ' "$@")" >&2
  "${cmd[@]}"
}

# The empo executable as words (EMPO_BIN may be a multi-word prefix, e.g. "python -m empo.cli").
empo_bin() {
  # shellcheck disable=SC2206
  EMPO=(${EMPO_BIN:-empo})
}

# Tasks per node for training: one per GPU.
empo_train_tasks() {
  local n=${EMPO_TASKS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || n=1
  echo "$n"
}
