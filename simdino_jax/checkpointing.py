"""Orbax checkpoints of the whole run: train state (with objective state and rng), data position and config.

Saves are asynchronous and atomic (Orbax writes into a temporary directory and renames it when complete), so a
save interrupted midway leaves the previous checkpoint usable; the leftover temporary directory is removed at the
next start. A state with non-finite values is never saved. Resuming takes the latest checkpoint that restores.
"""

import contextlib
import errno
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from simdino_jax import storage
from simdino_jax import train_state as train_state_lib

# Config fields that may change between a run and its resumption without making it another run.
OPERATIONAL_KEYS = ("log_every_steps", "eval_every_epochs", "checkpoint_every_steps", "keep_checkpoints",
                    "tensorboard", "allow_config_mismatch", "async_checkpointing", "max_consecutive_skips",
                    "data.data_dir", "data.path", "eval", "collapse")
# Fields added after the first release, with the value that reproduces the runs that predate them: a checkpoint
# whose config lacks such a field resumes as long as the current config keeps that value.
ADDED_FIELDS = {"total_examples": 0, "data.on_device": False, "init_from": "", "grad_accum_steps": 1,
                "epoch_length_steps": 0, "objective.covariance_group_size": 0, "optim.layer_decay": 1.0,
                "optim.patch_embed_lr_mult": 1.0, "data.crops_on_host": "auto", "data.workers": 0}


def _flatten(tree: Any, prefix: str = "") -> dict:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _normalize(value):
  return json.loads(json.dumps(value, default=str))


def config_differences(saved: dict, current: dict) -> list[str]:
  """Fields (dotted paths) whose values differ, ignoring the operational ones and added fields at their old value."""
  a, b = _flatten(_normalize(saved)), _flatten(_normalize(current))
  a.update({k: v for k, v in ADDED_FIELDS.items() if k not in a and k in b})
  keep = lambda k: not any(k == op or k.startswith(op + ".") for op in OPERATIONAL_KEYS)
  return sorted(k for k in set(a) | set(b) if keep(k) and a.get(k) != b.get(k))


def read_config(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """(config dict, step) saved with checkpoint `step` (default: the latest) of `workdir`."""
  directory = storage.path(workdir) / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"No checkpoints in {directory}: pass the --workdir of a training run "
                            "(python -m simdino_jax.main --config=... --workdir=DIR).")
  manager = ocp.CheckpointManager(directory, item_names=("state", "data", "config"))
  try:
    steps = list(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f"{directory} holds no finished checkpoint yet.")
    step = max(steps) if step is None else step
    if step not in steps:
      raise ValueError(f"No checkpoint of step {step} in {directory}; available: {sorted(steps)}.")
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"], step
  finally:
    manager.close()


def restore_part(workdir: str, step: int, target: dict) -> dict:
  """The part of checkpoint `step`'s train state that `target` names (a nested dict of ShapeDtypeStructs with
  shardings, e.g. `{"teacher": {"backbone": ...}}`); nothing else is read."""
  manager = ocp.CheckpointManager(storage.path(workdir) / "checkpoints", item_names=("state", "data", "config"))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
  finally:
    manager.close()
  return restored["state"]


class CheckpointError(RuntimeError):
  """A checkpoint problem the user fixes (no restorable checkpoint, no space left); the message says how."""


TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _reason(error: BaseException) -> str:
  """The first line of an error, short enough for a one-line report."""
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def _directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _is_out_of_space(error: BaseException | None) -> bool:
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    error = error.__cause__ or error.__context__
  return False


class Checkpoints:
  """A thin layer over `ocp.CheckpointManager` with items `state`, `data` and `config`.

  Resuming takes the latest checkpoint that restores; newer ones that do not are moved aside into
  `workdir/unrestorable_checkpoints/`. Unfinished saves (`*.orbax-checkpoint-tmp*`) are removed at start-up. A save
  first checks that the disk has room for another checkpoint of the last one's size.
  """

  def __init__(self, workdir: str, config):
    self.config = config
    self.workdir = storage.path(workdir)
    self.directory = self.workdir / "checkpoints"  # gs://... keeps its scheme.
    self._writer = jax.process_index() == 0
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, create=True,
        enable_async_checkpointing=config.async_checkpointing)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config"))
    self._last_bytes = 0
    self._saving_step = None

  def _remove_unfinished_saves(self) -> None:
    if not self._writer or not self.directory.is_dir():
      return
    for path in sorted(self.directory.iterdir()):
      if TMP_SUFFIX in path.name:
        path.rmtree()
        print(f"Removed the unfinished save {path}.", flush=True)

  def saved_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def check_config(self, saved: dict) -> None:
    """Refuses to resume a checkpoint written under another config unless `allow_config_mismatch`."""
    diffs = config_differences(saved, self.config.to_dict())
    if diffs and not self.config.get("allow_config_mismatch", False):
      details = ", ".join(f"{k}: {_flatten(_normalize(saved)).get(k)!r} -> "
                          f"{_flatten(_normalize(self.config.to_dict())).get(k)!r}" for k in diffs[:10])
      raise ValueError(
          f"The checkpoints in {self.directory} belong to another config ({len(diffs)} field(s) differ: "
          f"{details}). Use another --workdir, or pass --config.allow_config_mismatch=True to resume anyway. "
          "Nothing in the workdir was changed.")

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
        failed.append((step, _reason(e)))
        continue
      for bad_step, reason in failed:
        self._move_aside(bad_step, reason, step)
      if failed:
        self.manager.reload()
      self._remove_unfinished_saves()
      return restored
    if failed:
      listing = "; ".join(f"step {s}: {r}" for s, r in failed)
      raise CheckpointError(
          f"No checkpoint in {self.directory} restores ({listing}). Nothing was changed; resume with another "
          "--workdir, or move the damaged step directories away to start this one from scratch.")
    self._remove_unfinished_saves()
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
      source.rename(target)
    print(f"Checkpoint of step {step} does not restore ({reason}); moved {source} to {target}; resuming from "
          f"step {resumed_step}.", flush=True)

  def restore(self, step: int, state_template, shardings):
    """(state, data_state) of checkpoint `step`, restored directly into `shardings` (no config check)."""
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_template, shardings)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def save(self, step: int, state, data_state: dict, *, force: bool = False) -> bool:
    """Saves asynchronously; refuses (and says so) if the state holds a non-finite value.

    Raises CheckpointError when the disk lacks the room of the last checkpoint, or runs out of space mid-save
    (the partial directory is then removed).
    """
    if not _all_finite(state):
      print(f"Not saving the checkpoint of step {step}: the state holds non-finite values.", flush=True)
      return False
    self._check_free_space(step)
    self._saving_step = step
    with self._out_of_space_as_error():
      return self.manager.save(step, force=force, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          config=ocp.args.JsonSave(_normalize(self.config.to_dict()))))

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
    return (f"No space left to save the checkpoint of step {step} in {self.workdir}: {have}about "
            f"{needed / 2**20:.1f} MiB needed. Free space there (or use another --workdir) and start again: the "
            f"run resumes from the checkpoint of step {self.manager.latest_step()}.")

  @contextlib.contextmanager
  def _out_of_space_as_error(self):
    try:
      yield
    except Exception as e:
      if not _is_out_of_space(e):
        raise
      self._remove_unfinished_saves()
      raise CheckpointError(self._no_space_message(self._saving_step, self._last_bytes)) from None

  def wait(self) -> None:
    with self._out_of_space_as_error():
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _all_finite(state) -> bool:
  return bool(np.asarray(jax.jit(train_state_lib.all_finite)(state)))
