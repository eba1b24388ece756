"""DINOv2, Meta's full-size recipe for ViT-L/14 (dinov2/configs/train/vitl14.yaml over ssl_default_config.yaml, the
README's "Long setup": 12 nodes × 8 GPUs × 32): the SwiGLU feed-forward, a separate iBOT head, 131,072 prototypes,
Sinkhorn-Knopp centering, 500 "epochs" of 1,250 iterations.

Published (facebookresearch/dinov2 README, "Long setup", on ImageNet-22k): ViT-L/14 82.0% k-NN, 84.5% linear on
ImageNet-1k. The data here defaults to ImageNet-1k (`data=imagenet2012`; docs/recipes.md). Every value's source:
docs/recipes.md, "DINOv2 at full size". Examples:
  --config=configs/dinov2_meta_vitl14.py                 ViT-L/14, batch 3072
  --config=configs/dinov2_meta_vitl14.py:registers=4     with 4 register tokens (DINOv2's _reg4 releases)
"""

from simdino_jax.configs import common
from simdino_jax.configs import dinov2_meta


def full_size(c, *, batch_per_gpu: int, gpus: int):
  """vitl14.yaml and vitg14.yaml's common changes to Meta's recipe (their lines 1-26)."""
  c.model.head.out_dim = 131072                        # l.2 dino.head_n_prototypes
  c.model.head.bottleneck_dim = 384                    # l.3 dino.head_bottleneck_dim
  c.model.ibot_head.separate = True                    # l.5 ibot.separate_head
  c.model.ibot_head.out_dim = 131072                   # l.6 ibot.head_n_prototypes
  c.model.ibot_head.bottleneck_dim = 256               # ssl_default_config.yaml ibot.head_bottleneck_dim
  c.model.ibot_head.hidden_dim = 2048                  # ssl_default_config.yaml ibot.head_hidden_dim
  c.model.ibot_head.n_layers = 3                       # ssl_default_config.yaml ibot.head_nlayers
  c.batch_size = batch_per_gpu * gpus                  # l.8 train.batch_size_per_gpu
  c.objective.koleo_group_size = batch_per_gpu         # KoLeo over each GPU's batch
  c.objective.centering = "sinkhorn_knopp"             # l.10 train.centering
  c.model.patch_size = 14                              # l.13 student.patch_size
  c.model.drop_path_rate = 0.4                         # l.14 student.drop_path_rate
  c.model.ffn = "swiglu"                               # l.15 student.ffn_layer: swiglufused
  c.teacher.momentum = 0.994                           # l.18 teacher.momentum_teacher
  c.total_epochs = 500.0                               # l.20 optim.epochs (of 1,250 iterations)
  c.optim.weight_decay_end = 0.2                       # l.21 optim.weight_decay_end
  c.optim.base_lr = 2e-4                               # l.22 optim.base_lr, for a batch of 1024 (√ scaling)
  c.optim.warmup_epochs = 80.0                         # l.23 optim.warmup_epochs
  c.optim.layer_decay = 1.0                            # l.24 optim.layerwise_decay
  return c                                             # l.26 crops.local_crops_size: 98 (a /14 model's crops)


def get_config(arg=None):
  c = full_size(dinov2_meta.recipe(), batch_per_gpu=32, gpus=96)  # README "Long setup": --nodes 12 (96 GPUs)
  args = common.arguments(arg, registers=-1)
  c = common.finish(c, args, model="ViT-L/14")         # l.12 student.arch: vit_large
  common.apply_registers(c, args.registers)
  return c
