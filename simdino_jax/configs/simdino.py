"""SimDINO, the official recipe (the README command: 8 GPUs × 64, 10 local crops, eps 0.05, coeff 1): cosine
alignment plus the coding rate, its covariance taken per group of 64 images as on each of the 8 GPUs.

Published (RobinWu218/SimDINO README): ViT-B/16 74.9% k-NN, 77.3% linear; ViT-L/16 75.6%, 77.4%.
Paired with configs/dino.py. Sources of every value: docs/recipes.md. Examples:
  --config=configs/simdino.py                             ViT-B/16 on TFDS imagenet2012
  --config=configs/simdino.py:model=ViT-L/16              ViT-L/16 (also ViT-S/16)
  --config=configs/simdino.py:model=ViT-T/4,data=cifar10  CIFAR-10 prepared offline (32/16-pixel crops)
"""

from simdino_jax.configs import common
from simdino_jax.configs import dino


def get_config(arg=None):
  c = dino.recipe()  # Everything but the objective and its head is the DINO arm's (teacher temperatures unused).
  c.objective.name = "simdino"
  c.objective.eps = 0.05
  c.objective.coeff = 1.0
  c.objective.expa_type = 1
  c.objective.gamma = "default"
  c.objective.covariance_group_size = 64  # reduce_cov=0: ZᵀZ per GPU of 64 images, global n
  c.model.head.bottleneck_dim = 256
  return common.finish(c, common.arguments(arg), model="ViT-B/16")
