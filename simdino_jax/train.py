"""The training loop. It never branches on which objective, model or dataset runs.

Per step (one `jax.jit`, state donated): on-device multi-crop augmentation and iBOT masks → teacher forward on the
global crops → student forward on all crops → the configured objective → gradients → clipping + AdamW → EMA teacher
→ objective-state update. A non-finite loss or gradient skips the step inside jit (state kept, counter raised).
"""

import dataclasses
import logging
import signal
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx
from jax.experimental import multihost_utils

from simdino_jax import checkpointing
from simdino_jax import collapse
from simdino_jax import metrics as metrics_lib
from simdino_jax import models
from simdino_jax import objectives
from simdino_jax import optim
from simdino_jax import parallel
from simdino_jax import train_state as train_state_lib
from simdino_jax import validation
from simdino_jax.convert import init_from
from simdino_jax.data import augment
from simdino_jax.data import masking
from simdino_jax.evaluation import periodic
from simdino_jax.objectives import ibot

PyTree = Any


def tree_norm(tree: PyTree) -> jax.Array:
  return optax.tree.norm(tree) if hasattr(optax, "tree") else optax.global_norm(tree)


def model_factory(config, objective) -> Callable[[nnx.Rngs], nnx.Module]:
  return lambda rngs: models.create_model(config.model, head_kind=objective.head_kind, rngs=rngs)


