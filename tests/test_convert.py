"""Checkpoint conversion against a PyTorch ViT and DINO head written here with the official names and shapes.

The PyTorch model below follows the official DINO / DINOv2 modules' parameter names, shapes and forward pass
(conv patch embedding, CLS + registers, bicubic position-embedding interpolation with the references' rule,
pre-norm blocks with optional LayerScale, weight-normalized prototypes) and is written independently of ours.
"""

import argparse
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from simdino_jax import data as data_lib
from simdino_jax import evaluate
from simdino_jax import models
from simdino_jax import parallel
from simdino_jax import train
from simdino_jax.configs import digits
from simdino_jax.convert import torch_checkpoints
from simdino_jax.convert import torch_layout
from simdino_jax.evaluation import features as features_lib
from simdino_jax.evaluation import knn
from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


class TorchAttention(nn.Module):
  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    batch, tokens, dim = x.shape
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
    attn = (qkv[0] @ qkv[1].transpose(-2, -1)) * (dim // self.num_heads) ** -0.5
    return self.proj((attn.softmax(dim=-1) @ qkv[2]).transpose(1, 2).reshape(batch, tokens, dim))


class TorchMlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class TorchSwiGLUFFNFused(nn.Module):
  """dinov2/layers/swiglu_ffn.py: hidden (int(h · 2/3) + 7) // 8 · 8, `w12` then `silu(x1) * x2` then `w3`."""

  def __init__(self, dim, hidden):
    super().__init__()
    hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
    self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    x1, x2 = self.w12(x).chunk(2, dim=-1)
    return self.w3(nn.functional.silu(x1) * x2)


class TorchLayerScale(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.gamma = nn.Parameter(torch.ones(dim))

  def forward(self, x):
    return x * self.gamma


class TorchBlock(nn.Module):
  def __init__(self, dim, num_heads, layerscale, swiglu=False):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = TorchAttention(dim, num_heads)
    self.ls1 = TorchLayerScale(dim) if layerscale else nn.Identity()
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = (TorchSwiGLUFFNFused if swiglu else TorchMlp)(dim, 4 * dim)
    self.ls2 = TorchLayerScale(dim) if layerscale else nn.Identity()

  def forward(self, x):
    x = x + self.ls1(self.attn(self.norm1(x)))
    return x + self.ls2(self.mlp(self.norm2(x)))


class TorchPatchEmbed(nn.Module):
  def __init__(self, dim, patch):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class TorchViT(nn.Module):
  """DINO's ViT (`mask_token=False`) or DINOv2's (mask token `[1, D]`, registers, LayerScale)."""

  def __init__(
    self,
    *,
    dim,
    depth,
    num_heads,
    patch,
    img_size,
    registers=0,
    layerscale=False,
    mask_token=False,
    interpolate_offset=0.1,
    interpolate_antialias=False,
    swiglu=False,
  ):
    super().__init__()
    self.patch, self.offset, self.antialias = patch, interpolate_offset, interpolate_antialias
    self.patch_embed = TorchPatchEmbed(dim, patch)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img_size // patch) ** 2, dim))
    self.register_tokens = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None
    self.mask_token = nn.Parameter(torch.zeros(1, dim)) if mask_token else None
    self.blocks = nn.ModuleList([TorchBlock(dim, num_heads, layerscale, swiglu) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)

  def interpolate_pos_encoding(self, height, width):
    stored = self.pos_embed.shape[1] - 1
    h0, w0 = height // self.patch, width // self.patch
    if h0 * w0 == stored and height == width:
      return self.pos_embed
    side = int(math.sqrt(stored))
    grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if self.offset:
      resized = nn.functional.interpolate(
        grid,
        scale_factor=((h0 + self.offset) / side, (w0 + self.offset) / side),
        mode="bicubic",
        antialias=self.antialias,
      )
    else:
      resized = nn.functional.interpolate(grid, size=(h0, w0), mode="bicubic", antialias=self.antialias)
    return torch.cat([self.pos_embed[:, :1], resized.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)

  def forward_features(self, images, masks=None):
    """images [B,3,H,W] -> (normalized CLS [B,D], normalized patch tokens [B,N,D])."""
    x = self.patch_embed(images)
    if masks is not None:
      x = torch.where(masks.unsqueeze(-1), self.mask_token.unsqueeze(0), x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = x + self.interpolate_pos_encoding(*images.shape[2:])
    if self.register_tokens is not None:
      x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    for block in self.blocks:
      x = block(x)
    x = self.norm(x)
    return x[:, 0], x[:, 1 + (0 if self.register_tokens is None else self.register_tokens.shape[1]) :]


class TorchDINOHead(nn.Module):
  def __init__(self, in_dim, out_dim, hidden_dim, bottleneck_dim, parametrizations=False):
    super().__init__()
    self.mlp = nn.Sequential(
      nn.Linear(in_dim, hidden_dim),
      nn.GELU(),
      nn.Linear(hidden_dim, hidden_dim),
      nn.GELU(),
      nn.Linear(hidden_dim, bottleneck_dim),
    )
    linear = nn.Linear(bottleneck_dim, out_dim, bias=False)
    if parametrizations:
      self.last_layer = nn.utils.parametrizations.weight_norm(linear)
    else:
      with pytest.warns(FutureWarning):  # torch.nn.utils.weight_norm, the official DINO code's form.
        self.last_layer = nn.utils.weight_norm(linear)

  def forward(self, x):
    return self.last_layer(nn.functional.normalize(self.mlp(x), dim=-1))


class TorchMultiCrop(nn.Module):
  """DINO's MultiCropWrapper layout: `backbone.*` and `head.*`."""

  def __init__(self, backbone, head):
    super().__init__()
    self.backbone, self.head = backbone, head


def randomize(module: nn.Module, seed: int) -> nn.Module:
  """Every parameter random (norm gains around 1), so that no tensor can be misplaced unnoticed."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in module.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
        param.copy_(1.0 + 0.1 * noise)
      elif name.endswith(("_token", "_tokens", "pos_embed")) or param.ndim == 1:
        param.copy_(0.1 * noise)
      else:  # Weights at the scale that keeps activations O(1) through the depth.
        param.copy_(noise / math.sqrt(math.prod(param.shape[1:])))
  return module.eval()


def model_config(name, *, patch, image_size, registers=0, layerscale=0.0, head=(64, 48, 16), ffn="mlp", ibot_head=None):
  """config.model of one of our registered architectures, float32, with a small DINO head (and a separate iBOT
  head of sizes `ibot_head` = (K, hidden, bottleneck))."""
  config = models.default_config()
  config.name, config.patch_size, config.image_size = name, patch, image_size
  config.num_registers, config.layerscale, config.dtype, config.ffn = registers, layerscale, "float32", ffn
  config.head.out_dim, config.head.hidden_dim, config.head.bottleneck_dim = head
  if ibot_head:
    config.ibot_head.separate = True
    config.ibot_head.out_dim, config.ibot_head.hidden_dim, config.ibot_head.bottleneck_dim = ibot_head
  return config


def our_template(config) -> dict:
  """Our parameters of `config` as zeros (a pure dict): the shapes an import checks against."""
  abstract = nnx.to_pure_dict(
    nnx.state(nnx.eval_shape(lambda: models.create_model(config, head_kind="dino", rngs=nnx.Rngs(0))))
  )
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)


def our_model(config, params):
  """Our model of `config` holding `params` (no initialization)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: models.create_model(config, head_kind="dino", rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def to_numpy_state_dict(module) -> dict:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def import_clean(state_dict, config, **kwargs) -> dict:
  """Our params of one network's official state dict; fails on any reported problem."""
  report = torch_layout.ImportReport()
  params, unknown, _ = torch_checkpoints.import_network(
    state_dict, our_template(config), prefix="", report=report, **kwargs
  )
  assert not (report.missing or report.mismatched or unknown), (report, unknown)
  return params


def chunked_backbone(backbone, *, blocks_per_chunk: int) -> dict:
  """`backbone.*` keys of a DINOv2 training checkpoint: FSDP block chunks `blocks.<chunk>.<i>.` (i over all blocks)."""
  out = {}
  for key, value in to_numpy_state_dict(backbone).items():
    if key.startswith("blocks."):
      key = f"blocks.{int(key.split('.')[1]) // blocks_per_chunk}.{key[len('blocks.') :]}"
    out["backbone." + key] = value
  return out


def images_nchw(batch, size, seed=0):
  return torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32))


def compare_features(config, params, torch_backbone, torch_head, size, masks=None):
  """Our CLS, patch tokens and head logits against PyTorch's on the same images (float32, 1e-4)."""
  images = images_nchw(2, size)
  with torch.no_grad():
    cls_ref, patch_ref = torch_backbone.forward_features(images, None if masks is None else torch.from_numpy(masks))
    head_ref = torch_head(cls_ref) if torch_head is not None else None
  cls, patch, logits = _forward(
    our_model(config, params),
    jnp.asarray(images.numpy().transpose(0, 2, 3, 1)),
    None if masks is None else jnp.asarray(masks),
  )
  np.testing.assert_allclose(cls, cls_ref.numpy(), atol=TOL, rtol=TOL)
  np.testing.assert_allclose(patch, patch_ref.numpy(), atol=TOL, rtol=TOL)
  if torch_head is not None:
    np.testing.assert_allclose(logits, head_ref.numpy(), atol=TOL, rtol=TOL)


@nnx.jit
def _forward(model, images, masks):
  out = model.backbone(images, masks)
  return out["cls"], out["patch"], model.head(out["cls"])


# ViT-S/16 DINO-style: no registers, no LayerScale, no mask token; 64 px (a 4 x 4 grid) keeps it cheap.
DINO_S = dict(dim=384, depth=12, num_heads=6, patch=16, img_size=64)


@pytest.fixture(scope="module")
def dino_small():
  backbone = randomize(TorchViT(**DINO_S), seed=1)
  head = randomize(TorchDINOHead(384, 64, 48, 16), seed=2)
  return backbone, head, model_config("ViT-S/16", patch=16, image_size=64)


def test_dino_style_backbone_and_head_equal_pytorch(dino_small):
  backbone, head, config = dino_small
  wrapped = TorchMultiCrop(backbone, head)
  # As in DINO's checkpoint.pth student entry: DistributedDataParallel's `module.` in front.
  state_dict = {"module." + k: v for k, v in to_numpy_state_dict(wrapped).items()}
  params = import_clean(torch_layout.networks({"student": state_dict})["student"], config)
  compare_features(config, params, backbone, head, size=64)


def test_export_then_import_is_the_identity_and_loads_strictly(dino_small):
  backbone, head, config = dino_small
  params = import_clean(to_numpy_state_dict(TorchMultiCrop(backbone, head)), config)
  exported = torch_checkpoints.export_state_dict(params, ml_config(config), head=True)
  fresh = TorchMultiCrop(TorchViT(**DINO_S), TorchDINOHead(384, 64, 48, 16))
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  assert all(np.array_equal(v, exported[k]) for k, v in to_numpy_state_dict(fresh).items())
  again = import_clean(exported, config)
  jax.tree.map(np.testing.assert_array_equal, again, params)
  backbone_only = torch_checkpoints.export_state_dict(params, ml_config(config))
  assert "mask_token" not in backbone_only and not any(k.startswith(("backbone.", "head.")) for k in backbone_only)
  TorchViT(**DINO_S).load_state_dict({k: torch.from_numpy(v) for k, v in backbone_only.items()}, strict=True)


def ml_config(model_config_dict):
  """A training config around config.model (what export reads)."""
  config = digits.get_config()
  config.model = model_config_dict
  return config


# ViT-T/14 DINOv2-style: 4 registers, LayerScale, mask token; position embeddings stored for 112 px (8 x 8), the
# config's model at 56 px (4 x 4), so the import interpolates them as the reference does at run time.
DINOV2_T = dict(dim=192, depth=12, num_heads=3, patch=14, img_size=112, registers=4, layerscale=True, mask_token=True)


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, True)])
def test_dinov2_style_registers_layerscale_and_interpolation_equal_pytorch(offset, antialias):
  backbone = randomize(TorchViT(**DINOV2_T, interpolate_offset=offset, interpolate_antialias=antialias), seed=3)
  head = randomize(TorchDINOHead(192, 64, 48, 16, parametrizations=True), seed=4)
  config = model_config("ViT-T/14", patch=14, image_size=56, registers=4, layerscale=1e-5)
  # DINOv2's teacher_checkpoint.pth: backbone with FSDP block chunks (blocks.<chunk>.<i>.), dino_head.
  state_dict = chunked_backbone(backbone, blocks_per_chunk=4)
  state_dict.update({"dino_head." + k: v for k, v in to_numpy_state_dict(head).items()})
  networks = torch_layout.networks({"teacher": state_dict})
  params = import_clean(networks["teacher"], config, interpolate_offset=offset, interpolate_antialias=antialias)
  masks = np.zeros((2, 16), bool)
  masks[0, [1, 5, 6]] = masks[1, [0, 15]] = True
  compare_features(config, params, backbone, head, size=56, masks=masks)
  exported = torch_checkpoints.export_state_dict(params, ml_config(config))
  assert exported["mask_token"].shape == (1, 192) and exported["pos_embed"].shape == (1, 17, 192)


def test_mismatches_are_listed_in_one_error(dino_small):
  backbone, head, _ = dino_small
  state_dict = to_numpy_state_dict(TorchMultiCrop(backbone, head))
  del state_dict["backbone.blocks.3.attn.qkv.bias"]
  state_dict["backbone.extra_token"] = np.zeros(3, np.float32)
  config = model_config("ViT-T/16", patch=16, image_size=64)
  report = torch_layout.ImportReport()
  _, unknown, _ = torch_checkpoints.import_network(state_dict, our_template(config), prefix="", report=report)
  assert "backbone.blocks.3.attn.qkv.bias" in report.missing
  assert unknown == ["backbone.extra_token"]
  assert any(
    m.startswith("backbone.blocks.0.attn.qkv.weight: checkpoint (1152, 384)") and m.endswith("(576, 192)")
    for m in report.mismatched
  ), report.mismatched


def digits_config():
  config = digits.get_config("method=dino,model=vit_nano")
  config.model.dtype, config.model.drop_path_rate = "float32", 0.0
  config.model.head.hidden_dim, config.model.head.bottleneck_dim, config.model.head.out_dim = 32, 16, 64
  config.total_steps, config.batch_size, config.aug.n_local = 1, 16, 2
  config.eval_every_epochs, config.tensorboard, config.async_checkpointing = 0.0, False, False
  config.checkpoint_every_steps = 0
  return config


@pytest.fixture(scope="module")
def converted_digits(tmp_path_factory):
  """A DINO-style vit_nano (1 block, patch 4, 16 px) and its head in DINO's checkpoint.pth layout, converted."""
  directory = tmp_path_factory.mktemp("convert")
  backbone = randomize(TorchViT(dim=32, depth=1, num_heads=2, patch=4, img_size=16), seed=5)
  head = randomize(TorchDINOHead(32, 64, 32, 16), seed=6)
  student = {"module." + k: v for k, v in TorchMultiCrop(backbone, head).state_dict().items()}
  checkpoint = {
    "student": student,
    "teacher": TorchMultiCrop(backbone, head).state_dict(),
    "epoch": 3,
    "args": argparse.Namespace(arch="vit_nano"),
    "dino_loss": {"center": torch.zeros(1, 64)},
  }
  path = str(directory / "checkpoint.pth")
  torch.save(checkpoint, path)
  workdir = str(directory / "converted")
  summary = torch_checkpoints.from_torch(path, digits_config(), workdir, ignore_keys=())
  return backbone, head, path, workdir, summary


def test_convert_then_knn_on_digits_equals_pytorch(converted_digits):
  backbone, _, _, workdir, summary = converted_digits
  assert summary["imported"] == ["student/backbone", "student/head", "teacher/backbone", "teacher/head"]
  config = digits_config()
  results = evaluate.evaluate_checkpoint(workdir, evaluate.protocol_evals("knn", {"knn": {"k": (10, 20)}}))
  mesh = parallel.create_mesh()
  params = evaluate.restore_backbone(config, workdir, 0, "teacher", mesh)
  feature_fn = features_lib.make_feature_fn(config)
  ours, theirs, labels = [], [], []
  for split in (config.data.train_split, config.data.eval_split):
    features, split_labels = features_lib.split_features(
      feature_fn, params, data_lib.open_split(config.data, split), batch_size=256, mesh=mesh
    )
    images, image_labels = data_lib.load_split(config.data, split)
    np.testing.assert_array_equal(split_labels, image_labels)
    inputs = np.array(features_lib.evaluation_inputs(config, jnp.asarray(images))).transpose(0, 3, 1, 2)
    with torch.no_grad():
      theirs.append(backbone.forward_features(torch.from_numpy(inputs))[0].numpy())
    np.testing.assert_allclose(features, theirs[-1], atol=TOL, rtol=TOL)
    ours.append(features)
    labels.append(split_labels)
  reference = knn.knn_classify(theirs[0], labels[0], theirs[1], labels[1], num_classes=10, k=(10, 20), temperature=0.07)
  assert results["knn_top1_k20"] == pytest.approx(reference["knn_top1_k20"], abs=1e-9)
  assert results["knn_top1_k10"] == pytest.approx(reference["knn_top1_k10"], abs=1e-9)
  assert results["knn_top1_k20"] > 0.2  # Random features of digits beat chance (10 %).


def test_training_continues_from_a_converted_checkpoint(converted_digits, tmp_path, capsys):
  _, _, _, converted, _ = converted_digits
  # A SimDINO run from the converted DINO networks: backbones taken, its own (differently shaped) heads fresh.
  # With EMA momentum 1 the teacher does not move, so after a step it still equals the converted one exactly.
  config = train_utils.tiny_config(
    "simdino", init_from=converted, total_steps=1, **{"teacher.momentum": 1.0, "teacher.momentum_end": 1.0}
  )
  last = train.run(config, str(tmp_path / "run"))
  assert np.isfinite(last["loss"])
  out = capsys.readouterr().out
  assert "init_from: the student head starts fresh (its shapes differ)" in out
  assert "init_from: student/backbone, teacher/backbone from step 0" in out
  _, converted_teacher = torch_checkpoints.restore_network(converted, 0, "teacher")
  _, trained_teacher = torch_checkpoints.restore_network(str(tmp_path / "run"), None, "teacher")
  jax.tree.map(np.testing.assert_array_equal, trained_teacher["backbone"], converted_teacher["backbone"])


def test_export_as_safetensors_loads_strictly_into_the_official_layout(converted_digits, tmp_path):
  # The command lines themselves are parsed and their configs validated by test_readme_commands.py.
  backbone, _, _, workdir, _ = converted_digits
  out = str(tmp_path / "teacher.safetensors")
  keys = torch_checkpoints.to_torch(workdir, out, file_format="safetensors")
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel

  reloaded = TorchViT(dim=32, depth=1, num_heads=2, patch=4, img_size=16)
  reloaded.load_state_dict(load_file(out), strict=True)
  assert sorted(keys) == sorted(backbone.state_dict())
  for key, value in backbone.state_dict().items():
    torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0)
  # Read back as an import does: one network (a backbone file), the same tensors.
  networks = torch_layout.networks(torch_layout.load(out))
  assert list(networks) == ["network"]
  for key, value in backbone.state_dict().items():
    np.testing.assert_array_equal(networks["network"][key], value.numpy())


