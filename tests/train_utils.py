"""Tiny configs and helpers shared by the training-system tests."""

import numpy as np

from configs import digits


def tiny_config(method: str = "simdino", **overrides):
  """The embedded-digits config shrunk to a 2-block, 32-wide ViT and a few steps."""
  c = digits.get_config(f"method={method}")
  c.model.name = "vit_micro"
  c.model.patch_size = 4
  c.model.drop_path_rate = 0.1
  c.model.dtype = "float32"
  c.model.head.hidden_dim, c.model.head.bottleneck_dim, c.model.head.out_dim = 32, 16, 64
  c.aug.n_local = 2
  c.batch_size = 16
  c.total_steps = 4
  c.optim.warmup_epochs, c.optim.freeze_last_layer_epochs = 0.0, 0.0
  c.eval_every_epochs = 0.0
  c.log_every_steps = 2
  c.checkpoint_every_steps = 0
  c.tensorboard = False
  c.async_checkpointing = False
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def random_images(batch_size: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, size=(batch_size, size, size, 3), dtype=np.uint8)


PARITY_STEPS = 3


def parity_config():
  """The config of the 1 vs 8 devices vs 2 processes parity tests (no drop path, KoLeo over the global batch)."""
  c = tiny_config("dinov2", **{"objective.koleo_scope": "global"})
  c.model.drop_path_rate = 0.0
  return c