def make_train_step(config, graphdef, objective, tx, schedules: optim.Schedules):
  """The pure step `(state, images) -> (state, metrics)`: images uint8 [B,S,S,3] are cropped here; a dict of crops
  cut on the host ({"global": uint8 [B,2,G,G,3], "local": uint8 [B,L,l,l,3]}) gets only the photometric part.

  With `config.grad_accum_steps` = A > 1 the batch is processed as A micro-batches of B/A images (`lax.scan`):
  gradients, losses and the objective's new state (e.g. DINO's center, linear in the batch mean) are averaged over
  them, then the optimizer, the teacher EMA and the objective state are updated once. Batch-wide statistics inside
  the loss (Sinkhorn-Knopp, KoLeo neighbours, a 'global' covariance) span one micro-batch; SimDINO's α and γ still
  use the global batch B.
  """
  patch = config.model.patch_size
  grid = (config.aug.global_size // patch, config.aug.global_size // patch)
  accum_steps = config.get("grad_accum_steps", 1)

  max_masked = masking.max_masked_patches(grid[0] * grid[1], config.masking)

  def apply(params, crops, masks, key, patch_index=None):
    return nnx.merge(graphdef, params)(crops, masks, key=key, patch_index=patch_index)

  def micro_step(state, sched, crops, masks, drop_key):
    """(loss, new objective state, metrics, grads) of one (micro-)batch of crops [V, b, ...] and masks [2, b, N]."""
    groups = [crops["global"]] + ([crops["local"]] if config.aug.n_local > 0 else [])
    patch_index = slot_masks = None
    if masks is not None:
      # The heads score only the masked tokens: max_masked slots per image, slot_masks marks the used ones.
      patch_index, slot_masks = ibot.masked_patch_index(masks, max_masked)
    # The teacher sees the unmasked crops and scores the same patch tokens as the student.
    teacher_out = jax.lax.stop_gradient(apply(state.teacher, [crops["global"]], None, None, patch_index))

    def loss_fn(params):
      student_out = apply(params, groups, masks, drop_key, patch_index)
      loss, new_objective_state, aux = objective.loss(
          student_out, teacher_out, state.objective_state, sched, slot_masks)
      return loss, (new_objective_state, aux)

    (loss, (new_objective_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.student)
    return loss, new_objective_state, aux, grads

  def accumulated(state, sched, crops, masks, drop_key):
    """micro_step over A interleaved micro-batches (rows k, k+A, ...: each stays spread over every device)."""
    split = lambda x: jnp.moveaxis(x.reshape(x.shape[0], -1, accum_steps, *x.shape[2:]), 2, 0)
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.student)

    def body(grad_sum, inputs):
      micro_crops, micro_masks, key = inputs
      loss, new_objective_state, aux, grads = micro_step(state, sched, micro_crops, micro_masks, key)
      grad_sum = jax.tree.map(lambda total, g: total + g.astype(jnp.float32), grad_sum, grads)
      return grad_sum, (loss, new_objective_state, aux)

    inputs = (jax.tree.map(split, crops), None if masks is None else split(masks),
              jax.random.split(drop_key, accum_steps))
    grad_sum, per_micro = jax.lax.scan(body, zeros, inputs)
    loss, new_objective_state, aux = jax.tree.map(lambda x: jnp.mean(x, axis=0), per_micro)
    grads = jax.tree.map(lambda g, p: (g / accum_steps).astype(p.dtype), grad_sum, state.student)
    return loss, new_objective_state, aux, grads

  def step_fn(state: train_state_lib.TrainState, images: jax.Array):
    aug_key, mask_key, drop_key = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
    crops = (augment.photometric(aug_key, images, config.aug) if isinstance(images, dict)
             else augment.multicrop(aug_key, images, config.aug))
    batch_size = crops["global"].shape[1]
    sched = {**schedules(state.step), "global_batch_size": batch_size}
    masks = (masking.block_masks(mask_key, batch_size, grid, config.masking)
             if objective.needs_masks else None)
    compute = micro_step if accum_steps == 1 else accumulated
    loss, new_objective_state, aux, grads = compute(state, sched, crops, masks, drop_key)
    updates, opt_state = tx.update(grads, state.opt_state, state.student, lr=sched["lr"], wd=sched["wd"],
                                   train_last_layer=sched["train_last_layer"])
    student = optax.apply_updates(state.student, updates)
    teacher = train_state_lib.ema(state.teacher, student, sched["momentum"])

    finite = jnp.logical_and(jnp.isfinite(loss), train_state_lib.all_finite(grads))
    stepped = state.replace(step=state.step + 1, student=student, teacher=teacher, opt_state=opt_state,
                            objective_state=new_objective_state, consecutive_skipped=jnp.zeros_like(state.step))
    skipped = state.replace(step=state.step + 1, skipped=state.skipped + 1,
                            consecutive_skipped=state.consecutive_skipped + 1)
    new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), stepped, skipped)

    if masks is not None:
      aux = {**aux, "masked_fraction": jnp.mean(masks.astype(jnp.float32))}
    metrics = {"loss": loss, **aux,
               "lr": sched["lr"], "wd": sched["wd"], "momentum": sched["momentum"],
               "teacher_temp": sched["teacher_temp"], "grad_norm": tree_norm(grads),
               "param_norm": tree_norm(student), "update_norm": tree_norm(updates),
               "finite": finite.astype(jnp.float32)}
    return new_state, metrics

  return step_fn


@dataclasses.dataclass
class TrainSetup:
  """The parts built from the config once: mesh, objective, model graph, state, schedules, jitted steps."""
  config: Any
  mesh: Any
  objective: Any
  graphdef: Any
  state: train_state_lib.TrainState
  state_shardings: Any
  schedules: optim.Schedules
  step_fn: Callable          # (state, images uint8 [B,S,S,3] or host crops, batch-sharded) -> (state, metrics)
  indexed_step_fn: Callable  # (state, dataset uint8 [N,S,S,3] replicated, rows int32 [B]) -> (state, metrics)
  steps_per_epoch: int


