"""DINOv2, Meta's full-size recipe for ViT-L/14 (dinov2/configs/train/vitl14.yaml over ssl_default_config.yaml, the
README's "Long setup": 12 nodes × 8 GPUs × 32): the SwiGLU feed-forward, a separate iBOT head, 131,072 prototypes,
Sinkhorn-Knopp centering, 500 "epochs" of 1,250 iterations.

Published (facebookresearch/dinov2 README, "Long setup", on ImageNet-22k): ViT-L/14 82.0% k-NN, 84.5% linear on
ImageNet-1k. The data here defaults to ImageNet-1k (`data=imagenet2012`; docs/recipes.md). Every value's source:
docs/recipes.md, "DINOv2 at full size". Examples:
  --config=configs/dinov2_meta_vitl14.py                 ViT-L/14, batch 3072
  --config=configs/dinov2_meta_vitl14.py:registers=4     with 4 register tokens (DINOv2's _reg4 releases)
"""

from simdino_jax.configs import common
from simdino_jax.configs import dinov2_meta


def get_config(arg=None):
  c = dinov2_meta.full_size(batch_per_gpu=32, gpus=96)  # README "Long setup": --nodes 12 (96 GPUs)
  args = common.arguments(arg, registers=-1)
  c = common.finish(c, args, model="ViT-L/14")  # l.12 student.arch: vit_large
  common.apply_registers(c, args.registers)
  return c
