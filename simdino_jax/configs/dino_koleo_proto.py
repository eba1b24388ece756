"""DINO + KoLeo-proto: KoLeo on the normalized prototypes against partial prototype collapse, on top of the DINO
arm of the comparison (configs/dino.py).

The paper's weight could not be verified; λ = 0.1 (by analogy with DINOv2's KoLeo) is our default. Examples:
  --config=configs/dino_koleo_proto.py                         ViT-B/16, imagenet2012
  --config=configs/dino_koleo_proto.py:model=ViT-T/4,data=cifar10,weight=0.05
"""

from simdino_jax.configs import common
from simdino_jax.configs import dino


def get_config(arg=None):
  args = common.parse_arg(arg, model="", data="imagenet2012", weight=0.1)
  c = dino.get_config(f"model={args.model},data={args.data}")
  c.objective.koleo_proto_weight = args.weight
  return c
