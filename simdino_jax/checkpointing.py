"""Orbax checkpoints of the whole run: train state (with objective state and rng), data position and config.

Saves are asynchronous and atomic (Orbax writes into a temporary directory and renames it when complete), so a
save interrupted midway leaves the previous checkpoint usable; Orbax removes the leftover temporary directory at the
next start. A state with non-finite values is never saved. Resuming takes the latest checkpoint that restores;
`initialize_from` starts a run from the networks of another workdir (`config.init_from`). Every reader and writer
opens the workdir through `checkpoint_manager`.
"""

import contextlib
import errno
import json
import logging
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from flax import traverse_util

from simdino_jax import storage
from simdino_jax import train_state as train_state_lib

# Config fields that may change between a run and its resumption without making it another run.
OPERATIONAL_KEYS = (
  "log_every_steps",
  "eval_every_epochs",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "tensorboard",
  "allow_config_mismatch",
  "async_checkpointing",
  "max_consecutive_skips",
  "data.data_dir",
  "data.path",
  "eval_settings",
  "evals",
  "collapse",
  "fsdp_min_size",
  "compilation_cache",
)
# Fields added after the first release, with the value that reproduces the runs that predate them: a checkpoint
# whose config lacks such a field resumes as long as the current config keeps that value.
ADDED_FIELDS = {
  "total_examples": 0,
  "data.on_device": False,
  "init_from": "",
  "grad_accum_steps": 1,
  "epoch_length_steps": 0,
  "objective.covariance_group_size": 0,
  "optim.layer_decay": 1.0,
  "optim.patch_embed_lr_mult": 1.0,
  "data.crops_on_host": "auto",
  "data.workers": 0,
  "masking.group_size": 0,
  "model.remat_policy": "nothing_saveable",
  "optim.freeze_rule": "drop_gradient",
  "model.ffn": "mlp",
  "model.ibot_head.separate": False,
  "model.ibot_head.out_dim": 65536,
  "model.ibot_head.hidden_dim": 2048,
  "model.ibot_head.bottleneck_dim": 256,
  "model.ibot_head.n_layers": 3,
}


# Sections renamed since, old name -> new name: a checkpoint's config is read with the new names.
RENAMED_SECTIONS = {"eval": "eval_settings"}
ITEMS = ("state", "data", "config")


def checkpoint_manager(workdir: str, options: ocp.CheckpointManagerOptions | None = None) -> ocp.CheckpointManager:
  """The Orbax manager of `workdir/checkpoints` (gs://... keeps its scheme), items `state`, `data` and `config`."""
  storage.check_access(workdir)
  return ocp.CheckpointManager(storage.path(workdir) / "checkpoints", options=options, item_names=ITEMS)


def _normalize(value):
  return json.loads(json.dumps(value, default=str))


def _flat_config(config: dict) -> dict:
  """{dotted path: value} of a (JSON-normalized) config dict."""
  return traverse_util.flatten_dict(_normalize(config), sep=".")


def _renamed(flat: dict) -> dict:
  """A flat config with the sections of RENAMED_SECTIONS under their new names."""
  new_name = lambda k: next(
    (new + k[len(old) :] for old, new in RENAMED_SECTIONS.items() if k == old or k.startswith(old + ".")), k
  )
  return {new_name(k): v for k, v in flat.items()}


def config_differences(saved: dict, current: dict) -> list[str]:
  """Fields (dotted paths) whose values differ, ignoring the operational ones and added fields at their old value."""
  a, b = _renamed(_flat_config(saved)), _flat_config(current)
  a.update({k: v for k, v in ADDED_FIELDS.items() if k not in a and k in b})
  keep = lambda k: not any(k == op or k.startswith(op + ".") for op in OPERATIONAL_KEYS)
  return sorted(k for k in set(a) | set(b) if keep(k) and a.get(k) != b.get(k))


def read_config(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """(config dict, step) saved with checkpoint `step` (default: the latest) of `workdir`."""
  directory = storage.path(workdir) / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(
      f"No checkpoints in {directory}: pass the --workdir of a training run "
      "(python -m simdino_jax.main --config=... --workdir=DIR)."
    )
  manager = checkpoint_manager(workdir)
  try:
    steps = list(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f"{directory} holds no finished checkpoint yet.")
    step = max(steps) if step is None else step
    if step not in steps:
      raise ValueError(f"No checkpoint of step {step} in {directory}; available: {sorted(steps)}.")
    return _saved_config(manager, step), step
  finally:
    manager.close()


def _saved_config(manager: ocp.CheckpointManager, step: int) -> dict:
  """The config saved with checkpoint `step`, read with today's names and fields (with_added_fields)."""
  return with_added_fields(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])


