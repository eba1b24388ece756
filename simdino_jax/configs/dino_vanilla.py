"""DINO, the vanilla run of the official README: ViT-S/16, 100 epochs, 8 GPUs × 64, the code's defaults.

Published (facebookresearch/dino README, "Vanilla DINO training"): 69.3% k-NN, 74.0% linear on ImageNet-1k.
Sources of every value: docs/recipes.md. Examples:
  --config=configs/dino_vanilla.py                   ViT-S/16 on TFDS imagenet2012
  --config=configs/dino_vanilla.py:data=cifar10      CIFAR-10 prepared offline (ViT-T/4, 32/16-pixel crops)
"""

from simdino_jax.configs import common


def recipe():
  """The recipe before the command-line arguments (configs/dino_boosted.py starts from it)."""
  c = common.base()
  c.objective.name = "dino"
  c.objective.student_temp = 0.1
  c.objective.center_momentum = 0.9
  c.objective.centering = "center"
  c.model.head.out_dim = 65536
  c.model.head.norm_last_layer = True
  c.model.drop_path_rate = 0.1
  c.model.drop_path_schedule = "linear"
  c.model.interpolate_offset = 0.1  # vision_transformer.py: scale (h + 0.1)/M, no antialias
  c.model.interpolate_antialias = False
  c.batch_size = 512  # 8 GPUs × 64
  c.total_epochs = 100.0
  c.optim.base_lr = 5e-4
  c.optim.lr_scaling = "linear"  # peak 5e-4 · B/256
  c.optim.warmup_epochs = 10.0
  c.optim.warmup_from_min_lr = False
  c.optim.min_lr = 1e-6
  c.optim.weight_decay = 0.04
  c.optim.weight_decay_end = 0.4
  c.optim.clip_grad = 3.0
  c.optim.clip_mode = "per_tensor"
  c.optim.freeze_last_layer_epochs = 1.0
  c.teacher.momentum = 0.996
  c.teacher.momentum_end = 1.0
  c.teacher.warmup_temp = 0.04
  c.teacher.temp = 0.04
  c.teacher.warmup_temp_epochs = 0
  c.aug.n_local = 8
  c.aug.global_scale = (0.4, 1.0)
  c.aug.local_scale = (0.05, 0.4)
  return c


def get_config(arg=None):
  return common.finish(recipe(), common.arguments(arg), model="ViT-S/16")
