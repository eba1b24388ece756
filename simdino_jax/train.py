"""The training loop. It never branches on which objective, model or dataset runs.

Per step (one `jax.jit`, state donated): on-device multi-crop augmentation and what the objective adds to the batch
(`Objective.batch_inputs`: iBOT masks for DINOv2 / SimDINOv2) → teacher forward on the global crops → student
forward on all crops → the configured objective → gradients → clipping + AdamW → EMA teacher → objective-state
update. A step whose loss, gradients or new state is not finite is skipped inside jit (state
kept, counters raised); checkpoints are written only outside such a streak of skipped steps.
"""

import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from simdino_jax import checkpointing
from simdino_jax import cluster
from simdino_jax import collapse
from simdino_jax import metrics as metrics_lib
from simdino_jax import models
from simdino_jax import objectives
from simdino_jax import optim
from simdino_jax import parallel
from simdino_jax import storage
from simdino_jax import train_state as train_state_lib
from simdino_jax import validation
from simdino_jax.data import augment
from simdino_jax.evaluation import evaluators as evaluators_lib
from simdino_jax.objectives import ibot

PyTree = Any


def tree_norm(tree: PyTree) -> jax.Array:
  return optax.tree.norm(tree) if hasattr(optax, "tree") else optax.global_norm(tree)


def model_factory(config, objective) -> Callable[[nnx.Rngs], nnx.Module]:
  return lambda rngs: models.create_model(config.model, head_kind=objective.head_kind, rngs=rngs)


def mask_plan(config, shards: int) -> ibot.MaskPlan:
  """The iBOT mask plan of a step of config.batch_size images on `shards` data shards."""
  return ibot.mask_plan(
    config.batch_size,
    grid=config.aug.global_size // config.model.patch_size,
    accum_steps=config.grad_accum_steps,
    shards=shards,
    masking_config=config.masking,
  )


