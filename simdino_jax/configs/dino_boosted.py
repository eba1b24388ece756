"""DINO, the boosted run of the official README: 300 epochs, teacher temperature 0.04 → 0.07 over 30 epochs,
no last-layer normalization, 16 GPUs × 64.

Published (facebookresearch/dino README, "Boosting DINO performance"): ViT-S/16 73.3% k-NN, 76.0% linear.
Sources of every value: docs/recipes.md. Examples:
  --config=configs/dino_boosted.py                   ViT-S/16 on TFDS imagenet2012
  --config=configs/dino_boosted.py:data=cifar10      CIFAR-10 prepared offline (ViT-T/4, 32/16-pixel crops)
"""

from simdino_jax.configs import common
from simdino_jax.configs import dino_vanilla


def get_config(arg=None):
  c = dino_vanilla.recipe()  # The README's boosted command changes these flags of the vanilla run:
  c.model.head.norm_last_layer = False
  c.batch_size = 1024  # 2 nodes × 8 GPUs × 64
  c.total_epochs = 300.0
  c.teacher.temp = 0.07
  c.teacher.warmup_temp_epochs = 30  # per epoch, as main_dino.py's DINOLoss indexes it
  return common.finish(c, common.arguments(arg), model="ViT-S/16")
