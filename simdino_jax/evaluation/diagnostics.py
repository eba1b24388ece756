"""Collapse diagnostics (docs/objectives.md#evaluation): effective rank, coding rate, teacher entropies, feature
spread, prototypes."""

import functools

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from simdino_jax.numerics import l2_normalize, marginal_entropy, mean_entropy
from simdino_jax.objectives.coding_rate import coding_rate
from simdino_jax.objectives.dino import teacher_probs


def _rows(x: jax.Array) -> jax.Array:
  """[..., D] -> float32 [n, D]."""
  return jnp.asarray(x, jnp.float32).reshape(-1, x.shape[-1])


def effective_rank(features: jax.Array) -> jax.Array:
  """Effective rank (Roy & Vetterli 2007): exp(-Σ_k p_k log p_k), p_k = σ_k / Σ_j σ_j.

  σ are the singular values of the (uncentered) feature matrix [n, D], as in RankMe; it lies in [1, min(n, D)]:
  min(n, D) for whitened features, 1 for rank-1 features.
  """
  singular_values = jnp.linalg.svd(_rows(features), compute_uv=False)
  p = singular_values / jnp.maximum(jnp.sum(singular_values), jnp.finfo(jnp.float32).tiny)
  return jnp.exp(-jnp.sum(xlogy(p, p)))


def normalized_coding_rate(features: jax.Array, eps: float = 0.05) -> jax.Array:
  """R_eps(Z) = ½ logdet(I_D + D/(n·eps) ZᵀZ) of the l2-normalized features Z [n, D]
  (docs/objectives.md#coding-rate-r_eps)."""
  return coding_rate(l2_normalize(_rows(features)), eps)


def feature_std(features: jax.Array) -> jax.Array:
  """mean_d std_i(z_id) of the l2-normalized features z_i: 1/sqrt(D) for isotropic features, 0 at collapse."""
  return jnp.mean(jnp.std(l2_normalize(_rows(features)), axis=0))


def teacher_probabilities(teacher_logits: jax.Array, center: jax.Array | None, temperature) -> jax.Array:
  """p_i = softmax((t_i − c) / τ) (objectives.dino.teacher_probs) for the teacher logits [..., K] -> float32
  [n, K]; c = 0 when None."""
  return teacher_probs(_rows(teacher_logits), 0.0 if center is None else center, temperature)


def teacher_center_kl(probabilities: jax.Array, center: jax.Array, temperature) -> jax.Array:
  """KL(p̄ || q) = Σ_k p̄_k (log p̄_k − log q_k), p̄ = mean_i p_i, q = softmax(c / τ) the center's distribution."""
  mean = jnp.mean(_rows(probabilities), axis=0)
  log_q = jax.nn.log_softmax(jnp.asarray(center, jnp.float32) / temperature)
  return jnp.sum(xlogy(mean, mean) - mean * log_q)


@functools.partial(jax.jit, static_argnames=("coding_rate_eps",))
def _diagnostics(features, teacher_logits, center, teacher_temp, *, coding_rate_eps):
  values = {
    "effective_rank": effective_rank(features),
    "coding_rate": normalized_coding_rate(features, coding_rate_eps),
    "feature_std": feature_std(features),
  }
  if teacher_logits is not None:
    probabilities = teacher_probabilities(teacher_logits, center, teacher_temp)
    values["teacher_mean_entropy"] = marginal_entropy(probabilities)
    values["teacher_sample_entropy"] = mean_entropy(probabilities)
    if center is not None:
      values["teacher_center_kl"] = teacher_center_kl(probabilities, center, teacher_temp)
  return values


def feature_diagnostics(
  features: jax.Array,
  *,
  coding_rate_eps: float = 0.05,
  teacher_logits: jax.Array | None = None,
  center: jax.Array | None = None,
  teacher_temp: float | None = None,
) -> dict[str, float]:
  """Collapse diagnostics of a batch of teacher features (and optionally teacher logits), as Python floats.

  Keys: "effective_rank" (of the features, uncentered), "coding_rate" (of the l2-normalized features),
  "feature_std" (per-dimension std of the l2-normalized features, mean over dims; 1/sqrt(D) isotropic); with
  `teacher_logits` [..., K] and `teacher_temp` τ: "teacher_mean_entropy" H(mean_i softmax((t_i − c)/τ)) (log K at
  uniform), "teacher_sample_entropy" mean_i H(p_i), and with `center` c also "teacher_center_kl"
  KL(p̄ || softmax(c/τ)). Leading axes of `features` / `teacher_logits` (e.g. [2, B, D]) are flattened.
  """
  if teacher_logits is not None and teacher_temp is None:
    raise ValueError("teacher_temp is required with teacher_logits.")
  values = _diagnostics(features, teacher_logits, center, teacher_temp, coding_rate_eps=float(coding_rate_eps))
  return {name: float(value) for name, value in jax.device_get(values).items()}


def prototype_diagnostics(prototypes: jax.Array, threshold: float = 0.025) -> dict[str, int]:
  """Unique prototypes of the [K, p] directions: groups merged below ||v̂_i − v̂_j|| < threshold
  (docs/objectives.md#koleo-proto).

  Returns:
    {"unique_prototypes": number of groups, "largest_group": size of the biggest group}.
  """
  from simdino_jax.objectives.koleo import unique_prototypes  # pylint: disable=import-outside-toplevel

  count, largest_group = unique_prototypes(prototypes, threshold=threshold)
  return {"unique_prototypes": int(count), "largest_group": int(largest_group)}