def make_train_step(config, graphdef, objective, tx, mesh, param_specs):
  """The pure step `(state, images, schedules) -> (state, metrics)`: images uint8 [B,S,S,3] are cropped here; a
  dict of crops cut on the host ({"global": uint8 [B,2,G,G,3], "local": uint8 [B,L,l,l,3]}) gets only the
  photometric part. `schedules` (optim.Schedules) is traced: the compiled step does not depend on the run's length,
  learning rate or warm-up.

  Data parallel over `mesh`: the augmentation and both networks run under `jax.shard_map`, each device on its own
  images only (crops, tokens and activations never cross devices); the parameters (`param_specs`: replicated, or
  FSDP-sharded and all-gathered inside) get their gradients all-reduced (reduce-scattered) on the way out. The
  objective runs on the global outputs, so its batch statistics (DINO's center, Sinkhorn-Knopp's sums, the coding
  rate's and KoLeo's groups) are the only other collectives. With several shards, shard d draws its drop path from
  fold_in(key, d).

  With `config.grad_accum_steps` = A > 1 the batch is processed as A micro-batches of B/A images (`lax.scan`):
  gradients, losses and the objective's new state (e.g. DINO's center, linear in the batch mean) are averaged over
  them, then the optimizer, the teacher EMA and the objective state are updated once. Batch-wide statistics inside
  the loss (Sinkhorn-Knopp, KoLeo neighbours, a 'global' covariance) span one micro-batch; SimDINO's α and γ still
  use the global batch B.
  """
  accum_steps = config.grad_accum_steps

  shards = mesh.shape[parallel.DATA_AXIS]
  plan = mask_plan(config, shards) if objective.needs_masks else None
  batch_axis, view_major = P(parallel.DATA_AXIS), P(None, parallel.DATA_AXIS)

  def apply(params, crops, masks, key, patch_index):
    """The model on each data shard's own crops [V, b, ...]; outputs as the model's, batch-sharded."""

    def local(params, crops, masks, key, patch_index):
      if key is not None and shards > 1:
        key = jax.random.fold_in(key, jax.lax.axis_index(parallel.DATA_AXIS))
      model = nnx.merge(graphdef, parallel.gather_params(params, param_specs))
      out = model(crops, masks, key=key, patch_index=patch_index)
      out.pop("prototypes", None)  # of the parameters, not of the shard: taken outside
      return out

    out_specs = {"cls": view_major, "head": view_major}
    if masks is not None or patch_index is not None:
      out_specs["patch_head"] = view_major if patch_index is None else batch_axis
    out = jax.shard_map(
      local, mesh=mesh, out_specs=out_specs, in_specs=(param_specs, view_major, view_major, P(), batch_axis)
    )(params, crops, masks, key, patch_index)
    prototypes = models.prototypes(graphdef, params)
    return out if prototypes is None else {**out, "prototypes": prototypes}

  def augment_on_shards(key, images):
    """Crops [V, B, ...] (batch-sharded) of images or host crops: one global draw, each shard crops its own."""
    u = jax.lax.with_sharding_constraint(augment.uniforms(key, images, config.aug), NamedSharding(mesh, view_major))
    return jax.shard_map(
      lambda u, images: augment.from_uniforms(u, images, config.aug),
      mesh=mesh,
      in_specs=(view_major, batch_axis),
      out_specs=view_major,
    )(u, images)

  def micro_step(state, context, crops, inputs: objectives.BatchInputs, drop_key):
    """(loss, new objective state, metrics, grads) of one (micro-)batch of crops [V, b, ...] and the objective's
    inputs [2, b, ...]."""
    groups = [crops["global"]] + ([crops["local"]] if config.aug.n_local > 0 else [])
    # The teacher sees the unmasked crops and scores the same patch tokens as the student.
    teacher_out = jax.lax.stop_gradient(apply(state.teacher, [crops["global"]], None, None, inputs.patch_index))

    def loss_fn(params):
      student_out = apply(params, groups, inputs.student_masks, drop_key, inputs.patch_index)
      loss, new_objective_state, aux = objective.loss(
        student_out, teacher_out, state.objective_state, context, inputs.loss_masks
      )
      return loss, (new_objective_state, aux)

    (loss, (new_objective_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.student)
    return loss, new_objective_state, aux, grads

  def accumulated(state, context, crops, inputs, drop_key):
    """micro_step over A interleaved micro-batches (rows k, k+A, ...: each stays spread over every device)."""
    split = lambda x: jnp.moveaxis(x.reshape(x.shape[0], -1, accum_steps, *x.shape[2:]), 2, 0)
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.student)

    def body(grad_sum, inputs):
      micro_crops, micro_inputs, key = inputs
      loss, new_objective_state, aux, grads = micro_step(state, context, micro_crops, micro_inputs, key)
      grad_sum = jax.tree.map(lambda total, g: total + g.astype(jnp.float32), grad_sum, grads)
      return grad_sum, (loss, new_objective_state, aux)

    inputs = (jax.tree.map(split, crops), jax.tree.map(split, inputs), jax.random.split(drop_key, accum_steps))
    grad_sum, per_micro = jax.lax.scan(body, zeros, inputs)
    loss, new_objective_state, aux = jax.tree.map(lambda x: jnp.mean(x, axis=0), per_micro)
    grads = jax.tree.map(lambda g, p: (g / accum_steps).astype(p.dtype), grad_sum, state.student)
    return loss, new_objective_state, aux, grads

  def step_fn(state: train_state_lib.TrainState, images: jax.Array, schedules: optim.Schedules):
    aug_key, inputs_key, drop_key = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
    crops = augment_on_shards(aug_key, images)
    batch_size = crops["global"].shape[1]
    if batch_size != config.batch_size:
      raise ValueError(f"The step is built for config.batch_size={config.batch_size} images, got {batch_size}.")
    scheduled = schedules(state.step)
    context = objectives.StepContext(teacher_temp=scheduled.teacher_temp, global_batch_size=batch_size)
    inputs = objective.batch_inputs(inputs_key, plan)
    compute = micro_step if accum_steps == 1 else accumulated
    loss, new_objective_state, aux, grads = compute(state, context, crops, inputs._replace(metrics=None), drop_key)
    updates, opt_state = tx.update(
      grads,
      state.opt_state,
      state.student,
      lr=scheduled.lr,
      wd=scheduled.wd,
      train_last_layer=scheduled.train_last_layer,
    )
    student = optax.apply_updates(state.student, updates)
    teacher = train_state_lib.ema(state.teacher, student, scheduled.momentum)

    # Accepted only when the loss, the gradients and every part of the new state are finite (an overflowing
    # update gives finite gradients but non-finite parameters).
    finite = jnp.logical_and(
      jnp.isfinite(loss), train_state_lib.all_finite((grads, student, teacher, opt_state, new_objective_state))
    )
    stepped = state.replace(
      step=state.step + 1,
      student=student,
      teacher=teacher,
      opt_state=opt_state,
      objective_state=new_objective_state,
      consecutive_skipped=jnp.zeros_like(state.step),
    )
    skipped = state.replace(
      step=state.step + 1, skipped=state.skipped + 1, consecutive_skipped=state.consecutive_skipped + 1
    )
    # One conditional over the whole state: a select per leaf would get its own fused copy of the reduction over
    # every leaf (leaves² ops; 2.4x the compile time of a 1-block ViT's step).
    new_state = jax.lax.cond(finite, lambda: stepped, lambda: skipped)

    metrics = {
      "loss": loss,
      **aux,
      **(inputs.metrics or {}),
      "lr": scheduled.lr,
      "wd": scheduled.wd,
      "momentum": scheduled.momentum,
      "teacher_temp": scheduled.teacher_temp,
      "grad_norm": tree_norm(grads),
      "param_norm": tree_norm(student),
      "update_norm": tree_norm(updates),
      "finite": finite.astype(jnp.float32),
    }
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
  # Both steps take `schedules` last; pass `setup.schedules` (a compiled step serves any schedule of its shapes).
  step_fn: Callable  # (state, images uint8 [B,S,S,3] or host crops, batch-sharded, schedules)
  # -> (state, metrics)
  indexed_step_fn: Callable  # (state, dataset uint8 [N,S,S,3] replicated, rows int32 [B], schedules)
  # -> (state, metrics)
  steps_per_epoch: int


