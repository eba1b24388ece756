#!/usr/bin/env bash
# Train on this machine (all its local devices), in NUM_PROCESSES processes (default 1; jax.distributed on localhost).
#   launch/local.sh configs/dino.py:model=ViT-T/4,data=cifar10 /tmp/dino_cifar [--config.x=y ...]
#   NUM_PROCESSES=2 MAX_RESTARTS=3 launch/local.sh configs/digits.py /tmp/digits
# When a process fails, the others stop (docs/operations.md, "Dead workers and restarts") and the whole job starts
# again, up to MAX_RESTARTS times (default 0, like torchrun's --max-restarts), resuming from the latest checkpoint.
set -euo pipefail
usage="usage: [NUM_PROCESSES=N] [MAX_RESTARTS=R] launch/local.sh CONFIG WORKDIR [overrides...]"
CONFIG=${1:?$usage}
WORKDIR=${2:?$usage}
shift 2
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
processes=${NUM_PROCESSES:-1}
max_restarts=${MAX_RESTARTS:-0}

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])'; }

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true; wait' TERM INT
for ((attempt = 0; ; attempt++)); do
  pids=()
  if ((processes == 1)); then
    "$python" -m simdino_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" &
    pids+=($!)
  else
    port=$(free_port)
    for ((i = 0; i < processes; i++)); do
      "$python" -m simdino_jax.main --config="$CONFIG" --workdir="$WORKDIR" --coordinator_address="localhost:$port" \
        --num_processes="$processes" --process_id="$i" "$@" &
      pids+=($!)
    done
  fi
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || { code=$?; ((status)) || status=$code; }; done
  if ((status == 0)); then exit 0; fi
  if ((attempt >= max_restarts)); then
    echo "launch/local.sh: the job failed (exit status $status) after $attempt restart(s) of $max_restarts." >&2
    exit "$status"
  fi
  echo "launch/local.sh: a process failed (exit status $status); restart $((attempt + 1)) of $max_restarts from the" \
    "latest checkpoint in $WORKDIR." >&2
done
