"""DINOv2, Meta's recipe (ssl_default_config.yaml with train/vitl16_short.yaml, 4 nodes × 8 GPUs × 64):
iBOT masks, KoLeo, layer-wise lr decay, an "epoch" of 1,250 iterations.

Published (facebookresearch/dinov2 README, "Fast setup"): ViT-L/16 81.6% k-NN, 82.9% linear.
Sources of every value: docs/recipes.md. Examples:
  --config=configs/dinov2_meta.py                        ViT-L/16 on TFDS imagenet2012
  --config=configs/dinov2_meta.py:model=ViT-B/16         ViT-B/16
  --config=configs/dinov2_meta.py:data=cifar10           CIFAR-10 prepared offline (ViT-T/4, 32/16-pixel crops)
"""

from simdino_jax.configs import common


def recipe():
  """The recipe before the `model=` / `data=` arguments (configs/dinov2.py starts from it)."""
  c = common.base()
  c.objective.name = "dinov2"
  c.objective.student_temp, c.objective.center_momentum, c.objective.centering = 0.1, 0.9, "center"
  c.objective.koleo_weight, c.objective.koleo_scope = 0.1, "device"
  c.model.head.out_dim, c.model.head.bottleneck_dim, c.model.head.hidden_dim = 65536, 256, 2048
  c.model.drop_path_rate, c.model.drop_path_schedule, c.model.layerscale = 0.3, "uniform", 1e-5
  c.model.num_registers = 0
  c.masking.enabled, c.masking.probability, c.masking.ratio_min, c.masking.ratio_max = True, 0.5, 0.1, 0.5
  c.batch_size = 2048                                  # 32 GPUs × 64
  c.epoch_length_steps = 1250                          # OFFICIAL_EPOCH_LENGTH
  c.total_epochs = 100.0
  c.teacher.momentum, c.teacher.momentum_end = 0.992, 1.0
  c.teacher.warmup_temp, c.teacher.temp, c.teacher.warmup_temp_epochs = 0.04, 0.07, 30
  # optim, in the order of ssl_default_config.yaml:
  c.optim.weight_decay, c.optim.weight_decay_end = 0.04, 0.4
  c.optim.base_lr, c.optim.warmup_epochs, c.optim.min_lr = 4e-3, 10.0, 1e-6
  c.optim.clip_grad, c.optim.freeze_last_layer_epochs = 3.0, 1.0
  c.optim.lr_scaling = "sqrt"                          # peak 4e-3 · √(B/1024)
  c.optim.patch_embed_lr_mult, c.optim.layer_decay = 0.2, 0.9
  c.optim.clip_mode = "per_module"                     # backbone and head clipped apart
  c.aug.n_local, c.aug.global_scale, c.aug.local_scale = 8, (0.32, 1.0), (0.05, 0.32)
  return c


def get_config(arg=None):
  return common.finish(recipe(), arg, model="ViT-L/16")
