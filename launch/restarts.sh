#!/usr/bin/env bash
# Runs one worker's command again after a failure, up to MAX_RESTARTS times (default 0, like torchrun's
# --max-restarts); launch/tpu_pod.sh runs every worker of a pod under it:
#   MAX_RESTARTS=3 launch/restarts.sh .venv/bin/python -m simdino_jax.main --config=... --workdir=gs://...
# When one worker dies, the others stop within ~10 s (docs/operations.md, "Dead workers and restarts"), so every
# worker's attempt fails together. Before its next attempt a worker waits RESTART_DELAY_S (default 45 s, more than
# the others take to stop), so that no new attempt meets an old one; jax.distributed's start-up then waits for all
# workers, and the run resumes from its latest checkpoint.
set -uo pipefail
: "${1:?usage: [MAX_RESTARTS=R] [RESTART_DELAY_S=S] launch/restarts.sh COMMAND [ARGS...]}"
max_restarts=${MAX_RESTARTS:-0}
delay=${RESTART_DELAY_S:-45}
for ((attempt = 0; ; attempt++)); do
  "$@"
  status=$?
  if ((status == 0)); then exit 0; fi
  if ((attempt >= max_restarts)); then
    echo "launch/restarts.sh: the command failed (exit status $status) after $attempt restart(s) of $max_restarts." >&2
    exit "$status"
  fi
  echo "launch/restarts.sh: the command failed (exit status $status); restart $((attempt + 1)) of $max_restarts" \
    "in $delay s, from the latest checkpoint." >&2
  sleep "$delay"
done
