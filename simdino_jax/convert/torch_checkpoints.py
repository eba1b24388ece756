"""Official PyTorch checkpoints -> a step-0 checkpoint of our train state, and our networks -> official files."""

import functools
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from simdino_jax import checkpointing
from simdino_jax import models
from simdino_jax import objectives
from simdino_jax import parallel
from simdino_jax import storage
from simdino_jax import train
from simdino_jax import validation
from simdino_jax.convert import torch_layout

FORMATS = ("pth", "safetensors")
# Shown at most this many names per kind of problem in an error.
MAX_LISTED = 12


def _listing(title: str, names: Sequence[str]) -> str:
  shown = ", ".join(names[:MAX_LISTED]) + (f" ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")
  return f"{title}: {shown}"


def import_network(
  state_dict: dict,
  template: dict,
  *,
  prefix: str,
  report: torch_layout.ImportReport,
  ignore_keys: Sequence[str] = (),
  interpolate_offset: float = 0.1,
  interpolate_antialias: bool = False,
) -> tuple[dict, list[str], bool]:
  """(our params, unknown official keys, whether a head was imported) of one network's official state dict.

  `template` is our pure dict `{"backbone": ..., "head": ...}` of the config's model; the head and the mask token
  keep its values when the checkpoint has none.
  """
  backbone, head, ibot_head, other = torch_layout.parts(state_dict)
  resize = functools.partial(
    torch_layout.interpolate_pos_embed, offset=interpolate_offset, antialias=interpolate_antialias
  )
  backbone_prefix = prefix + ("backbone." if head or ibot_head or other else "")
  params = {}
  params["backbone"], used_backbone = torch_layout.import_part(
    backbone,
    template["backbone"],
    torch_layout.backbone_layout(template["backbone"]),
    prefix=backbone_prefix,
    report=report,
    optional=(("mask_token",),),
    resize_pos_embed=resize,
  )
  used_head = set()
  if head:
    params["head"], used_head = torch_layout.import_part(
      head, template["head"], torch_layout.head_layout(template["head"]), prefix=prefix + "head.", report=report
    )
  else:
    params["head"] = template["head"]
  used_ibot = set()
  if "ibot_head" in template:  # The config's model has a separate iBOT head: DINOv2's `ibot_head.*`.
    if ibot_head:
      params["ibot_head"], used_ibot = torch_layout.import_part(
        ibot_head,
        template["ibot_head"],
        torch_layout.head_layout(template["ibot_head"]),
        prefix=prefix + torch_layout.IBOT_HEAD_PREFIX,
        report=report,
      )
    else:
      params["ibot_head"] = template["ibot_head"]
      report.notes.append(f"{prefix or 'The checkpoint'} has no ibot_head: the separate iBOT head starts fresh.")
  unknown = (
    [backbone_prefix + k for k in backbone if k not in used_backbone]
    + [prefix + "head." + k for k in head if k not in used_head]
    + [prefix + torch_layout.IBOT_HEAD_PREFIX + k for k in ibot_head if k not in used_ibot]
    + [prefix + k for k in other]
  )
  unknown = [k for k in unknown if not any(k[len(prefix) :].startswith(p) for p in ignore_keys)]
  return params, unknown, bool(head)


def from_torch(
  checkpoint: str,
  config,
  workdir: str,
  *,
  ignore_keys: Sequence[str] = (),
  interpolate_offset: Optional[float] = None,
  interpolate_antialias: Optional[bool] = None,
) -> dict:
  """Converts an official checkpoint into `workdir/checkpoints` (step 0) under `config`; returns what it imported.

  Student and teacher come from the checkpoint's `student` / `teacher` networks, or both from its single network
  (a backbone file); heads come along where the checkpoint has them and start fresh otherwise. The optimizer and
  the objective state (e.g. DINO's center) start fresh. Every missing, unknown or misshapen tensor is listed in one
  error; `ignore_keys` (prefixes, e.g. "ibot_head.") leaves keys out on purpose. The position embeddings are
  resized with `interpolate_offset` / `interpolate_antialias`, by default the config's model's.
  """
  validation.validate_config(config)
  # The stored position grid is resized to the config's as the model resizes it at run time.
  interpolate_offset = config.model.interpolate_offset if interpolate_offset is None else interpolate_offset
  interpolate_antialias = config.model.interpolate_antialias if interpolate_antialias is None else interpolate_antialias
  directory = storage.path(workdir) / "checkpoints"
  if directory.exists() and any(directory.iterdir()):
    raise FileExistsError(f"{directory} already holds checkpoints; convert into an empty --workdir.")
  nets = torch_layout.networks(torch_layout.load(checkpoint))
  trainer = train.build(config, num_examples=config.batch_size)
  template = jax.device_get(trainer.state.student)
  report = torch_layout.ImportReport()
  imported, unknown, parts = {}, [], []
  if "network" in nets:
    report.notes.append("The checkpoint holds one network: student and teacher both start from it.")
  for name in torch_layout.NETWORKS:
    source = name if name in nets else next(iter(nets))
    if source != name and source != "network":
      report.notes.append(f"The checkpoint has no {name}: the {name} starts as a copy of its {source}.")
    prefix = "" if source == "network" else f"{source}."
    params, unknown_here, with_head = import_network(
      nets[source],
      template,
      prefix=prefix,
      report=report,
      ignore_keys=ignore_keys,
      interpolate_offset=interpolate_offset,
      interpolate_antialias=interpolate_antialias,
    )
    imported[name] = params
    unknown += [k for k in unknown_here if k not in unknown]
    parts += [f"{name}/backbone"] + ([f"{name}/head"] if with_head else [])
  if not any(p.endswith("/head") for p in parts):
    report.notes.append("The checkpoint has no head: student and teacher heads start fresh (equal).")
  problems = [
    _listing(title, names)
    for title, names in (("missing", report.missing), ("unknown", unknown), ("wrong shape", report.mismatched))
    if names
  ]
  if problems:
    raise ValueError(
      f"{checkpoint} does not fit config.model ({config.model.name}, patch {config.model.patch_size}, "
      f"image_size {config.model.image_size}, {config.model.num_registers} registers, layerscale "
      f"{config.model.layerscale}, head {dict(config.model.head)}): " + "; ".join(problems) + ". Pick the "
      "config that matches the checkpoint (model name and patch size, num_registers, layerscale > 0 for "
      "ls1/ls2, the head sizes), or pass --ignore_keys=PREFIX to leave keys out on purpose."
    )
  non_finite = [
    jax.tree_util.keystr(path)
    for path, x in jax.tree_util.tree_flatten_with_path(imported)[0]
    if not np.isfinite(x).all()
  ]
  if non_finite:
    raise ValueError(f"{checkpoint} holds non-finite values in {', '.join(non_finite[:10])}: nothing was written.")
  state = trainer.state.replace(
    student=jax.device_put(imported["student"], trainer.state_shardings.student),
    teacher=jax.device_put(imported["teacher"], trainer.state_shardings.teacher),
  )
  summary = {
    "converted_from": str(checkpoint),
    "imported": sorted(set(parts)),
    "notes": list(dict.fromkeys(report.notes)),
  }
  checkpoints = checkpointing.Checkpoints(workdir, config)
  try:
    checkpoints.save(0, state, summary, force=True, check_finite=False)  # imported: checked above; the rest: init
    checkpoints.wait()
  finally:
    checkpoints.close()
  return summary


