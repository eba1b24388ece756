#!/usr/bin/env bash
# The accelerator check: every figure of one GPU in one command (see launch/README.md and simdino_jax/tools/gpu_check.py).
#   launch/gpu_check.sh prepare DIR     here, once: wheels the GPU image lacks + the compact CIFAR-10 of DIR
#                                       (train.npz, test.npz) into .gpu_check/
#   launch/gpu_check.sh run OUT [...]   on the GPU machine (carry .gpu_check): installs the wheels, runs the check
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(ml_collections==1.1.0)  # pure Python; the GPU image has JAX, flax, optax, orbax, etils, absl
case "${1:-}" in
  prepare)
    SOURCE=${2:?usage: launch/gpu_check.sh prepare COMPACT_CIFAR10_DIR (holding train.npz and test.npz)}
    mkdir -p .gpu_check/wheels .gpu_check/cifar10_compact
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform any -d .gpu_check/wheels "${WHEELS[@]}"
    install -m 644 "$SOURCE"/{train,test}.npz .gpu_check/cifar10_compact/
    du -sh .gpu_check
    ;;
  run)
    OUT_DIR=${2:?usage: launch/gpu_check.sh run OUT_DIR [flags...]}
    shift 2
    if ! python3 -c 'import ml_collections' 2>/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_check_site \
        .gpu_check/wheels/*.whl
      export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
    fi
    mkdir -p "$OUT_DIR"
    PYTHONUNBUFFERED=1 python3 -m simdino_jax.tools.gpu_check --out="$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/log.txt"
    ;;
  *)
    echo "usage: launch/gpu_check.sh prepare COMPACT_CIFAR10_DIR | run OUT_DIR [flags...]" >&2
    exit 2
    ;;
esac
