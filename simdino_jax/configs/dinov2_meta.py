"""DINOv2, Meta's recipe (ssl_default_config.yaml with train/vitl16_short.yaml, 4 nodes × 8 GPUs × 64):
iBOT masks, KoLeo per GPU batch of 64, layer-wise lr decay, a trainable prototype gain, an "epoch" of 1,250
iterations.

Published (facebookresearch/dinov2 README, "Fast setup"): ViT-L/16 81.6% k-NN, 82.9% linear.
Sources of every value: docs/recipes.md. Examples:
  --config=configs/dinov2_meta.py                        ViT-L/16 on TFDS imagenet2012
  --config=configs/dinov2_meta.py:model=ViT-B/16         ViT-B/16
  --config=configs/dinov2_meta.py:data=cifar10           CIFAR-10 prepared offline (ViT-T/4, 32/16-pixel crops)
"""

from simdino_jax.configs import common


def recipe():
  """Meta's recipe on ImageNet before the run's arguments (configs/dinov2.py and the full-size recipes start
  from it)."""
  c = common.base()
  c.objective.name = "dinov2"
  c.objective.student_temp = 0.1
  c.objective.center_momentum = 0.9
  c.objective.centering = "center"
  c.objective.koleo_weight = 0.1
  c.objective.koleo_group_size = 64  # each GPU's batch_size_per_gpu
  c.model.head.out_dim = 65536
  c.model.head.bottleneck_dim = 256
  c.model.head.hidden_dim = 2048
  c.model.head.norm_last_layer = False  # dino_head.py: weight_g trainable
  c.model.drop_path_rate = 0.3
  c.model.drop_path_schedule = "uniform"
  c.model.layerscale = 1e-5
  c.model.num_registers = 0
  c.model.interpolate_offset = 0.1
  c.model.interpolate_antialias = False
  c.masking.enabled = True
  c.masking.probability = 0.5
  c.masking.ratio_min = 0.1
  c.masking.ratio_max = 0.5
  c.batch_size = 2048  # 4 nodes × 8 GPUs × 64
  c.epoch_length_steps = 1250  # OFFICIAL_EPOCH_LENGTH
  c.total_epochs = 100.0
  c.teacher.momentum = 0.992
  c.teacher.momentum_end = 1.0
  c.teacher.warmup_temp = 0.04
  c.teacher.temp = 0.07
  c.teacher.warmup_temp_epochs = 30
  c.teacher.warmup_temp_per_iteration = True  # train.py: a CosineScheduler over iterations
  c.optim.weight_decay = 0.04
  c.optim.weight_decay_end = 0.4
  c.optim.base_lr = 4e-3
  c.optim.lr_scaling = "sqrt"  # peak 4e-3 · √(B/1024)
  c.optim.warmup_epochs = 10.0
  c.optim.warmup_from_min_lr = False  # train.py: start_warmup_value=0
  c.optim.min_lr = 1e-6
  c.optim.clip_grad = 3.0
  c.optim.clip_mode = "per_module"  # backbone and head clipped apart
  c.optim.freeze_last_layer_epochs = 1.0
  c.optim.freeze_rule = "zero_lr"  # train/train.py: the last layer's lr set to 0
  c.optim.patch_embed_lr_mult = 0.2
  c.optim.layer_decay = 0.9
  c.aug.n_local = 8
  c.aug.global_scale = (0.32, 1.0)
  c.aug.local_scale = (0.05, 0.32)
  return c


def full_size(*, batch_per_gpu: int, gpus: int):
  """This recipe with the changes vitl14.yaml and vitg14.yaml share (their l.1-26; the two files differ in l.8,
  `batch_per_gpu`, and l.12, the model): configs/dinov2_meta_vitl14.py and dinov2_meta_vitg14.py."""
  c = recipe()
  c.model.head.out_dim = 131072  # l.2 dino.head_n_prototypes
  c.model.head.bottleneck_dim = 384  # l.3 dino.head_bottleneck_dim
  c.model.ibot_head.separate = True  # l.5 ibot.separate_head
  c.model.ibot_head.out_dim = 131072  # l.6 ibot.head_n_prototypes
  c.model.ibot_head.bottleneck_dim = 256  # ssl_default_config.yaml ibot.head_bottleneck_dim
  c.model.ibot_head.hidden_dim = 2048  # ssl_default_config.yaml ibot.head_hidden_dim
  c.model.ibot_head.n_layers = 3  # ssl_default_config.yaml ibot.head_nlayers
  c.batch_size = batch_per_gpu * gpus  # l.8 train.batch_size_per_gpu
  c.objective.koleo_group_size = batch_per_gpu  # KoLeo over each GPU's batch
  c.objective.centering = "sinkhorn_knopp"  # l.10 train.centering
  c.model.patch_size = 14  # l.13 student.patch_size
  c.model.drop_path_rate = 0.4  # l.14 student.drop_path_rate
  c.model.ffn = "swiglu"  # l.15 student.ffn_layer: swiglufused
  c.teacher.momentum = 0.994  # l.18 teacher.momentum_teacher
  c.total_epochs = 500.0  # l.20 optim.epochs (of 1,250 iterations)
  c.optim.weight_decay_end = 0.2  # l.21 optim.weight_decay_end
  c.optim.base_lr = 2e-4  # l.22 optim.base_lr, for a batch of 1024 (√ scaling)
  c.optim.warmup_epochs = 80.0  # l.23 optim.warmup_epochs
  c.optim.layer_decay = 1.0  # l.24 optim.layerwise_decay
  return c  # l.26 crops.local_crops_size: 98 (a /14 model's crops)


def get_config(arg=None):
  c = recipe()
  args = common.arguments(arg, registers=-1)  # registers=0|4: DINOv2's release without or with registers
  c = common.finish(c, args, model="ViT-L/16")
  common.apply_registers(c, args.registers)
  return c
