"""Config validation, once, where the config is read: every out-of-range value fails before anything is built or
written, naming the field and the fix. The code that uses the values trusts them; a module's constructor checks
only what its own arguments must satisfy together (a ViT's image size and patch size)."""

import math

import jax
import numpy as np

from simdino_jax import models
from simdino_jax import objectives
from simdino_jax import optim
from simdino_jax.models import vit
from simdino_jax.objectives import koleo, methods, simdino


REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable", "everything_saveable")


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(f"Invalid config: {message}")


def _require_choice(field: str, value, choices) -> None:
  _require(value in choices, f"config.{field}={value!r} must be one of {choices}.")


def validate_objective(obj) -> None:
  """Checks `config.objective`: the name (the registry lists the valid ones), each option and weight."""
  objective = objectives.get_objective(obj)
  _require_choice("objective.centering", obj.centering, methods.CENTERINGS)
  _require_choice("objective.koleo_scope", obj.koleo_scope, koleo.KOLEO_SCOPES)
  _require_choice("objective.expa_type", obj.expa_type, simdino.EXPA_TYPES)
  _require_choice("objective.gamma", obj.gamma, simdino.GAMMAS)
  _require_choice("objective.covariance", obj.covariance, simdino.COVARIANCES)
  for field in ("student_temp", "eps", "proto_chunk_size"):
    _require(obj[field] > 0, f"config.objective.{field}={obj[field]} must be > 0.")
  _require(
    0.0 <= obj.center_momentum <= 1.0, f"config.objective.center_momentum={obj.center_momentum} must lie in [0, 1]."
  )
  _require(math.isfinite(obj.coeff), f"config.objective.coeff={obj.coeff} must be finite.")
  _require(
    obj.koleo_weight == methods.METHOD_DEFAULT or obj.koleo_weight >= 0,
    f"config.objective.koleo_weight={obj.koleo_weight} must be >= 0, or -1 for the method's default.",
  )
  group_size = obj.covariance_group_size
  _require(
    isinstance(group_size, int) and group_size >= 0,
    f"config.objective.covariance_group_size={group_size!r} must be an integer >= 0 (0 = no groups).",
  )
  _require(
    group_size == 0 or obj.covariance == "global",
    f"config.objective.covariance_group_size={group_size} replaces covariance={obj.covariance!r}; set "
    "covariance='global' with groups, or covariance_group_size=0.",
  )
  koleo_group = obj.koleo_group_size
  _require(
    isinstance(koleo_group, int) and (koleo_group == 0 or koleo_group >= 2),
    f"config.objective.koleo_group_size={koleo_group!r} must be 0 (koleo_scope decides) or an integer >= 2 "
    "(every image needs a neighbour in its group).",
  )
  for field in ("koleo_proto_weight", "coding_rate_weight"):
    _require(obj[field] >= 0, f"config.objective.{field}={obj[field]} must be >= 0 (0 = off).")
  _require(
    obj.koleo_proto_weight == 0 or objective.head_kind == "dino",
    f"config.objective.koleo_proto_weight > 0 needs a prototype layer (a 'dino' head); objective "
    f"{obj.name!r} uses a {objective.head_kind!r} head. Set koleo_proto_weight = 0.",
  )


def validate_model(model, head_kind: str) -> None:
  """The `model` section, for an objective whose head is `head_kind` ("dino" or "simdino")."""
  _require(
    model.ffn in vit.FFNS,
    f"config.model.ffn={model.ffn!r} is not a feed-forward: use mlp (GELU) or swiglu (DINOv2's ViT-g).",
  )
  _require_choice("model.dtype", model.dtype, tuple(models.DTYPES))
  _require_choice("model.drop_path_schedule", model.drop_path_schedule, tuple(vit.DROP_PATH_SCHEDULES))
  _require_choice("model.attention_impl", model.attention_impl, vit.ATTENTION_IMPLS)
  _require_choice("model.remat_policy", model.remat_policy, REMAT_POLICIES)
  architecture = models.MODELS.get(model.name)  # An unknown name lists the valid ones.
  _require(
    architecture.patch_size is None or model.patch_size == architecture.patch_size,
    f"config.model.name={model.name!r} has patch size {architecture.patch_size} but config.model.patch_size is "
    f"{model.patch_size}; set them equal.",
  )
  for field in ("out_dim", "hidden_dim", "bottleneck_dim", "n_layers"):
    _require(model.head[field] >= 1, f"config.model.head.{field}={model.head[field]} must be positive.")
  _require(
    not model.ibot_head.separate or head_kind == "dino",
    "config.model.ibot_head.separate=True needs a DINO head (the dino and dinov2 objectives): set it False.",
  )


