"""The weighted k-nearest-neighbour classifier of DINO's `eval_knn.py` on precomputed features."""

import contextlib
import functools
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from simdino_jax import parallel
from simdino_jax.numerics import HIGHEST, l2_normalize
from simdino_jax.parallel import DATA_AXIS


def resolve_mesh(mesh: Mesh | None) -> Mesh | None:
  """The given mesh, else the context mesh of `jax.set_mesh`, else None; it must have a "data" axis."""
  if mesh is None:
    context = jax.sharding.get_mesh()
    mesh = None if context.empty else context
  if mesh is not None and DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"The mesh needs a {DATA_AXIS!r} axis, got axes {mesh.axis_names}.")
  return mesh


def _mesh_context(mesh: Mesh | None):
  """`jax.set_mesh(mesh)` as a context manager, or a no-op without a mesh."""
  return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """Appends zero rows so that x has `rows` rows."""
  return np.concatenate([x, np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)]) if rows > x.shape[0] else x


def _local_topk(test: jax.Array, train: jax.Array, labels: jax.Array, valid: jax.Array, k: int):
  """Top-k cosine similarities of the (normalized) test rows against the train rows: (values, labels) [c, k]."""
  sims = jnp.matmul(test, train.T, precision=HIGHEST)
  sims = jnp.where(valid[None, :], sims, -jnp.inf)
  values, index = jax.lax.top_k(sims, k)
  return values, labels[index]


@functools.partial(jax.jit, static_argnames=("ks", "k_local", "num_classes", "temperature", "mesh"))
def _knn_chunk(test, train, labels, valid, *, ks, k_local, num_classes, temperature, mesh):
  """Top-min(5, C) predicted classes [len(ks), c, min(5, C)] of one chunk of test rows, for every k in ks."""
  test = l2_normalize(test.astype(jnp.float32))
  if mesh is None:
    values, neighbour_labels = _local_topk(test, train, labels, valid, k_local)
  else:
    local = jax.shard_map(
      functools.partial(_local_topk, k=k_local),
      mesh=mesh,
      in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)),
      out_specs=(P(None, DATA_AXIS), P(None, DATA_AXIS)),
    )
    values, neighbour_labels = local(test, train, labels, valid)
    replicated = NamedSharding(mesh, P())
    values = jax.lax.with_sharding_constraint(values, replicated)
    neighbour_labels = jax.lax.with_sharding_constraint(neighbour_labels, replicated)
  # Merge the per-shard candidates (a no-op re-sort without a mesh), so both paths score identical sorted lists.
  values, position = jax.lax.top_k(values, max(ks))
  neighbour_labels = jnp.take_along_axis(neighbour_labels, position, axis=1)
  predictions = []
  for k in ks:
    weights = jnp.exp(values[:, :k] / temperature)
    one_hot = jax.nn.one_hot(neighbour_labels[:, :k], num_classes, dtype=jnp.float32)
    scores = jnp.einsum("ck,ckn->cn", weights, one_hot, precision=HIGHEST)
    predictions.append(jax.lax.top_k(scores, min(5, num_classes))[1])
  return jnp.stack(predictions)


