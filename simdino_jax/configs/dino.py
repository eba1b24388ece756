"""DINO as the SimDINO paper trains it against SimDINO (configs/simdino.py): the DINO repository's defaults at
ViT-B/16 with the SimDINO command's sizes (8 GPUs × 64, 10 local crops, 100 epochs); the two recipes differ only
in the objective and its head.

The SimDINO repository publishes this run's checkpoint but not its command, and its own `main_dino.py
--use_simdino false` cannot train DINO (its DINOHead has the prototype layer commented out): where each value comes
from, and which have no official source, is in docs/recipes.md ("The DINO arm").
Published (RobinWu218/SimDINO README, "DINO" row they trained): ViT-B/16 72.9% k-NN, 76.3% linear. Examples:
  --config=configs/dino.py                             ViT-B/16 on TFDS imagenet2012
  --config=configs/dino.py:model=ViT-S/16              ViT-S/16 (also ViT-L/16)
  --config=configs/dino.py:model=ViT-T/4,data=cifar10  CIFAR-10 prepared offline (32/16-pixel crops)
"""

from simdino_jax.configs import common
from simdino_jax.configs import dino_vanilla


def recipe():
  """The recipe before the command-line arguments (configs/simdino.py and dino_koleo_proto.py start from it): the
  DINO repository's defaults (configs/dino_vanilla.py) with the SimDINO command's 10 local crops."""
  c = dino_vanilla.recipe()
  c.aug.n_local = 10  # SimDINO README: --local_crops_number 10
  return c


def get_config(arg=None):
  return common.finish(recipe(), common.arguments(arg), model="ViT-B/16")
