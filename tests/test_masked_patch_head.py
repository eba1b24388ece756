"""The head on the masked tokens only, gathered per data shard into DINOv2's static bound (Σ_k int(N · p_k+1) over
the shard's masked images), equals the dense head on all N tokens: values, objective state and gradients, on 1 and
8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from simdino_jax import objectives
from simdino_jax import parallel
from simdino_jax import train
from simdino_jax.data import masking
from simdino_jax.objectives import ibot
from tests import numpy_reference as ref
from tests import train_utils

B, SIZE, PATCH = 16, 16, 4
N = (SIZE // PATCH) ** 2


def dinov2_upperbound(n_images: int, n_patches: int, probability: float, ratios=(0.1, 0.5)) -> int:
  """DINOv2's collate: Σ_{k < int(n_images · probability)} int(N · p_k+1), p = linspace(ratios, n_masked + 1)."""
  n_masked = int(n_images * probability)
  return sum(int(n_patches * p) for p in np.linspace(*ratios, n_masked + 1)[1:])


def buffer_gather(x, index, groups):
  """x [2, B, N, ...] at the buffer's slots [G, U]: slot (g, j) is token index[g, j] of group g's [2, B/G, N]."""
  per_group = x.shape[1] // groups
  view, row, token = np.unravel_index(np.asarray(index), (2, per_group, x.shape[2]))
  return x[view, np.arange(groups)[:, None] * per_group + row, token]


def test_masked_token_buffer_gathers_each_groups_masked_tokens():
  masks = np.zeros((2, 4, 6), bool)
  masks[0, 0, [1, 4]] = True  # group 0: image 0 of view 0 ...
  masks[1, 1, [0]] = True  # ... and image 1 of view 1
  masks[1, 2, [0, 2, 5]] = True  # group 1: image 2 of view 1
  index, weights = ibot.masked_token_buffer(jnp.asarray(masks), 2, 4)
  assert index.shape == weights.shape == (2, 4)
  # Group 0's tokens flattened as (view, image, token) over [2, 2, 6]: (0,0,1), (0,0,4), (1,1,0).
  np.testing.assert_array_equal(index[0, :3], [1, 4, 18])
  np.testing.assert_array_equal(index[1, :3], [12, 14, 17])
  np.testing.assert_allclose(weights, np.array([[1 / 2, 1 / 2, 1, 0], [1 / 3, 1 / 3, 1 / 3, 0]]) / 8)
  values = np.arange(2 * 4 * 6).reshape(2, 4, 6)
  np.testing.assert_array_equal(buffer_gather(values, index, 2)[:, :3], [[1, 4, 30], [36, 38, 41]])  # v·24 + i·6 + t
  with pytest.raises(ValueError, match="G dividing the batch"):
    ibot.masked_token_buffer(jnp.asarray(masks), 3, 4)


@pytest.mark.parametrize(
  "n_images,n_patches,probability", [(8, 16, 0.5), (16, 196, 0.5), (128, 196, 0.5), (10, 49, 0.3), (4, 196, 1.0)]
)
def test_the_bound_is_dinov2s_upperbound(n_images, n_patches, probability):
  config = train_utils.tiny_config("dinov2").masking
  config.probability = probability
  assert masking.masked_patch_bound(n_images, n_patches, config) == dinov2_upperbound(n_images, n_patches, probability)
  config.enabled = False
  assert masking.masked_patch_bound(n_images, n_patches, config) == 0


