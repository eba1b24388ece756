"""The official PyTorch layout of DINO / DINOv2 / SimDINO ViTs and DINO heads, and its mapping to ours.

Official names (the `state_dict` keys of the reference code) and shapes, ours in brackets (docs/architecture.md):
  cls_token [1,1,D], pos_embed [1,1+M*M,D], register_tokens [1,R,D] (DINOv2 with registers),
  mask_token [1,D] (DINOv2; absent in DINO) [1,1,D],
  patch_embed.proj.weight [D,3,p,p] (a Conv2d) [patch_embed/kernel [p*p*3,D], rows in (row, column, channel) order],
  blocks.<i>.{norm1,norm2}.{weight,bias} [scale, bias], blocks.<i>.attn.{qkv,proj}.{weight [out,in],bias}
  [kernel [in,out], bias], blocks.<i>.ls{1,2}.gamma [D] (DINOv2 LayerScale), blocks.<i>.mlp.{fc1,fc2}.* (or DINOv2's
  SwiGLU `mlp.{w12,w3}.*`), norm.*;
  head: mlp.<2j>.{weight,bias} (Linear layers of an nn.Sequential with GELUs between; `mlp.weight` for one layer)
  [mlp/layers/<j>/*], last_layer.weight_g [K,1] and last_layer.weight_v [K,p] (torch.nn.utils.weight_norm) or
  last_layer.parametrizations.weight.original{0,1} (its parametrizations form) [last_layer/g [K], last_layer/v];
  DINOv2's separate iBOT head `ibot_head.*`, laid out as the DINO head [ibot_head/...].

Torch is imported inside the functions that need it: it is a conversion dependency, never a training one.
"""

import argparse
import dataclasses
import math
import re
from typing import Callable, Optional

import numpy as np
from flax import traverse_util

LAYOUTS = ("dino", "dinov2")
# Prefixes that wrappers add in front of every key: DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Prefixes of the parts inside a network's state dict (DINO's MultiCropWrapper, DINOv2's SSLMetaArch).
BACKBONE_PREFIX = "backbone."
HEAD_PREFIXES = ("head.", "dino_head.")
IBOT_HEAD_PREFIX = "ibot_head."  # DINOv2's separate iBOT head (`ibot.separate_head: true`)
NETWORKS = ("student", "teacher")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class TorchTensor:
  """One official tensor: its name(s) and the maps between its official shape and ours."""

  names: tuple[str, ...]  # The first is written on export; any is accepted on import.
  to_ours: Callable[[np.ndarray], np.ndarray] = lambda x: x
  to_torch: Callable[[np.ndarray], np.ndarray] = lambda x: x


def _transpose(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.T)


def _conv_to_kernel(weight: np.ndarray) -> np.ndarray:
  """Conv2d weight [D, C, p, p] -> Linear kernel [p*p*C, D] over (row, column, channel)-ordered patches."""
  dim, channels, patch, _ = weight.shape
  return np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(patch * patch * channels, dim))