def with_added_fields(config: dict) -> dict:
  """A saved config dict with today's section names (RENAMED_SECTIONS) and the fields added since it was written
  (ADDED_FIELDS) at the values that reproduce it: every later reader sees a complete config."""
  flat = _renamed(_flat_config(config))
  flat.update({k: v for k, v in ADDED_FIELDS.items() if k not in flat})
  return traverse_util.unflatten_dict(flat, sep=".")


def restore_part(workdir: str, step: int, target: dict) -> dict:
  """The part of checkpoint `step`'s train state that `target` names (a nested dict of ShapeDtypeStructs with
  shardings, e.g. `{"teacher": {"backbone": ...}}`); nothing else is read."""
  manager = checkpoint_manager(workdir)
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        )
      ),
    )
  finally:
    manager.close()
  return restored["state"]


NETWORKS = ("student", "teacher")
PARTS = ("backbone", "head")


def _shapes(tree) -> dict[tuple, tuple]:
  """{path with str keys: shape} of a pure dict (int keys) or of Orbax's metadata tree (str keys)."""
  return {
    tuple(str(k) for k in path): tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(dict(tree)).items()
  }


def _shape_differences(saved: dict, current: dict) -> list[str]:
  names = sorted(set(saved) | set(current))
  return [
    "/".join(p) + f": {saved.get(p, 'absent')} in the checkpoint, {current.get(p, 'absent')} here"
    for p in names
    if saved.get(p) != current.get(p)
  ]


def initialize_from(workdir: str, state, shardings):
  """`config.init_from`: `state` with the student / teacher networks of `workdir`'s latest checkpoint, restored
  into `shardings` (docs/convert.md).

  `workdir` holds a converted official checkpoint (`python -m simdino_jax.convert from-torch`) or any training run.
  Backbones must match the new config's; heads are taken where the checkpoint has them (a conversion records which
  parts it imported) and their shapes match, else they stay fresh, and the log says so. The optimizer, the
  objective state, the step and the data position always start fresh.
  """
  directory = storage.path(workdir) / "checkpoints"
  if not directory.exists():
    raise FileNotFoundError(
      f"config.init_from={workdir!r} holds no checkpoints/: give the --workdir of a "
      "conversion (python -m simdino_jax.convert from-torch) or of a training run."
    )
  manager = checkpoint_manager(workdir)
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"config.init_from: {directory} holds no finished checkpoint.")
    metadata = ocp.PyTreeCheckpointHandler().metadata(directory / str(step) / "state").tree
    data = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"] or {}
    available = set(data.get("imported", [f"{n}/{p}" for n in NETWORKS for p in PARTS]))
    abstract, taken = {}, []
    for network in NETWORKS:
      for part in PARTS:
        current_tree = getattr(state, network)[part]
        differences = _shape_differences(_shapes(metadata[network][part]), _shapes(current_tree))
        if part == "backbone" and differences:
          raise ValueError(
            f"config.init_from: the {network} backbone in {directory} does not match "
            f"config.model ({len(differences)} difference(s): {'; '.join(differences[:6])}). "
            "Use the config the checkpoint was converted or trained with."
          )
        if f"{network}/{part}" not in available or differences:
          why = "its shapes differ" if differences else "the checkpoint has none"
          print(f"init_from: the {network} {part} starts fresh ({why}).", flush=True)
          continue
        part_shardings = traverse_util.flatten_dict(getattr(shardings, network)[part])
        abstract.setdefault(network, {})[part] = traverse_util.unflatten_dict(
          {
            tuple(str(k) for k in path): jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=part_shardings[path])
            for path, leaf in traverse_util.flatten_dict(current_tree).items()
          }
        )
        taken.append(f"{network}/{part}")
  finally:
    manager.close()
  restored = restore_part(workdir, step, abstract)
  updates = {}
  for network in NETWORKS:
    params = dict(getattr(state, network))
    for part in restored.get(network, {}):
      by_name = traverse_util.flatten_dict(restored[network][part])
      params[part] = traverse_util.unflatten_dict(
        {path: by_name[tuple(str(k) for k in path)] for path in traverse_util.flatten_dict(params[part])}
      )
    updates[network] = params
  print(
    f"init_from: {', '.join(taken)} from step {step} of {workdir}; optimizer and objective state fresh.", flush=True
  )
  return state.replace(**updates)


