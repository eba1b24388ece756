"""SimDINO, the official recipe (the README command: 8 GPUs × 64, 10 local crops, eps 0.05, coeff 1): cosine
alignment plus the coding rate, its covariance taken per group of 64 images as on each of the 8 GPUs.

Published (RobinWu218/SimDINO README): ViT-B/16 74.9% k-NN, 77.3% linear; ViT-L/16 75.6%, 77.4%.
Paired with configs/dino.py. Sources of every value: docs/recipes.md. Examples:
  --config=configs/simdino.py                             ViT-B/16 on TFDS imagenet2012
  --config=configs/simdino.py:model=ViT-L/16              ViT-L/16 (also ViT-S/16)
  --config=configs/simdino.py:model=ViT-T/4,data=cifar10  CIFAR-10 prepared offline (32/16-pixel crops)
"""

from simdino_jax.configs import common


def get_config(arg=None):
  c = common.base()
  c.objective.name = "simdino"
  c.objective.eps, c.objective.coeff, c.objective.expa_type, c.objective.gamma = 0.05, 1.0, 1, "default"
  c.objective.covariance_group_size = 64               # reduce_cov=0: ZᵀZ per GPU of 64 images, global n
  c.model.head.bottleneck_dim = 256
  c.model.drop_path_rate, c.model.drop_path_schedule = 0.1, "linear"
  c.batch_size = 512                                   # 8 GPUs × 64
  c.total_epochs = 100.0
  c.optim.base_lr, c.optim.lr_scaling = 5e-4, "linear"  # peak 5e-4 · B/256
  c.optim.warmup_epochs, c.optim.min_lr = 10.0, 1e-6
  c.optim.weight_decay, c.optim.weight_decay_end = 0.04, 0.4
  c.optim.clip_grad, c.optim.clip_mode = 3.0, "per_tensor"
  c.teacher.momentum, c.teacher.momentum_end = 0.996, 1.0
  c.teacher.warmup_temp, c.teacher.temp, c.teacher.warmup_temp_epochs = 0.04, 0.04, 0  # Unused by SimDINO.
  c.aug.n_local, c.aug.global_scale, c.aug.local_scale = 10, (0.4, 1.0), (0.05, 0.4)
  return common.finish(c, arg, model="ViT-B/16")
