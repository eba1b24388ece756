"""Orbax checkpoints of the whole run: train state (with objective state and rng), data position and config.

Saves are asynchronous and atomic (Orbax writes into a temporary directory and renames it when complete), so a
save interrupted midway leaves the previous checkpoint usable. A state with non-finite values is never saved.
"""

import json
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


class Checkpoints:
  """A thin layer over `ocp.CheckpointManager` with items `state`, `data` and `config`."""

  def __init__(self, workdir: str, config):
    self.config = config
    self.directory = storage.path(workdir) / "checkpoints"  # gs://... keeps its scheme.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, create=True,
        enable_async_checkpointing=config.async_checkpointing)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config"))

  def latest_step(self):
    return self.manager.latest_step()

  def check_config(self, step: int) -> None:
    """Refuses to resume a checkpoint written under another config unless `allow_config_mismatch`."""
    saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    diffs = config_differences(saved, self.config.to_dict())
    if diffs and not self.config.get("allow_config_mismatch", False):
      details = ", ".join(f"{k}: {_flatten(_normalize(saved)).get(k)!r} -> "
                          f"{_flatten(_normalize(self.config.to_dict())).get(k)!r}" for k in diffs[:10])
      raise ValueError(
          f"The checkpoints in {self.directory} belong to another config ({len(diffs)} field(s) differ: "
          f"{details}). Use another --workdir, or pass --config.allow_config_mismatch=True to resume anyway. "
          "Nothing in the workdir was changed.")

  def restore_latest(self, state_template, shardings):
    """(state, data_state) from the latest checkpoint, after the config check; None if there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None
    self.check_config(step)
    return self.restore(step, state_template, shardings)

  def restore(self, step: int, state_template, shardings):
    """(state, data_state) of checkpoint `step`, restored directly into `shardings` (no config check)."""
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_template, shardings)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def save(self, step: int, state, data_state: dict, *, force: bool = False) -> bool:
    """Saves asynchronously; refuses (and says so) if the state holds a non-finite value."""
    if not _all_finite(state):
      print(f"Not saving the checkpoint of step {step}: the state holds non-finite values.", flush=True)
      return False
    return self.manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(_normalize(self.config.to_dict()))))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _all_finite(state) -> bool:
  return bool(np.asarray(jax.jit(train_state_lib.all_finite)(state)))