def test_a_file_with_non_finite_weights_is_refused_and_nothing_is_written(converted_digits, tmp_path):
  """The converter checks the imported tensors on the host (its save skips the compiled check of the state)."""
  path = str(tmp_path / "nan.pth")
  checkpoint = torch.load(converted_digits[2], weights_only=False)
  checkpoint["teacher"]["backbone.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
  torch.save(checkpoint, path)
  expected = (
    r"holds non-finite values in .*\['teacher'\]\['backbone'\]\['blocks'\]\[0\]\['mlp'\]\['fc1'\]\['kernel'\]: nothing"
  )
  with pytest.raises(ValueError, match=expected):
    torch_checkpoints.from_torch(path, digits_config(), str(tmp_path / "converted"))
  assert not (tmp_path / "converted" / "checkpoints").exists() or not os.listdir(tmp_path / "converted" / "checkpoints")


def test_a_file_that_needs_code_is_refused(tmp_path):
  path = str(tmp_path / "code.pth")
  torch.save({"model": {"w": torch.zeros(2)}, "obj": Unpicklable()}, path)
  with pytest.raises(ValueError, match="needs code to unpickle"):
    torch_layout.load(path)


class Unpicklable:
  """A class no allow-list knows: loading it would run code from the file's module."""


def test_the_training_path_never_imports_torch():
  code = "import sys; import simdino_jax.train, simdino_jax.evaluate; print('torch' in sys.modules)"
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_dinov2_training_checkpoint_with_swiglu_and_a_separate_ibot_head_in_and_out():
  """Meta's vitl14.yaml / vitg14.yaml layout on ViT-T/14: SwiGLU blocks (`mlp.w12`, `mlp.w3`), LayerScale, the
  mask token, `dino_head.*` and a separate `ibot_head.*` of other sizes, in a training checkpoint (`model` with
  `student.` / `teacher.` keys, FSDP block chunks). Our CLS, patch tokens, DINO logits and iBOT logits of the
  patch tokens equal PyTorch's; the export loads strictly back into the PyTorch modules."""
  torch_vit = dict(dim=192, depth=12, num_heads=3, patch=14, img_size=56, layerscale=True, mask_token=True, swiglu=True)
  backbone = randomize(TorchViT(**torch_vit), seed=5)
  dino_head = randomize(TorchDINOHead(192, 64, 48, 16, parametrizations=True), seed=6)
  ibot_head = randomize(TorchDINOHead(192, 80, 40, 24, parametrizations=True), seed=7)
  config = model_config("ViT-T/14", patch=14, image_size=56, layerscale=1e-5, ffn="swiglu", ibot_head=(80, 40, 24))
  network = chunked_backbone(backbone, blocks_per_chunk=3)
  network.update({"dino_head." + k: v for k, v in to_numpy_state_dict(dino_head).items()})
  network.update({"ibot_head." + k: v for k, v in to_numpy_state_dict(ibot_head).items()})
  checkpoint = {"model": {f"{name}.{k}": v for name in ("student", "teacher") for k, v in network.items()}}
  params = import_clean(torch_layout.networks(checkpoint)["teacher"], config)
  assert params["backbone"]["blocks"][0]["mlp"]["w12"]["kernel"].shape == (192, 2 * 512)  # (int(768·2/3)+7)//8·8
  compare_features(config, params, backbone, dino_head, size=56)
  images = images_nchw(2, 56)
  with torch.no_grad():
    _, patch_ref = backbone.forward_features(images)
    ibot_ref = ibot_head(patch_ref)
  model = our_model(config, params)
  patch = model.backbone(jnp.asarray(images.numpy().transpose(0, 2, 3, 1)))["patch"]
  np.testing.assert_allclose(model.ibot_head(patch), ibot_ref.numpy(), atol=TOL, rtol=TOL)
  exported = torch_checkpoints.export_state_dict(params, ml_config(config), head=True)
  assert any(k.startswith("ibot_head.last_layer") for k in exported)
  holder = nn.Module()
  holder.backbone, holder.dino_head, holder.ibot_head = (
    TorchViT(**torch_vit),
    TorchDINOHead(192, 64, 48, 16),
    TorchDINOHead(192, 80, 40, 24),
  )
  holder.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)