class CheckpointError(RuntimeError):
  """A checkpoint problem the user fixes (no restorable checkpoint, no space left); the message says how."""


def _reason(error: BaseException) -> str:
  """The first line of an error, short enough for a one-line report."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


class _UnretrievedReadErrors(logging.Filter):
  """asyncio's "Task / Future exception was never retrieved" for the failed restore's other reads."""

  def filter(self, record):
    return not str(record.msg).startswith(
      ("Task exception was never retrieved", "Future exception was never retrieved")
    )


def _ignore_reads_of_a_failed_restore() -> None:
  """After a restore fails, TensorStore finishes the reads still in flight: each result goes to Orbax's event loop,
  closed by then ("RuntimeError: Event loop is closed", an unraisable error), and each other failed read is logged
  by asyncio as never retrieved; either prints a traceback per array. Both are dropped (the restore's own error is
  reported in one line); any other unraisable error or asyncio log still gets through."""
  previous = sys.unraisablehook
  if getattr(previous, "ignores_closed_loop", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.ignores_closed_loop = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_UnretrievedReadErrors())


def _directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _is_out_of_space(error: BaseException | None) -> bool:
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    error = error.__cause__ or error.__context__
  return False


def last_finished_step(workdir: str) -> int | None:
  """The newest step of `workdir` whose save finished (read from storage: Orbax's own list includes a save in
  flight); None if there is none."""
  directory = storage.path(workdir) / "checkpoints"
  if not directory.is_dir():
    return None
  return max(
    (int(p.name) for p in directory.iterdir() if p.name.isdigit() and ocp.step.is_path_finalized(p)), default=None
  )


class Checkpoints:
  """A thin layer over `ocp.CheckpointManager` with items `state`, `data` and `config`.

  Resuming takes the latest checkpoint that restores; newer ones that do not are moved aside into
  `workdir/unrestorable_checkpoints/`. Orbax removes unfinished saves (`*.orbax-checkpoint-tmp*`) at start-up. A
  save first checks that the disk has room for another checkpoint of the last one's size.
  """

  def __init__(self, workdir: str, config):
    self.config = config
    self.workdir = storage.path(workdir)
    self.directory = self.workdir / "checkpoints"
    self._writer = jax.process_index() == 0
    self._remove_unfinished_saves()
    self.manager = checkpoint_manager(
      workdir,
      ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=config.async_checkpointing,
      ),
    )
    self._last_bytes = 0
    self._saving_step = None

  def _remove_partial_saves(self) -> None:
    """Removes what a failed save left (Orbax's temporary directories)."""
    if self._writer and self.directory.is_dir():
      for path in self.directory.iterdir():
        if ocp.utils.is_tmp_checkpoint(path):
          path.rmtree()

  def _remove_unfinished_saves(self) -> None:
    """At start-up, removes each save a kill interrupted, with one line: on a local disk Orbax's temporary
    `S.orbax-checkpoint-tmp-*` directory; on gs://, where Orbax writes into the step directory itself and marks it
    finished last (`commit_success.txt`), a step directory without that mark. Left there, the next save of the same
    step would write into the old one's files (OCDBT's manifest refuses it: `Malformed StorageGeneration`).
    Every process waits for process 0 to have done it."""
    if self._writer and self.directory.is_dir():
      for path in sorted(self.directory.iterdir()):
        unfinished = ocp.utils.is_tmp_checkpoint(path) or (
          path.name.isdigit() and path.is_dir() and not ocp.step.is_path_finalized(path)
        )
        if unfinished:
          try:
            path.rmtree()
          except FileNotFoundError:  # gone already (a listing cached before another process removed it)
            continue
          print(f"Removed {path}: a save interrupted before it finished.", flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("simdino_jax: unfinished saves removed")

  def saved_config(self, step: int) -> dict:
    return _saved_config(self.manager, step)

  def check_config(self, saved: dict) -> None:
    """Refuses to resume a checkpoint written under another config unless `allow_config_mismatch`."""
    diffs = config_differences(saved, self.config.to_dict())
    if diffs and not self.config.allow_config_mismatch:
      before, after = _flat_config(saved), _flat_config(self.config.to_dict())
      details = ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in diffs[:10])
      raise ValueError(
        f"The checkpoints in {self.directory} belong to another config ({len(diffs)} field(s) differ: "
        f"{details}). Use another --workdir, or pass --config.allow_config_mismatch=True to resume anyway. "
        "Nothing in the workdir was changed."
      )

  def restore_latest(self, state_template, shardings):
    """(state, data_state) of the latest checkpoint that restores, after the config check; None if there is none.

    A newer checkpoint that fails to restore is reported in one line and moved aside; if none restores, a
    CheckpointError says so and nothing is moved.
    """
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = self.saved_config(step)
      except Exception as e:  # Orbax / TensorStore raise many types for damaged files.
        failed.append((step, _reason(e)))
        continue
      self.check_config(saved)
      try:
        restored = self.restore(step, state_template, shardings)
      except Exception as e:
        _ignore_reads_of_a_failed_restore()
        failed.append((step, _reason(e)))
        continue
      for bad_step, reason in failed:
        self._move_aside(bad_step, reason, step)
      if failed:
        self.manager.reload()
      return restored
    if failed:
      listing = "; ".join(f"step {s}: {r}" for s, r in failed)
      raise CheckpointError(
        f"No checkpoint in {self.directory} restores ({listing}). Nothing was changed; resume with another "
        "--workdir, or move the damaged step directories away to start this one from scratch."
      )
    return None

  def _move_aside(self, step: int, reason: str, resumed_step: int) -> None:
    source = self.directory / str(step)
    aside = self.workdir / "unrestorable_checkpoints"
    target = aside / str(step)
    if self._writer:
      aside.mkdir(parents=True, exist_ok=True)
      suffix = 0
      while target.exists():  # The same step may have failed before.
        suffix += 1
        target = aside / f"{step}.{suffix}"
      storage.move(source, target)
    print(
      f"Checkpoint of step {step} does not restore ({reason}); moved {source} to {target}; resuming from "
      f"step {resumed_step}.",
      flush=True,
    )

  def restore(self, step: int, state_template, shardings):
    """(state, data_state) of checkpoint `step`, restored directly into `shardings` (no config check)."""
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_template, shardings)
    restored = self.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
    )
    return restored["state"], restored["data"]

  def save(self, step: int, state, data_state: dict, *, force: bool = False, check_finite: bool = True) -> bool:
    """Saves asynchronously; refuses (and says so) if the state holds a non-finite value (`check_finite=False`: the
    caller has checked, e.g. the converter on the host, without compiling a check of the whole state).

    Raises CheckpointError when the disk lacks the room of the last checkpoint, or runs out of space mid-save
    (the partial directory is then removed).
    """
    if check_finite and not _all_finite(state):
      print(f"Not saving the checkpoint of step {step}: the state holds non-finite values.", flush=True)
      return False
    self._check_free_space(step)
    self._saving_step = step
    with self._out_of_space_as_error():
      return self.manager.save(
        step,
        force=force,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          config=ocp.args.JsonSave(_normalize(self.config.to_dict())),
        ),
      )

  def _check_free_space(self, step: int) -> None:
    if not self._writer or storage.is_remote(self.directory):  # Buckets do not fill up.
      return
    latest = self.manager.latest_step()
    if latest is not None:
      self.wait()
      self._last_bytes = _directory_bytes(os.fspath(self.directory / str(latest)))
    free = shutil.disk_usage(self.directory).free
    if free < self._last_bytes:
      raise CheckpointError(self._no_space_message(step, self._last_bytes, free))

  def _no_space_message(self, step: int, needed: int, free: int | None = None) -> str:
    have = f"{free / 2**20:.1f} MiB free, " if free is not None else ""
    return (
      f"No space left to save the checkpoint of step {step} in {self.workdir}: {have}about "
      f"{needed / 2**20:.1f} MiB needed. Free space there (or use another --workdir) and start again: the "
      f"run resumes from the checkpoint of step {self.manager.latest_step()}."
    )

  @contextlib.contextmanager
  def _out_of_space_as_error(self):
    try:
      yield
    except Exception as e:
      if not _is_out_of_space(e):
        raise
      self._remove_partial_saves()
      raise CheckpointError(self._no_space_message(self._saving_step, self._last_bytes)) from None

  def wait(self) -> None:
    with self._out_of_space_as_error():
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _all_finite(state) -> bool:
  return bool(np.asarray(jax.jit(train_state_lib.all_finite)(state)))