def build(config, *, num_examples: int, mesh=None, abstract: bool = False) -> TrainSetup:
  """Builds the parts for a dataset of `num_examples` training images (an epoch is a real pass over them).

  The config is assumed valid (validation.validate_config). `abstract`: the state as sharded ShapeDtypeStructs
  (nothing allocated: to lower and compile the steps for devices this process does not have).
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
      model_fn,
      tx,
      objective,
      config.seed,
      mesh,
      fsdp=config.fsdp,
      fsdp_min_size=config.fsdp_min_size,
      abstract=abstract,
    )
  step = make_train_step(config, graphdef, objective, tx, mesh, parallel.param_specs(shardings.student))
  batch_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  # The dataset held on device: each device gathers its own rows of the replicated split, no communication.
  own_rows = jax.shard_map(
    lambda dataset, rows: jnp.take(dataset, rows, axis=0),
    mesh=mesh,
    in_specs=(P(), P(parallel.DATA_AXIS)),
    out_specs=P(parallel.DATA_AXIS),
  )
  step_fn = jax.jit(
    step,
    in_shardings=(shardings, batch_sharding, replicated),
    out_shardings=(shardings, replicated),
    donate_argnums=(0,),
  )
  indexed_step_fn = jax.jit(
    lambda state, dataset, rows, schedules: step(state, own_rows(dataset, rows), schedules),
    in_shardings=(shardings, replicated, batch_sharding, replicated),
    out_shardings=(shardings, replicated),
    donate_argnums=(0,),
  )
  return TrainSetup(
    config=config,
    mesh=mesh,
    objective=objective,
    graphdef=graphdef,
    state=state,
    state_shardings=shardings,
    schedules=schedules,
    step_fn=step_fn,
    indexed_step_fn=indexed_step_fn,
    steps_per_epoch=steps_per_epoch,
  )


def make_host_step(setup: TrainSetup, resident_images: np.ndarray | None) -> Callable:
  """The loop's step on host batches: `(state, host batch) -> (state, metrics)`.

  Host batches carry images ({"image"}), or, when the whole split is held on the accelerators
  (`resident_images`, config.data.on_device), only the rows to train on ({"index"}).
  """
  mesh = setup.mesh
  if resident_images is None:

    def images(host):  # Images, or the crops cut on the host from the originals (data.host_crops).
      return host["image"] if "image" in host else {k: host[k] for k in ("global", "local") if k in host}

    return lambda state, host: setup.step_fn(state, parallel.global_batch(images(host), mesh), setup.schedules)
  _check_fits_on_device(resident_images.nbytes)
  dataset = parallel.replicate(resident_images, mesh)
  return lambda state, host: setup.indexed_step_fn(
    state, dataset, parallel.global_batch({"index": host["index"]}, mesh)["index"], setup.schedules
  )


def _check_fits_on_device(nbytes: int, max_fraction: float = 0.5) -> None:
  """The resident split may take at most `max_fraction` of a device's memory (when the backend reports it)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  if limit and nbytes > max_fraction * limit:
    raise ValueError(
      f"config.data.on_device: the training split takes {nbytes / 2**30:.2f} GiB, more than "
      f"{max_fraction:.0%} of the {limit / 2**30:.1f} GiB of a device. Set config.data.on_device=False (the "
      "host then streams batches) or lower config.data.image_size."
    )


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


