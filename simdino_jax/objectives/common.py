"""What the objectives share: the batch inputs an objective adds to a step, float32 casts, view-pair and masked
means."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class BatchInputs(NamedTuple):
  """What an objective adds to a batch of crops. Gradient accumulation over A micro-batches splits every array
  along axis 1 into A interleaved parts (k, k + A, …: micro-batch k), like the crops' batch axis."""

  student_masks: jax.Array | None = None  # bool [2, B, N]: patch tokens the student sees as the mask token
  patch_index: jax.Array | None = None  # int32 [G, A·U]: patch tokens both heads score, per shard (the model's
  # patch_index after the split; ibot.masked_tokens)
  loss_masks: jax.Array | None = None  # [G, A·U] float token weights: the `masks` argument of the loss
  metrics: dict | None = None  # scalars to log with the step's metrics


def as_float32(x) -> jax.Array:
  """Casts an array (any float dtype) to float32."""
  return jnp.asarray(x, jnp.float32)


def cross_view_mean(pair_values: jax.Array) -> jax.Array:
  """Mean of pair_values[i, v] (teacher view i, student view v) over the 2V-2 pairs with v != i."""
  n_teacher, n_student = pair_values.shape
  different_view = np.arange(n_teacher)[:, None] != np.arange(n_student)[None, :]
  return jnp.sum(jnp.where(different_view, pair_values, 0.0)) / different_view.sum()


def check_views(student: jax.Array, teacher: jax.Array, what: str) -> None:
  """Student [V, B, F] with V >= 2 and teacher [2, B, F] (views 0 and 1 of the student are the teacher's)."""
  if student.ndim != 3 or teacher.ndim != 3:
    raise ValueError(
      f"{what}: expected student [V, B, F] and teacher [2, B, F], got {student.shape} and {teacher.shape}."
    )
  if teacher.shape[0] != 2 or student.shape[0] < 2 or student.shape[1:] != teacher.shape[1:]:
    raise ValueError(
      f"{what}: expected student [V>=2, B, F] and teacher [2, B, F] with the same B and F, got "
      f"{student.shape} and {teacher.shape}."
    )


def masked_image_mean(per_token: jax.Array, masks: jax.Array) -> jax.Array:
  """(1/n_images) Σ_i (1/max(M_i, 1)) Σ_{j masked in i} per_token[i, j] = Σ w · per_token with w = image_mean_weights.

  masks: bool [..., N] over all leading (image) axes, images without masked tokens contributing 0 but counting in
  n_images; or float token weights w [..., M] already holding that normalization (a masked-token buffer).
  """
  if per_token.shape != masks.shape:
    raise ValueError(f"per-token values {per_token.shape} and masks {masks.shape} must have the same shape.")
  weights = image_mean_weights(masks) if masks.dtype == bool else as_float32(masks)
  return jnp.sum(jnp.where(weights > 0, weights * per_token, 0.0))


def image_mean_weights(masks: jax.Array) -> jax.Array:
  """w_ij = m_ij / (max(M_i, 1) · n_images) for bool masks [..., N] (n_images: the product of the leading axes)."""
  masks = masks.astype(bool)
  n_masked = jnp.sum(masks, axis=-1, keepdims=True).astype(jnp.float32)
  return jnp.where(masks, 1.0, 0.0) / (jnp.maximum(n_masked, 1.0) * (masks.size // masks.shape[-1]))
