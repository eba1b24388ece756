"""Projection heads: the DINO head (MLP, l2-normalize, weight-normalized prototypes) and the SimDINO head.

Each head says what it is: `out_dim` (its output size: K for the DINO head, p for the SimDINO head),
`num_prototypes` (K, or 0) and `prototypes()` (the [K, p] directions, or None), so no caller reads parameter
paths or branches on the head kind. The MLP runs in the compute dtype; the l2-normalization, the prototype layer
and the outputs are float32.
Parameter paths (relative to the head): `mlp/layers/<i>/{kernel,bias}` and, for the DINO head,
`last_layer/v [K, p]` (prototype directions, one row per prototype) and `last_layer/g [K]` (gains).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from simdino_jax.models.vit import TRUNC_NORMAL
from simdino_jax.numerics import l2_normalize

# PyTorch's default Linear init for the prototypes (DINO leaves weight_v at it): U(+-1/sqrt(p)), v is [K, p].
PROTOTYPE_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=-1, out_axis=-2)
HEAD_KINDS = ("dino", "simdino")


class ProjectionMLP(nnx.Module):
  """`n_layers` Linear layers in -> hidden -> ... -> bottleneck with GELU between them; float32 output."""

  def __init__(self, in_dim: int, *, hidden_dim: int, bottleneck_dim: int, n_layers: int, dtype, rngs: nnx.Rngs):
    if n_layers < 1:
      raise ValueError(f"The head needs n_layers >= 1, got {n_layers}.")
    dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
    self.layers = nnx.List(
      [
        nnx.Linear(
          d_in,
          d_out,
          dtype=dtype,
          param_dtype=jnp.float32,
          kernel_init=TRUNC_NORMAL,
          bias_init=jax.nn.initializers.zeros,
          rngs=rngs,
        )
        for d_in, d_out in zip(dims[:-1], dims[1:])
      ]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    for index, layer in enumerate(self.layers):
      if index:
        x = jax.nn.gelu(x, approximate=False)
      x = layer(x)
    return x.astype(jnp.float32)


class WeightNormLinear(nnx.Module):
  """Bias-free weight-normalized linear layer: `logits_k = g_k * <z, v_k> / ||v_k||`, in float32.

  `v` and `g` are stored separately (the EMA updates each). With `fixed_gain`, g stays a Param but the forward
  stops its gradient, so each prototype has unit norm and the logits of unit inputs are cosines in [-1, 1].
  """

  def __init__(self, in_dim: int, out_dim: int, *, fixed_gain: bool, rngs: nnx.Rngs):
    self.fixed_gain = fixed_gain
    self.v = nnx.Param(PROTOTYPE_INIT(rngs.params(), (out_dim, in_dim), jnp.float32))
    self.g = nnx.Param(jnp.ones((out_dim,), jnp.float32))

  def __call__(self, z: jax.Array) -> jax.Array:
    v = self.v[...]
    g = self.g[...]
    if self.fixed_gain:
      g = jax.lax.stop_gradient(g)
    scale = g * jax.lax.rsqrt(jnp.sum(jnp.square(v), axis=-1))
    return (z.astype(jnp.float32) @ v.T) * scale


class DINOHead(nnx.Module):
  """DINO head: MLP to the bottleneck, l2-normalize, weight-normalized prototypes -> logits [.., K]."""

  def __init__(
    self,
    in_dim: int,
    *,
    out_dim: int,
    hidden_dim: int,
    bottleneck_dim: int,
    n_layers: int,
    norm_last_layer: bool,
    dtype,
    rngs: nnx.Rngs,
  ):
    self.mlp = ProjectionMLP(
      in_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim, n_layers=n_layers, dtype=dtype, rngs=rngs
    )
    self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fixed_gain=norm_last_layer, rngs=rngs)
    self.out_dim = self.num_prototypes = out_dim

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.last_layer(l2_normalize(self.mlp(x)))

  def prototypes(self) -> jax.Array:
    """The raw prototype directions v `[K, p]`."""
    return self.last_layer.v[...]


class SimDINOHead(nnx.Module):
  """SimDINO head: the DINO MLP to the bottleneck, then l2-normalize -> unit embeddings [.., p]."""

  num_prototypes = 0

  def __init__(self, in_dim: int, *, hidden_dim: int, bottleneck_dim: int, n_layers: int, dtype, rngs: nnx.Rngs):
    self.mlp = ProjectionMLP(
      in_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim, n_layers=n_layers, dtype=dtype, rngs=rngs
    )
    self.out_dim = bottleneck_dim

  def __call__(self, x: jax.Array) -> jax.Array:
    return l2_normalize(self.mlp(x))

  def prototypes(self) -> None:
    """No prototype layer."""
    return None
