"""DINO, the vanilla run of the official README: ViT-S/16, 100 epochs, 8 GPUs × 64, code defaults.

Published (facebookresearch/dino README, "Vanilla DINO training"): 69.3% k-NN, ~73.8% linear on ImageNet-1k.
Sources of every value: docs/recipes.md. Examples:
  --config=configs/dino_vanilla.py                   ViT-S/16 on TFDS imagenet2012
  --config=configs/dino_vanilla.py:data=cifar10      CIFAR-10 prepared offline (ViT-T/4, 32/16-pixel crops)
"""

from simdino_jax.configs import common


def recipe():
  """The recipe before the `model=` / `data=` arguments (configs/dino_boosted.py and dino.py start from it)."""
  c = common.base()
  c.objective.name = "dino"
  c.objective.student_temp, c.objective.center_momentum, c.objective.centering = 0.1, 0.9, "center"
  c.model.head.out_dim, c.model.head.norm_last_layer = 65536, True
  c.model.drop_path_rate, c.model.drop_path_schedule = 0.1, "linear"
  c.batch_size = 512                                   # 8 GPUs × 64
  c.total_epochs = 100.0
  c.optim.base_lr, c.optim.lr_scaling = 5e-4, "linear"  # peak 5e-4 · B/256
  c.optim.warmup_epochs, c.optim.min_lr = 10.0, 1e-6
  c.optim.weight_decay, c.optim.weight_decay_end = 0.04, 0.4
  c.optim.clip_grad, c.optim.clip_mode = 3.0, "per_tensor"
  c.optim.freeze_last_layer_epochs = 1.0
  c.teacher.momentum, c.teacher.momentum_end = 0.996, 1.0
  c.teacher.warmup_temp, c.teacher.temp, c.teacher.warmup_temp_epochs = 0.04, 0.04, 0
  c.aug.n_local, c.aug.global_scale, c.aug.local_scale = 8, (0.4, 1.0), (0.05, 0.4)
  return c


def get_config(arg=None):
  return common.finish(recipe(), arg, model="ViT-S/16")
