"""Optimizer and schedules of the DINO recipes (docs/recipes.md).

The optimizer is AdamW with decoupled, scheduled weight decay (`p ← p − lr·s·(m̂/(√v̂+ε) + wd·p)`, as PyTorch's
AdamW with a per-parameter lr multiplier s), preceded by gradient clipping. Details of the official code reproduced:
- clipping `g ← g·min(1, c/‖g‖₂)` per tensor (DINO, with ‖g‖ + 1e-6), per top-level module over the module's
  global norm (DINOv2: backbone and head separately), or over all gradients (`config.optim.clip_mode`);
- DINOv2's lr multipliers: layer-wise decay `s = d^(L+1−layer)` (layer 0: patch embedding, position embedding,
  CLS, register and mask tokens; block i: layer i+1; the rest of the backbone and the heads: L+1) and
  ×`patch_embed_lr_mult` on the patch embedding;
- the prototype layer (`last_layer`) is frozen for the first epoch(s) as PyTorch does with `grad=None`: no moment
  update, no weight decay, and its Adam step counter starts when it is unfrozen (each group keeps its own count).
Learning rate and weight decay come from the global step through `extra_args`, so a frozen tensor sees the same
schedule as the rest once it is released.
"""

import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any


# ----------------------------------------------------------------------------------------------------------------
# Schedules (functions of the step and of the schedule's numbers, all jit-able: the train step takes `Schedules`
# as a traced argument, so one compiled step serves every run length, learning rate and warm-up).


def cosine_schedule(step, *, base, final, total_steps, warmup_steps=0, warmup_start=0.0):
  """DINO's per-iteration cosine: `linspace(warmup_start, base, W)`, then `final + ½(base−final)(1+cos(π·t/(T−W)))`."""
  step = jnp.asarray(step, jnp.float32)
  warmup = warmup_start + (base - warmup_start) * step / jnp.maximum(warmup_steps - 1, 1)
  decay_steps = jnp.maximum(total_steps - warmup_steps, 1)
  progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
  cosine = final + 0.5 * (base - final) * (1.0 + jnp.cos(jnp.pi * progress))
  return jnp.where(step < warmup_steps, warmup, cosine)


def teacher_temp_schedule(step, *, steps_per_epoch, warmup_temp, temp, warmup_epochs, per_iteration=False):
  """Linear warm-up over W = `warmup_epochs`, then `temp`: per epoch `linspace(warmup_temp, temp, W)[epoch]` (DINO
  indexes by epoch) or, `per_iteration`, `linspace(warmup_temp, temp, W·L)[step]` (DINOv2's CosineScheduler over
  L = steps_per_epoch steps per epoch). A ramp of at most one point stays at warmup_temp."""
  steps_per_point = jnp.where(per_iteration, 1, steps_per_epoch)
  point = jnp.asarray(step, jnp.float32) // steps_per_point
  points = jnp.where(per_iteration, warmup_epochs * steps_per_epoch, warmup_epochs)
  ramp = warmup_temp + (temp - warmup_temp) * point / jnp.maximum(points - 1, 1)
  return jnp.where(point < points, ramp, temp).astype(jnp.float32)


def peak_learning_rate(base_lr: float, batch_size: int, rule: str) -> float:
  """`linear`: base·B/256 (DINO, SimDINO); `sqrt`: base·√(B/1024) (DINOv2, SimDINOv2); `none`: base."""
  rules = {"linear": base_lr * batch_size / 256.0, "sqrt": base_lr * math.sqrt(batch_size / 1024.0), "none": base_lr}
  if rule not in rules:
    raise ValueError(f"Unknown lr scaling rule {rule!r}; valid: {', '.join(rules)}.")
  return rules[rule]


class ScheduledValues(NamedTuple):
  """The scheduled values of one step (traced scalars)."""

  lr: jax.Array
  wd: jax.Array
  momentum: jax.Array
  teacher_temp: jax.Array
  train_last_layer: jax.Array
  epoch: jax.Array


