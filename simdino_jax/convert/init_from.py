"""`config.init_from`: start a run from the networks of another workdir's latest checkpoint (no torch needed).

The other workdir is a converted official checkpoint (`python -m simdino_jax.convert from-torch`) or any training
run. Student and teacher backbones must match the new config's; heads are taken where the checkpoint has them (a
conversion records which parts it imported) and their shapes match, else they stay fresh, and the log says so.
The optimizer, the objective state, the step and the data position always start fresh.
"""

import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from simdino_jax import storage

NETWORKS = ("student", "teacher")
PARTS = ("backbone", "head")


def _shapes(tree) -> dict[tuple, tuple]:
  """{path with str keys: shape} of a pure dict (int keys) or of Orbax's metadata tree (str keys)."""
  return {tuple(str(k) for k in path): tuple(leaf.shape)
          for path, leaf in traverse_util.flatten_dict(dict(tree)).items()}


def _differences(saved: dict, current: dict) -> list[str]:
  names = sorted(set(saved) | set(current))
  return ["/".join(p) + f": {saved.get(p, 'absent')} in the checkpoint, {current.get(p, 'absent')} here"
          for p in names if saved.get(p) != current.get(p)]


def initialize_from(workdir: str, state, shardings):
  """`state` with the student / teacher parts of `workdir`'s latest checkpoint, restored into `shardings`."""
  directory = storage.path(workdir) / "checkpoints"
  if not directory.exists():
    raise FileNotFoundError(f"config.init_from={workdir!r} holds no checkpoints/: give the --workdir of a "
                            "conversion (python -m simdino_jax.convert from-torch) or of a training run.")
  manager = ocp.CheckpointManager(directory, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"config.init_from: {directory} holds no finished checkpoint.")
    metadata = manager.item_metadata(step)["state"]
    data = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"] or {}
    available = set(data.get("imported", [f"{n}/{p}" for n in NETWORKS for p in PARTS]))
    abstract, taken = {}, []
    for network in NETWORKS:
      for part in PARTS:
        saved = _shapes(metadata[network][part])
        current_tree = getattr(state, network)[part]
        differences = _differences(saved, _shapes(current_tree))
        if part == "backbone" and differences:
          raise ValueError(f"config.init_from: the {network} backbone in {directory} does not match "
                           f"config.model ({len(differences)} difference(s): {'; '.join(differences[:6])}). "
                           "Use the config the checkpoint was converted or trained with.")
        if f"{network}/{part}" not in available or differences:
          why = "its shapes differ" if differences else "the checkpoint has none"
          print(f"init_from: the {network} {part} starts fresh ({why}).", flush=True)
          continue
        part_shardings = traverse_util.flatten_dict(getattr(shardings, network)[part])
        abstract.setdefault(network, {})[part] = traverse_util.unflatten_dict({
            tuple(str(k) for k in path): jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=part_shardings[path])
            for path, leaf in traverse_util.flatten_dict(current_tree).items()})
        taken.append(f"{network}/{part}")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True)))["state"]
  finally:
    manager.close()
  updates = {}
  for network in NETWORKS:
    params = dict(getattr(state, network))
    for part in restored.get(network, {}):
      by_name = traverse_util.flatten_dict(restored[network][part])
      params[part] = traverse_util.unflatten_dict({
          path: by_name[tuple(str(k) for k in path)] for path in traverse_util.flatten_dict(params[part])})
    updates[network] = params
  print(f"init_from: {', '.join(taken)} from step {step} of {workdir}; optimizer and objective state fresh.",
        flush=True)
  return state.replace(**updates)