def count_steps_per_epoch(config) -> int:
  """Steps per epoch of `config`'s run (optim.epoch_length over its training split, which it opens), without
  building the run (a built one has it: TrainSetup.steps_per_epoch)."""
  from simdino_jax import data as data_lib  # pylint: disable=import-outside-toplevel

  num_examples = len(data_lib.open_split(config.data, config.data.train_split))
  return optim.epoch_length(config, num_examples=num_examples, batch_size=config.batch_size)


def _say_on_process_0(line: str) -> None:
  if jax.process_index() == 0:
    print(line, flush=True)


def restore_or_initialize(
  config, setup: TrainSetup, checkpoints: checkpointing.Checkpoints, iterator, workdir: str
) -> tuple[train_state_lib.TrainState, int | None]:
  """(state, step of the checkpoint resumed or None): the latest restorable checkpoint of `workdir` (the iterator
  moved to its position), else `config.init_from`'s networks, else the fresh state."""
  restored = checkpoints.restore_latest(setup.state, setup.state_shardings)
  if restored is not None:
    state, data_state = restored
    iterator.set_state(data_state)
    _say_on_process_0(f"Resumed from the checkpoint of step {int(state.step)} in {workdir}.")
    return state, int(state.step)
  if config.init_from:
    return checkpointing.initialize_from(config.init_from, setup.state, setup.state_shardings), None
  return setup.state, None


class StepProfiler:
  """A jax.profiler trace of `steps` steps after the first (compiled) one, written to WORKDIR/profile."""

  def __init__(self, workdir: str, start_step: int, steps: int):
    self.directory = storage.path(workdir) / "profile"
    self.first, self.last = start_step + 1, start_step + 1 + steps
    self.steps = steps

  def after_step(self, done: int, state) -> None:
    if not self.steps:
      return
    if done == self.first:
      jax.profiler.start_trace(os.fspath(self.directory))
    elif done == self.last:
      jax.block_until_ready(state.step)
      jax.profiler.stop_trace()
      _say_on_process_0(f"profile of steps {self.first + 1}-{done} written to {self.directory}")