class Schedules(NamedTuple):
  """All scheduled values of the recipe, resolved to steps; `__call__(step)` gives the step's ScheduledValues.

  A pytree of scalars: the train step receives it traced, so none of these numbers is compiled into the step.
  """

  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  freeze_last_layer_steps: int
  peak_lr: float
  min_lr: float
  warmup_lr: float
  weight_decay: float
  weight_decay_end: float
  momentum: float
  momentum_end: float
  warmup_teacher_temp: float
  teacher_temp: float
  warmup_teacher_temp_epochs: int
  teacher_temp_per_iteration: bool = False

  def __call__(self, step) -> ScheduledValues:
    return ScheduledValues(
      lr=cosine_schedule(
        step,
        base=self.peak_lr,
        final=self.min_lr,
        total_steps=self.total_steps,
        warmup_steps=self.warmup_steps,
        warmup_start=self.warmup_lr,
      ),
      wd=cosine_schedule(step, base=self.weight_decay, final=self.weight_decay_end, total_steps=self.total_steps),
      momentum=cosine_schedule(step, base=self.momentum, final=self.momentum_end, total_steps=self.total_steps),
      teacher_temp=teacher_temp_schedule(
        step,
        steps_per_epoch=self.steps_per_epoch,
        warmup_temp=self.warmup_teacher_temp,
        temp=self.teacher_temp,
        warmup_epochs=self.warmup_teacher_temp_epochs,
        per_iteration=self.teacher_temp_per_iteration,
      ),
      train_last_layer=jnp.asarray(step) >= self.freeze_last_layer_steps,
      epoch=jnp.asarray(step, jnp.float32) / self.steps_per_epoch,
    )


