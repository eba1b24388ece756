"""iBOT's masked patch loss (DINOv2) and its teachers (patch center or Sinkhorn-Knopp over masked tokens).

L = −(1/n_images) Σ_i (1/M_i) Σ_{masked j in i} Σ_k t_ij[k] log_softmax(s_ij/τ_s)[k], n_images = 2B (images
without masked tokens count in the denominator). Arrays are [2, B, N, K] (or flattened [2B, N, K]); masks have
the same shape without K. Teacher probabilities: dino.teacher_probs(patch logits, patch center, τ_t) with the
center from update_patch_center, or ibot_sinkhorn_knopp.

The head scores only the masked tokens, as DINOv2's collate does (docs/objectives.md#ibot-masked-patch-loss):
masked_token_buffer gathers the masked tokens of each group of images (a data-parallel shard's local batch) into a
static buffer of U slots, U = masking.masked_patch_bound of the group, with token weights w = 1/(M_i · n_images)
on the used slots and 0 on the padding. Every function here takes such a buffer [G, U, K] with its weights [G, U]
in place of the dense [2, B, N, K] and bool masks, and gives the same values: L = −Σ_slots w · Σ_k t log s.
`masked_tokens` draws a step's masks and buffer as a `MaskPlan` (fixed when the trainer is built) says.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec as P

from simdino_jax import parallel
from simdino_jax.data import masking
from simdino_jax.objectives.common import BatchInputs, as_float32, image_mean_weights, masked_image_mean
from simdino_jax.objectives.dino import sinkhorn_knopp


@dataclasses.dataclass(frozen=True)
class MaskPlan:
  """How one step draws its iBOT masks, as DINOv2's collate does per GPU: the step's B images are A micro-batches
  × G data shards × groups of b images; each group's 2b global crops (grid × grid patches) get their own stratified
  mask ratios and hold at most U = `slots` masked tokens. `masking` is the config's masking section."""

  batch_size: int
  grid: int
  accum_steps: int
  shards: int
  group_size: int
  slots: int
  masking: ml_collections.ConfigDict

  @property
  def groups(self) -> int:
    """Mask groups in one micro-batch (over all shards)."""
    return self.batch_size // (self.accum_steps * self.group_size)

  @property
  def token_slots(self) -> int:
    """The masked-token slots the heads score in one step: A · groups · U."""
    return self.accum_steps * self.groups * self.slots


def mask_plan(
  batch_size: int, *, grid: int, accum_steps: int, shards: int, masking_config: ml_collections.ConfigDict
) -> MaskPlan:
  """The MaskPlan of a step of `batch_size` images; b = masking_config.group_size, 0: each shard's micro-batch."""
  shard_batch, remainder = divmod(batch_size, accum_steps * shards)
  group_size = masking_config.group_size or shard_batch
  if remainder or shard_batch % group_size:
    raise ValueError(
      f"iBOT masks are drawn per group of config.masking.group_size={group_size} images of each data "
      f"shard's micro-batch, but batch {batch_size} does not split into grad_accum_steps={accum_steps} × "
      f"{shards} shards × groups of {group_size}. Set config.batch_size to a multiple of "
      f"{accum_steps * shards * group_size}, or config.masking.group_size to a divisor of {shard_batch} "
      "(0: one group per shard)."
    )
  slots = max(1, masking.masked_patch_bound(2 * group_size, grid * grid, masking_config))
  return MaskPlan(batch_size, grid, accum_steps, shards, group_size, slots, masking_config)


