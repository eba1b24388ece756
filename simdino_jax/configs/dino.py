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


def recipe():
  """The recipe before the command-line arguments (configs/simdino.py and dino_koleo_proto.py start from it)."""
  c = common.base()
  c.objective.name = "dino"
  c.objective.student_temp = 0.1
  c.objective.center_momentum = 0.9
  c.objective.centering = "center"
  c.model.head.out_dim = 65536
  c.model.head.hidden_dim = 2048
  c.model.head.bottleneck_dim = 256
  c.model.head.norm_last_layer = True  # the DINO README's advice for ViT-B
  c.model.drop_path_rate = 0.1
  c.model.drop_path_schedule = "linear"
  c.model.interpolate_offset = 0.1
  c.model.interpolate_antialias = False
  c.batch_size = 512  # SimDINO README: 8 GPUs × batch_size_per_gpu 64
  c.total_epochs = 100.0
  c.optim.base_lr = 5e-4
  c.optim.lr_scaling = "linear"  # peak 5e-4 · B/256 = 1e-3
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
  c.aug.n_local = 10  # SimDINO README: --local_crops_number 10
  c.aug.global_scale = (0.4, 1.0)
  c.aug.local_scale = (0.05, 0.4)
  return c


def get_config(arg=None):
  return common.finish(recipe(), common.arguments(arg), model="ViT-B/16")
