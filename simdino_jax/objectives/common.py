"""Small numerical helpers shared by the objectives: float32 casts, view-pair and masked means."""

import jax
import jax.numpy as jnp
import numpy as np


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
    raise ValueError(f"{what}: expected student [V, B, F] and teacher [2, B, F], got {student.shape} and "
                     f"{teacher.shape}.")
  if teacher.shape[0] != 2 or student.shape[0] < 2 or student.shape[1:] != teacher.shape[1:]:
    raise ValueError(f"{what}: expected student [V>=2, B, F] and teacher [2, B, F] with the same B and F, got "
                     f"{student.shape} and {teacher.shape}.")


def masked_image_mean(per_token: jax.Array, masks: jax.Array) -> jax.Array:
  """(1/n_images) Σ_i (1/max(M_i, 1)) Σ_{j masked in i} per_token[i, j], over all leading (image) axes.

  per_token and masks have shape [..., N]; images without masked tokens contribute 0 but count in n_images.
  """
  if per_token.shape != masks.shape:
    raise ValueError(f"per-token values {per_token.shape} and masks {masks.shape} must have the same shape.")
  masks = masks.astype(bool)
  n_masked = jnp.sum(masks, axis=-1).astype(jnp.float32)
  per_image = jnp.sum(jnp.where(masks, per_token, 0.0), axis=-1) / jnp.maximum(n_masked, 1.0)
  return jnp.mean(per_image)
