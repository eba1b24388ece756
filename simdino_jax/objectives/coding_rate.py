"""The coding rate R_ε(Z) = ½ logdet(I_p + p/(n·eps) ZᵀZ) (SimDINO), via a Cholesky factor.

Non-finite results: jnp.linalg.cholesky returns NaN (it never raises) when I + αG is not numerically positive
definite, e.g. for non-finite inputs or eps <= 0; Σ log diag(L) is then NaN (or ±inf), never a
silently wrong finite value. Callers check jnp.isfinite (the objectives report it as a metric).
"""

import jax
import jax.numpy as jnp

from simdino_jax.numerics import HIGHEST
from simdino_jax.objectives.common import as_float32


def half_logdet_identity_plus_gram(z: jax.Array, alpha) -> jax.Array:
  """½ logdet(I_p + α ZᵀZ) = Σ log diag(cholesky(I + α G)) for z [n, p].

  G is the smaller Gram matrix: ZZᵀ [n, n] when n < p (logdet(I_p + α ZᵀZ) = logdet(I_n + α ZZᵀ)), else ZᵀZ.
  The Gram matmul runs at HIGHEST precision in float32.
  """
  z = as_float32(z)
  if z.ndim != 2:
    raise ValueError(f"The coding rate expects Z [n, p], got shape {z.shape}.")
  n, p = z.shape
  gram = jnp.matmul(z, z.T, precision=HIGHEST) if n < p else jnp.matmul(z.T, z, precision=HIGHEST)
  cholesky_factor = jnp.linalg.cholesky(jnp.eye(gram.shape[0], dtype=jnp.float32) + alpha * gram)
  return jnp.sum(jnp.log(jnp.diagonal(cholesky_factor)))


def coding_rate(z: jax.Array, eps) -> jax.Array:
  """R_eps(Z) = ½ logdet(I_p + p/(n·eps) ZᵀZ) for z [n, p]; eps is the paper's ε² (SimDINO recipe: 0.05).

  Float32; returns NaN when the Cholesky factorization fails (see the module docstring).
  """
  z = as_float32(z)
  if z.ndim != 2:
    raise ValueError(f"coding_rate expects Z [n, p], got shape {z.shape}.")
  n, p = z.shape
  return half_logdet_identity_plus_gram(z, p / (n * jnp.asarray(eps, jnp.float32)))