def test_block_masks_stay_within_the_bound_of_their_batch():
  config = train_utils.tiny_config("dinov2").masking
  for batch in (1, 4):
    bound = masking.masked_patch_bound(2 * batch, N, config)
    masks = jax.jit(jax.vmap(lambda k: masking.block_masks(k, batch, (SIZE // PATCH,) * 2, config)))(
      jax.random.split(jax.random.key(0), 32)
    )
    totals = np.asarray(masks.sum(axis=(1, 2, 3)))
    assert totals.max() <= bound and totals.min() > 0
    assert bound < 2 * batch * masking.max_masked_patches(N, config)  # below the per-image bound of before


def test_model_scores_the_gathered_tokens():
  config = train_utils.tiny_config("dinov2")
  objective = objectives.get_objective(config.objective)
  model = train.model_factory(config, objective)(nnx.Rngs(0))
  batch, groups = 4, 2
  keys = jax.random.split(jax.random.key(2), 2)
  crops = [jax.random.normal(keys[0], (2, batch, SIZE, SIZE, 3))]
  masks = masking.block_masks(keys[1], batch, (SIZE // PATCH,) * 2, config.masking)
  index, _ = ibot.masked_token_buffer(masks, groups, masking.masked_patch_bound(batch, N, config.masking))

  @nnx.jit
  def patch_heads(model):  # the student (masked input) and the teacher (plain input: no token masked), all tokens
    return [
      (model(crops, masks)["patch_head"], model(crops, masks, patch_index=index)["patch_head"]),
      (model(crops, jnp.zeros_like(masks))["patch_head"], model(crops, patch_index=index)["patch_head"]),
    ]

  for dense, gathered in patch_heads(model):
    assert gathered.shape == (groups, index.shape[1], config.model.head.out_dim)
    np.testing.assert_allclose(gathered, buffer_gather(np.asarray(dense), index, groups), atol=1e-5)
  with pytest.raises(ValueError, match="patch_index"):
    model(crops, masks, patch_index=index[:, None])


def plan_of(config, shards: int = 1) -> ibot.MaskPlan:
  """The mask plan of a step of B images of `config` on `shards` data shards."""
  grid = config.aug.global_size // config.model.patch_size
  return ibot.mask_plan(B, grid=grid, accum_steps=config.grad_accum_steps, shards=shards, masking_config=config.masking)


def objective_on_buffer_equals_dense(method: str, centering: str, mesh, group_size: int = 0) -> None:
  """Loss, iBOT metric, objective state and gradients w.r.t. the dense student patch outputs: the buffer of
  ibot.masked_tokens (drawn under `mesh`) against the dense [2, B, N] form and the float64 reference."""
  config = train_utils.tiny_config(method, **{"objective.centering": centering, "masking.group_size": group_size})
  objective = objectives.get_objective(config.objective)
  out_dim = config.model.head.out_dim if objective.head_kind == "dino" else config.model.head.bottleneck_dim
  keys = jax.random.split(jax.random.key(3), 6)
  views = 2 + config.aug.n_local
  plan = plan_of(config, mesh.shape["data"])
  with jax.set_mesh(mesh):
    inputs = jax.jit(lambda k: ibot.masked_tokens(k, plan))(keys[0])
  masks = np.asarray(inputs.student_masks)
  index, weights = np.asarray(inputs.patch_index), inputs.loss_masks
  groups = index.shape[0]
  assert index.shape[1] == max(1, masking.masked_patch_bound(2 * B // groups, N, config.masking))
  student_patches = jax.random.normal(keys[1], (2, B, N, out_dim))
  teacher = {
    "head": jax.random.normal(keys[2], (2, B, out_dim)),
    "patch_head": jax.random.normal(keys[3], (2, B, N, out_dim)),
  }
  student = {"head": jax.random.normal(keys[4], (views, B, out_dim)), "cls": jax.random.normal(keys[5], (views, B, 8))}
  state = jax.tree.map(lambda x: x + 0.1, objective.init_state(out_dim))
  context = objectives.StepContext(teacher_temp=0.07)

  def loss(patches, gathered):
    pick = (lambda x: buffer_gather(x, index, groups)) if gathered else (lambda x: x)
    student_out = {**student, "patch_head": pick(patches)}
    teacher_out = {**teacher, "patch_head": pick(teacher["patch_head"])}
    value, new_state, metrics = objective.loss(
      student_out, teacher_out, state, context, weights if gathered else jnp.asarray(masks)
    )
    return value, (new_state, metrics)

  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
  with jax.set_mesh(mesh):
    patches = jax.device_put(student_patches, batch_sharding)
    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (dense, (dense_state, dense_metrics)), dense_grad = grad_fn(patches, False)
    (gathered, (gathered_state, gathered_metrics)), gathered_grad = grad_fn(patches, True)
  assert masks.sum() > 0 and float(jnp.abs(dense_grad).max()) > 0
  np.testing.assert_allclose(gathered, dense, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), gathered_state, dense_state)
  np.testing.assert_allclose(gathered_grad, dense_grad, rtol=1e-5, atol=1e-9)
  if method == "dinov2" and centering == "center":  # the patch term itself, in float64
    probs = ref.softmax((np.asarray(teacher["patch_head"], np.float64) - np.asarray(state["patch_center"])) / 0.07)
    ref.assert_close(gathered_metrics["ibot"], ref.ibot(np.asarray(student_patches), probs, masks))
  if method == "simdinov2":
    ref.assert_close(
      gathered_metrics["patch"],
      ref.simdino_patch(np.asarray(student_patches), np.asarray(teacher["patch_head"]), masks),
    )


@pytest.mark.parametrize(
  "method,centering", [("dinov2", "center"), ("dinov2", "sinkhorn_knopp"), ("simdinov2", "center")]
)
def test_objective_on_the_buffer_equals_the_dense_one_on_one_device(method, centering):
  objective_on_buffer_equals_dense(method, centering, parallel.create_mesh())


@pytest.mark.sharded
@pytest.mark.parametrize(
  "method,centering,group_size", [("dinov2", "center", 0), ("dinov2", "sinkhorn_knopp", 0), ("simdinov2", "center", 1)]
)
def test_objective_on_the_buffer_equals_the_dense_one_on_eight_devices(method, centering, group_size):
  objective_on_buffer_equals_dense(method, centering, parallel.create_mesh(), group_size)


@pytest.mark.sharded
def test_masks_are_drawn_per_shard_within_each_shards_bound():
  """8 shards of 2 images: each shard's 4 global crops get 2 mask targets (probability 0.5) and at most
  int(N·0.3) + int(N·0.5) masked tokens, whatever the global batch holds."""
  config = train_utils.tiny_config("dinov2")
  mesh = parallel.create_mesh()
  assert mesh.shape["data"] == 8
  plan = plan_of(config, 8)
  with jax.set_mesh(mesh):
    draw = jax.jit(jax.vmap(lambda k: ibot.masked_tokens(k, plan)))
    inputs = draw(jax.random.split(jax.random.key(1), 16))
  masks = np.asarray(inputs.student_masks).reshape(16, 2, 8, 2, N)  # [draw, view, shard, image, token]
  per_image = masks.sum(-1)
  masked_images = (per_image > 0).sum(axis=(1, 3))  # 2 targets per shard; a target under min_block may find no block
  assert masked_images.max() == 2 and masked_images.min() >= 1 and (masked_images == 2).mean() > 0.9
  assert per_image.sum(axis=(1, 3)).max() <= dinov2_upperbound(4, N, 0.5) == int(N * 0.3) + int(N * 0.5)
  assert inputs.patch_index.shape == (16, 8, int(N * 0.3) + int(N * 0.5))
  np.testing.assert_allclose(
    np.asarray(inputs.loss_masks).sum(axis=(1, 2)), (per_image > 0).mean(axis=(1, 2, 3)), rtol=1e-6
  )
  assert inputs.patch_index.sharding.spec[1] == "data"


def test_accumulation_splits_the_buffer_with_the_micro_batches():
  """grad_accum_steps=2: micro-batch k (rows k, k+2, ...) gets the buffer of its own masks (the trainer's split)."""
  config = train_utils.tiny_config("dinov2", grad_accum_steps=2)
  plan = plan_of(config)
  assert plan.token_slots == 2 * plan.slots
  inputs = jax.jit(lambda k: ibot.masked_tokens(k, plan))(jax.random.key(4))
  split = lambda x: np.moveaxis(np.asarray(x).reshape(x.shape[0], -1, 2, *x.shape[2:]), 2, 0)
  size = masking.masked_patch_bound(B, N, config.masking)
  assert inputs.patch_index.shape == (1, 2 * size)
  for masks, index, weights in zip(*map(split, (inputs.student_masks, inputs.patch_index, inputs.loss_masks))):
    expected_index, expected_weights = ibot.masked_token_buffer(jnp.asarray(masks), 1, size)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_allclose(weights, expected_weights)
    assert 0 < masks.sum() <= size
