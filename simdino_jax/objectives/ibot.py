"""iBOT's masked patch loss (DINOv2) and its teachers (patch center or Sinkhorn-Knopp over masked tokens).

L = −(1/n_images) Σ_i (1/M_i) Σ_{masked j in i} Σ_k t_ij[k] log_softmax(s_ij/τ_s)[k], n_images = 2B (images
without masked tokens count in the denominator). Arrays are [2, B, N, K] (or flattened [2B, N, K]); masks have
the same shape without K. Teacher probabilities: dino.teacher_probs(patch logits, patch center, τ_t) with the
center from update_patch_center, or ibot_sinkhorn_knopp.

The head scores only the masked tokens: masked_patch_index gathers, per image, the positions of its masked tokens
into a static number M ≥ max_i M_i of slots (the masking's bound, data.masking.max_masked_patches), so every
function here runs on [2, B, M, K] with the slot masks it returns, which equals the dense [2, B, N, K] form.
"""

import jax
import jax.numpy as jnp

from simdino_jax.objectives.common import as_float32, masked_image_mean
from simdino_jax.objectives.dino import sinkhorn_knopp


def _check_patches(logits: jax.Array, masks: jax.Array, what: str) -> None:
  if logits.ndim < 3 or logits.shape[:-1] != masks.shape:
    raise ValueError(f"{what}: expected patch outputs [..., N, K] ([2, B, N, K] or [2B, N, K]) and masks [..., N] "
                     f"with the same leading shape, got {logits.shape} and {masks.shape}.")


def masked_patch_index(masks: jax.Array, max_masked: int) -> tuple[jax.Array, jax.Array]:
  """(index [..., M] int32, slot_masks [..., M] bool): the positions of each image's masked tokens, in order,
  padded with unmasked positions; slot_masks marks the slots that hold a masked token. M = max_masked (static).

  Exact when no image has more than M masked tokens (block_masks guarantees it for M = max_masked_patches).
  """
  if not 1 <= max_masked <= masks.shape[-1]:
    raise ValueError(f"max_masked must be in [1, N={masks.shape[-1]}], got {max_masked}.")
  index = jnp.argsort(~masks.astype(bool), axis=-1, stable=True)[..., :max_masked].astype(jnp.int32)
  return index, jnp.take_along_axis(masks.astype(bool), index, axis=-1)


def ibot_patch_loss(student_patch_logits: jax.Array, teacher_patch_probs: jax.Array, masks: jax.Array, *,
                    student_temp=0.1) -> jax.Array:
  """iBOT loss over the masked tokens: per-image mean of −Σ_k t log_softmax(s/τ_s), averaged over all images.

  student_patch_logits and teacher_patch_probs: [2, B, N, K] (or [2B, N, K]); masks: [2, B, N] (or [2B, N]) bool.
  """
  _check_patches(student_patch_logits, masks, "ibot_patch_loss")
  if teacher_patch_probs.shape != student_patch_logits.shape:
    raise ValueError(f"ibot_patch_loss: student {student_patch_logits.shape} and teacher "
                     f"{teacher_patch_probs.shape} must have the same shape.")
  student_log_probs = jax.nn.log_softmax(as_float32(student_patch_logits) / student_temp, axis=-1)
  teacher = jax.lax.stop_gradient(as_float32(teacher_patch_probs))
  token_cross_entropy = -jnp.sum(teacher * student_log_probs, axis=-1)
  return masked_image_mean(token_cross_entropy, masks)


def update_patch_center(center: jax.Array, teacher_patch_logits: jax.Array, masks: jax.Array,
                        momentum=0.9) -> jax.Array:
  """c ← m·c + (1 − m)·(mean of the raw teacher logits over the masked tokens of the global batch).

  With no masked token the center is unchanged. (DINOv2 averages per-device means with equal weight; this uses
  the token mean over the whole batch, which is what a mesh-wide jit computes.)
  """
  _check_patches(teacher_patch_logits, masks, "update_patch_center")
  logits = jax.lax.stop_gradient(as_float32(teacher_patch_logits))
  weights = masks.astype(jnp.float32)[..., None]
  n_masked = jnp.sum(weights)
  masked_mean = jnp.sum(weights * logits, axis=tuple(range(logits.ndim - 1))) / jnp.maximum(n_masked, 1.0)
  center = as_float32(center)
  return jnp.where(n_masked > 0, momentum * center + (1.0 - momentum) * masked_mean, center)


def ibot_sinkhorn_knopp(teacher_patch_logits: jax.Array, masks: jax.Array, temperature,
                        n_iterations: int = 3) -> jax.Array:
  """Sinkhorn-Knopp teacher over the masked tokens only (B = number of masked tokens in the global batch);
  returns probabilities of the input shape, zero on unmasked tokens."""
  _check_patches(teacher_patch_logits, masks, "ibot_sinkhorn_knopp")
  n_prototypes = teacher_patch_logits.shape[-1]
  probabilities = sinkhorn_knopp(jax.lax.stop_gradient(teacher_patch_logits).reshape(-1, n_prototypes),
                                 temperature, n_iterations, sample_mask=masks.reshape(-1))
  return probabilities.reshape(teacher_patch_logits.shape)