def build(config, *, num_examples: int, mesh=None) -> TrainSetup:
  """Builds the parts for a dataset of `num_examples` training images (an epoch is a real pass over them).

  The config is assumed valid (validation.validate_config).
  """
  mesh = parallel.create_mesh() if mesh is None else mesh
  objective = objectives.get_objective(config.objective)
  steps_per_epoch = optim.epoch_length(config, num_examples=num_examples, batch_size=config.batch_size)
  schedules = optim.make_schedules(config, steps_per_epoch=steps_per_epoch, batch_size=config.batch_size)
  model_fn = model_factory(config, objective)
  abstract_params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0)))))
  tx = optim.make_optimizer(config, abstract_params)
  with jax.set_mesh(mesh):
    state, graphdef, shardings = train_state_lib.create(
        model_fn, tx, objective, config.seed, mesh, fsdp=config.fsdp)
  step = make_train_step(config, graphdef, objective, tx, schedules)
  batch_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  step_fn = jax.jit(step, in_shardings=(shardings, batch_sharding),
                    out_shardings=(shardings, replicated), donate_argnums=(0,))
  # The dataset held on device: each device gathers its own rows of the replicated split, no communication.
  indexed_step_fn = jax.jit(lambda state, dataset, rows: step(state, jnp.take(dataset, rows, axis=0)),
                            in_shardings=(shardings, replicated, batch_sharding),
                            out_shardings=(shardings, replicated), donate_argnums=(0,))
  return TrainSetup(config=config, mesh=mesh, objective=objective, graphdef=graphdef, state=state,
                    state_shardings=shardings, schedules=schedules, step_fn=step_fn,
                    indexed_step_fn=indexed_step_fn, steps_per_epoch=steps_per_epoch)


def make_host_step(setup: TrainSetup, resident_images: np.ndarray | None) -> Callable:
  """The loop's step on host batches: `(state, host batch) -> (state, metrics)`.

  Host batches carry images ({"image"}), or, when the whole split is held on the accelerators
  (`resident_images`, config.data.on_device), only the rows to train on ({"index"}).
  """
  mesh = setup.mesh
  if resident_images is None:
    def images(host):  # Images, or the crops cut on the host from the originals (data.host_crops).
      return host["image"] if "image" in host else {k: host[k] for k in ("global", "local") if k in host}
    return lambda state, host: setup.step_fn(state, parallel.global_batch(images(host), mesh))
  _check_fits_on_device(resident_images.nbytes)
  dataset = parallel.replicate(resident_images, mesh)
  return lambda state, host: setup.indexed_step_fn(
      state, dataset, parallel.global_batch({"index": host["index"]}, mesh)["index"])