def _as_ks(k: int | Sequence[int], n_train: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(requested ks, effective ks); a k above the number of train samples is clamped to it with a warning."""
  requested = (k,) if isinstance(k, int) else tuple(k)
  if not requested or min(requested) < 1:
    raise ValueError(f"k must be positive integers, got {k}.")
  for value in requested:
    if value > n_train:
      warnings.warn(
        f"kNN k={value} exceeds the {n_train} train samples; using all {n_train} as neighbours.", stacklevel=3
      )
  return requested, tuple(min(value, n_train) for value in requested)


def knn_predict(
  train_features: np.ndarray,
  train_labels: np.ndarray,
  test_features: np.ndarray,
  *,
  num_classes: int,
  k: int | Sequence[int] = 20,
  temperature: float = 0.07,
  test_chunk: int = 512,
  mesh: Mesh | None = None,
) -> dict[int, np.ndarray]:
  """Weighted kNN class ranking: score_c = Σ_{j ∈ top-k(x)} exp(cos(x, f_j) / T) · [y_j = c].

  Features are l2-normalized; cosine similarities are computed chunk by chunk over the test rows (no full
  test × train matrix). With a mesh the train features are sharded over the "data" axis: each device keeps its local
  top-k and the candidates are merged, giving the same result as the unsharded path. A k above the number of train
  samples is clamped to it (with a warning) and keeps its requested key.

  Args:
    train_features: [n_train, D] host array (same on every process).
    train_labels: [n_train] int labels in [0, num_classes).
    test_features: [n_test, D] host array.
    num_classes: number of classes C.
    k: one k or several (e.g. (10, 20, 100, 200)).
    temperature: T of the weights.
    test_chunk: test rows per call (the last chunk is padded).
    mesh: optional mesh with a "data" axis (default: the `jax.set_mesh` context mesh, if any).

  Returns:
    {k: int32 [n_test, min(5, C)]} the classes sorted by decreasing score (column 0 is the prediction).
  """
  mesh = resolve_mesh(mesh)
  train_features, test_features = np.asarray(train_features), np.asarray(test_features)
  train_labels = np.asarray(train_labels, np.int32)
  n_train, n_test = train_features.shape[0], test_features.shape[0]
  if (
    n_train == 0
    or n_test == 0
    or train_labels.shape != (n_train,)
    or test_features.shape[1:] != train_features.shape[1:]
  ):
    raise ValueError(
      f"Inconsistent kNN inputs: train {train_features.shape}, labels {train_labels.shape}, test {test_features.shape}."
    )
  requested, ks = _as_ks(k, n_train)
  shards = 1 if mesh is None else mesh.shape[DATA_AXIS]
  padded = -(-n_train // shards) * shards
  valid = np.arange(padded) < n_train
  train_features, train_labels = _pad_rows(train_features, padded), _pad_rows(train_labels, padded)
  k_local = min(max(ks), padded // shards)

  with _mesh_context(mesh):
    if mesh is None:
      train, labels, valid = jnp.asarray(train_features), jnp.asarray(train_labels), jnp.asarray(valid)
    else:
      sharding = NamedSharding(mesh, P(DATA_AXIS))
      train, labels, valid = (parallel.from_full_host_array(x, sharding) for x in (train_features, train_labels, valid))
    train = jax.jit(lambda x: l2_normalize(x.astype(jnp.float32)))(train)
    outputs = []
    test_chunk = min(test_chunk, n_test)
    for start in range(0, n_test, test_chunk):
      chunk = test_features[start : start + test_chunk]
      if mesh is not None:
        chunk_array = parallel.replicate(_pad_rows(chunk, test_chunk), mesh)
      else:
        chunk_array = jnp.asarray(_pad_rows(chunk, test_chunk))
      outputs.append(
        (
          _knn_chunk(
            chunk_array,
            train,
            labels,
            valid,
            ks=ks,
            k_local=k_local,
            num_classes=num_classes,
            temperature=float(temperature),
            mesh=mesh,
          ),
          chunk.shape[0],
        )
      )
    predictions = np.concatenate([np.asarray(out)[:, :rows] for out, rows in outputs], axis=1)
  return {value: predictions[i] for i, value in enumerate(requested)}


def knn_classify(
  train_features: np.ndarray,
  train_labels: np.ndarray,
  test_features: np.ndarray,
  test_labels: np.ndarray,
  *,
  num_classes: int,
  k: int | Sequence[int] = 20,
  temperature: float = 0.07,
  test_chunk: int = 512,
  mesh: Mesh | None = None,
) -> dict[str, float]:
  """Top-1 (and top-5 when C >= 5) accuracy, as fractions, of the weighted kNN of `knn_predict`.

  Returns:
    {"knn_top1_k{k}": acc, "knn_top5_k{k}": acc, ...} for every requested k.
  """
  predictions = knn_predict(
    train_features,
    train_labels,
    test_features,
    num_classes=num_classes,
    k=k,
    temperature=temperature,
    test_chunk=test_chunk,
    mesh=mesh,
  )
  test_labels = np.asarray(test_labels)
  metrics = {}
  for value, ranked in predictions.items():
    metrics[f"knn_top1_k{value}"] = float(np.mean(ranked[:, 0] == test_labels))
    if num_classes >= 5:
      metrics[f"knn_top5_k{value}"] = float(np.mean(np.any(ranked[:, :5] == test_labels[:, None], axis=1)))
  return metrics
