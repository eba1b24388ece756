#!/usr/bin/env bash
# Copy the code to every worker of a Cloud TPU VM pod, install it, and start one process per host.
# jax.distributed.initialize() discovers the pod by itself (simdino_jax.main calls it when it sees a pod).
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh configs/dino.py:model=ViT-B/16 gs://bucket/dino_b16 \
#     --config.data.data_dir=gs://bucket/tfds
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
CONFIG=${1:?usage: launch/tpu_pod.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: launch/tpu_pod.sh CONFIG WORKDIR [overrides...]}
shift 2
cd "$(dirname "$0")/.."
REMOTE_DIR=simdino_jax
tar czf /tmp/simdino_jax.tgz --exclude=.venv --exclude=.git .
gcloud compute tpus tpu-vm scp /tmp/simdino_jax.tgz "$TPU_NAME":/tmp/ --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "
  set -e; mkdir -p $REMOTE_DIR && tar xzf /tmp/simdino_jax.tgz -C $REMOTE_DIR && cd $REMOTE_DIR &&
  python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]' &&
  .venv/bin/python -m simdino_jax.main --config=$CONFIG --workdir=$WORKDIR $*"
