"""The head on the masked tokens only (gathered into a static bound) equals the dense head on all N tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from simdino_jax import objectives
from simdino_jax import train
from simdino_jax.data import masking
from simdino_jax.objectives import ibot
from tests import train_utils

B, SIZE, PATCH = 4, 16, 4
N = (SIZE // PATCH) ** 2


def test_masked_patch_index_gathers_each_images_masked_positions():
  masks = np.zeros((2, 3, 6), bool)
  masks[0, 0, [1, 4]] = True
  masks[1, 2, [0, 2, 5]] = True
  index, slots = ibot.masked_patch_index(jnp.asarray(masks), 3)
  assert index.shape == slots.shape == (2, 3, 3)
  np.testing.assert_array_equal(index[0, 0, :2], [1, 4])
  np.testing.assert_array_equal(index[1, 2], [0, 2, 5])
  np.testing.assert_array_equal(slots.sum(-1), masks.sum(-1))
  np.testing.assert_array_equal(np.take_along_axis(masks, np.asarray(index), -1), slots)
  with pytest.raises(ValueError, match="max_masked"):
    ibot.masked_patch_index(jnp.asarray(masks), 7)


def test_block_masks_stay_within_the_gather_bound():
  config = train_utils.tiny_config("dinov2").masking
  bound = masking.max_masked_patches(N, config)
  assert bound == N // 2
  masks = jax.jit(jax.vmap(lambda k: masking.block_masks(k, B, (SIZE // PATCH,) * 2, config)))(
      jax.random.split(jax.random.key(0), 8))
  assert int(masks.sum(-1).max()) <= bound and int(masks.sum()) > 0


def test_model_scores_the_gathered_tokens():
  config = train_utils.tiny_config("dinov2")
  objective = objectives.get_objective(config.objective)
  model = train.model_factory(config, objective)(nnx.Rngs(0))
  keys = jax.random.split(jax.random.key(2), 2)
  crops = [jax.random.normal(keys[0], (2, B, SIZE, SIZE, 3))]
  masks = masking.block_masks(keys[1], B, (SIZE // PATCH,) * 2, config.masking)
  index, _ = ibot.masked_patch_index(masks, masking.max_masked_patches(N, config.masking))

  @nnx.jit
  def patch_heads(model):  # the student (masked input) and the teacher (plain input), all tokens and gathered
    every_token = jnp.broadcast_to(jnp.arange(N), (2, B, N))
    return [[model(crops, student_masks, patch_index=i)["patch_head"] for i in (every_token, index)]
            for student_masks in (masks, None)]

  for dense, gathered in patch_heads(model):
    assert gathered.shape == (2, B, N // 2, config.model.head.out_dim)
    np.testing.assert_allclose(gathered, jnp.take_along_axis(dense, index[..., None], axis=2), atol=1e-5)
  with pytest.raises(ValueError, match="patch_index"):
    model(crops, masks, patch_index=index[0])


@pytest.mark.parametrize("method,centering", [("dinov2", "center"), ("dinov2", "sinkhorn_knopp"),
                                              ("simdinov2", "center")])
def test_objective_on_gathered_tokens_equals_the_dense_one(method, centering):
  """Loss, objective state and gradients (w.r.t. the dense student patch outputs) agree."""
  config = train_utils.tiny_config(method, **{"objective.centering": centering})
  objective = objectives.get_objective(config.objective)
  head = config.model.head
  out_dim = head.out_dim if objective.head_kind == "dino" else head.bottleneck_dim
  keys = jax.random.split(jax.random.key(3), 6)
  views = 2 + config.aug.n_local
  masks = masking.block_masks(keys[0], B, (SIZE // PATCH,) * 2, config.masking)
  index, slots = ibot.masked_patch_index(masks, masking.max_masked_patches(N, config.masking))
  student_patches = jax.random.normal(keys[1], (2, B, N, out_dim))
  teacher = {"head": jax.random.normal(keys[2], (2, B, out_dim)),
             "patch_head": jax.random.normal(keys[3], (2, B, N, out_dim))}
  student = {"head": jax.random.normal(keys[4], (views, B, out_dim)),
             "cls": jax.random.normal(keys[5], (views, B, 8))}
  state = jax.tree.map(lambda x: x + 0.1, objective.init_state(out_dim))
  gather = lambda x: jnp.take_along_axis(x, index[..., None], axis=2)

  def loss(patches, gathered):
    pick = gather if gathered else (lambda x: x)
    student_out = {**student, "patch_head": pick(patches)}
    teacher_out = {**teacher, "patch_head": pick(teacher["patch_head"])}
    value, new_state, _ = objective.loss(student_out, teacher_out, state, objectives.StepContext(teacher_temp=0.07),
                                         slots if gathered else masks)
    return value, new_state

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (dense, dense_state), dense_grad = grad_fn(student_patches, False)
  (gathered, gathered_state), gathered_grad = grad_fn(student_patches, True)
  assert int(masks.sum()) > 0 and float(jnp.abs(dense_grad).max()) > 0
  np.testing.assert_allclose(gathered, dense, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), gathered_state, dense_state)
  np.testing.assert_allclose(gathered_grad, dense_grad, rtol=1e-5, atol=1e-9)
