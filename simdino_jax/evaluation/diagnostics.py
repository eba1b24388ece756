"""Collapse diagnostics (docs/objectives.md#evaluation): effective rank, coding rate, feature spread,
prototypes."""

import functools

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from simdino_jax.numerics import l2_normalize
from simdino_jax.objectives.coding_rate import coding_rate


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


@functools.partial(jax.jit, static_argnames=("coding_rate_eps",))
def _diagnostics(features, *, coding_rate_eps):
  return {
    "effective_rank": effective_rank(features),
    "coding_rate": normalized_coding_rate(features, coding_rate_eps),
    "feature_std": feature_std(features),
  }


def feature_diagnostics(features: jax.Array, *, coding_rate_eps: float = 0.05) -> dict[str, float]:
  """Collapse diagnostics of a batch of teacher features [..., D] (leading axes flattened), as Python floats:
  "effective_rank" (uncentered), "coding_rate" (of the l2-normalized features) and "feature_std" (per-dimension
  std of the l2-normalized features, mean over dims; 1/sqrt(D) isotropic). The teacher's entropies are the
  objective's own metrics, logged every step ("teacher_entropy", "teacher_marginal_entropy")."""
  values = _diagnostics(features, coding_rate_eps=float(coding_rate_eps))
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
