#!/usr/bin/env bash
# The pod table of docs/benchmarks.md: each recipe's train step compiled for Cloud TPU slices from a CPU machine
# (libtpu beside the pinned jax: pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')").
#   launch/pod_table.sh [ROWS_REGEX]   one Markdown row for each line of ROWS below that matches ROWS_REGEX
# SKIP=REGEX leaves out the rows that match it. A row: topology recipe model global_batch [config overrides, comma-separated]. Rows run one after another (a ViT-L
# compile holds a CPU core for minutes and ~10 GiB of memory).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="
v5e:2x4   dino_vanilla       ViT-S/16 512
v5p:2x2x2 dino_vanilla       ViT-S/16 512
v4:2x2x2  dino_vanilla       ViT-S/16 512
v5e:4x4   dino_boosted       ViT-S/16 1024
v5p:2x2x4 dino_boosted       ViT-S/16 1024
v4:2x2x4  dino_boosted       ViT-S/16 1024
v5e:2x4   dino               ViT-B/16 512
v5e:4x4   dino               ViT-B/16 512
v5p:2x2x2 dino               ViT-B/16 512
v4:2x2x2  dino               ViT-B/16 512
v5p:4x8x8 dinov2_meta_vitg14 ViT-g/14 3072 fsdp=True
v5e:2x4   simdino            ViT-B/16 512
v5p:2x2x2 simdino            ViT-B/16 512
v4:2x2x2  simdino            ViT-B/16 512
v5e:2x4   dinov2             ViT-L/16 1024
v5e:8x16  dinov2             ViT-L/16 1024
v5p:2x2x2 dinov2             ViT-L/16 1024
v4:2x2x2  dinov2             ViT-L/16 1024 model.remat=True
v5e:8x16  dinov2_meta        ViT-L/16 2048
v5p:2x4x4 dinov2_meta        ViT-L/16 2048
v4:2x4x4  dinov2_meta        ViT-L/16 2048 model.remat=True
v5e:8x16  simdinov2          ViT-L/16 1024
v5p:2x2x2 simdinov2          ViT-L/16 1024
v4:2x2x2  simdinov2          ViT-L/16 1024 model.remat=True
v4:4x8x8  dinov2_meta_vitg14 ViT-g/14 3072 fsdp=True,model.remat=True
v5e:16x16 dinov2_meta_vitg14 ViT-g/14 3072 fsdp=True,model.remat=True
v5e:2x4   dino_koleo_proto   ViT-B/16 512
v5e:4x4   dino_koleo_proto   ViT-B/16 512
v5p:2x2x2 dino_koleo_proto   ViT-B/16 512
v4:2x2x2  dino_koleo_proto   ViT-B/16 512
v4:2x2x2  dinov2             ViT-L/16 1024
v5e:4x8   dinov2_meta        ViT-L/16 2048
v4:2x4x4  dinov2_meta        ViT-L/16 2048
v5e:2x4   simdinov2          ViT-L/16 1024
v4:2x2x2  simdinov2          ViT-L/16 1024
"
echo "$ROWS" | grep -E -e "${1:-.}" | grep -E -v -e "${SKIP:-^$}" | while read -r topology recipe model batch overrides; do
  [ -n "$topology" ] || continue
  ${PYTHON:-python} -m simdino_jax.tools.benchmark --compile_only --topology="$topology" --methods="$recipe" \
    --models="$model" --batch="$batch" ${overrides:+--set="$overrides"} 2>&1 | grep -E '^\||chips' | grep -v -- '---'
done
