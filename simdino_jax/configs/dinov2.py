"""DINOv2 as the SimDINO paper trains it against SimDINOv2 (configs/simdinov2.py): Meta's recipe
(configs/dinov2_meta.py) with SimDINOv2's crops (global 0.4–1, 10 locals at 0.05–0.4), 4 registers and its batch
(8 GPUs × 64); the two recipes differ only in the objective and the settings the paper changes with it.

Published (RobinWu218/SimDINO README, "DINOv2" rows they trained): ViT-L/16 80.8% k-NN, 82.0% linear;
ViT-B/16 76.0%, 77.2%. Sources of every value: docs/recipes.md. Examples:
  --config=configs/dinov2.py                             ViT-L/16 on TFDS imagenet2012
  --config=configs/dinov2.py:model=ViT-B/16              ViT-B/16
  --config=configs/dinov2.py:model=ViT-T/4,data=cifar10  CIFAR-10 prepared offline (32/16-pixel crops)
"""

from simdino_jax.configs import common
from simdino_jax.configs import dinov2_meta


def recipe():
  """The recipe before the `model=` / `data=` arguments (configs/simdinov2.py starts from it)."""
  c = dinov2_meta.recipe()  # The SimDINO paper changes Meta's crops, registers and batch:
  c.model.num_registers = 4
  c.batch_size = 512                                   # 8 GPUs × 64
  c.aug.n_local, c.aug.global_scale, c.aug.local_scale = 10, (0.4, 1.0), (0.05, 0.4)
  return c


def get_config(arg=None):
  return common.finish(recipe(), arg, model="ViT-L/16")
