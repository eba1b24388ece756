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


def get_config(arg=None):
  c = common.base()
  c.objective.name = "dinov2"
  c.objective.student_temp, c.objective.center_momentum, c.objective.centering = 0.1, 0.9, "center"
  c.objective.koleo_weight, c.objective.koleo_scope = 0.1, "device"
  c.model.head.out_dim, c.model.head.bottleneck_dim, c.model.head.hidden_dim = 65536, 256, 2048
  c.model.drop_path_rate, c.model.drop_path_schedule, c.model.layerscale = 0.3, "uniform", 1e-5
  c.model.num_registers = 4
  c.masking.enabled, c.masking.probability, c.masking.ratio_min, c.masking.ratio_max = True, 0.5, 0.1, 0.5
  c.batch_size = 512                                   # 8 GPUs × 64
  c.epoch_length_steps = 1250                          # OFFICIAL_EPOCH_LENGTH
  c.total_epochs = 100.0
  c.optim.base_lr, c.optim.lr_scaling = 4e-3, "sqrt"    # peak 4e-3 · √(B/1024)
  c.optim.warmup_epochs, c.optim.min_lr = 10.0, 1e-6
  c.optim.weight_decay, c.optim.weight_decay_end = 0.04, 0.4
  c.optim.clip_grad, c.optim.clip_mode = 3.0, "per_module"
  c.optim.layer_decay, c.optim.patch_embed_lr_mult = 0.9, 0.2
  c.optim.freeze_last_layer_epochs = 1.0
  c.teacher.momentum, c.teacher.momentum_end = 0.992, 1.0
  c.teacher.warmup_temp, c.teacher.temp, c.teacher.warmup_temp_epochs = 0.04, 0.07, 30
  c.aug.n_local, c.aug.global_scale, c.aug.local_scale = 10, (0.4, 1.0), (0.05, 0.4)
  return common.finish(c, arg, model="ViT-L/16")
