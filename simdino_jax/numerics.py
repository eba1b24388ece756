"""The l2 normalization shared by the heads, the objectives and the evaluation."""

import jax
import jax.numpy as jnp

# The norm floor: it only keeps a zero vector at zero. Features, embeddings and prototypes have norms many orders
# of magnitude above it, so this value (PyTorch's F.normalize default, DINO's head) and the 1e-8 of DINOv2's KoLeo
# and of SimDINO's cosine give the same float32 results on them.
NORMALIZE_EPS = 1e-12


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||_2, 1e-12) along the last axis, in the dtype of x."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, NORMALIZE_EPS)
