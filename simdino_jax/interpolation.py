"""Keys' cubic convolution kernel, the one definition behind every bicubic resize of the package: the host crops
and the on-device crops (a = −0.5, PIL's bicubic) and the position-embedding resize (a = −0.75, PyTorch's).
NumPy only, so grain's workers can import it without JAX; `xp=jax.numpy` evaluates it inside jit."""

import numpy as np


def keys_cubic(t, a: float = -0.5, xp=np):
  """W_a(t) = (a+2)|t|³ − (a+3)|t|² + 1 for |t| ≤ 1, a|t|³ − 5a|t|² + 8a|t| − 4a for 1 < |t| < 2, 0 beyond."""
  t = xp.abs(t)
  near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
  far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
  return xp.where(t <= 1.0, near, xp.where(t < 2.0, far, 0.0))
