"""The coding rate against a float64 slogdet reference: values, gradients, invariances and non-finite results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from simdino_jax.objectives import coding_rate
from tests import numpy_reference as ref

SETTINGS = settings(max_examples=8, deadline=None)
SHAPES = [(4, 9), (16, 6), (8, 8)]  # n < p (the n×n Gram path), n > p and n = p
coding_rate_jit = jax.jit(coding_rate)
coding_rate_grad_jit = jax.jit(jax.grad(coding_rate))


def data_mesh():
  return Mesh(np.array(jax.devices()), ("data",), axis_types=(AxisType.Auto,))


def unit_rows(seed, n, p):
  return ref.normalize(np.random.default_rng(seed).normal(size=(n, p)), 1e-12).astype(np.float32)


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(SHAPES), eps=st.sampled_from([0.05, 0.5, 2.0]))
def test_coding_rate_matches_reference(seed, shape, eps):
  z = unit_rows(seed, *shape)
  ref.assert_close(coding_rate_jit(z, eps), ref.coding_rate(z, eps))


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(SHAPES), eps=st.sampled_from([0.05, 0.5]))
def test_coding_rate_gradient_matches_analytic(seed, shape, eps):
  z = unit_rows(seed, *shape)
  ref.assert_close(coding_rate_grad_jit(z, eps), ref.coding_rate_gradient(z, eps), rtol=1e-4)


def test_coding_rate_gradient_matches_finite_differences():
  z = unit_rows(0, 3, 4)
  expected = ref.numerical_gradient(lambda x: ref.coding_rate(x, 0.3), z)
  ref.assert_close(ref.coding_rate_gradient(z, 0.3), expected, rtol=1e-6)
  ref.assert_close(coding_rate_grad_jit(z, 0.3), expected, rtol=1e-4)


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(SHAPES))
def test_coding_rate_invariant_to_row_permutation_and_rotation(seed, shape):
  z = unit_rows(seed, *shape)
  rng = np.random.default_rng(seed + 1)
  rotation, _ = np.linalg.qr(rng.normal(size=(shape[1], shape[1])))
  value = coding_rate_jit(z, 0.1)
  ref.assert_close(coding_rate_jit(z[rng.permutation(shape[0])], 0.1), value)
  ref.assert_close(coding_rate_jit((z @ rotation).astype(np.float32), 0.1), value)


@pytest.mark.parametrize("shape", [(3, 10), (10, 3)])
def test_small_and_large_gram_paths_agree(shape):
  # ½ logdet(I_p + α ZᵀZ) computed explicitly with the p×p matrix equals coding_rate on both sides of n = p.
  z = unit_rows(5, *shape)
  n, p = shape
  alpha = p / (n * 0.05)
  explicit = jnp.sum(
    jnp.log(
      jnp.diagonal(jnp.linalg.cholesky(jnp.eye(p) + alpha * jnp.matmul(z.T, z, precision=jax.lax.Precision.HIGHEST)))
    )
  )
  explicit_small = jnp.sum(
    jnp.log(
      jnp.diagonal(jnp.linalg.cholesky(jnp.eye(n) + alpha * jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST)))
    )
  )
  ref.assert_close(explicit_small, explicit)
  ref.assert_close(coding_rate(z, 0.05), explicit)


def test_coding_rate_non_finite_results_are_detectable():
  z = unit_rows(1, 6, 4)
  with_nan = z.copy()
  with_nan[2, 1] = np.nan
  with_inf = z.copy()
  with_inf[0, 0] = np.inf
  assert np.isnan(coding_rate_jit(with_nan, 0.05))
  assert not np.isfinite(coding_rate_jit(with_inf, 0.05))
  # A negative eps traced through jit makes I + αZᵀZ indefinite: the failed Cholesky gives NaN, not a number.
  assert np.isnan(coding_rate_jit(z, jnp.float32(-0.05)))
  assert np.isfinite(coding_rate_jit(z, jnp.float32(0.05)))


def test_coding_rate_is_float32_for_bfloat16_input():
  z = jnp.asarray(unit_rows(2, 8, 4), jnp.bfloat16)
  value = coding_rate_jit(z, 0.05)
  assert value.dtype == jnp.float32
  ref.assert_close(value, ref.coding_rate(np.asarray(z, np.float32), 0.05))


@pytest.mark.parametrize("shape", [(16, 24), (32, 6)])
def test_coding_rate_sharded_equals_unsharded(shape):
  z = unit_rows(3, *shape)
  expected = coding_rate_jit(z, 0.05)
  mesh = data_mesh()
  with jax.set_mesh(mesh):
    sharded = jax.device_put(z, NamedSharding(mesh, P("data")))
    ref.assert_close(coding_rate_jit(sharded, 0.05), expected)
    ref.assert_close(coding_rate_grad_jit(sharded, 0.05), coding_rate_grad_jit(z, 0.05), rtol=1e-5)
