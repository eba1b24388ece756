"""SimDINO and SimDINOv2 losses against float64 NumPy references: values, gradients, options and sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from simdino_jax.objectives import simdino_loss, simdino_patch_loss, simdinov2_loss
from tests import numpy_reference as ref

SETTINGS = settings(max_examples=8, deadline=None)
OPTIONS = ("expa_type", "gamma", "covariance")
simdino_jit = jax.jit(simdino_loss, static_argnames=OPTIONS)
simdino_grad_jit = jax.jit(jax.grad(lambda s, t, **options: simdino_loss(s, t, **options)[0]), static_argnames=OPTIONS)
patch_jit = jax.jit(simdino_patch_loss)
patch_grad_jit = jax.jit(jax.grad(simdino_patch_loss))


def data_mesh():
  return Mesh(np.array(jax.devices()), ("data",), axis_types=(AxisType.Auto,))


def embeddings(seed, shape):
  return ref.normalize(np.random.default_rng(seed).normal(size=shape), 1e-12).astype(np.float32)


def random_masks(seed, shape):
  masks = np.random.default_rng(seed).uniform(size=shape) < 0.4
  masks.reshape(-1, shape[-1])[::2] = False
  return masks


@SETTINGS
@given(
  seed=st.integers(0, 2**31),
  shape=st.sampled_from([(2, 4, 6), (4, 8, 5), (3, 3, 16)]),
  expa_type=st.sampled_from([0, 1]),
  gamma=st.sampled_from(["default", "sqrt"]),
  eps=st.sampled_from([0.05, 0.5]),
  coeff=st.sampled_from([1.0, 0.5]),
)
@example(seed=708, shape=(2, 4, 6), expa_type=0, gamma="default", eps=0.05, coeff=1.0)  # comp ≈ -2.8e-4
def test_simdino_loss_matches_reference(seed, shape, expa_type, gamma, eps, coeff):
  student = embeddings(seed, shape)
  teacher = embeddings(seed + 1, (2, *shape[1:]))
  loss, metrics = simdino_jit(student, teacher, eps=eps, coeff=coeff, expa_type=expa_type, gamma=gamma)
  expected_loss, expected_comp, expected_expa = ref.simdino(student, teacher, eps, coeff, expa_type, gamma)
  # comp is a mean of cosines in [-1, 1] and can cancel to near 0 (seed 708 gave -2.8e-4): errors at the terms' scale.
  terms = 1.0 + abs(expected_expa)
  ref.assert_close(loss, expected_loss, scale=terms)
  ref.assert_close(metrics["comp"], expected_comp, scale=1.0)
  ref.assert_close(metrics["expa"], expected_expa)
  ref.assert_close(loss, -coeff * metrics["comp"] - metrics["expa"], rtol=1e-6, scale=terms)


@pytest.mark.parametrize("expa_type", [0, 1])
def test_simdino_gradient_matches_finite_differences(expa_type):
  student, teacher = embeddings(0, (3, 4, 3)), embeddings(1, (2, 4, 3))
  expected = ref.numerical_gradient(lambda s: ref.simdino(s, teacher, 0.3, 1.0, expa_type)[0], student)
  ref.assert_close(simdino_grad_jit(student, teacher, eps=0.3, expa_type=expa_type), expected, rtol=1e-4)
  teacher_gradient = jax.grad(lambda t: simdino_loss(student, t, eps=0.3)[0])(teacher)
  np.testing.assert_array_equal(teacher_gradient, 0.0)


def test_simdino_comp_is_one_when_all_views_agree():
  views = np.repeat(embeddings(2, (1, 6, 8)), 5, axis=0)
  loss, metrics = simdino_loss(views, views[:2], eps=0.05)
  ref.assert_close(metrics["comp"], 1.0)
  assert metrics["expa"] > 0
  ref.assert_close(loss, -1.0 - metrics["expa"])


def test_simdino_comp_is_minus_one_for_opposite_views_and_expansion_favours_spread():
  teacher = np.repeat(embeddings(3, (1, 6, 8)), 2, axis=0)
  _, metrics = simdino_loss(-np.concatenate([teacher, teacher]), teacher)
  ref.assert_close(metrics["comp"], -1.0)
  collapsed = np.repeat(embeddings(4, (3, 1, 8)), 6, axis=1)
  _, collapsed_metrics = simdino_loss(collapsed, collapsed[:2])
  _, spread_metrics = simdino_loss(embeddings(5, (3, 6, 8)), embeddings(6, (2, 6, 8)), expa_type=0)
  assert spread_metrics["expa"] > collapsed_metrics["expa"] > 0


def test_simdino_rejects_bad_shapes():
  # Options (eps, expa_type, gamma, covariance) are config values, checked once in validation.py.
  student = embeddings(0, (3, 4, 5))
  with pytest.raises(ValueError, match="teacher"):
    simdino_loss(student, student)


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from([(2, 2, 5, 4), (2, 3, 7, 6)]))
def test_simdino_patch_loss_matches_reference(seed, shape):
  student, teacher = embeddings(seed, shape), embeddings(seed + 1, shape)
  masks = random_masks(seed + 2, shape[:-1])
  value = patch_jit(student, teacher, masks)
  ref.assert_close(value, ref.simdino_patch(student, teacher, masks), scale=1.0)  # a mean of cosines: may cancel
  flat = patch_jit(*(x.reshape(-1, *x.shape[2:]) for x in (student, teacher, masks)))
  ref.assert_close(flat, value, rtol=1e-6, scale=1.0)


def test_simdino_patch_gradient_matches_finite_differences():
  shape = (2, 2, 3, 3)
  student, teacher = embeddings(0, shape), embeddings(1, shape)
  masks = np.array([[[1, 0, 1], [0, 0, 0]], [[1, 1, 1], [0, 1, 0]]], bool)
  expected = ref.numerical_gradient(lambda s: ref.simdino_patch(s, teacher, masks), student)
  ref.assert_close(patch_grad_jit(student, teacher, masks), expected, rtol=1e-4)


def test_simdinov2_loss_is_cls_plus_patch_term():
  student, teacher = embeddings(0, (4, 8, 6)), embeddings(1, (2, 8, 6))
  student_patch, teacher_patch = embeddings(2, (2, 8, 5, 6)), embeddings(3, (2, 8, 5, 6))
  masks = random_masks(4, (2, 8, 5))
  loss, metrics = jax.jit(simdinov2_loss)(student, teacher, student_patch, teacher_patch, masks)
  expected_cls = ref.simdino(student, teacher)[0]
  expected_patch = ref.simdino_patch(student_patch, teacher_patch, masks)
  ref.assert_close(metrics["patch"], expected_patch)
  ref.assert_close(loss, expected_cls + expected_patch)


@pytest.mark.parametrize("expa_type", [0, 1])
def test_simdino_local_covariance_is_the_mean_over_devices(expa_type):
  student, teacher = embeddings(5, (3, 16, 6)), embeddings(6, (2, 16, 6))
  # Without a mesh "local" is the whole batch, equal to "global".
  ref.assert_close(
    simdino_jit(student, teacher, expa_type=expa_type, covariance="local")[0],
    ref.simdino(student, teacher, expa_type=expa_type)[0],
  )
  mesh = data_mesh()
  with jax.set_mesh(mesh):
    on_batch = lambda x: jax.device_put(x, NamedSharding(mesh, P(None, "data")))
    loss, metrics = simdino_jit(on_batch(student), on_batch(teacher), expa_type=expa_type, covariance="local")
    gradient = simdino_grad_jit(on_batch(student), on_batch(teacher), eps=0.3, expa_type=expa_type, covariance="local")
  expected = ref.simdino(student, teacher, expa_type=expa_type, n_devices=8)
  ref.assert_close(loss, expected[0])
  ref.assert_close(metrics["expa"], expected[2])
  numerical = ref.numerical_gradient(
    lambda s: ref.simdino(s, teacher, 0.3, expa_type=expa_type, n_devices=8)[0], student
  )
  ref.assert_close(gradient, numerical, rtol=1e-4)


def test_simdino_sharded_equals_unsharded():
  student, teacher = embeddings(7, (4, 16, 12)), embeddings(8, (2, 16, 12))
  student_patch, teacher_patch = embeddings(9, (2, 16, 3, 12)), embeddings(10, (2, 16, 3, 12))
  masks = random_masks(11, (2, 16, 3))
  unsharded = (
    simdino_jit(student, teacher),
    simdino_grad_jit(student, teacher),
    patch_jit(student_patch, teacher_patch, masks),
  )
  mesh = data_mesh()
  with jax.set_mesh(mesh):
    on_batch = lambda x: jax.device_put(x, NamedSharding(mesh, P(None, "data")))
    sharded = (
      simdino_jit(on_batch(student), on_batch(teacher)),
      simdino_grad_jit(on_batch(student), on_batch(teacher)),
      patch_jit(on_batch(student_patch), on_batch(teacher_patch), on_batch(masks)),
    )
  jax.tree.map(lambda actual, expected: ref.assert_close(actual, expected, rtol=2e-6), sharded, unsharded)


def test_simdino_casts_bfloat16_to_float32():
  student, teacher = embeddings(0, (3, 4, 5)), embeddings(1, (2, 4, 5))
  loss, _ = simdino_jit(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16))
  assert loss.dtype == jnp.float32


def test_simdino_covariance_groups_equal_the_per_device_computation_on_any_mesh():
  """Groups of 2 rows of a 16-row batch: the 8-device 'local' computation, on 8 devices or on one."""
  student, teacher = embeddings(12, (3, 16, 6)), embeddings(13, (2, 16, 6))
  grouped = jax.jit(simdino_loss, static_argnames=("group_size", "n"))
  grouped_grad = jax.jit(jax.grad(lambda s, t: simdino_loss(s, t, eps=0.3, group_size=2)[0]))
  expected = ref.simdino(student, teacher, n_devices=8)
  one_device = grouped(student, teacher, group_size=2)
  ref.assert_close(one_device[0], expected[0])
  ref.assert_close(one_device[1]["expa"], expected[2])
  mesh = data_mesh()
  with jax.set_mesh(mesh):
    on_batch = lambda x: jax.device_put(x, NamedSharding(mesh, P(None, "data")))
    sharded = grouped(on_batch(student), on_batch(teacher), group_size=2)
    per_device = simdino_jit(on_batch(student), on_batch(teacher), covariance="local")
    sharded_gradient = grouped_grad(on_batch(student), on_batch(teacher))
  ref.assert_close(sharded[0], per_device[0], rtol=2e-6)
  ref.assert_close(sharded[1]["expa"], one_device[1]["expa"], rtol=2e-6)
  numerical = ref.numerical_gradient(lambda s: ref.simdino(s, teacher, 0.3, n_devices=8)[0], student)
  ref.assert_close(sharded_gradient, numerical, rtol=1e-4)
  ref.assert_close(grouped_grad(student, teacher), numerical, rtol=1e-4)
  # α and γ refer to the global n passed in: half the rows with n = 16 give the expansion of their 4 groups.
  half = grouped(student[:, :8], teacher[:, :8], group_size=2, n=16)[1]["expa"]
  ref.assert_close(half, ref.simdino(student[:, :8], teacher[:, :8], n_devices=4, n=16)[2])
  with pytest.raises(ValueError, match="must divide the batch of 16 rows"):
    grouped(student, teacher, group_size=3)
