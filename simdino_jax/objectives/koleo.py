"""KoLeo (DINOv2) on features, KoLeo-proto on prototype directions, and the unique-prototype diagnostic.

KoLeo: x̂_i = x_i / ||x_i|| (numerics.l2_normalize), j(i) = argmax_{j≠i} x̂_i·x̂_j (no gradient through the argmax),
d_i = ||x̂_i − x̂_j(i) + 1e-8||, L = −(1/N) Σ_i log(d_i + 1e-8).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from simdino_jax.numerics import HIGHEST, l2_normalize
from simdino_jax.objectives.common import as_float32
from simdino_jax.objectives.distributed import mean_over_data_shards

PAIRWISE_EPS = 1e-8  # added to the difference, as torch.nn.PairwiseDistance does
LOG_EPS = 1e-8


def _check_rows(x: jax.Array, what: str) -> None:
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"{what} needs a [N, D] array with N >= 2 (every row needs a neighbour), got shape {x.shape}.")


def _koleo_from_neighbours(x_normalized: jax.Array, neighbours: jax.Array) -> jax.Array:
  """−mean_i log(||x̂_i − x̂_{n(i)} + 1e-8|| + 1e-8): the only differentiable path of KoLeo."""
  distances = jnp.linalg.norm(x_normalized - x_normalized[neighbours] + PAIRWISE_EPS, axis=-1)
  return -jnp.mean(jnp.log(distances + LOG_EPS))


def koleo_loss(x: jax.Array) -> jax.Array:
  """DINOv2's KoLeo of x [N, D]: −mean_i log(||x̂_i − x̂_j(i) + 1e-8|| + 1e-8), j(i) = argmax_{j≠i} x̂_i·x̂_j.

  Computed in float32 with a dense N×N similarity matrix (use koleo_proto_loss for large N).
  """
  x = as_float32(x)
  _check_rows(x, "koleo_loss")
  x_normalized = l2_normalize(x)
  similarities = jax.lax.stop_gradient(jnp.matmul(x_normalized, x_normalized.T, precision=HIGHEST))
  similarities = jnp.where(jnp.eye(x.shape[0], dtype=bool), -jnp.inf, similarities)
  return _koleo_from_neighbours(x_normalized, jnp.argmax(similarities, axis=1))


def _row_chunks(n_rows: int, chunk_size: int) -> tuple[int, int]:
  """(rows per chunk, number of chunks) covering n_rows; the last chunk is padded."""
  rows_per_chunk = min(int(chunk_size), n_rows)
  return rows_per_chunk, -(-n_rows // rows_per_chunk)


def _map_row_chunks(fn, x: jax.Array, chunk_size: int) -> jax.Array:
  """[fn(rows, row_ids) for each chunk of rows of x], concatenated to [K]; fn sees a chunk × all-K block only."""
  n_rows = x.shape[0]
  rows_per_chunk, n_chunks = _row_chunks(n_rows, chunk_size)
  padded = n_chunks * rows_per_chunk
  rows = jnp.pad(x, ((0, padded - n_rows), (0, 0))).reshape(n_chunks, rows_per_chunk, x.shape[1])
  row_ids = jnp.arange(padded).reshape(n_chunks, rows_per_chunk)
  return jax.lax.map(lambda args: fn(*args), (rows, row_ids)).reshape(padded)[:n_rows]


def nearest_neighbours(x_normalized: jax.Array, chunk_size: int) -> jax.Array:
  """argmax_{j≠i} x̂_i·x̂_j for every row i, block-wise (chunk_size rows × all K at a time); no K×K matrix."""
  x_normalized = jax.lax.stop_gradient(x_normalized)
  column_ids = jnp.arange(x_normalized.shape[0])

  def chunk_neighbours(rows, row_ids):
    similarities = jnp.matmul(rows, x_normalized.T, precision=HIGHEST)
    similarities = jnp.where(row_ids[:, None] == column_ids[None, :], -jnp.inf, similarities)
    return jnp.argmax(similarities, axis=1)

  return _map_row_chunks(chunk_neighbours, x_normalized, chunk_size)


def koleo_proto_loss(prototypes: jax.Array, chunk_size: int = 4096) -> jax.Array:
  """KoLeo over the K normalized prototype directions v_k/||v_k|| of prototypes [K, d].

  Nearest neighbours are found block-wise (chunk_size rows × all K, diagonal masked, no gradient); the exact
  distance is then computed for the chosen pairs only, so memory is O(chunk_size·K), never K×K.
  """
  prototypes = as_float32(prototypes)
  _check_rows(prototypes, "koleo_proto_loss")
  directions = l2_normalize(prototypes)
  return _koleo_from_neighbours(directions, nearest_neighbours(directions, chunk_size))


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _smallest_close_label(directions, labels, max_squared_distance, chunk_size):
  """For each row i: min of labels[j] over j with ||x̂_i − x̂_j||² < max_squared_distance (i included)."""
  squared_norms = jnp.sum(directions * directions, axis=1)
  no_label = jnp.iinfo(labels.dtype).max

  def chunk_labels(rows, row_ids):
    squared_distances = (
      jnp.sum(rows * rows, axis=1)[:, None]
      + squared_norms[None, :]
      - 2.0 * jnp.matmul(rows, directions.T, precision=HIGHEST)
    )
    close = squared_distances < max_squared_distance
    own_label = labels[jnp.minimum(row_ids, labels.shape[0] - 1)]
    return jnp.minimum(jnp.min(jnp.where(close, labels[None, :], no_label), axis=1), own_label)

  return _map_row_chunks(chunk_labels, directions, chunk_size)


def _roots(parent: np.ndarray) -> np.ndarray:
  """Root of every node of a union-find forest (pointer jumping until stable)."""
  while True:
    grandparent = parent[parent]
    if np.array_equal(grandparent, parent):
      return parent
    parent = grandparent


def _union(parent: np.ndarray, a: int, b: int) -> None:
  """Merges the sets of a and b; the smaller root index becomes the root."""
  while parent[a] != a:
    parent[a] = parent[parent[a]]
    a = parent[a]
  while parent[b] != b:
    parent[b] = parent[parent[b]]
    b = parent[b]
  parent[max(a, b)] = min(a, b)


def unique_prototypes(prototypes: jax.Array, threshold: float = 0.025, chunk_size: int = 4096) -> tuple[int, int]:
  """(number of groups, size of the largest group) of the normalized prototypes of prototypes [K, d].

  Groups are the connected components of the graph with an edge wherever ||v̂_i − v̂_j|| < threshold (so chains
  merge transitively). Each pass finds, block-wise in JAX, the smallest group label among every row's close
  rows; a host union-find merges them; passes repeat until no label changes (O(log K) passes, one if no pair is
  close). A diagnostic for outside the train step: not jit-able itself, returns Python ints.
  """
  if not threshold > 0:
    raise ValueError(f"unique_prototypes needs a threshold > 0, got {threshold}.")
  prototypes = as_float32(prototypes)
  if prototypes.ndim != 2:
    raise ValueError(f"unique_prototypes expects prototypes [K, d], got shape {prototypes.shape}.")
  directions = l2_normalize(prototypes)
  n_prototypes = prototypes.shape[0]
  labels = np.arange(n_prototypes, dtype=np.int32)
  while True:
    smallest = np.asarray(
      _smallest_close_label(directions, jnp.asarray(labels), float(threshold) ** 2, chunk_size=int(chunk_size))
    )
    to_merge = np.nonzero(smallest < labels)[0]
    if to_merge.size == 0:
      break
    parent = labels.copy()
    for row in to_merge:
      _union(parent, int(row), int(smallest[row]))
    labels = _roots(parent)
  group_sizes = np.bincount(labels, minlength=n_prototypes)
  return int(np.count_nonzero(group_sizes)), int(group_sizes.max())


KOLEO_SCOPES = ("device", "global")


def grouped_koleo(x: jax.Array, group_size: int) -> jax.Array:
  """(1/G) Σ_g KoLeo(x_g): KoLeo of each group x_g of `group_size` consecutive rows of x [N, D] (G = N/group_size
  groups; each row's neighbour is sought in its own group), the same wherever the rows live."""
  if group_size < 2 or x.shape[0] % group_size:
    raise ValueError(
      f"KoLeo groups of {group_size} rows need a batch of whole groups of at least 2 rows, got "
      f"{x.shape[0]} rows: set config.objective.koleo_group_size to a divisor of the (micro-)batch."
    )
  return jnp.mean(jax.vmap(koleo_loss)(x.reshape(x.shape[0] // group_size, group_size, x.shape[1])))


def koleo_on_global_crops(student_cls: jax.Array, scope: str = "device", group_size: int = 0) -> jax.Array:
  """L(g1) + L(g2): KoLeo of the student backbone CLS [V, B, D] of each global crop separately (DINOv2).

  group_size > 0: the mean KoLeo over groups of that many consecutive images of the batch (DINOv2's per-GPU batch,
  fixed whatever the devices). group_size 0, by scope: "device", each device's local batch (shard_map over the
  "data" mesh axis, mean over devices); "global", the whole global batch.
  """
  if student_cls.ndim != 3 or student_cls.shape[0] < 2:
    raise ValueError(f"KoLeo expects the student CLS [V>=2, B, D], got shape {student_cls.shape}.")
  if group_size:
    return sum(grouped_koleo(student_cls[view], group_size) for view in range(2))
  if scope == "device":
    return sum(mean_over_data_shards(koleo_loss, student_cls[view]) for view in range(2))
  return sum(koleo_loss(student_cls[view]) for view in range(2))
