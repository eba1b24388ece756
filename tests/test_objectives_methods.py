"""The objectives of methods.py end to end: config validation, each objective and add-on against NumPy references,
gradients, state updates and sharded execution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from simdino_jax import validation
from simdino_jax.objectives import OBJECTIVES, StepContext, default_config, get_objective
from tests import numpy_reference as ref

N_VIEWS, BATCH, WIDTH, PATCHES, PROTOTYPES, EMBED = 4, 16, 6, 5, 12, 8
SCHED = StepContext(teacher_temp=0.05)


def data_mesh():
  return Mesh(np.array(jax.devices()), ("data",), axis_types=(AxisType.Auto,))


def make_config(**overrides):
  config = default_config()
  config.update(overrides)
  return config


def model_outputs(seed, head):
  """Random student / teacher output dicts as docs/architecture.md defines them, and masks [2, B, N]."""
  rng = np.random.default_rng(seed)
  width = PROTOTYPES if head == "dino" else EMBED

  def head_output(*shape):
    x = rng.normal(size=(*shape, width))
    return (0.5 * x if head == "dino" else ref.normalize(x, 1e-12)).astype(np.float32)

  student = {
    "cls": rng.normal(size=(N_VIEWS, BATCH, WIDTH)).astype(np.float32),
    "head": head_output(N_VIEWS, BATCH),
    "patch_head": head_output(2, BATCH, PATCHES),
  }
  teacher = {
    "cls": rng.normal(size=(2, BATCH, WIDTH)).astype(np.float32),
    "head": head_output(2, BATCH),
    "patch_head": head_output(2, BATCH, PATCHES),
  }
  if head == "dino":
    student["prototypes"] = rng.normal(size=(PROTOTYPES, EMBED)).astype(np.float32)
  masks = rng.uniform(size=(2, BATCH, PATCHES)) < 0.4
  masks[:, ::2] = False
  return student, teacher, masks


def per_device_koleo(cls, n_devices):
  return sum(np.mean([ref.koleo(shard) for shard in np.split(cls[view], n_devices)]) for view in range(2))


def expected_loss(config, state, student, teacher, masks, n_devices=1):
  """(total loss, new state) from the float64 references, following docs/objectives.md."""
  temp = SCHED.teacher_temp
  new_state = {}
  koleo_weight = {"dinov2": 0.1}.get(config.name, 0.0) if config.koleo_weight == -1 else config.koleo_weight
  if config.name in ("dino", "dinov2"):
    if config.centering == "center":
      probs = ref.softmax((teacher["head"] - state["center"]) / temp)
      new_state["center"] = ref.update_center(state["center"], teacher["head"], config.center_momentum)
    else:
      probs = ref.sinkhorn_knopp(teacher["head"].reshape(2 * BATCH, -1), temp).reshape(teacher["head"].shape)
    total = ref.dino_from_probs(student["head"], probs, config.student_temp)
  if config.name == "dinov2":
    if config.centering == "center":
      patch_probs = ref.softmax((teacher["patch_head"] - state["patch_center"]) / temp)
      new_state["patch_center"] = ref.update_patch_center(
        state["patch_center"], teacher["patch_head"], masks, config.center_momentum
      )
    else:
      patch_probs = np.zeros(teacher["patch_head"].shape)
      patch_probs[masks] = ref.sinkhorn_knopp(teacher["patch_head"][masks], temp)
    total += ref.ibot(student["patch_head"], patch_probs, masks, config.student_temp)
  if config.name in ("simdino", "simdinov2"):
    total = ref.simdino(
      student["head"],
      teacher["head"],
      config.eps,
      config.coeff,
      config.expa_type,
      config.gamma,
      n_devices if config.covariance == "local" else 1,
    )[0]
  if config.name == "simdinov2":
    total += ref.simdino_patch(student["patch_head"], teacher["patch_head"], masks)
  if koleo_weight:
    total += koleo_weight * per_device_koleo(student["cls"], n_devices if config.koleo_scope == "device" else 1)
  if config.koleo_proto_weight:
    total += config.koleo_proto_weight * ref.koleo(student["prototypes"])
  if config.coding_rate_weight:
    total -= config.coding_rate_weight * np.mean([ref.coding_rate(student["head"][i], config.eps) for i in range(2)])
  return total, new_state


CASES = [
  dict(name="dino"),
  dict(name="dino", centering="sinkhorn_knopp", koleo_proto_weight=0.1, proto_chunk_size=5),
  dict(name="dino", koleo_weight=0.2, coding_rate_weight=0.01),
  dict(name="dinov2"),
  dict(name="dinov2", centering="sinkhorn_knopp", koleo_scope="global", koleo_proto_weight=0.05),
  dict(name="simdino"),
  dict(name="simdino", expa_type=0, gamma="sqrt", covariance="local", koleo_weight=0.1),
  dict(name="simdinov2", coding_rate_weight=0.05, eps=0.5, coeff=0.5),
]


def run_objective(config, student, teacher, masks, state=None):
  objective = get_objective(config)
  out_dim = student["head"].shape[-1]
  state = objective.init_state(out_dim) if state is None else state
  return objective, jax.jit(objective.loss)(student, teacher, state, SCHED, masks)


@pytest.mark.parametrize("overrides", CASES, ids=lambda case: "-".join(f"{k}={v}" for k, v in case.items()))
def test_objective_matches_reference(overrides):
  config = make_config(**overrides)
  objective = get_objective(config)
  student, teacher, masks = model_outputs(0, objective.head_kind)
  state = jax.tree.map(
    lambda x: x + 0.1 * np.arange(x.shape[0], dtype=np.float32) / x.shape[0],
    objective.init_state(student["head"].shape[-1]),
  )
  _, (loss, new_state, metrics) = run_objective(config, student, teacher, masks, state)
  expected, expected_state = expected_loss(config, jax.tree.map(np.asarray, state), student, teacher, masks)
  ref.assert_close(loss, expected)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  for key, value in expected_state.items():
    ref.assert_close(new_state[key], value)
  assert all(np.shape(value) == () and np.isfinite(value) for value in metrics.values())
  ref.assert_close(metrics["loss"], loss, rtol=1e-7)
  expected_metrics = {
    "dino": {"dino"},
    "dinov2": {"dino", "ibot", "koleo"},
    "simdino": {"comp", "expa"},
    "simdinov2": {"comp", "expa", "patch"},
  }[config.name]
  expected_metrics |= {
    name
    for name, weight in [
      ("koleo", config.koleo_weight),
      ("koleo_proto", config.koleo_proto_weight),
      ("coding_rate", config.coding_rate_weight),
    ]
    if weight > 0
  }
  assert expected_metrics <= set(metrics)
  assert objective.needs_masks == (config.name in ("dinov2", "simdinov2"))
  if config.name in ("dino", "dinov2"):
    ref.assert_close(metrics["dino_over_log_k"], metrics["dino"] / np.log(PROTOTYPES), rtol=1e-6)
  assert objective.head_kind == ("dino" if config.name in ("dino", "dinov2") else "simdino")


@pytest.mark.parametrize("name", ["dino", "dinov2", "simdino", "simdinov2"])
def test_objective_gradients_reach_the_student_only(name):
  config = make_config(name=name, coding_rate_weight=0.01, koleo_weight=0.1)
  objective = get_objective(config)
  student, teacher, masks = model_outputs(1, objective.head_kind)
  state = objective.init_state(student["head"].shape[-1])
  loss_of = lambda s, t: objective.loss(s, t, state, SCHED, masks)[0]
  student_grads, teacher_grads = jax.jit(jax.grad(loss_of, argnums=(0, 1)))(student, teacher)
  for key in ("cls", "head") + (("patch_head",) if objective.needs_masks else ()):
    assert np.all(np.isfinite(student_grads[key])) and np.any(student_grads[key] != 0), key
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(teacher_grads))


@pytest.mark.parametrize(
  "overrides",
  [CASES[2], CASES[3], CASES[4], CASES[6], CASES[7]],
  ids=lambda case: "-".join(f"{k}={v}" for k, v in case.items()),
)
def test_objective_sharded_matches_reference(overrides):
  # Under an 8-device mesh: mesh-wide sums for the global terms, per-device KoLeo / covariance where configured.
  config = make_config(**overrides)
  objective = get_objective(config)
  student, teacher, masks = model_outputs(2, objective.head_kind)
  state = objective.init_state(student["head"].shape[-1])
  mesh = data_mesh()
  with jax.set_mesh(mesh):

    def on_batch(path, x):
      if path and path[-1].key == "prototypes":
        return jax.device_put(x, NamedSharding(mesh, P()))
      return jax.device_put(x, NamedSharding(mesh, P(None, "data") if x.ndim > 1 else P()))

    sharded = [jax.tree.map_with_path(on_batch, tree) for tree in (student, teacher, masks)]
    loss, new_state, _ = jax.jit(objective.loss)(sharded[0], sharded[1], state, SCHED, sharded[2])
  expected, expected_state = expected_loss(
    config, jax.tree.map(np.asarray, state), student, teacher, masks, n_devices=8
  )
  ref.assert_close(loss, expected)
  for key, value in expected_state.items():
    ref.assert_close(new_state[key], value)


def test_unknown_objective_lists_valid_names():
  with pytest.raises(ValueError, match="byol.*dino, dinov2, simdino, simdinov2"):
    get_objective(make_config(name="byol"))
  assert OBJECTIVES.names() == ["dino", "dinov2", "simdino", "simdinov2"]


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(centering="mean"), "centering"),
    (dict(student_temp=-0.1), "student_temp"),
    (dict(eps=0.0), "eps"),
    (dict(center_momentum=1.5), "center_momentum"),
    (dict(expa_type=3), "expa_type"),
    (dict(gamma="x"), "gamma"),
    (dict(covariance="x"), "covariance"),
    (dict(koleo_scope="x"), "koleo_scope"),
    (dict(proto_chunk_size=0), "proto_chunk_size"),
    (dict(koleo_weight=-0.5), "koleo_weight"),
    (dict(koleo_proto_weight=-1.0), "koleo_proto_weight"),
    (dict(coding_rate_weight=-1.0), "coding_rate_weight"),
    (dict(name="simdino", koleo_proto_weight=0.1), "dino"),
    (dict(covariance_group_size=-1), "covariance_group_size"),
    (dict(covariance="local", covariance_group_size=64), "covariance_group_size"),
  ],
)
def test_invalid_config_is_rejected(overrides, message):
  with pytest.raises(ValueError, match=f"config.objective.*{message}"):
    validation.validate_objective(make_config(**overrides))
  validation.validate_objective(make_config())


def test_missing_inputs_raise_clear_errors():
  objective = get_objective(make_config(name="dinov2"))
  student, teacher, _ = model_outputs(3, "dino")
  with pytest.raises(ValueError, match="masks"):
    objective.loss(student, teacher, objective.init_state(PROTOTYPES), SCHED, None)
  with pytest.raises(TypeError, match="teacher_temp"):  # The step context names what a loss needs.
    StepContext()


def test_default_config_fields_and_koleo_default():
  config = default_config()
  assert set(config.keys()) == {
    "name",
    "koleo_weight",
    "koleo_proto_weight",
    "coding_rate_weight",
    "centering",
    "student_temp",
    "center_momentum",
    "eps",
    "coeff",
    "expa_type",
    "gamma",
    "covariance",
    "covariance_group_size",
    "koleo_scope",
    "koleo_group_size",
    "proto_chunk_size",
  }
  assert (
    config.name,
    config.koleo_weight,
    config.centering,
    config.student_temp,
    config.center_momentum,
    config.eps,
    config.coeff,
    config.expa_type,
    config.gamma,
    config.covariance,
    config.koleo_scope,
    config.proto_chunk_size,
    config.covariance_group_size,
  ) == ("dino", -1.0, "center", 0.1, 0.9, 0.05, 1.0, 1, "default", "global", "device", 4096, 0)
  student, teacher, masks = model_outputs(4, "dino")
  for name, has_koleo in [("dino", False), ("dinov2", True)]:
    _, (_, _, metrics) = run_objective(make_config(name=name), student, teacher, masks)
    assert ("koleo" in metrics) == has_koleo
  objective = get_objective(make_config(name="dinov2"))
  assert set(objective.init_state(7)) == {"center", "patch_center"}
  assert objective.init_state(7)["center"].shape == (7,)
  assert get_objective(make_config(name="dinov2", centering="sinkhorn_knopp")).init_state(7) == {}
  assert jnp.all(objective.init_state(7)["patch_center"] == 0)
