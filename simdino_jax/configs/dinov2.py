"""DINOv2 as the SimDINO paper trains it against SimDINOv2 (configs/simdinov2.py): the SimDINO repository's own
DINOv2 defaults (simdinov2/configs/ssl_default_config.yaml, one node of 8 GPUs × 128, an epoch of one pass over
ImageNet), with 4 registers, 10 local crops and its trainer's lr warm-up from min_lr; the two recipes differ only in
the objective and the settings simdino_config.yaml changes with it.

Published (RobinWu218/SimDINO README, "DINOv2" rows they trained): ViT-L/16 80.8% k-NN, 82.0% linear;
ViT-B/16 76.0%, 77.2%. Sources of every value: docs/recipes.md. Examples:
  --config=configs/dinov2.py                             ViT-L/16 on TFDS imagenet2012
  --config=configs/dinov2.py:model=ViT-B/16              ViT-B/16 (the same batch of 1024)
  --config=configs/dinov2.py:model=ViT-T/4,data=cifar10  CIFAR-10 prepared offline (32/16-pixel crops)
"""

from simdino_jax.configs import common
from simdino_jax.configs import dinov2_meta


def recipe():
  """The recipe before the command-line arguments (configs/simdinov2.py starts from it): the SimDINO repository
  forks Meta's DINOv2 code and its ssl_default_config.yaml (configs/dinov2_meta.py), and changes these values."""
  c = dinov2_meta.recipe()
  c.objective.koleo_group_size = 128  # each GPU's batch_size_per_gpu
  c.model.num_registers = 4
  c.model.interpolate_offset = 0.0  # interpolate to the output size, antialiased
  c.model.interpolate_antialias = True
  c.batch_size = 1024  # 8 GPUs × 128
  c.epoch_length_steps = 0  # OFFICIAL_EPOCH_LENGTH: -1, ⌊1,281,167 / 1024⌋ = 1,251
  c.optim.warmup_from_min_lr = True  # train.py: start_warmup_value=min_lr
  c.aug.n_local = 10
  c.aug.global_scale = (0.4, 1.0)
  c.aug.local_scale = (0.05, 0.4)
  return c


def get_config(arg=None):
  args = common.arguments(arg, registers=-1)  # registers=0|4: DINOv2's release without or with registers
  c = common.finish(recipe(), args, model="ViT-L/16")
  common.apply_registers(c, args.registers)
  return c
