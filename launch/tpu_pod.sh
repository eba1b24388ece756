#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice, from your workstation:
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh configs/dino.py:model=ViT-B/16 gs://bucket/dino_b16 \
#     --config.data.data_dir=gs://bucket/tfds
# Copies this checkout to ~/simdino_jax on every worker, keeps one Python >= 3.11 environment there
# (~/simdino_jax/.venv, made by uv on the first launch since stock TPU VM images ship Python 3.10, reinstalled only
# when requirements.txt changes), with jax[tpu] and without TensorFlow (WITH_TF=1 adds it, for dataset preparation), then
# starts the run detached (setsid nohup: an ssh drop does not stop it). jax.distributed finds the pod by itself
# (--distributed=auto). After a worker failure the whole job starts again, up to MAX_RESTARTS times (default 0),
# resuming from the latest checkpoint: every worker runs under launch/restarts.sh (RESTART_DELAY_S between attempts).
# Every worker logs to ~/simdino_jax/logs/RUN.worker<N>.log and writes its pid (that of its restart loop) next to it:
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command 'tail -n 3 ~/simdino_jax/logs/*.log'
#   gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
#     --command 'for f in ~/simdino_jax/logs/*.pid; do kill -TERM -- -$(cat $f); done'  # Saves, then stops.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
usage="usage: TPU_NAME=... ZONE=... launch/tpu_pod.sh CONFIG WORKDIR [--config.x=y ...]"
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
run=${RUN_NAME:-$(date +%Y%m%d-%H%M%S)}
for n in "${MAX_RESTARTS:-0}" "${RESTART_DELAY_S:-45}"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "MAX_RESTARTS and RESTART_DELAY_S take whole numbers, not '$n'." >&2; exit 2; }
done
tf_packages=""
if [[ "${WITH_TF:-0}" == 1 ]]; then tf_packages="-r requirements-tf.txt"; fi
cd "$(dirname "$0")/.."

archive=$(mktemp /tmp/simdino_jax.XXXXXX.tgz)
trap 'rm -f "$archive"' EXIT
tar czf "$archive" --exclude=.venv --exclude=.git --exclude=__pycache__ --exclude=.pytest_cache .
gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":/tmp/simdino_jax.tgz --zone="$ZONE" --worker=all

# Every argument quoted for the remote shell, as given here.
train_args=$(printf '%q ' "--config=$config" "--workdir=$workdir" "$@")
remote=$(cat <<REMOTE
set -euo pipefail
mkdir -p ~/simdino_jax/logs && cd ~/simdino_jax
find . -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +
tar xzf /tmp/simdino_jax.tgz
if [[ ! -x .venv/bin/python ]]; then
  python3 -m pip install --user -q uv
  ~/.local/bin/uv venv --python 3.11 .venv
fi
stamp=\$(sha256sum < requirements.txt | cut -c1-16)-tf${WITH_TF:-0}
if [[ "\$(cat .venv/.installed 2>/dev/null)" != "\$stamp" ]]; then
  ~/.local/bin/uv pip install --python .venv/bin/python -q -r requirements.txt 'jax[tpu]' $tf_packages
  echo "\$stamp" > .venv/.installed
fi
worker=\$(curl -sf -H Metadata-Flavor:Google \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)
log=logs/$run.worker\$worker.log
MAX_RESTARTS=${MAX_RESTARTS:-0} RESTART_DELAY_S=${RESTART_DELAY_S:-45} \\
  setsid nohup launch/restarts.sh .venv/bin/python -m simdino_jax.main $train_args > "\$log" 2>&1 < /dev/null &
echo \$! > "logs/$run.worker\$worker.pid"
echo "worker \$worker: started (pid \$!), log ~/simdino_jax/\$log"
REMOTE
)
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "$remote"
