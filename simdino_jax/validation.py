"""Config validation: every out-of-range value fails before anything is built or written, naming the fix."""

import jax

from simdino_jax import objectives
from simdino_jax.objectives import composite


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(f"Invalid config: {message}")


def validate_config(config, num_devices: int | None = None) -> None:
  """Checks the values no registry lookup catches (names are checked by their registries)."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  t, o, a, obj = config.teacher, config.optim, config.aug, config.objective
  _require(config.batch_size > 0, f"config.batch_size={config.batch_size} must be positive.")
  _require(config.batch_size % num_devices == 0,
           f"config.batch_size={config.batch_size} is not divisible by the {num_devices} devices; "
           f"use a multiple of {num_devices}.")
  for name, value in (("teacher.temp", t.temp), ("teacher.warmup_temp", t.warmup_temp),
                      ("objective.student_temp", obj.student_temp)):
    _require(value > 0, f"config.{name}={value} must be a positive temperature.")
  for name, value in (("teacher.momentum", t.momentum), ("teacher.momentum_end", t.momentum_end)):
    _require(0.0 <= value <= 1.0, f"config.{name}={value} must lie in [0, 1].")
  _require(o.base_lr > 0, f"config.optim.base_lr={o.base_lr} must be positive.")
  _require(config.total_epochs > 0 or config.get("total_steps", 0) > 0 or config.get("total_examples", 0) > 0,
           "set config.total_epochs, config.total_examples or config.total_steps to a positive value.")
  _require(a.local_size <= a.global_size or a.n_local == 0,
           f"local crops (config.aug.local_size={a.local_size}) must not be larger than global crops "
           f"(config.aug.global_size={a.global_size}); lower config.aug.local_size or set config.aug.n_local=0.")
  patch = config.model.patch_size
  for name, size in (("global_size", a.global_size), ("local_size", a.local_size)):
    _require(size % patch == 0 or (name == "local_size" and a.n_local == 0),
             f"config.aug.{name}={size} is not divisible by the patch size {patch}.")
  _require(config.collapse.patience >= 1,
           f"config.collapse.patience={config.collapse.patience} must be >= 1 (log steps in a row).")
  objectives.validate_config(obj)
  if composite.resolve_koleo_weight(obj) > 0 and obj.koleo_scope == "device":
    per_device = config.batch_size // num_devices
    _require(per_device >= 2,
             f"KoLeo on each device's batch needs at least 2 images per device, got {per_device} "
             f"(batch {config.batch_size} over {num_devices} devices); raise config.batch_size or set "
             "config.objective.koleo_scope='global'.")