def masked_tokens(key: jax.Array, plan: MaskPlan) -> BatchInputs:
  """iBOT block masks of the global crops and the buffer of masked tokens the heads score, drawn per group of b
  images (docs/objectives.md#ibot-masked-patch-loss): group (k, g) holds rows k + A·(g·b + t) of the batch, rows
  g·b + t of micro-batch k (train.make_train_step); its 2b global crops hold at most U masked tokens, gathered into
  its U slots with weights 1/(M_i · 2B/A). Each shard draws and gathers its own groups."""
  accum, groups, size, n_patches = plan.accum_steps, plan.groups, plan.slots, plan.grid * plan.grid
  on_shards = lambda x, axis: (
    x if plan.shards == 1 else jax.lax.with_sharding_constraint(x, P(*([None] * axis), parallel.DATA_AXIS))
  )
  keys = jax.random.split(key, (accum, groups)) if accum * groups > 1 else key[None, None]  # 1 group: B's masks
  draw = lambda k: masking.block_masks(k, plan.group_size, (plan.grid, plan.grid), plan.masking)
  drawn = on_shards(jax.vmap(jax.vmap(draw))(on_shards(keys, 1)), 1)  # [A, groups, 2, b, N]
  masks = jnp.transpose(drawn, (2, 1, 3, 0, 4)).reshape(2, plan.batch_size, n_patches)
  micro = jnp.moveaxis(masks.reshape(2, plan.batch_size // accum, accum, n_patches), 2, 0)
  index, weights = jax.vmap(lambda m: masked_token_buffer(m, groups, size))(micro)  # [A, groups, U]
  merge = lambda x: on_shards(jnp.moveaxis(x, 0, 2).reshape(groups, size * accum), 0)
  return BatchInputs(
    student_masks=masks,
    patch_index=merge(index),
    loss_masks=merge(weights),
    metrics={
      "masked_fraction": jnp.mean(masks.astype(jnp.float32)),
      "masked_slot_fraction": jnp.mean((weights > 0).astype(jnp.float32)),
    },
  )


def _check_patches(logits: jax.Array, masks: jax.Array, what: str) -> None:
  if logits.ndim < 3 or logits.shape[:-1] != masks.shape:
    raise ValueError(
      f"{what}: expected patch outputs [..., N, K] ([2, B, N, K], [2B, N, K] or a buffer [G, U, K]) "
      f"and masks or token weights [..., N] with the same leading shape, got {logits.shape} and "
      f"{masks.shape}."
    )


def masked_token_buffer(masks: jax.Array, groups: int, size: int) -> tuple[jax.Array, jax.Array]:
  """(index [G, U] int32, weights [G, U] float32): the masked tokens of each of G groups of B/G consecutive images.

  masks: bool [2, B, N]. Group g holds images g·B/G … (g+1)·B/G − 1 of both views; index[g] lists the positions of
  its masked tokens in its [2, B/G, N] tokens flattened (view, image, token), in order, then padding (position 0);
  weights = 1/(M_i · 2B) on a masked token of image i (image_mean_weights), 0 on the padding. U = size (static)
  must be at least each group's masked-token count (masking.masked_patch_bound of 2B/G images guarantees it).
  """
  views, batch, n_patches = masks.shape
  if size < 1 or batch % groups:
    raise ValueError(
      f"masked_token_buffer: need size >= 1 and G dividing the batch; got size {size}, G {groups} "
      f"and masks {masks.shape}."
    )
  to_groups = lambda x: jnp.moveaxis(x.reshape(views, groups, -1, n_patches), 1, 0).reshape(groups, -1)
  flat_masks, flat_weights = to_groups(masks.astype(bool)), to_groups(image_mean_weights(masks))
  index = jax.vmap(lambda m: jnp.nonzero(m, size=size, fill_value=0)[0])(flat_masks).astype(jnp.int32)
  used = jnp.arange(size) < jnp.sum(flat_masks, axis=1, keepdims=True)
  return index, jnp.where(used, jnp.take_along_axis(flat_weights, index, axis=1), 0.0)


def ibot_patch_loss(
  student_patch_logits: jax.Array, teacher_patch_probs: jax.Array, masks: jax.Array, *, student_temp=0.1
) -> jax.Array:
  """iBOT loss over the masked tokens: per-image mean of −Σ_k t log_softmax(s/τ_s), averaged over all images.

  student_patch_logits and teacher_patch_probs: [2, B, N, K] (or [2B, N, K]) with masks [2, B, N] (or [2B, N])
  bool; or a buffer [G, U, K] with its token weights [G, U] (masked_token_buffer).
  """
  _check_patches(student_patch_logits, masks, "ibot_patch_loss")
  if teacher_patch_probs.shape != student_patch_logits.shape:
    raise ValueError(
      f"ibot_patch_loss: student {student_patch_logits.shape} and teacher "
      f"{teacher_patch_probs.shape} must have the same shape."
    )
  student_log_probs = jax.nn.log_softmax(as_float32(student_patch_logits) / student_temp, axis=-1)
  teacher = jax.lax.stop_gradient(as_float32(teacher_patch_probs))
  token_cross_entropy = -jnp.sum(teacher * student_log_probs, axis=-1)
  return masked_image_mean(token_cross_entropy, masks)


def update_patch_center(
  center: jax.Array, teacher_patch_logits: jax.Array, masks: jax.Array, momentum=0.9
) -> jax.Array:
  """c ← m·c + (1 − m)·(mean of the raw teacher logits over the masked tokens of the global batch).

  With no masked token the center is unchanged. (DINOv2 averages per-device means with equal weight; this uses
  the token mean over the whole batch, which is what a mesh-wide jit computes.)
  """
  _check_patches(teacher_patch_logits, masks, "update_patch_center")
  logits = jax.lax.stop_gradient(as_float32(teacher_patch_logits))
  weights = masks.astype(bool).astype(jnp.float32)[..., None]
  n_masked = jnp.sum(weights)
  masked_mean = jnp.sum(weights * logits, axis=tuple(range(logits.ndim - 1))) / jnp.maximum(n_masked, 1.0)
  center = as_float32(center)
  return jnp.where(n_masked > 0, momentum * center + (1.0 - momentum) * masked_mean, center)


def ibot_sinkhorn_knopp(
  teacher_patch_logits: jax.Array, masks: jax.Array, temperature, n_iterations: int = 3
) -> jax.Array:
  """Sinkhorn-Knopp teacher over the masked tokens only (B = number of masked tokens in the global batch; masks or
  token weights > 0); returns probabilities of the input shape, zero on unmasked tokens."""
  _check_patches(teacher_patch_logits, masks, "ibot_sinkhorn_knopp")
  return sinkhorn_knopp(jax.lax.stop_gradient(teacher_patch_logits), temperature, n_iterations, sample_mask=masks)
