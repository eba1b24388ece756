"""KoLeo, KoLeo-proto and the unique-prototype count against float64 NumPy references and their properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from simdino_jax.objectives import koleo_loss, koleo_on_global_crops, koleo_proto_loss, unique_prototypes
from tests import numpy_reference as ref

SETTINGS = settings(max_examples=8, deadline=None)
# Jitted once at module level so that examples of the same shape reuse the compilation.
koleo_jit = jax.jit(koleo_loss)
koleo_grad_jit = jax.jit(jax.grad(koleo_loss))
koleo_proto_jit = jax.jit(koleo_proto_loss, static_argnums=1)
koleo_proto_grad_jit = jax.jit(jax.grad(koleo_proto_loss), static_argnums=1)


def data_mesh():
  return Mesh(np.array(jax.devices()), ("data",), axis_types=(AxisType.Auto,))


def random_rows(seed, n, d, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=(n, d))).astype(np.float32)


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from([(2, 3), (9, 4), (24, 12)]))
def test_koleo_matches_reference(seed, shape):
  x = random_rows(seed, *shape)
  ref.assert_close(koleo_jit(x), ref.koleo(x), scale=1.0)  # a mean of logs of distances near 1: may cancel


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from([(3, 2), (12, 6)]))
def test_koleo_gradient_matches_finite_differences(seed, shape):
  x = random_rows(seed, *shape)
  assume(ref.nearest_neighbour_gap(x) > 1e-3)
  gradient = koleo_grad_jit(x)
  ref.assert_close(gradient, ref.numerical_gradient(ref.koleo, x), rtol=1e-4)


@SETTINGS
@given(seed=st.integers(0, 2**31), scale=st.floats(1e-3, 1e3))
def test_koleo_invariant_to_row_permutation_and_scale(seed, scale):
  x = random_rows(seed, 10, 5)
  permutation = np.random.default_rng(seed + 1).permutation(10)
  value = koleo_jit(x)
  ref.assert_close(koleo_jit(x[permutation]), value, rtol=1e-6, scale=1.0)
  ref.assert_close(koleo_jit(np.float32(scale) * x), value, rtol=1e-5, scale=1.0)


def test_koleo_needs_two_rows():
  with pytest.raises(ValueError, match="N >= 2"):
    koleo_loss(jnp.ones((1, 4)))
  with pytest.raises(ValueError, match="N >= 2"):
    koleo_proto_loss(jnp.ones((1, 4)))


def test_koleo_casts_bfloat16_to_float32():
  x = random_rows(0, 8, 4)
  value = koleo_jit(jnp.asarray(x, jnp.bfloat16))
  assert value.dtype == jnp.float32
  ref.assert_close(value, ref.koleo(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32)))


@SETTINGS
@given(
  seed=st.integers(0, 2**31),
  shape=st.sampled_from([(2, 3), (23, 8), (40, 5)]),
  chunk_size=st.sampled_from([1, 7, 16, 64]),
)
def test_koleo_proto_equals_dense_koleo(seed, shape, chunk_size):
  prototypes = random_rows(seed, *shape, scale=3.0)
  proto = koleo_proto_jit(prototypes, chunk_size)
  ref.assert_close(proto, koleo_jit(prototypes), rtol=1e-6, scale=1.0)
  ref.assert_close(proto, ref.koleo(prototypes), scale=1.0)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_koleo_proto_gradient_equals_dense_gradient(chunk_size):
  prototypes = random_rows(7, 16, 5, scale=2.0)
  assert ref.nearest_neighbour_gap(prototypes) > 1e-3
  proto_gradient = koleo_proto_grad_jit(prototypes, chunk_size)
  ref.assert_close(proto_gradient, koleo_grad_jit(prototypes), rtol=1e-6)
  ref.assert_close(proto_gradient, ref.numerical_gradient(ref.koleo, prototypes), rtol=1e-4)


def test_koleo_sharded_equals_unsharded():
  x = random_rows(3, 32, 6)
  expected = koleo_jit(x)
  mesh = data_mesh()
  with jax.set_mesh(mesh):
    sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    ref.assert_close(koleo_jit(sharded), expected, rtol=1e-6)
    ref.assert_close(koleo_proto_jit(sharded, 5), expected, rtol=1e-6)
    ref.assert_close(koleo_proto_grad_jit(sharded, 5), koleo_grad_jit(x), rtol=1e-6)
    assert unique_prototypes(sharded, 0.5, chunk_size=6) == unique_prototypes(x, 0.5, chunk_size=6)


def test_koleo_groups_of_fixed_size_equal_on_1_and_8_devices():
  """KoLeo per group of 4 images (koleo_group_size): the float64 mean over groups, on one device and on 8 devices
  holding 2 or 8 rows each (groups straddle devices in the first case), value and gradient."""
  cls = random_rows(5, 2 * 32, 6).reshape(2, 32, 6)
  expected = sum(np.mean([ref.koleo(group) for group in np.split(cls[view], 8)]) for view in range(2))
  grouped = jax.jit(lambda x: koleo_on_global_crops(x, group_size=4))
  grouped_grad = jax.jit(jax.grad(lambda x: koleo_on_global_crops(x, group_size=4)))
  ref.assert_close(grouped(cls), expected, scale=1.0)
  gradient = grouped_grad(cls)
  ref.assert_close(
    gradient,
    ref.numerical_gradient(lambda x: sum(np.mean([ref.koleo(g) for g in np.split(x[v], 8)]) for v in range(2)), cls),
    rtol=1e-4,
  )
  mesh = data_mesh()
  with jax.set_mesh(mesh):
    for rows in (cls, cls[:, :16]):  # 4 or 2 rows per device
      sharded = jax.device_put(rows, NamedSharding(mesh, P(None, "data")))
      ref.assert_close(grouped(sharded), grouped(rows), rtol=1e-6, scale=1.0)
      ref.assert_close(grouped_grad(sharded), grouped_grad(rows), rtol=1e-6)
  # The per-device scope moves with the hardware: 8 devices of 4 images is not the whole batch of 32.
  assert not np.isclose(float(grouped(cls)), float(koleo_on_global_crops(cls, "global")))
  with pytest.raises(ValueError, match="koleo_group_size to a divisor"):
    koleo_on_global_crops(cls, group_size=5)


def clustered_prototypes(seed, group_sizes, d, spread):
  """Groups of prototypes around random unit centres, each member within `spread` of its centre."""
  rng = np.random.default_rng(seed)
  rows = []
  for size in group_sizes:
    centre = ref.normalize(rng.normal(size=d), 1e-8)
    offsets = rng.normal(size=(size, d))
    offsets *= spread * rng.uniform(0.0, 1.0, size=(size, 1)) / np.linalg.norm(offsets, axis=1, keepdims=True)
    rows.append(ref.normalize(centre + offsets, 1e-8) * rng.uniform(0.5, 3.0, size=(size, 1)))
  return np.concatenate(rows).astype(np.float32)[rng.permutation(sum(group_sizes))]


@SETTINGS
@given(
  seed=st.integers(0, 2**31),
  group_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=12),
  chunk_size=st.sampled_from([1, 5, 32]),
)
def test_unique_prototypes_counts_constructed_clusters(seed, group_sizes, chunk_size):
  # Members lie within 0.004 of their centre (pairwise < 0.008 < 0.025); centres of random unit vectors in 32-d
  # are far apart (checked by the reference's exact component count).
  prototypes = clustered_prototypes(seed, group_sizes, 32, spread=0.004)
  assert ref.unique_prototype_groups(prototypes, 0.025) == (len(group_sizes), max(group_sizes))
  assert unique_prototypes(prototypes, 0.025, chunk_size=chunk_size) == (len(group_sizes), max(group_sizes))


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_unique_prototypes_merges_transitive_chains(chunk_size):
  # A chain on a great circle with steps 0.02 (< 0.025) but end-to-end distance far above the threshold, in a
  # shuffled order so that merges need several passes, plus three isolated prototypes.
  angles = 0.02 * np.arange(40)
  chain = np.stack([np.cos(angles), np.sin(angles), np.zeros(40), np.zeros(40)], axis=1)
  isolated = np.eye(4)[2:] * np.array([[1.0], [-1.0]])
  isolated = np.concatenate([isolated, [[-1.0, 0.0, 0.0, 0.0]]])
  prototypes = np.concatenate([chain, isolated]).astype(np.float32)
  prototypes = prototypes[np.random.default_rng(0).permutation(len(prototypes))]
  assert ref.unique_prototype_groups(prototypes, 0.025) == (4, 40)
  assert unique_prototypes(prototypes, 0.025, chunk_size=chunk_size) == (4, 40)
  assert unique_prototypes(prototypes, 0.019, chunk_size=chunk_size) == (43, 1)


@SETTINGS
@given(seed=st.integers(0, 2**31), k=st.sampled_from([2, 30]), threshold=st.floats(0.05, 1.5))
def test_unique_prototypes_matches_reference_components(seed, k, threshold):
  prototypes = random_rows(seed, k, 3)
  distances = np.linalg.norm(ref.normalize(prototypes, 1e-8)[:, None] - ref.normalize(prototypes, 1e-8)[None], axis=-1)
  assume(np.min(np.abs(distances - threshold)) > 1e-4)
  assert unique_prototypes(prototypes, threshold, chunk_size=7) == ref.unique_prototype_groups(prototypes, threshold)


def test_unique_prototypes_rejects_non_positive_threshold():
  with pytest.raises(ValueError, match="threshold"):
    unique_prototypes(np.eye(3, dtype=np.float32), 0.0)