def _check_fits_on_device(nbytes: int, max_fraction: float = 0.5) -> None:
  """The resident split may take at most `max_fraction` of a device's memory (when the backend reports it)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  if limit and nbytes > max_fraction * limit:
    raise ValueError(
        f"config.data.on_device: the training split takes {nbytes / 2**30:.2f} GiB, more than "
        f"{max_fraction:.0%} of the {limit / 2**30:.1f} GiB of a device. Set config.data.on_device=False (the "
        "host then streams batches) or lower config.data.image_size.")


class MetricsWindow:
  """Averages the step metrics between two log points with `clu.metrics.Average`.

  `add` only keeps the step's device arrays (no host sync, no extra device work in the loop); `flush` fetches them
  once per log point and aggregates.
  """

  def __init__(self):
    self._pending: list[dict] = []

  def add(self, metrics: dict) -> None:
    self._pending.append(metrics)

  def flush(self) -> dict:
    fetched = jax.device_get(self._pending)
    self._pending = []
    if not fetched:
      return {}
    return {k: float(clu_metrics.Average.from_model_output(np.asarray([m[k] for m in fetched])).compute())
            for k in fetched[0]}


class PreemptionFlag:
  """Preemption requests: `reached(step)` says whether to save and stop after `step`.

  One process: a SIGTERM handler sets a flag. Under jax.distributed: JAX's preemption notifier catches SIGTERM on
  any process and `reached_preemption_sync_point` returns True on every process at the same step, so all of them
  take part in the same final (collective) save.
  """

  def __init__(self):
    self._requested = threading.Event()
    self._multi_process = jax.process_count() > 1
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda signum, frame: self._requested.set())

  def reached(self, step: int) -> bool:
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested.is_set()


def run(config, workdir: str) -> dict:
  """Trains according to `config` in `workdir`, resuming from its latest checkpoint. Returns the last metrics."""
  from simdino_jax import data as data_lib

  validation.validate_config(config)
  process_count, process_index = jax.process_count(), jax.process_index()
  iterator = data_lib.create_train_iterator(
      config.data, batch_size=config.batch_size // process_count, seed=config.seed,
      process_index=process_index, process_count=process_count, aug=config.aug)
  setup = build(config, num_examples=iterator.num_examples)
  train_step = make_host_step(setup, iterator.resident_images)
  total_steps = setup.schedules.total_steps
  checkpoints = checkpointing.Checkpoints(workdir, config)
  state = setup.state
  restored = checkpoints.restore_latest(state, setup.state_shardings)
  if restored is not None:
    state, data_state = restored
    iterator.set_state(data_state)
    logging.info("Resumed from the checkpoint of step %d in %s.", int(state.step), workdir)
    print(f"Resumed from the checkpoint of step {int(state.step)} in {workdir}.", flush=True)
  elif config.get("init_from"):
    state = init_from.initialize_from(config.init_from, state, setup.state_shardings)
  start_step = int(state.step)

  writer = metrics_lib.MultiWriter(workdir, tensorboard=config.tensorboard)
  progress = metrics_lib.Progress(total_steps, config.batch_size, start_step)
  window = MetricsWindow()
  preemption = PreemptionFlag()
  monitor = collapse.CollapseMonitor(config.collapse.patience, dino_rel_tol=config.collapse.dino_rel_tol,
                                     min_feature_std=config.collapse.min_feature_std)
  resident = None if iterator.resident_images is None else (iterator.resident_images, iterator.resident_labels)
  evaluate = periodic.make_periodic_eval(config, setup.mesh, setup.graphdef, resident)
  eval_every = max(round(config.eval_every_epochs * setup.steps_per_epoch), 1) if config.eval_every_epochs else 0
  last = {}

  try:
    with jax.set_mesh(setup.mesh):
      if eval_every and start_step == 0:  # The untrained network: the baseline every curve starts from.
        writer.write_scalars(0, evaluate(state.teacher))
      for step in range(start_step, total_steps):
        state, step_metrics = train_step(state, next(iterator))
        window.add(step_metrics)
        done = step + 1
        if done % config.log_every_steps == 0 or done == total_steps:
          last = window.flush()
          last.update(skipped_total=int(state.skipped))
          writer.write_scalars(done, last)
          _stop_if_diverged(state, last, done, config.max_consecutive_skips)
          warning = monitor.update(done, last)
          if process_index == 0:
            print(progress.line(done, last), flush=True)
            if warning:
              logging.warning(warning)
              print(f"WARNING: {warning}", flush=True)
        if eval_every and (done % eval_every == 0 or done == total_steps):
          last.update(evaluate(state.teacher))
          writer.write_scalars(done, {k: v for k, v in last.items() if k.startswith(("knn", "diag"))})
        if preemption.reached(done):
          checkpoints.save(done, state, iterator.get_state(), force=True)
          checkpoints.wait()
          print(f"SIGTERM received: saved the checkpoint of step {done} and stopped.", flush=True)
          break
        if (config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0) or done == total_steps:
          checkpoints.save(done, state, iterator.get_state(), force=done == total_steps)
  finally:
    # Whatever stopped the loop, let pending asynchronous saves land and flush the logs.
    checkpoints.wait()
    checkpoints.close()
    writer.close()
  setup.state = state
  last["steps_per_epoch"] = setup.steps_per_epoch
  return last


def _stop_if_diverged(state, last: dict, step: int, max_consecutive: int) -> None:
  consecutive = int(state.consecutive_skipped)
  if consecutive:
    print(f"step {step}: {consecutive} consecutive step(s) skipped for a non-finite loss or gradient "
          f"({int(state.skipped)} in total).", flush=True)
  if consecutive >= max_consecutive:
    components = {k: v for k, v in last.items() if k not in ("lr", "wd", "momentum", "teacher_temp")}
    raise FloatingPointError(
        f"Training stopped at step {step}: {consecutive} consecutive steps had a non-finite loss or gradient "
        f"(limit config.max_consecutive_skips={max_consecutive}). Last averaged metrics: {components}. "
        "No checkpoint with non-finite values was written; lower the learning rate or check the data.")
