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
"""

import jax
import jax.numpy as jnp

from simdino_jax.objectives.common import as_float32, image_mean_weights, masked_image_mean
from simdino_jax.objectives.dino import sinkhorn_knopp


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
