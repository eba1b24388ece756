"""End-to-end training steps, one per head kind: finite loss, EMA teacher, objective-state updates, the non-finite
guard, the split held on device, gradient accumulation (device parity: test_parity.py).

The objectives themselves (every method and option) are checked against float64 references in test_objectives_*;
here one DINO-head method with masks, centers and KoLeo (dinov2) and the SimDINO head (simdino, the main job's
method) take real steps. Configs repeat on purpose: the session's compilation cache then compiles each step once.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simdino_jax import objectives
from simdino_jax import optim
from simdino_jax import parallel
from simdino_jax import train
from simdino_jax import validation
from tests import train_utils


def test_simdino_steps_run_and_update_the_teacher():
  # The DINO-head case (DINOv2: masks, centers, KoLeo) runs in test_distributed.py on the parity run it shares.
  train_utils.assert_steps_update_the_state(
    *train_utils.run_steps(train_utils.tiny_config("simdino"), steps=2), objective_state=False
  )


def test_dinov2_steps_with_a_separate_ibot_head_and_sinkhorn_knopp():
  """Meta's full-size recipes' iBOT: the patch tokens scored by their own head (other prototypes), Sinkhorn-Knopp
  teachers: both heads learn, the state holds no centers, and the iBOT head's last layer freezes like the DINO
  head's."""
  config = train_utils.tiny_config(
    "dinov2",
    **{
      "model.ibot_head.separate": True,
      "model.ibot_head.out_dim": 48,
      "model.ibot_head.hidden_dim": 24,
      "model.ibot_head.bottleneck_dim": 8,
      "objective.centering": "sinkhorn_knopp",
    },
  )
  setup, before, after, metrics = train_utils.run_steps(config, steps=2)
  train_utils.assert_steps_update_the_state(setup, before, after, metrics, objective_state=False)
  assert after.student["ibot_head"]["last_layer"]["v"].shape == (48, 8)
  assert np.all(np.isfinite([m["ibot"] for m in metrics])) and metrics[-1]["ibot"] > 0
  moved = lambda part: max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(jax.tree.leaves(before.student[part]), jax.tree.leaves(after.student[part]))
  )
  assert moved("ibot_head") > 0 and moved("head") > 0
  frozen = optim.frozen_mask(after.student)
  assert frozen["ibot_head"]["last_layer"]["v"] and not frozen["ibot_head"]["mlp"]["layers"][0]["kernel"]


def test_non_finite_step_is_skipped_without_changing_the_state():
  config = train_utils.tiny_config("simdino")
  trainer = train.build(config, num_examples=64)
  with jax.set_mesh(trainer.mesh):
    state = trainer.state
    poisoned = state.replace(
      student=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan) if x.ndim else x, state.student)
    )
    before = jax.device_get(poisoned)
    batch = parallel.global_batch({"image": train_utils.random_images(16, config.data.image_size)}, trainer.mesh)[
      "image"
    ]
    after, metrics = trainer.step_fn(poisoned, batch, trainer.schedules)
  after = jax.device_get(after)
  assert float(metrics["finite"]) == 0.0
  assert int(after.skipped) == 1 and int(after.consecutive_skipped) == 1 and int(after.step) == 1
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), after.student, before.student)


def test_dataset_held_on_device_takes_the_same_steps_as_host_batches():
  """config.data.on_device: the host sends row indices and each device gathers its rows inside the step."""
  config = train_utils.tiny_config("dino")
  trainer = train.build(config, num_examples=64)
  split = train_utils.random_images(64, config.data.image_size)
  rows = [np.arange(16, dtype=np.int32) * 4 + k for k in range(2)]  # Two batches of rows of the split.
  start = jax.device_get(trainer.state)

  def run(resident, batches):
    train_step = train.make_host_step(trainer, resident)
    state, metrics = jax.device_put(start, trainer.state_shardings), []
    for batch in batches:
      state, step_metrics = train_step(state, batch)
      metrics.append(jax.device_get(step_metrics))
    return jax.device_get(state), metrics

  with jax.set_mesh(trainer.mesh):
    host_state, host_metrics = run(None, [{"image": split[r], "label": r} for r in rows])
    device_state, device_metrics = run(split, [{"index": r} for r in rows])
  for h, d in zip(host_metrics, device_metrics):
    for key in ("loss", "dino", "grad_norm", "update_norm"):
      np.testing.assert_allclose(d[key], h[key], rtol=1e-5, err_msg=key)
  assert int(device_state.step) == 2 and float(host_metrics[1]["update_norm"]) > 0
  for x, y in zip(jax.tree.leaves(host_state.teacher), jax.tree.leaves(device_state.teacher)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7)