def check_batch_split(batch_size: int, accum_steps: int, devices: int) -> None:
  """The batch splits into `accum_steps` micro-batches (config.grad_accum_steps), each even over the devices:
  B = A·D·k. (Every process holds as many devices, so each process's share is even too.)"""
  _require(
    isinstance(accum_steps, int) and accum_steps >= 1,
    f"config.grad_accum_steps={accum_steps!r} must be an integer >= 1 (1 = no accumulation).",
  )
  unit = accum_steps * devices
  multiples = ", ".join(str(m) for m in (batch_size // unit * unit, (batch_size // unit + 1) * unit) if m)
  if accum_steps == 1:
    problem, alternative = f"is not divisible by the {devices} devices", ""
  else:
    problem = f"does not split into config.grad_accum_steps={accum_steps} micro-batches over {devices} devices"
    alternative = ", or change grad_accum_steps"
  _require(
    batch_size % unit == 0,
    f"config.batch_size={batch_size} {problem}: use a multiple of {unit} ({multiples}, ...){alternative}.",
  )


def validate_config(config, num_devices: int | None = None) -> None:
  """Checks the whole config (model and dataset names are checked by their registries when built)."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  t, o, a, obj = config.teacher, config.optim, config.aug, config.objective
  _require(config.batch_size > 0, f"config.batch_size={config.batch_size} must be positive.")
  check_batch_split(config.batch_size, config.grad_accum_steps, num_devices)
  for name, value in (("teacher.temp", t.temp), ("teacher.warmup_temp", t.warmup_temp)):
    _require(value > 0, f"config.{name}={value} must be a positive temperature.")
  for name, value in (("teacher.momentum", t.momentum), ("teacher.momentum_end", t.momentum_end)):
    _require(0.0 <= value <= 1.0, f"config.{name}={value} must lie in [0, 1].")
  _require(o.base_lr > 0, f"config.optim.base_lr={o.base_lr} must be positive.")
  _require(
    config.total_epochs > 0 or config.total_steps > 0 or config.total_examples > 0,
    "set config.total_epochs, config.total_examples or config.total_steps to a positive value.",
  )
  _require(
    a.local_size <= a.global_size or a.n_local == 0,
    f"local crops (config.aug.local_size={a.local_size}) must not be larger than global crops "
    f"(config.aug.global_size={a.global_size}); lower config.aug.local_size or set config.aug.n_local=0.",
  )
  patch = config.model.patch_size
  for name, size in (("global_size", a.global_size), ("local_size", a.local_size)):
    _require(
      size % patch == 0 or (name == "local_size" and a.n_local == 0),
      f"config.aug.{name}={size} is not divisible by the patch size {patch}.",
    )
  _require(
    config.collapse.patience >= 1,
    f"config.collapse.patience={config.collapse.patience} must be >= 1 (log steps in a row).",
  )
  validate_objective(obj)
  tiny = float(np.finfo(np.float32).tiny)
  _require(
    obj.eps >= tiny,
    f"config.objective.eps={obj.eps} is below float32 resolution (smallest normal "
    f"{tiny:.3g}): the coding rate would overflow. Use a value like 0.05 (the SimDINO recipe).",
  )
  _require(
    o.eps == 0 or o.eps >= tiny,
    f"config.optim.eps={o.eps} must be 0 or at least {tiny:.3g} (float32 resolution); AdamW's usual value is 1e-8.",
  )
  validate_model(config.model, objectives.get_objective(obj).head_kind)
  _require_choice("aug.interpolation", a.interpolation, ("bicubic", "bilinear"))
  _require(
    config.eval_settings.feature_dtype in ("float32", "bfloat16"),
    f"config.eval_settings.feature_dtype={config.eval_settings.feature_dtype!r} is not a feature precision: use "
    "float32 (as DINO evaluates) or bfloat16 (as the run trains).",
  )
  _require(
    config.model.dtype != "float16",
    "config.model.dtype='float16' is not supported: training has no loss scaling, so float16 gradients "
    "underflow or overflow. Use --config.model.dtype=bfloat16 (float32's range, the same speed on TPUs and "
    "recent GPUs) or float32.",
  )
  _require_choice("optim.freeze_rule", config.optim.freeze_rule, optim.FREEZE_RULES)
  micro_batch = config.batch_size // config.grad_accum_steps
  if methods.resolve_koleo_weight(obj) > 0 and obj.koleo_group_size:
    _require(
      micro_batch % obj.koleo_group_size == 0,
      f"config.objective.koleo_group_size={obj.koleo_group_size} does not divide the (micro-)batch of "
      f"{micro_batch} images: use a divisor of it (DINOv2's per-GPU batch is 64) or 0.",
    )
  elif methods.resolve_koleo_weight(obj) > 0 and obj.koleo_scope == "device":
    per_device = config.batch_size // num_devices
    _require(
      per_device >= 2,
      f"KoLeo on each device's batch needs at least 2 images per device, got {per_device} "
      f"(batch {config.batch_size} over {num_devices} devices); raise config.batch_size or set "
      "config.objective.koleo_scope='global'.",
    )
