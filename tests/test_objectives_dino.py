"""DINO loss, centering, Sinkhorn-Knopp and the iBOT patch loss against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from simdino_jax.objectives import (
  cross_view_cross_entropy,
  ibot_patch_loss,
  ibot_sinkhorn_knopp,
  sinkhorn_knopp,
  teacher_probs,
  update_center,
  update_patch_center,
)
from tests import numpy_reference as ref

SETTINGS = settings(max_examples=8, deadline=None)


def dino_loss(student, teacher, center, *, teacher_temp):
  """DINO's loss as objectives/methods.py composes it: the cross-view cross-entropy against the centered,
  sharpened teacher."""
  return cross_view_cross_entropy(student, teacher_probs(teacher, center, teacher_temp))


dino_jit = jax.jit(dino_loss, static_argnames=())
dino_student_grad_jit = jax.jit(jax.grad(dino_loss), static_argnames=())
sinkhorn_jit = jax.jit(sinkhorn_knopp, static_argnums=2)
ibot_jit = jax.jit(ibot_patch_loss)
ibot_grad_jit = jax.jit(jax.grad(ibot_patch_loss))
update_center_jit = jax.jit(update_center)
update_patch_center_jit = jax.jit(update_patch_center)


def data_mesh():
  return Mesh(np.array(jax.devices()), ("data",), axis_types=(AxisType.Auto,))


def normal(seed, shape, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def random_masks(seed, shape):
  """Boolean masks [..., N]; every other image has no masked token (they still count in the denominator)."""
  rng = np.random.default_rng(seed)
  masks = rng.uniform(size=shape) < 0.4
  masks.reshape(-1, shape[-1])[::2] = False
  return masks


@SETTINGS
@given(
  seed=st.integers(0, 2**31),
  shape=st.sampled_from([(2, 3, 5), (4, 2, 16), (6, 4, 7)]),
  teacher_temp=st.sampled_from([0.04, 0.07]),
)
def test_dino_loss_matches_reference(seed, shape, teacher_temp):
  n_views, batch, k = shape
  student = normal(seed, shape)
  teacher = normal(seed + 1, (2, batch, k))
  center = normal(seed + 2, (k,), 0.1)
  value = dino_jit(student, teacher, center, teacher_temp=teacher_temp)
  ref.assert_close(value, ref.dino(student, teacher, center, teacher_temp))


def test_dino_loss_gradient_matches_finite_differences():
  student, teacher, center = normal(0, (3, 2, 4)), normal(1, (2, 2, 4)), normal(2, (4,), 0.1)
  expected = ref.numerical_gradient(lambda s: ref.dino(s, teacher, center, 0.05), student)
  ref.assert_close(dino_student_grad_jit(student, teacher, center, teacher_temp=0.05), expected, rtol=1e-4)
  teacher_gradient = jax.grad(dino_loss, argnums=1)(student, teacher, center, teacher_temp=0.05)
  np.testing.assert_array_equal(teacher_gradient, 0.0)


@pytest.mark.parametrize("k", [3, 64, 1000])
def test_dino_loss_of_uniform_student_is_log_k(k):
  student = np.full((4, 3, k), 0.7, np.float32)
  teacher = normal(k, (2, 3, k))
  ref.assert_close(dino_loss(student, teacher, np.zeros(k, np.float32), teacher_temp=0.04), np.log(k))
  ref.assert_close(
    dino_loss(student, np.zeros((2, 3, k), np.float32), np.zeros(k, np.float32), teacher_temp=0.04), np.log(k)
  )


def test_dino_loss_pairs_each_teacher_view_with_the_other_student_views():
  # V = 2: L = ½(CE(p_t,0, s_1) + CE(p_t,1, s_0)); the same-view pairs (0, 0) and (1, 1) are skipped.
  student, teacher = normal(0, (2, 3, 6)), normal(1, (2, 3, 6))
  probs = ref.softmax(teacher.astype(np.float64) / 0.04)
  cross_entropy = lambda p, s: np.mean(-np.sum(p * ref.log_softmax(s / 0.1), axis=-1))
  expected = 0.5 * (cross_entropy(probs[0], student[1]) + cross_entropy(probs[1], student[0]))
  ref.assert_close(dino_loss(student, teacher, np.zeros(6, np.float32), teacher_temp=0.04), expected)


def test_cross_view_cross_entropy_with_sinkhorn_knopp_teacher():
  student, teacher = normal(2, (4, 5, 7)), normal(3, (2, 5, 7), 0.3)
  probs = sinkhorn_knopp(teacher.reshape(10, 7), 0.05).reshape(2, 5, 7)
  expected_probs = ref.sinkhorn_knopp(teacher.reshape(10, 7), 0.05).reshape(2, 5, 7)
  ref.assert_close(jax.jit(cross_view_cross_entropy)(student, probs), ref.dino_from_probs(student, expected_probs))


def test_dino_loss_rejects_bad_shapes():
  # Temperatures are config values, checked once in validation.py (tests/test_objectives_methods.py).
  with pytest.raises(ValueError, match="teacher"):
    dino_loss(jnp.zeros((3, 2, 4)), jnp.zeros((3, 2, 4)), jnp.zeros(4), teacher_temp=0.04)


@SETTINGS
@given(seed=st.integers(0, 2**31), momentum=st.floats(0.0, 1.0))
def test_update_center_is_the_claimed_ema(seed, momentum):
  center, teacher = normal(seed, (5,)), normal(seed + 1, (2, 3, 5))
  updated = update_center_jit(center, teacher, momentum)
  ref.assert_close(updated, momentum * center.astype(np.float64) + (1 - momentum) * teacher.reshape(-1, 5).mean(0))
  ref.assert_close(updated, ref.update_center(center, teacher, momentum))


def test_repeated_center_updates_converge_to_the_batch_mean():
  teacher = normal(0, (2, 4, 3))
  center = jnp.zeros(3)
  for _ in range(300):
    center = update_center_jit(center, teacher, 0.9)
  ref.assert_close(center, teacher.reshape(-1, 3).mean(0))


@SETTINGS
@given(
  seed=st.integers(0, 2**31),
  shape=st.sampled_from([(6, 4), (8, 32), (3, 100)]),
  temperature=st.sampled_from([0.04, 0.07, 1.0]),
)
def test_sinkhorn_knopp_matches_reference(seed, shape, temperature):
  # Cosine-like logits (|t| <~ 1): exp(t/τ) stays within float32's range, as for a normalized DINO head.
  logits = normal(seed, shape, 0.3)
  q = sinkhorn_jit(logits, temperature, 3)
  ref.assert_close(q, ref.sinkhorn_knopp(logits, temperature, 3))
  ref.assert_close(np.sum(q, axis=1), np.ones(shape[0]))


@pytest.mark.parametrize("shape", [(8, 4), (16, 40)])
def test_sinkhorn_knopp_marginals(shape):
  batch, k = shape
  logits = normal(1, shape, 0.5)
  q = np.asarray(sinkhorn_jit(logits, 0.5, 200), np.float64)
  ref.assert_close(q.sum(axis=1), np.ones(batch))
  ref.assert_close(q.sum(axis=0), np.full(k, batch / k), rtol=1e-4)
  assert np.all(q >= 0)


def test_sinkhorn_knopp_is_shift_invariant_and_stable_for_large_logits():
  logits = normal(2, (6, 5))
  q = sinkhorn_jit(logits, 0.04, 3)
  ref.assert_close(sinkhorn_jit(logits + np.float32(1000.0), 0.04, 3), q, rtol=1e-4)
  assert np.all(np.isfinite(sinkhorn_jit(logits * np.float32(1000.0), 0.04, 3)))


def test_sinkhorn_knopp_with_sample_mask_equals_the_selected_samples():
  logits = normal(3, (10, 6))
  mask = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0, 1], bool)
  q = sinkhorn_knopp(logits, 0.07, 3, sample_mask=mask)
  ref.assert_close(q[mask], ref.sinkhorn_knopp(logits[mask], 0.07, 3))
  np.testing.assert_array_equal(q[~mask], 0.0)


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from([(2, 2, 5, 6), (2, 3, 9, 4)]))
def test_ibot_patch_loss_matches_reference(seed, shape):
  student = normal(seed, shape)
  teacher = ref.softmax(normal(seed + 1, shape) / 0.07).astype(np.float32)
  masks = random_masks(seed + 2, shape[:-1])
  value = ibot_jit(student, teacher, masks)
  ref.assert_close(value, ref.ibot(student, teacher, masks))
  flat = ibot_jit(student.reshape(-1, *shape[2:]), teacher.reshape(-1, *shape[2:]), masks.reshape(-1, shape[2]))
  ref.assert_close(flat, value, rtol=1e-6)


def test_ibot_patch_loss_gradient_matches_finite_differences():
  shape = (2, 2, 3, 4)
  student, teacher = normal(0, shape), ref.softmax(normal(1, shape)).astype(np.float32)
  masks = np.array([[[1, 0, 1], [0, 0, 0]], [[1, 1, 1], [0, 1, 0]]], bool)
  expected = ref.numerical_gradient(lambda s: ref.ibot(s, teacher, masks), student)
  ref.assert_close(ibot_grad_jit(student, teacher, masks), expected, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(ibot_grad_jit(student, teacher, masks))[~masks], 0.0)


def test_ibot_patch_loss_without_masked_tokens_is_zero():
  shape = (2, 2, 3, 4)
  assert ibot_patch_loss(normal(0, shape), ref.softmax(normal(1, shape)), np.zeros(shape[:-1], bool)) == 0.0


@SETTINGS
@given(seed=st.integers(0, 2**31), momentum=st.floats(0.0, 1.0))
def test_update_patch_center_uses_masked_tokens(seed, momentum):
  center, teacher = normal(seed, (4,)), normal(seed + 1, (2, 3, 5, 4))
  masks = random_masks(seed + 2, (2, 3, 5))
  masks[1, 1, 0] = True
  ref.assert_close(
    update_patch_center_jit(center, teacher, masks, momentum), ref.update_patch_center(center, teacher, masks, momentum)
  )
  ref.assert_close(update_patch_center_jit(center, teacher, np.zeros_like(masks), momentum), center)


def test_ibot_sinkhorn_knopp_uses_masked_tokens_only():
  teacher = normal(4, (2, 3, 5, 6))
  masks = random_masks(5, (2, 3, 5))
  q = ibot_sinkhorn_knopp(teacher, masks, 0.07)
  ref.assert_close(q[masks], ref.sinkhorn_knopp(teacher[masks], 0.07, 3))
  np.testing.assert_array_equal(np.asarray(q)[~masks], 0.0)


def test_dino_and_ibot_sharded_equal_unsharded():
  mesh = data_mesh()
  student, teacher, center = normal(0, (4, 16, 6)), normal(1, (2, 16, 6)), normal(2, (6,), 0.1)
  patch_student, patch_teacher = normal(3, (2, 16, 5, 6)), normal(4, (2, 16, 5, 6))
  masks = random_masks(5, (2, 16, 5))
  patch_probs = np.asarray(teacher_probs(patch_teacher, center, 0.07))
  flat_teacher = teacher.reshape(32, 6)
  unsharded = (
    dino_jit(student, teacher, center, teacher_temp=0.04),
    dino_student_grad_jit(student, teacher, center, teacher_temp=0.04),
    update_center_jit(center, teacher, 0.9),
    sinkhorn_jit(flat_teacher, 0.05, 3),
    ibot_jit(patch_student, patch_probs, masks),
    ibot_grad_jit(patch_student, patch_probs, masks),
    update_patch_center_jit(center, patch_teacher, masks, 0.9),
  )
  with jax.set_mesh(mesh):
    on_batch = lambda x: jax.device_put(x, NamedSharding(mesh, P(None, "data")))
    sharded = (
      dino_jit(on_batch(student), on_batch(teacher), center, teacher_temp=0.04),
      dino_student_grad_jit(on_batch(student), on_batch(teacher), center, teacher_temp=0.04),
      update_center_jit(center, on_batch(teacher), 0.9),
      sinkhorn_jit(jax.device_put(flat_teacher, NamedSharding(mesh, P("data"))), 0.05, 3),
      ibot_jit(on_batch(patch_student), on_batch(patch_probs), on_batch(masks)),
      ibot_grad_jit(on_batch(patch_student), on_batch(patch_probs), on_batch(masks)),
      update_patch_center_jit(center, on_batch(patch_teacher), on_batch(masks), 0.9),
    )
  for actual, expected in zip(sharded, unsharded):
    ref.assert_close(actual, expected, rtol=2e-6)