def test_two_accumulated_half_batches_take_the_step_of_the_full_batch():
  """grad_accum_steps=2: the same gradients, loss, center and teacher as one step on the whole batch."""
  single = parallel.create_mesh(jax.devices()[:1])
  runs = {}
  for accum in (1, 2):
    config = train_utils.tiny_config("dino", grad_accum_steps=accum)  # No drop path: the same draws.
    runs[accum] = train_utils.run_steps(config, 1, mesh=single)
  (_, _, full, [full_metrics]), (_, _, accumulated, [accumulated_metrics]) = runs[1], runs[2]
  for key in ("loss", "dino", "grad_norm", "update_norm", "teacher_entropy"):
    np.testing.assert_allclose(accumulated_metrics[key], full_metrics[key], rtol=2e-5, err_msg=key)
  for part in ("objective_state", "student", "teacher"):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      getattr(accumulated, part),
      getattr(full, part),
    )
  with pytest.raises(ValueError, match=r"use a multiple of 24 \(24, 48"):
    validation.check_batch_split(40, 3, 8)


def test_training_imports_neither_tensorflow_nor_torch():
  """requirements.txt holds no TensorFlow and no PyTorch: the training and evaluation paths must not import them."""
  result = train_utils.run_python(
    "import sys, tempfile\n"
    "from simdino_jax import data, evaluate, main, metrics, train\n"
    "metrics.MetricsWindow().flush()\n"
    "writer = metrics.MultiWriter(tempfile.mkdtemp(), tensorboard=True)\n"  # TensorBoard files, without TF
    "writer.write_scalars(1, {'loss': 1.0})\n"
    "writer.close()\n"
    "assert len(writer.writers) == 2\n"
    "print(sorted(m for m in ('tensorflow', 'torch') if m in sys.modules))\n"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_the_step_gives_the_objective_its_inputs_and_a_typed_context():
  """Objective.batch_inputs supplies what the objective needs from the batch (given the trainer's mask plan: None
  for an objective without masks); its loss gets a StepContext with the step's teacher temperature and global batch
  (traced only: jax.eval_shape compiles nothing)."""
  config = train_utils.tiny_config("simdino")
  seen = {}
  base = objectives.get_objective(config.objective)

  def batch_inputs(key, plan):
    seen["plan"] = plan
    return objectives.BatchInputs(metrics={"custom_input": jnp.float32(1.0)})

  def loss(student_out, teacher_out, state, context, masks):
    seen["context"], seen["masks"] = context, masks
    return base.loss(student_out, teacher_out, state, context, masks)

  objective = dataclasses.replace(base, loss=loss, batch_inputs=batch_inputs)
  trainer = train.build(config, num_examples=64)
  step = train.make_train_step(
    config,
    trainer.graphdef,
    objective,
    optim.make_optimizer(config, trainer.state.student),
    trainer.mesh,
    parallel.param_specs(trainer.state_shardings.student),
  )
  images = jax.ShapeDtypeStruct((16, config.data.image_size, config.data.image_size, 3), jnp.uint8)
  _, metrics = jax.eval_shape(step, trainer.state, images, trainer.schedules)
  assert seen["plan"] is None and seen["masks"] is None and "custom_input" in metrics  # SimDINO draws no masks
  assert isinstance(seen["context"], objectives.StepContext) and seen["context"].global_batch_size == 16
  assert isinstance(trainer.schedules(0), optim.ScheduledValues)