class LogPoints:
  """The metrics of each log point: averaged over the window, written, checked for divergence and collapse, and
  shown on the console."""

  def __init__(self, config, workdir: str, total_steps: int, start_step: int):
    self.config = config
    self.writer = metrics_lib.MultiWriter(workdir, tensorboard=config.tensorboard, resume_step=start_step)
    self.progress = metrics_lib.Progress(total_steps, config.batch_size, start_step)
    self.window = metrics_lib.MetricsWindow()
    self.monitor = collapse.CollapseMonitor(
      config.collapse.patience,
      dino_rel_tol=config.collapse.dino_rel_tol,
      min_feature_std=config.collapse.min_feature_std,
    )

  def log(self, done: int, state, last_good: int | None, goodput: metrics_lib.Goodput) -> dict:
    """The averaged metrics since the last log point, with where the time went; raises FloatingPointError after too
    many skipped steps."""
    last = {**self.window.flush(), "skipped_total": int(state.skipped)}
    self.writer.write_scalars(done, {**last, **goodput.scalars()})
    _stop_if_diverged(state, last, done, self.config.max_consecutive_skips, last_good)
    warning = self.monitor.update(done, last)
    _say_on_process_0(self.progress.line(done, last))
    if warning:
      _say_on_process_0(f"WARNING: {warning}")
    return last


def checkpoint_or_preempt(
  checkpoints: checkpointing.Checkpoints,
  preemption: PreemptionFlag,
  config,
  state,
  iterator,
  done: int,
  total_steps: int,
  last_good: int | None,
) -> tuple[int | None, bool]:
  """Saves the checkpoint of step `done` when scheduled, at the end or when preempted, unless inside a streak of
  skipped steps; returns (step of the newest checkpoint, whether to stop now)."""
  every = config.checkpoint_every_steps
  scheduled = (every and done % every == 0) or done == total_steps
  stopping = preemption.reached(done)
  if (scheduled or stopping) and int(state.consecutive_skipped) == 0:
    if checkpoints.save(done, state, iterator.get_state(), force=stopping or done == total_steps):
      last_good = done
  elif scheduled or stopping:
    _say_on_process_0(
      f"Not saving the checkpoint of step {done}: it is inside a streak of "
      f"{int(state.consecutive_skipped)} skipped step(s) (last checkpoint: {last_good})."
    )
  if stopping:
    checkpoints.wait()
    saved = "saved its checkpoint" if last_good == done else f"did not save (last checkpoint: {last_good})"
    # Every process says it: each host's log shows where it stopped.
    print(f"SIGTERM received: stopped after step {done} and {saved}.", flush=True)
  return last_good, stopping


