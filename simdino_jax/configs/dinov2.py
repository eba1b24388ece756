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


def recipe():
  """The recipe before the command-line arguments (configs/simdinov2.py starts from it)."""
  c = common.base()
  c.objective.name = "dinov2"
  c.objective.student_temp = 0.1
  c.objective.center_momentum = 0.9
  c.objective.centering = "center"
  c.objective.koleo_weight = 0.1
  c.objective.koleo_group_size = 128  # each GPU's batch_size_per_gpu
  c.model.head.out_dim = 65536
  c.model.head.bottleneck_dim = 256
  c.model.head.hidden_dim = 2048
  c.model.head.norm_last_layer = False  # dino_head.py: weight_g trainable
  c.model.drop_path_rate = 0.3
  c.model.drop_path_schedule = "uniform"
  c.model.layerscale = 1e-5
  c.model.num_registers = 4
  c.model.interpolate_offset = 0.0  # interpolate to the output size, antialiased
  c.model.interpolate_antialias = True
  c.masking.enabled = True
  c.masking.probability = 0.5
  c.masking.ratio_min = 0.1
  c.masking.ratio_max = 0.5
  c.batch_size = 1024  # 8 GPUs × 128
  c.epoch_length_steps = 0  # OFFICIAL_EPOCH_LENGTH: -1, ⌊1,281,167 / 1024⌋ = 1,251
  c.total_epochs = 100.0
  c.teacher.momentum = 0.992
  c.teacher.momentum_end = 1.0
  c.teacher.warmup_temp = 0.04
  c.teacher.temp = 0.07
  c.teacher.warmup_temp_epochs = 30
  c.teacher.warmup_temp_per_iteration = True
  c.optim.weight_decay = 0.04
  c.optim.weight_decay_end = 0.4
  c.optim.base_lr = 4e-3
  c.optim.lr_scaling = "sqrt"  # peak 4e-3 · √(1024/1024) = 4e-3
  c.optim.warmup_epochs = 10.0
  c.optim.warmup_from_min_lr = True  # train.py: start_warmup_value=min_lr
  c.optim.min_lr = 1e-6
  c.optim.clip_grad = 3.0
  c.optim.clip_mode = "per_module"
  c.optim.freeze_last_layer_epochs = 1.0
  c.optim.freeze_rule = "zero_lr"  # train/train.py: the last layer's lr set to 0
  c.optim.patch_embed_lr_mult = 0.2
  c.optim.layer_decay = 0.9
  c.aug.n_local = 10
  c.aug.global_scale = (0.4, 1.0)
  c.aug.local_scale = (0.05, 0.4)
  return c


def get_config(arg=None):
  args = common.arguments(arg, registers=-1)  # registers=0|4: DINOv2's release without or with registers
  c = common.finish(recipe(), args, model="ViT-L/16")
  common.apply_registers(c, args.registers)
  return c
