"""DINO + KoLeo-proto: KoLeo on the normalized prototypes against partial prototype collapse, on top of the DINO
arm of the comparison (configs/dino.py).

The paper's weight could not be verified; λ = 0.1 (by analogy with DINOv2's KoLeo) is our default. Examples:
  --config=configs/dino_koleo_proto.py                         ViT-B/16, imagenet2012
  --config=configs/dino_koleo_proto.py:model=ViT-T/4,data=cifar10,weight=0.05
"""

from simdino_jax.configs import common
from simdino_jax.configs import dino


def get_config(arg=None):
  args = common.arguments(arg, weight=0.1)
  c = dino.recipe()
  c.objective.koleo_proto_weight = args.weight
  return common.finish(c, args, model="ViT-B/16")