def run(config, workdir: str, profile_steps: int = 0) -> dict:
  """Trains according to `config` in `workdir`, resuming from its latest restorable checkpoint.

  `profile_steps` > 0: a jax.profiler trace of that many steps after the first (compiled) one, in WORKDIR/profile.

  Returns the last metrics (of the last log point and evaluation). Raises FloatingPointError when the run ends
  inside a streak of skipped steps (a run that skipped every step does), saying how to go on.
  """
  from simdino_jax import data as data_lib  # pylint: disable=import-outside-toplevel

  goodput = metrics_lib.Goodput()
  validation.validate_config(config)
  storage.check_writable_folder(workdir)  # A bad path or bucket: one line, before anything is built or written.
  data_lib.sources.check_data_dir(config.data)
  use_compilation_cache(config.compilation_cache, workdir)
  cluster.describe_progress(lambda: _last_checkpoint_sentence(workdir))
  process_count = jax.process_count()
  with goodput.timed("setup"):
    iterator = data_lib.create_train_iterator(
      config.data,
      batch_size=config.batch_size // process_count,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=process_count,
      aug=config.aug,
    )
    setup = build(config, num_examples=iterator.num_examples)
    train_step = make_host_step(setup, iterator.resident_images)
    total_steps = setup.schedules.total_steps
    checkpoints = checkpointing.Checkpoints(workdir, config)
  with goodput.timed("restore"):
    state, last_good = restore_or_initialize(config, setup, checkpoints, iterator, workdir)
  start_step = int(state.step)
  _say_on_process_0(startup_line(config, setup, iterator.num_examples, workdir))

  log_points = LogPoints(config, workdir, total_steps, start_step)
  goodput.steps_retrained = log_points.writer.jsonl.steps_retrained
  profiler = StepProfiler(workdir, start_step, profile_steps)
  preemption = PreemptionFlag()
  resident = None if iterator.resident_images is None else (iterator.resident_images, iterator.resident_labels)
  evaluators = evaluators_lib.scheduled(
    config, lambda: evaluators_lib.open_inputs(config, setup.mesh, setup.graphdef, resident), setup.steps_per_epoch
  )
  last, started = {}, time.perf_counter()

  def evaluate(step: int, due) -> dict:
    with goodput.timed("eval"):
      results = evaluators_lib.run_all(due, state.teacher)
    log_points.writer.write_scalars(step, results)
    _say_on_process_0(eval_line(step, step / setup.steps_per_epoch, results))
    return results

  try:
    with jax.set_mesh(setup.mesh):
      if evaluators and start_step == 0:  # The untrained network: the baseline every curve starts from.
        evaluate(0, evaluators)
      for step in range(start_step, total_steps):
        with goodput.timed("data"):
          batch = next(iterator)
        if step == start_step:
          _say_on_process_0("compiling the train step…")
          with goodput.timed("compile"):
            state, step_metrics = train_step(state, batch)
            jax.block_until_ready(state.step)
          _say_on_process_0(f"compiled and ran the first step in {goodput.seconds['compile']:.1f} s")
          log_points.progress.restart(step + 1)
        else:
          state, step_metrics = train_step(state, batch)
        log_points.window.add(step_metrics)
        done = step + 1
        profiler.after_step(done, state)
        if done % config.log_every_steps == 0 or done == total_steps:
          last = log_points.log(done, state, last_good, goodput)
        due = [e for e in evaluators if done % e.every_steps == 0 or done == total_steps]
        if due:
          last.update(evaluate(done, due))
          log_points.progress.restart(done)
        with goodput.timed("save"):
          last_good, stopping = checkpoint_or_preempt(
            checkpoints, preemption, config, state, iterator, done, total_steps, last_good
          )
        if stopping:
          break
  finally:
    # Whatever stopped the loop, let pending asynchronous saves land and flush the logs.
    with goodput.timed("save"):
      checkpoints.wait()
      checkpoints.close()
    log_points.writer.close()
  trained = int(state.step) - start_step
  _say_on_process_0(summary_line(state, last, trained, time.perf_counter() - started, workdir, last_good))
  _say_on_process_0(goodput.summary())
  if trained and int(state.consecutive_skipped):
    raise FloatingPointError(
      f"The run ended inside a streak of {int(state.consecutive_skipped)} skipped step(s) "
      f"({int(state.skipped)} of {int(state.step)} skipped in total). {_how_to_go_on(last_good)}"
    )
  return last


def compilation_cache_dir(setting: str, workdir: str) -> str | None:
  """Where JAX's persistent compilation cache lives for `config.compilation_cache` = `setting` (None: off)."""
  if not setting:
    return None
  if setting != "auto":
    return setting
  if storage.is_remote(workdir):  # every host compiles the same program: each keeps its own copy, on local disk
    return os.path.join(os.path.expanduser("~"), ".cache", "simdino_jax", "xla_cache")
  return os.fspath(storage.path(workdir) / "xla_cache")


def use_compilation_cache(setting: str, workdir: str) -> None:
  """Turns JAX's persistent compilation cache on at `compilation_cache_dir` unless the environment already set one."""
  directory = compilation_cache_dir(setting, workdir)
  if directory and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", directory)


