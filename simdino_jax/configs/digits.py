"""The embedded default: scikit-learn's handwritten digits (shipped inside scikit-learn, no download).

Trains end to end on 2 CPU cores in a few minutes. `method=` picks the objective, with its recipe file's settings
(dino, dinov2, simdino, simdinov2: the registered objectives):
  python -m simdino_jax.main --config=configs/digits.py --workdir=/tmp/digits
  python -m simdino_jax.main --config=configs/digits.py:method=dino --workdir=/tmp/digits_dino
"""

from simdino_jax import configs
from simdino_jax import objectives
from simdino_jax.configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, method="simdino", model="vit_mini")
  objectives.OBJECTIVES.get(args.method)  # An unknown method fails here, listing the registered ones.
  c = configs.load(args.method, f"model={args.model},data=digits,batch=64")
  c.model.patch_size = 4
  c.data.image_size = 16
  c.aug.global_size = 16
  c.aug.local_size = 8
  c.model.image_size = 16
  c.model.head.hidden_dim = 256
  c.model.head.bottleneck_dim = 64
  c.model.head.out_dim = 512
  c.objective.covariance_group_size = 0  # The batch of 64 is one group,
  c.objective.koleo_group_size = 0  # for the coding rate and KoLeo alike.
  c.aug.n_local = 4
  c.total_epochs = 20.0
  c.optim.warmup_epochs = 2.0
  c.optim.freeze_last_layer_epochs = 1.0
  c.teacher.warmup_temp_epochs = 5
  c.eval_every_epochs = 5.0
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  return c
