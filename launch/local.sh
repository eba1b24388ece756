#!/usr/bin/env bash
# Train on this machine (all its local devices).
#   launch/local.sh configs/dino.py:model=ViT-T/4,data=cifar10 /tmp/dino_cifar [--config.x=y ...]
set -euo pipefail
CONFIG=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
cd "$(dirname "$0")/.."
exec python -m simdino_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
