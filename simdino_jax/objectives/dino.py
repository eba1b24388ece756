"""DINO: cross-view cross-entropy between a centered, sharpened teacher and the student; centering and
Sinkhorn-Knopp teachers.

p_t,i = softmax((t_i − c)/τ_t) (stop-gradient), log p_s,v = log_softmax(s_v/τ_s),
L = (1/(2V−2)) Σ_{i∈{0,1}} Σ_{v≠i} mean_b[−Σ_k p_t,i[k] log p_s,v[k]].
"""

import jax
import jax.numpy as jnp

from simdino_jax.objectives.common import as_float32, check_views, cross_view_mean


def teacher_probs(teacher_logits: jax.Array, center: jax.Array, teacher_temp) -> jax.Array:
  """softmax((t − c)/τ_t) over the last axis, float32, stop-gradient."""
  logits = jax.lax.stop_gradient(as_float32(teacher_logits))
  return jax.nn.softmax((logits - as_float32(center)) / teacher_temp, axis=-1)


def sinkhorn_knopp(
  teacher_logits: jax.Array, temperature, n_iterations: int = 3, sample_mask: jax.Array | None = None
) -> jax.Array:
  """Sinkhorn-Knopp teacher probabilities [..., K] from logits [..., K] (DINOv2, float32); every leading axis
  indexes samples (e.g. [B, K], or [2, B, K] for both views of a batch).

  Q = exp(t/τ − max) over the B samples (or the masked ones: sample_mask [...] bool, others get 0), Q /= ΣQ; then
  n_iterations × (each prototype's total → 1/K, each sample's total → 1/B); returns B·Q, whose rows sum to 1.
  Sums are over the whole (global) batch: under jit on a sharded batch they are mesh-wide (the leading axes are
  never merged, so a sharded batch axis stays where it is).
  """
  if teacher_logits.ndim < 2:
    raise ValueError(f"sinkhorn_knopp expects logits [..., K] with sample axes, got shape {teacher_logits.shape}.")
  n_prototypes = teacher_logits.shape[-1]
  sample_axes = tuple(range(teacher_logits.ndim - 1))
  scaled = as_float32(teacher_logits) / temperature
  if sample_mask is None:
    sample_mask = jnp.ones(scaled.shape[:-1], bool)
  sample_mask = sample_mask.astype(bool)[..., None]
  n_samples = jnp.maximum(jnp.sum(sample_mask).astype(jnp.float32), 1.0)
  shift = jax.lax.stop_gradient(jnp.max(jnp.where(sample_mask, scaled, -jnp.inf)))
  q = jnp.where(sample_mask, jnp.exp(scaled - jnp.where(jnp.isfinite(shift), shift, 0.0)), 0.0)

  def safe_divide(numerator, denominator):
    return numerator / jnp.where(denominator > 0, denominator, 1.0)

  def iteration(_, q):
    q = safe_divide(q, jnp.sum(q, axis=sample_axes, keepdims=True)) / n_prototypes
    return safe_divide(q, jnp.sum(q, axis=-1, keepdims=True)) / n_samples

  q = jax.lax.fori_loop(0, n_iterations, iteration, safe_divide(q, jnp.sum(q)))
  return q * n_samples


def cross_view_cross_entropy(
  student_logits: jax.Array, teacher_probabilities: jax.Array, *, student_temp=0.1
) -> jax.Array:
  """(1/(2V−2)) Σ_{i, v≠i} mean_b[−Σ_k p_t,i[k] log_softmax(s_v/τ_s)[k]] for student [V, B, K], teacher probs
  [2, B, K] (DINO's loss given any teacher probabilities, e.g. Sinkhorn-Knopp's)."""
  check_views(student_logits, teacher_probabilities, "DINO loss")
  student_log_probs = jax.nn.log_softmax(as_float32(student_logits) / student_temp, axis=-1)
  teacher_probabilities = jax.lax.stop_gradient(as_float32(teacher_probabilities))
  batch_size = student_logits.shape[1]
  pair_cross_entropy = -jnp.einsum("ibk,vbk->iv", teacher_probabilities, student_log_probs) / batch_size
  return cross_view_mean(pair_cross_entropy)


def update_center(center: jax.Array, teacher_logits: jax.Array, momentum=0.9) -> jax.Array:
  """c ← m·c + (1 − m)·mean of the raw teacher logits [..., K] over every axis but the last (all views and the
  whole global batch)."""
  logits = jax.lax.stop_gradient(as_float32(teacher_logits))
  batch_mean = jnp.mean(logits, axis=tuple(range(logits.ndim - 1)))  # no merge of sharded axes
  return momentum * as_float32(center) + (1.0 - momentum) * batch_mean