def resolve_total_steps(config, *, steps_per_epoch: int, batch_size: int) -> int:
  """The run's length in steps: `total_steps` if > 0, else ⌈total_examples / batch⌉ if > 0, else
  round(total_epochs · steps_per_epoch)."""
  if config.total_steps > 0:
    return int(config.total_steps)
  if config.total_examples > 0:
    return -(-int(config.total_examples) // batch_size)
  return round(config.total_epochs * steps_per_epoch)


def epoch_length(config, *, num_examples: int, batch_size: int) -> int:
  """Steps per epoch: `config.epoch_length_steps` if > 0 (DINOv2's fixed 1,250-iteration "epoch"), else one pass
  over the `num_examples` training images."""
  if config.epoch_length_steps > 0:
    return int(config.epoch_length_steps)
  return max(num_examples // batch_size, 1)


def make_schedules(config, *, steps_per_epoch: int, batch_size: int) -> Schedules:
  """Resolves `config.optim` / `config.teacher` (durations in epochs) against the run's epoch length."""
  o, t = config.optim, config.teacher
  total_steps = resolve_total_steps(config, steps_per_epoch=steps_per_epoch, batch_size=batch_size)
  peak = peak_learning_rate(o.base_lr, batch_size, o.lr_scaling)
  return Schedules(
    steps_per_epoch=steps_per_epoch,
    total_steps=total_steps,
    warmup_steps=round(o.warmup_epochs * steps_per_epoch),
    freeze_last_layer_steps=round(o.freeze_last_layer_epochs * steps_per_epoch),
    peak_lr=peak,
    min_lr=o.min_lr,
    warmup_lr=o.min_lr if o.warmup_from_min_lr else 0.0,
    weight_decay=o.weight_decay,
    weight_decay_end=o.weight_decay_end,
    momentum=t.momentum,
    momentum_end=t.momentum_end,
    warmup_teacher_temp=t.warmup_temp,
    teacher_temp=t.temp,
    warmup_teacher_temp_epochs=int(t.warmup_temp_epochs),
    teacher_temp_per_iteration=bool(t.get("warmup_temp_per_iteration", False)),
  )


# ----------------------------------------------------------------------------------------------------------------
# Parameter masks from paths (big_vision-style regex rules).


def path_strings(tree: PyTree) -> PyTree:
  """The tree with each leaf replaced by its '/'-joined path, e.g. 'head/last_layer/v'."""
  return jax.tree_util.tree_map_with_path(lambda path, _: jax.tree_util.keystr(path, simple=True, separator="/"), tree)


FREEZE_RULES = ("drop_gradient", "zero_lr")
# The prototypes' gain: 1-D here, the official [K, 1] `last_layer.weight_g` of both PyTorch codes.
_GAIN = r"(^|/)last_layer/g$"


def weight_decay_mask(params: PyTree, *, trained_gain: bool = True) -> PyTree:
  """True where weight decay applies: every tensor but the biases and the 1-D ones of the official PyTorch layout.

  DINO's `utils.get_params_groups` exempts `name.endswith(".bias") or len(param.shape) == 1`; DINOv2's
  `utils/param_groups.py` (line 80) exempts names ending in `.bias` or holding `norm` or `gamma`. On a ViT and its
  heads both rules exempt the same tensors (biases, LayerNorm scales, LayerScale gammas) and both decay the
  prototypes' gain when it is trained (`trained_gain`: `norm_last_layer=False`): it is `weight_g` [K, 1] there,
  1-D `g` [K] here. A fixed gain (`norm_last_layer=True`: `requires_grad=False`, in no group) never decays.
  """

  def decays(p, name):
    if re.search(_GAIN, name):
      return trained_gain
    return p.ndim > 1 and not name.endswith("bias")

  return jax.tree.map(decays, params, path_strings(params))


def frozen_mask(params: PyTree, pattern: str = r"(^|/)last_layer(/|$)") -> PyTree:
  """True for the prototype layer, which is frozen during the first epoch(s)."""
  return jax.tree.map(lambda n: re.search(pattern, n) is not None, path_strings(params))


EMBEDDING_LAYER = r"^backbone/(patch_embed|pos_embed|cls_token|mask_token|register_tokens)(/|$)"


def lr_multipliers(params: PyTree, *, layer_decay: float = 1.0, patch_embed_lr_mult: float = 1.0) -> PyTree:
  """Per-parameter lr multiplier s = layer_decay^(L+1−layer) × (patch_embed_lr_mult on the patch embedding).

  layer = 0 for the embeddings and tokens (EMBEDDING_LAYER, register tokens included), i+1 for `backbone/blocks/i`,
  L+1 for everything else (the final norm, heads), with L the number of blocks: DINOv2's `get_vit_lr_decay_rate`.
  """
  names = path_strings(params)
  blocks = [int(m.group(1)) for n in jax.tree.leaves(names) if (m := re.match(r"^backbone/blocks/(\d+)/", n))]
  num_layers = max(blocks) + 1 if blocks else 0

  def multiplier(name):
    block = re.match(r"^backbone/blocks/(\d+)/", name)
    layer = 0 if re.match(EMBEDDING_LAYER, name) else int(block.group(1)) + 1 if block else num_layers + 1
    scale = layer_decay ** (num_layers + 1 - layer)
    return scale * patch_embed_lr_mult if re.match(r"^backbone/patch_embed/", name) else scale

  return jax.tree.map(multiplier, names)


def module_labels(params: PyTree) -> PyTree:
  """Each parameter's top-level module ('backbone', 'head', ...): the groups of per-module clipping."""
  return jax.tree.map(lambda n: n.split("/")[0], path_strings(params))


# ----------------------------------------------------------------------------------------------------------------
# Transformations.


def clip_per_tensor(max_norm: float) -> optax.GradientTransformation:
  """`g ← g·min(1, max_norm/(‖g‖₂ + 1e-6))` for each tensor separately (DINO's `clip_gradients`)."""

  def update(updates, state, params=None):
    del params

    def clip(g):
      norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
      return (g * jnp.minimum(1.0, max_norm / (norm + 1e-6))).astype(g.dtype)

    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def clip_per_module(max_norm: float, labels: PyTree) -> optax.GradientTransformation:
  """`g ← g·min(1, max_norm/‖g_M‖₂)` with ‖g_M‖ the global norm of g's module M (DINOv2 clips the backbone and
  each head separately); `labels` names each parameter's module (see module_labels)."""
  modules = sorted(set(jax.tree.leaves(labels)))
  return optax.multi_transform({module: optax.clip_by_global_norm(max_norm) for module in modules}, labels)


FROZEN_AT_START, TRAINED = "frozen_at_start", "trained"


def scheduled_adamw(
  *,
  b1=0.9,
  b2=0.999,
  eps=1e-8,
  decay_mask: PyTree,
  frozen: PyTree,
  lr_scale: PyTree = None,
  freeze_rule: str = "drop_gradient",
) -> optax.GradientTransformationExtraArgs:
  """AdamW whose lr, wd and `train_last_layer` flag arrive per step as extra args; `lr_scale` (a float per
  parameter, default 1) multiplies each parameter's lr, weight decay included (PyTorch's per-group lr).

  optax's `scale_by_adam`, `add_decayed_weights(mask=decay_mask)` and `scale_by_learning_rate`. While
  `train_last_layer` is False the tensors in `frozen` do not move, by `freeze_rule`:
  - "drop_gradient" (DINO, SimDINO: `cancel_gradients_last_layer` sets their `grad` to None, so PyTorch's AdamW
    skips them): they form their own group whose moments and step count stay untouched (`conditionally_mask`),
    so its count starts when it is released;
  - "zero_lr" (DINOv2: `train.py` sets the last layer's lr to 0 and `optimizer.step()` still runs on its
    gradient): one Adam over every tensor, the moments and count of the frozen ones moving every step; only
    their update (weight decay included) is multiplied by 0.
  """
  scales = jax.tree.map(lambda _: 1.0, decay_mask) if lr_scale is None else lr_scale

  def adamw(lr, wd) -> optax.GradientTransformation:
    return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(wd, mask=decay_mask),
      optax.scale_by_learning_rate(lr),
    )

  def scale(updates, factors):
    return jax.tree.map(jnp.multiply, updates, factors)

  def transform(lr, wd, train_last_layer=True) -> optax.GradientTransformationExtraArgs:
    if freeze_rule == "zero_lr":
      factors = jax.tree.map(
        lambda s, is_frozen: s * jnp.where(train_last_layer, 1.0, 0.0) if is_frozen else s, scales, frozen
      )
      return optax.chain(adamw(lr, wd), optax.stateless(lambda updates, params: scale(updates, factors)))
    labels = jax.tree.map(lambda is_frozen: FROZEN_AT_START if is_frozen else TRAINED, frozen)
    released = lambda _, train_last_layer, **unused: train_last_layer
    return optax.chain(
      optax.partition(
        {
          TRAINED: adamw(lr, wd),
          FROZEN_AT_START: optax.conditionally_mask(adamw(lr, wd), released, forward_extra_args=True),
        },
        labels,
      ),
      optax.stateless(lambda updates, params: scale(updates, scales)),
    )

  def update(grads, state, params, *, lr, wd, train_last_layer, **unused):
    del unused
    return transform(lr, wd, train_last_layer).update(grads, state, params, train_last_layer=train_last_layer)

  return optax.GradientTransformationExtraArgs(transform(0.0, 0.0).init, update)


def make_optimizer(config, params: PyTree) -> optax.GradientTransformationExtraArgs:
  """Clipping (`per_tensor` | `per_module` | `global` | `none`) followed by the scheduled AdamW with the lr
  multipliers of `config.optim.layer_decay` and `config.optim.patch_embed_lr_mult` (1.0 = off)."""
  o = config.optim
  clippers = {
    "per_tensor": lambda: clip_per_tensor(o.clip_grad),
    "per_module": lambda: clip_per_module(o.clip_grad, module_labels(params)),
    "global": lambda: optax.clip_by_global_norm(o.clip_grad),
    "none": optax.identity,
  }
  if o.clip_mode not in clippers:
    raise ValueError(f"Unknown config.optim.clip_mode {o.clip_mode!r}; valid: {', '.join(clippers)}.")
  scales = lr_multipliers(
    params, layer_decay=o.get("layer_decay", 1.0), patch_embed_lr_mult=o.get("patch_embed_lr_mult", 1.0)
  )
  adamw = scheduled_adamw(
    b1=o.b1,
    b2=o.b2,
    eps=o.eps,
    decay_mask=weight_decay_mask(params, trained_gain=not config.model.head.norm_last_layer),
    frozen=frozen_mask(params),
    lr_scale=scales,
    freeze_rule=o.freeze_rule,
  )
  return optax.chain(clippers[o.clip_mode](), adamw)
