"""Models: ViT backbones, DINO / SimDINO heads and the multi-crop wrapper, chosen by name from `config.model`.

Functional use (the train loop): build once, split, and merge inside `jax.jit`:

  model = create_model(config.model, head_kind=objective.head_kind, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  @jax.jit
  def forward(params, crops, masks, key):
    return nnx.merge(graphdef, params)(crops, masks, key=key)

The head says what it is (`model.head.out_dim`, `num_prototypes`, `prototypes()`; see heads.py). Parameter paths
(keys of the nnx.State): `backbone/...` (see vit.py) and `head/mlp/layers/<i>/{kernel,bias}`, `head/last_layer/
{v,g}` (DINO head; the optimizer freezes `last_layer` by path). `backbone/mask_token` always exists (zero init;
used only with masks) and is not part of the reference ViT parameter counts.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from simdino_jax.models.heads import HEAD_KINDS, DINOHead, SimDINOHead
from simdino_jax.models.multicrop import MultiCropModel
from simdino_jax.models.vit import VisionTransformer
from simdino_jax.registry import Registry

__all__ = [
  "DINOHead",
  "MODELS",
  "MultiCropModel",
  "SimDINOHead",
  "ViTArchitecture",
  "VisionTransformer",
  "create_backbone",
  "create_model",
  "default_config",
  "prototypes",
]

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}


@dataclasses.dataclass(frozen=True)
class ViTArchitecture:
  """Width, depth and heads of a ViT; `patch_size` None means it comes from `config.model.patch_size`."""

  embed_dim: int
  depth: int
  num_heads: int
  patch_size: Optional[int] = None


MODELS: Registry[ViTArchitecture] = Registry("model")
# DINOv2's vit_giant2: width 1536, 40 blocks, 24 heads (64 per head), its ViT-g/14 with `ffn="swiglu"`.
_SIZES = {
  "tiny": ("T", 192, 12, 3),
  "small": ("S", 384, 12, 6),
  "base": ("B", 768, 12, 12),
  "large": ("L", 1024, 24, 16),
  "giant2": ("g", 1536, 40, 24),
}
for _size, (_letter, _dim, _depth, _heads) in _SIZES.items():
  MODELS.add(f"vit_{_size}", ViTArchitecture(_dim, _depth, _heads))
  for _patch in (4, 8, 14, 16):
    MODELS.add(f"ViT-{_letter}/{_patch}", ViTArchitecture(_dim, _depth, _heads, _patch))
# Small ViTs for CPU: tests and dry runs (1 block, width 32: the shortest compile), smoke runs (2 blocks, width
# 32), the embedded digits demo (4 blocks, width 96).
MODELS.add("vit_nano", ViTArchitecture(32, 1, 2))
MODELS.add("vit_micro", ViTArchitecture(32, 2, 2))
MODELS.add("vit_mini", ViTArchitecture(96, 4, 3))


def default_config() -> ml_collections.ConfigDict:
  """Defaults for `config.model`."""
  return ml_collections.ConfigDict(
    {
      "name": "vit_small",  # vit_{tiny,small,base,large,giant2} or ViT-{T,S,B,L,g}/{4,8,14,16}
      "patch_size": 16,  # must equal the patch size in a ViT-X/P name
      "image_size": 224,  # resolution of the stored position embeddings
      "num_registers": 0,
      "drop_path_rate": 0.1,
      "drop_path_schedule": "linear",  # "linear" over depth (DINO) or "uniform" (DINOv2)
      "layerscale": 0.0,  # 0.0 = off; 1e-5 DINOv2, 0.1 SimDINOv2
      "ffn": "mlp",  # the blocks' feed-forward: "mlp" (GELU) or "swiglu" (DINOv2's ViT-g/14)
      "dtype": "bfloat16",  # compute dtype; parameters are always float32
      "attention_impl": ml_collections.config_dict.placeholder(str),  # None/"xla" or "cudnn" (padded tokens)
      "remat": False,  # recompute each block's activations in the backward pass (memory for FLOPs)
      "remat_policy": "nothing_saveable",  # what a rematerialized block keeps: a jax.checkpoint_policies name
      # (nothing_saveable: only its input; dots_with_no_batch_dims_saveable: the
      # outputs of its weight matmuls too)
      "scan_blocks": False,  # one lax.scan over the blocks: one block to compile instead of depth
      "interpolate_offset": 0.1,  # position embeddings at another grid: PyTorch bicubic, scale (h + offset)/M
      "interpolate_antialias": False,  # (DINO, DINOv2: 0.1, False; the SimDINO repository's DINOv2: 0.0, True)
      "head": {
        "out_dim": 65536,  # K prototypes (DINO head only)
        "hidden_dim": 2048,
        "bottleneck_dim": 256,  # p
        "n_layers": 3,
        "norm_last_layer": True,
      },
      # DINOv2's `ibot.separate_head`: the masked patch tokens get their own DINO head (its own MLP, bottleneck
      # and prototypes, `ibot_head/...`); off: they go through `head` (DINOv2's default, iBOT's shared head).
      "ibot_head": {
        "separate": False,
        "out_dim": 65536,
        "hidden_dim": 2048,
        "bottleneck_dim": 256,
        "n_layers": 3,
      },
    }
  )


def create_backbone(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> VisionTransformer:
  """The ViT backbone described by `config.model` (checked by validation.validate_model)."""
  architecture = MODELS.get(config.name)
  return VisionTransformer(
    embed_dim=architecture.embed_dim,
    depth=architecture.depth,
    num_heads=architecture.num_heads,
    patch_size=config.patch_size,
    image_size=config.image_size,
    num_registers=config.num_registers,
    drop_path_rate=config.drop_path_rate,
    drop_path_schedule=config.drop_path_schedule,
    layerscale=config.layerscale,
    dtype=DTYPES[config.dtype],
    attention_impl=config.attention_impl,
    remat=config.remat,
    remat_policy=config.remat_policy,
    scan_blocks=config.scan_blocks,
    ffn=config.ffn,
    interpolate_offset=config.interpolate_offset,
    interpolate_antialias=config.interpolate_antialias,
    rngs=rngs,
  )


def create_model(config: ml_collections.ConfigDict, *, head_kind: str, rngs: nnx.Rngs) -> MultiCropModel:
  """Backbone + head ("dino": prototype logits, "simdino": normalized embeddings) from `config.model`."""
  if head_kind not in HEAD_KINDS:
    raise ValueError(f"Unknown head kind {head_kind!r}; valid: {', '.join(HEAD_KINDS)}.")
  head_config = config.head
  backbone = create_backbone(config, rngs=rngs)
  dtype = DTYPES[config.dtype]
  if head_kind == "dino":
    head = DINOHead(
      backbone.embed_dim,
      out_dim=head_config.out_dim,
      hidden_dim=head_config.hidden_dim,
      bottleneck_dim=head_config.bottleneck_dim,
      n_layers=head_config.n_layers,
      norm_last_layer=head_config.norm_last_layer,
      dtype=dtype,
      rngs=rngs,
    )
  else:
    head = SimDINOHead(
      backbone.embed_dim,
      hidden_dim=head_config.hidden_dim,
      bottleneck_dim=head_config.bottleneck_dim,
      n_layers=head_config.n_layers,
      dtype=dtype,
      rngs=rngs,
    )
  ibot_head = None
  if config.ibot_head.separate:
    ibot = config.ibot_head
    ibot_head = DINOHead(
      backbone.embed_dim,
      out_dim=ibot.out_dim,
      hidden_dim=ibot.hidden_dim,
      bottleneck_dim=ibot.bottleneck_dim,
      n_layers=ibot.n_layers,
      norm_last_layer=head_config.norm_last_layer,
      dtype=dtype,
      rngs=rngs,
    )
  return MultiCropModel(backbone, head, ibot_head)


def patch_head_out_dim(config: ml_collections.ConfigDict) -> int:
  """The size of the patch tokens' head output: the separate iBOT head's prototypes, else the head's."""
  return config.ibot_head.out_dim if config.ibot_head.separate else config.head.out_dim


def prototypes(graphdef: nnx.GraphDef, params) -> jax.Array | None:
  """The head's prototype directions `[K, p]` in the parameters `params` of a model, or None (SimDINO head)."""
  return nnx.merge(graphdef, params).head.prototypes()
