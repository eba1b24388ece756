"""SimDINOv2, the official recipe (simdinov2/configs/simdino_config.yaml over DINOv2's defaults, one node of
8 GPUs): cosine alignment on the CLS and masked patches plus the coding rate per group of 64 images.

Published (RobinWu218/SimDINO README): ViT-L/16 81.1% k-NN, 82.4% linear; ViT-B/16 78.1%, 79.7%.
Paired with configs/dinov2.py. Sources of every value: docs/recipes.md. Examples:
  --config=configs/simdinov2.py                             ViT-L/16 on TFDS imagenet2012
  --config=configs/simdinov2.py:model=ViT-B/16              ViT-B/16
  --config=configs/simdinov2.py:model=ViT-T/4,data=cifar10  CIFAR-10 prepared offline (32/16-pixel crops)
"""

from simdino_jax.configs import common


def get_config(arg=None):
  c = common.base()
  c.objective.name = "simdinov2"
  c.objective.eps, c.objective.coeff, c.objective.expa_type, c.objective.gamma = 0.05, 1.0, 1, "default"
  c.objective.covariance_group_size = 64               # reduce_cov=0: ZᵀZ per GPU of 64 images, global n
  c.objective.koleo_weight = 0.0
  c.model.head.bottleneck_dim, c.model.head.hidden_dim = 256, 2048
  c.model.drop_path_rate, c.model.drop_path_schedule, c.model.layerscale = 0.2, "uniform", 0.1
  c.model.num_registers = 4
  c.masking.enabled, c.masking.probability, c.masking.ratio_min, c.masking.ratio_max = True, 0.5, 0.1, 0.5
  c.batch_size = 512                                   # 8 GPUs × 64
  c.epoch_length_steps = 1250                          # OFFICIAL_EPOCH_LENGTH
  c.total_epochs = 100.0
  c.optim.base_lr, c.optim.lr_scaling = 4e-3, "sqrt"    # peak 4e-3 · √(B/1024)
  c.optim.warmup_epochs, c.optim.min_lr, c.optim.warmup_from_min_lr = 10.0, 1e-6, True
  c.optim.weight_decay, c.optim.weight_decay_end = 0.04, 0.4
  c.optim.clip_grad, c.optim.clip_mode = 3.0, "per_module"
  c.optim.layer_decay, c.optim.patch_embed_lr_mult = 0.9, 0.2
  c.teacher.momentum, c.teacher.momentum_end = 0.9, 1.0
  c.aug.n_local, c.aug.global_scale, c.aug.local_scale = 10, (0.4, 1.0), (0.05, 0.4)
  return common.finish(c, arg, model="ViT-L/16")