def export_state_dict(
  params: dict, config, *, head: bool = False, layout: Optional[str] = None
) -> dict[str, np.ndarray]:
  """Our network's params -> the official state dict (backbone alone, or `backbone.*` and the head's keys)."""
  dinov2_only = (
    config.model.num_registers
    or config.model.layerscale
    or config.model.ffn != "mlp"
    or config.model.ibot_head.separate
  )
  layout = layout or ("dinov2" if dinov2_only else "dino")
  if layout == "dino" and dinov2_only:
    raise ValueError(
      "DINO's ViT has no registers, LayerScale, SwiGLU or separate iBOT head: export this model with --layout=dinov2."
    )
  params = jax.device_get(params)
  out = torch_layout.export_part(
    params["backbone"], torch_layout.backbone_layout(params["backbone"], layout), prefix="backbone." if head else ""
  )
  if head:
    head_prefix = "head." if layout == "dino" else "dino_head."
    out.update(torch_layout.export_part(params["head"], torch_layout.head_layout(params["head"]), head_prefix))
    if "ibot_head" in params:
      out.update(
        torch_layout.export_part(
          params["ibot_head"], torch_layout.head_layout(params["ibot_head"]), torch_layout.IBOT_HEAD_PREFIX
        )
      )
  return out


def restore_network(workdir: str, step: Optional[int], network: str):
  """(run config, `network`'s params `{"backbone", "head"}` as numpy) of checkpoint `step` (default: latest)."""
  if network not in torch_layout.NETWORKS:
    raise ValueError(f"Unknown network {network!r}; valid: {', '.join(torch_layout.NETWORKS)}.")
  config, step = checkpointing.read_config(workdir, step)
  config = ml_collections.ConfigDict(config)
  head_kind = objectives.get_objective(config.objective).head_kind
  abstract = nnx.to_pure_dict(
    nnx.state(nnx.eval_shape(lambda: models.create_model(config.model, head_kind=head_kind, rngs=nnx.Rngs(0))))
  )
  replicated = parallel.replicated(parallel.create_mesh())
  target = {network: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)}
  return config, jax.device_get(checkpointing.restore_part(workdir, step, target)[network])


def to_torch(
  workdir: str,
  out: str,
  *,
  step: Optional[int] = None,
  network: str = "teacher",
  head: bool = False,
  layout: Optional[str] = None,
  file_format: str = "pth",
) -> list[str]:
  """Writes `network` of checkpoint `step` of `workdir` as an official state dict; returns its keys."""
  import torch  # pylint: disable=import-outside-toplevel

  if file_format not in FORMATS:
    raise ValueError(f"Unknown format {file_format!r}; valid: {', '.join(FORMATS)}.")
  config, params = restore_network(workdir, step, network)
  state_dict = export_state_dict(params, config, head=head, layout=layout)
  if jax.process_index() == 0:
    tensors = {key: torch.from_numpy(np.array(value)) for key, value in state_dict.items()}
    target = storage.path(out)
    if file_format == "safetensors":
      from safetensors.torch import save as save_safetensors  # pylint: disable=import-outside-toplevel

      target.write_bytes(save_safetensors(tensors))
    else:
      with target.open("wb") as f:
        torch.save(tensors, f)
  return list(state_dict)
