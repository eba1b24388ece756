"""Backbone features of labelled splits, streamed from the data source batch by batch (docs/architecture.md).

The images of a split are never held whole: each process reads its own rows, one fixed-size batch at a time
(`simdino_jax.data.eval_batches`), the batch is assembled into a global array sharded over the mesh, and only the
features [n, D] and labels come back to the host.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from simdino_jax import models
from simdino_jax import parallel
from simdino_jax.data import augment
from simdino_jax.data import sources
from simdino_jax.evaluation import linear_probe


def evaluation_inputs(config, images: jax.Array) -> jax.Array:
  """uint8 evaluation views [b,S,S,3] (S = the global-crop size: `sources.evaluation_image`) -> normalized float32."""
  if images.shape[1:3] != (config.aug.global_size,) * 2:
    raise ValueError(
      f"Evaluation images are {images.shape[1]} x {images.shape[2]}, the model evaluates "
      f"{config.aug.global_size} x {config.aug.global_size} views: open the split with "
      "open_split(..., crop_size=config.aug.global_size)."
    )
  return augment.normalize(images.astype(jnp.float32) / 255.0, config.aug.mean, config.aug.std)


def feature_backbone_graph(config):
  """The backbone's graph computing in `config.eval_settings.feature_dtype` (float32 by default, as DINO evaluates;
  "bfloat16" as the run trains)."""
  model = config.model.copy_and_resolve_references()
  model.dtype = config.eval_settings.feature_dtype
  return nnx.graphdef(nnx.eval_shape(lambda: models.create_backbone(model, rngs=nnx.Rngs(0))))


def make_feature_fn(config, *, n_last_blocks: int = 0, avgpool: bool = False) -> Callable:
  """`(backbone params, uint8 images [b,S,S,3]) -> float32 features [b, F]` of `evaluation_inputs`.

  n_last_blocks = 0: the backbone CLS (kNN, F = D); else the linear-probe features of `linear_probe.probe_features`
  (CLS of the last n blocks[, mean patch token]).
  """
  graphdef = feature_backbone_graph(config)

  def feature_fn(params, images):
    backbone = nnx.merge(graphdef, params)
    inputs = evaluation_inputs(config, images)
    if not n_last_blocks:
      return backbone(inputs)["cls"].astype(jnp.float32)
    return linear_probe.probe_features(
      backbone(inputs, n_last=n_last_blocks), n_last_blocks=n_last_blocks, avgpool=avgpool
    )

  return feature_fn


def eval_batch_size(requested: int, devices: int) -> int:
  """`requested` rounded down to a multiple of the device count (at least one image per device)."""
  return max(devices, requested // devices * devices)


@functools.lru_cache(maxsize=8)
def _jitted(feature_fn: Callable, mesh) -> Callable:
  """jit of (params, images, labels, valid) -> the same rows' (features, labels, valid), replicated: each device
  computes the features of its own images only (shard_map), then the rows are gathered for the host."""
  rows = P(parallel.DATA_AXIS)
  per_shard = jax.shard_map(
    lambda params, images, labels, valid: (feature_fn(params, images), labels, valid),
    mesh=mesh,
    in_specs=(P(), rows, rows, rows),
    out_specs=rows,
  )
  return jax.jit(per_shard, out_shardings=parallel.replicated(mesh))


def extract_features(feature_fn: Callable, params: Any, batches, *, mesh) -> tuple[np.ndarray, np.ndarray]:
  """(features float32 [n, F], labels int32 [n]) of the valid rows of `batches`, in a fixed global order.

  `batches` yields this process's host batches {"image", "label", "valid"} of equal size on every process (see
  `simdino_jax.data.eval_batches`); each becomes a global batch sharded over the mesh's "data" axis. The jitted
  `feature_fn(params, images)` is cached per (feature_fn, mesh), so periodic evaluations compile once. The next
  batch is read while the device computes the current one.
  """
  fn = _jitted(feature_fn, mesh)
  features, labels, pending = [], [], None
  with jax.set_mesh(mesh):
    for host in batches:
      batch = parallel.global_batch(host, mesh)
      result = fn(params, batch["image"], batch["label"], batch["valid"])
      if pending is not None:
        _keep_valid(pending, features, labels)
      pending = result
  if pending is None:
    raise ValueError("No evaluation batches: the split is empty.")
  _keep_valid(pending, features, labels)
  return np.concatenate(features), np.concatenate(labels)


def _keep_valid(result, features: list, labels: list) -> None:
  batch_features, batch_labels, valid = (np.asarray(x) for x in result)
  features.append(batch_features[valid])
  labels.append(batch_labels[valid])


def split_features(
  feature_fn: Callable, params: Any, source, *, batch_size: int, mesh, max_examples: int = 0, workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """`extract_features` of a split (`simdino_jax.data.open_split`), `batch_size` images per global batch.

  Each process reads its own rows (a TFDS split decoded in `workers` grain workers, `sources.read_batches`);
  `max_examples` caps the split before any image is read.
  """
  process_count = jax.process_count()
  batch_size = eval_batch_size(batch_size, mesh.devices.size)
  if batch_size % process_count:
    raise ValueError(f"Evaluation batch size {batch_size} is not divisible by the {process_count} processes.")
  batches = sources.eval_batches(
    source,
    batch_size=batch_size // process_count,
    process_index=jax.process_index(),
    process_count=process_count,
    max_examples=max_examples,
    workers=workers,
  )
  return extract_features(feature_fn, params, batches, mesh=mesh)
