"""simdino (SPEC §2 recipe). Examples:
  --config=configs/simdino.py                             ViT-S/16 on TFDS imagenet2012
  --config=configs/simdino.py:model=ViT-B/16              ViT-B/16 (also ViT-L/16)
  --config=configs/simdino.py:model=ViT-T/4,data=cifar10  CIFAR-10 prepared offline (32/16-pixel crops)
"""

from configs import common


def get_config(arg=None):
  return common.experiment("simdino", arg)