def _kernel_to_conv(kernel: np.ndarray, channels: int = 3) -> np.ndarray:
  patch = int(round(math.sqrt(kernel.shape[0] // channels)))
  return np.ascontiguousarray(kernel.reshape(patch, patch, channels, -1).transpose(3, 2, 0, 1))


def _torch_leaf(module_path: tuple, leaf: str) -> str:
  name = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
  return ".".join([str(p) for p in module_path] + [name])


def backbone_layout(params: dict, layout: str = "dinov2") -> dict[tuple, TorchTensor]:
  """Our backbone parameter paths (a pure dict, see vit.py) -> official tensors.

  `layout` only changes what export writes for the mask token: DINOv2's `[1, D]`, or nothing for DINO (whose ViT
  has none; `to_torch` returns None).
  """
  if layout not in LAYOUTS:
    raise ValueError(f"Unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}.")
  out = {}
  for path in traverse_util.flatten_dict(params):
    if path == ("patch_embed", "kernel"):
      out[path] = TorchTensor(("patch_embed.proj.weight",), _conv_to_kernel, _kernel_to_conv)
    elif path == ("patch_embed", "bias"):
      out[path] = TorchTensor(("patch_embed.proj.bias",))
    elif path == ("mask_token",):
      out[path] = TorchTensor(
        ("mask_token",),
        lambda x: x.reshape(1, 1, -1),
        (lambda x: x.reshape(1, -1)) if layout == "dinov2" else (lambda x: None),
      )
    elif path[-1] == "kernel":
      out[path] = TorchTensor((_torch_leaf(path[:-1], "kernel"),), _transpose, _transpose)
    else:
      out[path] = TorchTensor((_torch_leaf(path[:-1], path[-1]),))
  return out


def head_layout(params: dict) -> dict[tuple, TorchTensor]:
  """Our head parameter paths (DINO or SimDINO head, see heads.py) -> official tensors."""
  flat = traverse_util.flatten_dict(params)
  n_layers = len({path[2] for path in flat if path[:2] == ("mlp", "layers")})
  out = {}
  for path in flat:
    if path[:2] == ("mlp", "layers"):
      module = "mlp" if n_layers == 1 else f"mlp.{2 * int(path[2])}"
      out[path] = TorchTensor(
        (_torch_leaf((module,), path[3]),), *((_transpose, _transpose) if path[3] == "kernel" else ())
      )
    elif path == ("last_layer", "v"):
      out[path] = TorchTensor(("last_layer.weight_v", "last_layer.parametrizations.weight.original1"))
    elif path == ("last_layer", "g"):
      out[path] = TorchTensor(
        ("last_layer.weight_g", "last_layer.parametrizations.weight.original0"),
        lambda x: x.reshape(-1),
        lambda x: x.reshape(-1, 1),
      )
    else:
      raise ValueError(f"No official name for the head parameter {'/'.join(map(str, path))}.")
  return out


def interpolate_pos_embed(
  pos_embed: np.ndarray, grid: tuple[int, int], *, offset: float = 0.1, antialias: bool = False
) -> np.ndarray:
  """`[1, 1+M*M, D]` -> `[1, 1+h*w, D]`: the patch part resized bicubically as the reference ViTs do at run time.

  PyTorch's `interpolate(mode="bicubic", align_corners=False)` on the `M x M` grid, with the scale factor
  `(h + offset) / M` (DINO, SimDINO and DINOv2 without registers: offset 0.1, no antialiasing) or, for offset 0,
  the output size (DINOv2's register models: antialias=True). The CLS position is kept as is.
  """
  import torch  # pylint: disable=import-outside-toplevel

  side = int(round(math.sqrt(pos_embed.shape[1] - 1)))
  if side * side != pos_embed.shape[1] - 1:
    raise ValueError(f"pos_embed holds {pos_embed.shape[1] - 1} patch positions, not a square grid.")
  if (side, side) == tuple(grid):
    return pos_embed
  dim = pos_embed.shape[-1]
  patch = torch.from_numpy(np.ascontiguousarray(pos_embed[:, 1:])).float().reshape(1, side, side, dim)
  size_or_scale = (
    {"scale_factor": ((grid[0] + offset) / side, (grid[1] + offset) / side)} if offset else {"size": tuple(grid)}
  )
  resized = torch.nn.functional.interpolate(
    patch.permute(0, 3, 1, 2), mode="bicubic", antialias=antialias, **size_or_scale
  )
  if tuple(resized.shape[-2:]) != tuple(grid):
    raise ValueError(
      f"Interpolating {side}x{side} position embeddings gave {tuple(resized.shape[-2:])}, not {tuple(grid)}."
    )
  resized = resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).numpy()
  return np.concatenate([pos_embed[:, :1], resized], axis=1)


def load(path: str) -> dict:
  """An official checkpoint (`.pth`/`.pt`/`.pth.tar` or `.safetensors`), tensors as float32 numpy arrays.

  `.pth` files are read with `torch.load(weights_only=True)`: tensors, containers, numbers and (DINO's saved
  `args`) `argparse.Namespace` only; a file that needs more code to unpickle is refused.
  """
  import torch  # pylint: disable=import-outside-toplevel
  from simdino_jax import storage  # pylint: disable=import-outside-toplevel

  file = storage.path(path)
  if not file.exists():
    raise FileNotFoundError(f"No checkpoint at {path}.")
  if file.name.endswith(".safetensors"):
    from safetensors.torch import load as load_safetensors  # pylint: disable=import-outside-toplevel

    tree = load_safetensors(file.read_bytes())
  else:
    with file.open("rb") as f, torch.serialization.safe_globals([argparse.Namespace]):
      try:
        tree = torch.load(f, map_location="cpu", weights_only=True)
      except Exception as error:  # torch raises pickle.UnpicklingError or RuntimeError, with the reason.
        raise ValueError(
          f"{path} cannot be read as data (torch.load(weights_only=True)): it needs code to unpickle. Re-save "
          "its state dicts alone in PyTorch (torch.save({'teacher': ckpt['teacher']}, 'clean.pth')) and "
          f"convert that file. PyTorch said: {str(error).splitlines()[0]}"
        ) from error
  return _to_numpy(tree)


def _to_numpy(tree):
  import torch  # pylint: disable=import-outside-toplevel

  if isinstance(tree, torch.Tensor):
    return tree.detach().float().numpy() if tree.is_floating_point() else tree.numpy()
  if isinstance(tree, dict):
    return {key: _to_numpy(value) for key, value in tree.items()}
  return tree


def _strip_wrappers(key: str) -> str:
  stripped = True
  while stripped:
    stripped = False
    for prefix in WRAPPER_PREFIXES:
      if key.startswith(prefix):
        key, stripped = key[len(prefix) :], True
  return key


def _unchunk(key: str) -> str:
  """DINOv2's FSDP block chunks `blocks.<chunk>.<i>.` -> `blocks.<i>.` (i counts over all blocks)."""
  return _CHUNKED_BLOCK.sub(r"blocks.\1.", key)


def networks(checkpoint: dict) -> dict[str, dict[str, np.ndarray]]:
  """The networks' state dicts inside a checkpoint, wrapper prefixes removed.

  Returns `{"student": ..., "teacher": ...}` (DINO / SimDINO `checkpoint.pth`, DINOv2's `model` with `student.` /
  `teacher.` keys, DINOv2's `teacher_checkpoint.pth`: either may be absent) or `{"network": ...}` (a backbone
  file, `state_dict` or `model` holding one network).
  """

  def is_state_dict(tree):
    return isinstance(tree, dict) and tree and all(isinstance(v, np.ndarray) for v in tree.values())

  def clean(state_dict):
    return {_strip_wrappers(key): value for key, value in state_dict.items()}

  found = {name: checkpoint[name] for name in NETWORKS if is_state_dict(checkpoint.get(name))}
  if found:
    return {name: clean(tree) for name, tree in found.items()}
  for key in ("model", "state_dict"):
    if is_state_dict(checkpoint.get(key)):
      inner = clean(checkpoint[key])
      split = {name: {k[len(name) + 1 :]: v for k, v in inner.items() if k.startswith(name + ".")} for name in NETWORKS}
      split = {name: tree for name, tree in split.items() if tree}
      return split or {"network": inner}
  if is_state_dict(checkpoint):
    return {"network": clean(checkpoint)}
  raise ValueError(
    f"Cannot find a network's state dict in the checkpoint (top-level keys: "
    f"{sorted(checkpoint)[:20]}). Expected a backbone state dict, or 'student' / 'teacher' / "
    "'model' / 'state_dict' entries holding state dicts."
  )


def parts(state_dict: dict[str, np.ndarray]) -> tuple[dict, dict, dict, dict]:
  """(backbone, head, iBOT head, other) keys of one network: `backbone.*`, `head.*` / `dino_head.*` and
  `ibot_head.*`, or all backbone.

  Backbone keys come with chunked blocks numbered flat.
  """
  if not any(key.startswith(BACKBONE_PREFIX) for key in state_dict):
    return {_unchunk(key): value for key, value in state_dict.items()}, {}, {}, {}
  backbone, head, ibot_head, other = {}, {}, {}, {}
  for key, value in state_dict.items():
    head_prefix = next((p for p in HEAD_PREFIXES if key.startswith(p)), None)
    if key.startswith(BACKBONE_PREFIX):
      backbone[_unchunk(key[len(BACKBONE_PREFIX) :])] = value
    elif head_prefix:
      head[key[len(head_prefix) :]] = value
    elif key.startswith(IBOT_HEAD_PREFIX):
      ibot_head[key[len(IBOT_HEAD_PREFIX) :]] = value
    else:
      other[key] = value
  return backbone, head, ibot_head, other


@dataclasses.dataclass
class ImportReport:
  """What an import found wrong (raised together) and what it filled in (printed)."""

  missing: list[str] = dataclasses.field(default_factory=list)
  mismatched: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)


def import_part(
  state_dict: dict[str, np.ndarray],
  template: dict,
  layout: dict[tuple, TorchTensor],
  *,
  prefix: str,
  report: ImportReport,
  optional: tuple = (),
  resize_pos_embed: Optional[Callable] = None,
) -> tuple[dict, set]:
  """Our pure dict of one part from its official state dict; returns it and the keys used.

  Missing tensors and shape mismatches go to `report`; parameters listed in `optional` keep the template's
  (fresh) value when absent, with a note.
  """
  flat_template = traverse_util.flatten_dict(template)
  out, used = {}, set()
  for path, tensor in layout.items():
    expected = tuple(flat_template[path].shape)
    name = next((n for n in tensor.names if n in state_dict), None)
    if name is None:
      if path in optional:
        out[path] = np.asarray(flat_template[path])
        report.notes.append(f"{prefix}{tensor.names[0]} is not in the checkpoint: kept at its initial value.")
      else:
        report.missing.append(f"{prefix}{tensor.names[0]}")
      continue
    used.add(name)
    value = np.asarray(state_dict[name], np.float32)
    if path == ("pos_embed",) and resize_pos_embed is not None and value.ndim == 3 and value.shape != expected:
      side = int(round(math.sqrt(expected[1] - 1)))
      value = resize_pos_embed(value, (side, side))
      report.notes.append(
        f"{prefix}pos_embed interpolated from {state_dict[name].shape[1] - 1} to {side}x{side} patch positions."
      )
    try:
      value = tensor.to_ours(value)
    except ValueError:  # Another rank than the official one.
      value = None
    if value is None or value.shape != expected:
      official = tensor.to_torch(np.zeros(expected, np.float32))
      report.mismatched.append(
        f"{prefix}{name}: checkpoint {tuple(state_dict[name].shape)}, the config's model "
        f"needs {tuple(expected if official is None else official.shape)}"
      )
      continue
    out[path] = value
  return traverse_util.unflatten_dict(out), used


def export_part(params: dict, layout: dict[tuple, TorchTensor], prefix: str = "") -> dict[str, np.ndarray]:
  """Official state dict entries of one part (tensors whose `to_torch` gives None are left out)."""
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    converted = layout[path].to_torch(np.asarray(value, np.float32))
    if converted is not None:
      out[prefix + layout[path].names[0]] = np.ascontiguousarray(converted)
  return out
