"""SimDINOv2, the official recipe (simdinov2/configs/simdino_config.yaml over the SimDINO repository's
ssl_default_config.yaml, one node of 8 GPUs × 128): cosine alignment on the CLS and masked patches plus the coding
rate per group of 128 images.

Published (RobinWu218/SimDINO README): ViT-L/16 81.1% k-NN, 82.4% linear; ViT-B/16 78.1%, 79.7%.
Paired with configs/dinov2.py. Sources of every value: docs/recipes.md. Examples:
  --config=configs/simdinov2.py                             ViT-L/16 on TFDS imagenet2012
  --config=configs/simdinov2.py:model=ViT-B/16              ViT-B/16
  --config=configs/simdinov2.py:model=ViT-T/4,data=cifar10  CIFAR-10 prepared offline (32/16-pixel crops)
"""

from simdino_jax.configs import common
from simdino_jax.configs import dinov2


def get_config(arg=None):
  c = dinov2.recipe()  # The objective, and what simdino_config.yaml changes with it:
  c.objective.name = "simdinov2"
  c.objective.eps = 0.05
  c.objective.coeff = 1.0
  c.objective.expa_type = 1
  c.objective.gamma = "default"
  c.objective.covariance_group_size = 128  # reduce_cov: 0: ZᵀZ per GPU of 128 images, global n
  c.objective.koleo_weight = 0.0
  c.model.drop_path_rate = 0.2
  c.model.layerscale = 0.1
  c.teacher.momentum = 0.9
  return common.finish(c, common.arguments(arg), model="ViT-L/16")
