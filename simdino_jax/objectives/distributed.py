"""Per-device computations over the context mesh's "data" axis (DINOv2's local KoLeo, SimDINO's local covariance)."""

from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from simdino_jax.parallel import DATA_AXIS


def data_axis_size() -> int:
  """Number of devices on the context mesh's "data" axis; 1 when no mesh (or no such axis) is set."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names:
    return 1
  return mesh.shape[DATA_AXIS]


def mean_over_data_shards(fn: Callable[..., jax.Array], *arrays: jax.Array) -> jax.Array:
  """(1/S) Σ_s fn(arrays_s): fn on each device's shard (along axis 0) of `arrays`, averaged over the S devices.

  Uses jax.shard_map over the context mesh's "data" axis; with no mesh, or a mesh of size 1, returns fn(arrays).
  fn must return a scalar.
  """
  n_shards = data_axis_size()
  if n_shards == 1:
    return fn(*arrays)
  for array in arrays:
    if array.shape[0] % n_shards:
      raise ValueError(
        f"A per-device computation needs the batch ({array.shape[0]}) divisible by the "
        f"{n_shards} devices of the '{DATA_AXIS}' mesh axis."
      )

  def per_shard(*shards):
    return jax.lax.pmean(fn(*shards), DATA_AXIS)

  return jax.shard_map(per_shard, in_specs=tuple(P(DATA_AXIS) for _ in arrays), out_specs=P(), axis_names={DATA_AXIS})(
    *arrays
  )
