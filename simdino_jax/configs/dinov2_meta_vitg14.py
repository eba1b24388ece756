"""DINOv2, Meta's full-size recipe for ViT-g/14 (dinov2/configs/train/vitg14.yaml over ssl_default_config.yaml):
vit_giant2 (width 1536, 40 blocks, 24 heads) with the SwiGLU feed-forward, 12 images per GPU, and the rest as
configs/dinov2_meta_vitl14.py.

Published (facebookresearch/dinov2 README, pretrained models, trained on LVD-142M): ViT-g/14 86.5% linear (87.0%
with registers) on ImageNet-1k. The README gives no ViT-g/14 training command; the paper's batch is 3,072 and a
maintainer gives its GPUs, 256 × 12 (facebookresearch/dinov2 issue #311: "256 gpus, and epoch length 1250, for 500
epochs"). The data defaults to ImageNet-1k (docs/recipes.md, "DINOv2 at full size"). Examples:
  --config=configs/dinov2_meta_vitg14.py                 ViT-g/14, batch 3072 (fsdp and model.remat on a pod)
  --config=configs/dinov2_meta_vitg14.py:registers=4     with 4 register tokens
"""

from simdino_jax.configs import common
from simdino_jax.configs import dinov2_meta


def get_config(arg=None):
  c = dinov2_meta.full_size(batch_per_gpu=12, gpus=256)  # vitg14.yaml l.8 train.batch_size_per_gpu: 12; #311
  args = common.arguments(arg, registers=-1)
  c = common.finish(c, args, model="ViT-g/14")  # vitg14.yaml l.12 student.arch: vit_giant2
  common.apply_registers(c, args.registers)
  return c
