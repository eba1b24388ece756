"""DINO as the SimDINO paper trains it against SimDINO (configs/simdino.py): the SimDINO script's DINO branch
(`--use_simdino false`) with the SimDINO command: ViT-B/16, 100 epochs, 8 GPUs × 64, 10 local crops, the
script's teacher temperature 0.04; the two recipes differ only in the objective and its head.

Published (RobinWu218/SimDINO README, "DINO" row they trained): ViT-B/16 72.9% k-NN, 76.3% linear.
Sources of every value: docs/recipes.md. Examples:
  --config=configs/dino.py                             ViT-B/16 on TFDS imagenet2012
  --config=configs/dino.py:model=ViT-S/16              ViT-S/16 (also ViT-L/16)
  --config=configs/dino.py:model=ViT-T/4,data=cifar10  CIFAR-10 prepared offline (32/16-pixel crops)
"""

from simdino_jax.configs import common
from simdino_jax.configs import dino_vanilla


def recipe():
  """The recipe before the `model=` / `data=` arguments (configs/simdino.py starts from it)."""
  c = dino_vanilla.recipe()  # The SimDINO command's DINO branch: the official defaults with 10 local crops.
  c.aug.n_local = 10
  return c


def get_config(arg=None):
  return common.finish(recipe(), arg, model="ViT-B/16")
