"""Device mesh, parameter shardings and host-local → global batches.

One mesh axis, "data": the batch is sharded over it; parameters are replicated, or FSDP-sharded along their
largest divisible dimension on the same axis (`config.fsdp`). The per-image work of a step (augmentation, the
networks) runs per data shard under `jax.shard_map`: each device sees only its own images,
and the parameters' gradients leave it all-reduced (replicated parameters) or reduce-scattered (FSDP: the
transpose of `gather_params`' all-gather). Batch-wide reductions in the objectives run mesh-wide under jit's
global-array semantics.
"""

from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices with an Auto axis named "data", laid out by JAX's mesh_utils: devices
  in the order of the slice's torus (create_device_mesh), and over several TPU slices each slice's devices
  together, slices joined over the data-center network (create_hybrid_device_mesh: only the gradients' reduction
  crosses it)."""
  devices = list(jax.devices() if devices is None else np.asarray(devices).reshape(-1))
  slices = sorted({getattr(d, "slice_index", 0) for d in devices})
  if len(slices) > 1:
    grid = mesh_utils.create_hybrid_device_mesh((len(devices) // len(slices),), (len(slices),), devices)
  else:
    grid = mesh_utils.create_device_mesh((len(devices),), devices)
  return Mesh(grid.reshape(-1), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, mesh_size: int, min_size: int) -> P:
  """Shards the largest dimension divisible by the mesh size; small or indivisible tensors stay replicated."""
  if int(np.prod(shape, dtype=np.int64)) < min_size or mesh_size == 1:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % mesh_size == 0:
      return P(*([None] * dim + [DATA_AXIS]))
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, *, fsdp: bool, fsdp_min_size: int = 2**18) -> Any:
  """NamedShardings for a pytree of ShapeDtypeStructs: replicated, or FSDP for large tensors."""
  size = mesh.shape[DATA_AXIS]

  def spec(x):
    if fsdp and getattr(x, "ndim", 0) > 0:
      return NamedSharding(mesh, fsdp_spec(x.shape, size, fsdp_min_size))
    return NamedSharding(mesh, P())

  return jax.tree.map(spec, abstract_state)


def gather_params(params: Any, specs: Any) -> Any:
  """Inside `shard_map`: each FSDP-sharded parameter (spec with DATA_AXIS on one dimension) all-gathered whole;
  replicated ones as they are. Its transpose reduce-scatters the gradients back onto their shards."""

  def gather(x, spec):
    for dim, axis in enumerate(spec):
      if axis == DATA_AXIS:
        return jax.lax.all_gather(x, DATA_AXIS, axis=dim, tiled=True)
    return x

  return jax.tree.map(gather, params, specs, is_leaf=lambda x: isinstance(x, P))


def param_specs(shardings: Any) -> Any:
  """The PartitionSpecs of a pytree of NamedShardings (shard_map's in_specs for parameters)."""
  return jax.tree.map(lambda s: s.spec, shardings)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles each process's numpy batch into global arrays sharded on the batch axis."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def from_full_host_array(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A host array that every process holds whole -> a global array laid out by `sharding` (each device takes its
  part; single- and multi-host)."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def replicate(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """A host array that every process holds whole -> a global array replicated on every device."""
  return from_full_host_array(array, replicated(mesh))