@pytest.mark.parametrize("registers", [0, 4])
def test_released_dinov2_vits14_files_convert_as_docs_convert_md_writes(registers, tmp_path):
  """docs/convert.md's command for DINOv2's released ViT-S/14 (with and without registers), run as written on a
  file with the release's keys and shapes (518 px: 37 x 37 positions; random weights); the converted teacher
  backbone's forward at 224 px equals the PyTorch ViT's, which interpolates its stored grid at run time."""
  name = "dinov2_vits14_reg4_pretrain.pth" if registers else "dinov2_vits14_pretrain.pth"
  workdir = "/tmp/dinov2_vits14_reg4" if registers else "/tmp/dinov2_vits14"
  command = f"--checkpoint={name} --config=configs/dinov2.py:model=ViT-S/14,registers={registers} --workdir={workdir}"
  with open(os.path.join(ROOT, "docs", "convert.md")) as f:
    assert f"python -m simdino_jax.convert from-torch {command}\n" in f.read()
  torch_model = randomize(
    TorchViT(
      dim=384,
      depth=12,
      num_heads=6,
      patch=14,
      img_size=518,
      registers=registers,
      layerscale=True,
      mask_token=True,
      interpolate_offset=0.0 if registers else 0.1,
      interpolate_antialias=bool(registers),
    ),
    seed=8 + registers,
  )
  torch.save({k: torch.from_numpy(v) for k, v in to_numpy_state_dict(torch_model).items()}, tmp_path / name)
  os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")  # The command runs beside the downloaded file.
  args = command.replace(f"--workdir={workdir}", f"--workdir={tmp_path / 'converted'}").split()
  result = subprocess.run(
    [sys.executable, "-m", "simdino_jax.convert", "from-torch", *args],
    cwd=tmp_path,
    env={**train_utils.subprocess_env(), "PYTHONPATH": ROOT},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "pos_embed interpolated from 1369 to 16x16 patch positions" in result.stdout, result.stdout
  config, params = torch_checkpoints.restore_network(str(tmp_path / "converted"), 0, "teacher")
  images = images_nchw(2, 224, seed=registers)
  with torch.no_grad():
    cls_ref, patch_ref = torch_model.forward_features(images)
  config.model.dtype = "float32"
  cls, patch, _ = _forward(our_model(config.model, params), jnp.asarray(images.numpy().transpose(0, 2, 3, 1)), None)
  scale = float(np.max(np.abs(patch_ref.numpy())))
  assert float(np.max(np.abs(np.asarray(cls) - cls_ref.numpy()))) <= 1e-4 * scale
  assert float(np.max(np.abs(np.asarray(patch) - patch_ref.numpy()))) <= 1e-4 * scale