def _last_checkpoint_sentence(workdir: str) -> str:
  step = checkpointing.last_finished_step(workdir)
  directory = storage.path(workdir) / "checkpoints"
  return (
    f"No checkpoint has finished in {directory}"
    if step is None
    else f"The last finished checkpoint is step {step} in {directory}"
  )


def startup_line(config, setup: TrainSetup, num_examples: int, workdir: str) -> str:
  """What runs: objective, model and size, data, devices and mesh, batch per device, steps, workdir."""
  params = sum(x.size for x in jax.tree.leaves(setup.state.student))
  devices = setup.mesh.devices.size
  mesh = " × ".join(f"{name} {size}" for name, size in setup.mesh.shape.items())
  return (
    f"{config.objective.name} | {config.model.name} ({params / 1e6:.2f} M parameters, {config.model.dtype}) | "
    f"data {config.data.name}: {num_examples:,} images | {devices} {jax.devices()[0].platform} device(s), "
    f"mesh {mesh}, {jax.process_count()} process(es) | batch {config.batch_size} "
    f"({config.batch_size // devices} per device) | {setup.schedules.total_steps} steps "
    f"({setup.steps_per_epoch} per epoch) | workdir {storage.path(workdir)}"
  )


def eval_line(step: int, epoch: float, results: dict) -> str:
  """The kNN accuracies and collapse diagnostics of one evaluation."""
  knn = "  ".join(
    f"top-1 k={k.rsplit('k', 1)[1]} {100 * v:.1f}%" for k, v in results.items() if k.startswith("knn_top1_")
  )
  names = {
    "diag_effective_rank": "effective rank",
    "diag_feature_std": "feature std",
    "diag_unique_prototypes": "unique prototypes",
    "diag_largest_group": "largest group",
  }
  diags = "  ".join(f"{label} {results[key]:.4g}" for key, label in names.items() if key in results)
  return f"kNN at step {step} (epoch {epoch:.1f}): {knn}  | {diags}"


def summary_line(state, last: dict, trained: int, seconds: float, workdir: str, last_good: int | None) -> str:
  knn = {k: v for k, v in last.items() if k.startswith("knn_top1_")}
  knn_text = "".join(f", kNN top-1 k={k.rsplit('k', 1)[1]} {100 * v:.1f}%" for k, v in knn.items())
  loss = last.get("loss")
  return (
    f"done: step {int(state.step)}, {trained} steps in {seconds / 60:.1f} min, "
    f"{int(state.skipped)} skipped{'' if loss is None else f', loss {loss:.4f}'}{knn_text}; "
    f"last checkpoint: {'none' if last_good is None else f'step {last_good}'} in "
    f"{storage.path(workdir) / 'checkpoints'}"
  )


def _how_to_go_on(last_good: int | None) -> str:
  if last_good is None:
    return (
      "No checkpoint was written. To go on, start again with a lower --config.optim.base_lr (or check the "
      "data and config.objective)."
    )
  return (
    f"To go on, either start again in a new --workdir with a lower --config.optim.base_lr, or resume this "
    f"one from its last good checkpoint (step {last_good}) with a lower --config.optim.base_lr and "
    "--config.allow_config_mismatch=True."
  )


def _stop_if_diverged(state, last: dict, step: int, max_consecutive: int, last_good: int | None) -> None:
  consecutive = int(state.consecutive_skipped)
  if consecutive:
    print(
      f"step {step}: {consecutive} consecutive step(s) skipped for a non-finite loss, gradient or update "
      f"({int(state.skipped)} in total).",
      flush=True,
    )
  if consecutive >= max_consecutive:
    components = {k: v for k, v in last.items() if k not in ("lr", "wd", "momentum", "teacher_temp")}
    raise FloatingPointError(
      f"Training stopped at step {step}: {consecutive} consecutive steps had a non-finite loss, gradient or "
      f"update (limit config.max_consecutive_skips={max_consecutive}). Last averaged metrics: {components}. "
      f"No checkpoint with non-finite values, or from inside the streak, was written. {_how_to_go_on(last_good)}"
    )
