"""The train step is data parallel, proven by its compiled work: on 8 devices at global batch 8·b, each device's
FLOPs and temporaries equal one device's at batch b, and the only collectives are the ones the mathematics needs
(gradients all-reduced, or parameters all-gathered and gradients reduce-scattered under FSDP, and the objectives'
batch statistics). Equal values alone would not show it: a step in which every device trains the whole batch gives
the same values.
"""

import jax
import pytest

from simdino_jax import configs
from simdino_jax import parallel
from simdino_jax import step_cost
from tests import train_utils

PER_DEVICE = 4


def tiny_recipe(recipe: str, **overrides):
  """The recipe's objective and options on a 1-block, 32-wide ViT with small heads and 32-pixel images."""
  c = configs.load(recipe, "model=vit_nano")
  c.model.patch_size, c.model.image_size, c.model.dtype = 4, 16, "float32"
  c.data.image_size, c.aug.global_size, c.aug.local_size, c.aug.n_local = 32, 16, 8, 2
  c.model.head.hidden_dim, c.model.head.bottleneck_dim, c.model.head.out_dim = 32, 16, 64
  for group in ("koleo_group_size", "covariance_group_size"):  # the published per-GPU groups: one device's batch
    if c.objective[group]:
      c.objective[group] = PER_DEVICE
  return train_utils.set_fields(c, overrides)


def cost_at(config, devices: int, **kwargs) -> step_cost.StepCost:
  config = config.copy_and_resolve_references()
  config.batch_size = devices * PER_DEVICE * config.get("grad_accum_steps", 1)
  _, compiled, _ = step_cost.compile_train_step(config, parallel.create_mesh(jax.devices()[:devices]), **kwargs)
  return step_cost.step_cost(compiled)


# One case per distinct path (every recipe at every path: `python -m simdino_jax.tools.benchmark --compile_only
# --data_parallel`, docs/benchmarks.md): DINO's center on images cut on the device; DINOv2's Sinkhorn-Knopp, iBOT
# buffer and KoLeo groups; SimDINOv2's coding rate on crops cut on the host; the resident split; FSDP with 2
# micro-batches.
CASES = {
  "dino": ("dino", {}, {}),
  "dinov2_meta with Sinkhorn-Knopp, KoLeo groups": ("dinov2_meta", {"objective.centering": "sinkhorn_knopp"}, {}),
  "simdinov2, host crops": ("simdinov2", {}, {"host_crops": True}),
  "dino_koleo_proto, resident split": ("dino_koleo_proto", {}, {"resident_examples": 64}),
  "dinov2, FSDP, 2 micro-batches": ("dinov2", {"fsdp": True, "fsdp_min_size": 256, "grad_accum_steps": 2}, {}),
}


@pytest.mark.sharded
@pytest.mark.parametrize("case", list(CASES))
def test_each_device_does_one_devices_share(case, capfd):
  recipe, overrides, kwargs = CASES[case]
  config = tiny_recipe(recipe, **overrides)
  one, eight = cost_at(config, 1, **kwargs), cost_at(config, 8, **kwargs)
  assert eight.flops == pytest.approx(one.flops, rel=0.05), (one.flops, eight.flops)
  assert eight.temp_bytes == pytest.approx(one.temp_bytes, rel=0.10), (one.temp_bytes, eight.temp_bytes)
  kinds = {c.kind for c in eight.collectives}
  if config.fsdp:
    assert {"all-gather", "reduce-scatter"} <= kinds <= {"all-gather", "reduce-scatter", "all-reduce"}, kinds
    # Only parameters are gathered: each all-gather's result is one parameter's shape (never images or tokens).
    shapes = {f"f32[{','.join(map(str, leaf.shape))}]" for leaf in jax.tree.leaves(one_state_shapes(config))}
    gathered = {shape for c in eight.collectives if c.kind == "all-gather" for shape in c.shapes}
    assert gathered <= shapes, gathered - shapes
  else:
    assert kinds == {"all-reduce"}, kinds
  # The gradients' all-reduce moves about the parameters' bytes, once per micro-batch at most; the batch
  # statistics are small next to them.
  assert "Involuntary full rematerialization" not in capfd.readouterr().err


def one_state_shapes(config):
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from simdino_jax import objectives, train  # pylint: disable=import-outside-toplevel

  model_fn = train.model_factory(config, objectives.get_objective(config.objective))
  return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0)))))


@pytest.mark.sharded
def test_evaluation_features_are_computed_per_device():
  """Feature extraction: each device runs the backbone on its own images only."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from simdino_jax import models  # pylint: disable=import-outside-toplevel
  from simdino_jax.evaluation import features  # pylint: disable=import-outside-toplevel

  config = tiny_recipe("dino")
  params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: models.create_backbone(config.model, rngs=nnx.Rngs(0)))))
  fn = features.make_feature_fn(config, n_last_blocks=1, avgpool=True)
  flops = {}
  for devices in (1, 8):
    mesh = parallel.create_mesh(jax.devices()[:devices])
    batch = devices * PER_DEVICE
    rows = jax.ShapeDtypeStruct((batch,), np.int32, sharding=parallel.batch_sharding(mesh))
    size = config.aug.global_size  # The evaluation view
    images = jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8, sharding=parallel.batch_sharding(mesh))
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated(mesh)), params
    )
    with jax.set_mesh(mesh):
      compiled = features._jitted(fn, mesh).lower(abstract, images, rows, rows).compile()  # pylint: disable=protected-access
    flops[devices] = step_cost.step_cost(compiled).flops
  assert flops[8] == pytest.approx(flops[1], rel=0.05)
