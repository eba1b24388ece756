"""Numerical helpers shared by the heads, the objectives and the evaluation: l2 normalization and entropies."""

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # float32 matmuls where accuracy matters (Gram matrices, similarities)

# The norm floor: it only keeps a zero vector at zero. Features, embeddings and prototypes have norms many orders
# of magnitude above it, so this value (PyTorch's F.normalize default, DINO's head) and the 1e-8 of DINOv2's KoLeo
# and of SimDINO's cosine give the same float32 results on them.
NORMALIZE_EPS = 1e-12


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||_2, 1e-12) along the last axis, in the dtype of x."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, NORMALIZE_EPS)


def mean_entropy(probabilities: jax.Array) -> jax.Array:
  """mean_i H(p_i) = −mean_i Σ_k p_i[k] log p_i[k] over the samples of [..., K] (0·log 0 = 0): log K when every
  sample is uniform, 0 when every sample is one-hot."""
  return jnp.mean(-jnp.sum(jax.scipy.special.xlogy(probabilities, probabilities), axis=-1))


def marginal_entropy(probabilities: jax.Array) -> jax.Array:
  """H(p̄) = −Σ_k p̄[k] log p̄[k] of the mean probability p̄ over the samples of [..., K]: log K when the samples
  spread uniformly over the K entries on average, 0 when they all pick the same one."""
  mean_probs = jnp.mean(probabilities, axis=tuple(range(probabilities.ndim - 1)))  # no merge of sharded axes
  return -jnp.sum(jax.scipy.special.xlogy(mean_probs, mean_probs))
