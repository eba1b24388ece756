"""Multi-crop wrapper: the backbone once per resolution group, the head once over all tokens."""

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx

from simdino_jax.models.heads import DINOHead, SimDINOHead
from simdino_jax.models.vit import VisionTransformer


class MultiCropModel(nnx.Module):
  """Backbone + head over multi-crop views (see docs/architecture.md, "Model outputs").

  `model(crops, masks=None, *, key=None, patch_index=None)` with `crops` a list of resolution groups
  `[n_views, B, H, W, 3]` (globals first), `masks [n_global, B, N]` bool (tokens of the global crops replaced by
  the mask token), `key` the drop-path PRNG key (None = eval), `patch_index [G, M]` int (the patch tokens of the
  global crops to score with the head, per group of B/G consecutive images: positions in the group's
  [n_global, B/G, N] tokens flattened, e.g. the masked ones from ibot.masked_token_buffer; default: all N when
  masks are given; scored by the separate `ibot_head` when the model has one). Returns float32: `"cls" [V,B,D]`,
  `"head" [V,B,K|p]`, `"patch_head" [G,M,K|p]` (or
  [n_global,B,N,K|p] without patch_index; only with masks or patch_index), `"prototypes" [K,p]` (DINO head only).
  """

  def __init__(
    self, backbone: VisionTransformer, head: Union[DINOHead, SimDINOHead], ibot_head: Optional[DINOHead] = None
  ):
    self.backbone = backbone
    self.head = head
    self.ibot_head = ibot_head  # DINOv2's separate iBOT head for the patch tokens; None: `head` scores them

  def __call__(
    self,
    crops: Sequence[jax.Array],
    masks: Optional[jax.Array] = None,
    *,
    key: Optional[jax.Array] = None,
    patch_index: Optional[jax.Array] = None,
  ) -> dict[str, jax.Array]:
    if not crops:
      raise ValueError("crops must hold at least one resolution group (the global crops).")
    cls_groups = []
    global_patches = None
    for index, group in enumerate(crops):
      if group.ndim != 5:
        raise ValueError(f"Each crop group must be [n_views, B, H, W, 3], got shape {group.shape}.")
      n_views, batch = group.shape[:2]
      group_masks = None
      if index == 0 and masks is not None:
        if masks.shape[:2] != (n_views, batch) or masks.ndim != 3:
          raise ValueError(f"masks must be [{n_views}, {batch}, N] for the global group, got {masks.shape}.")
        group_masks = masks.reshape(n_views * batch, masks.shape[-1])
      group_key = None if key is None else jax.random.fold_in(key, index)
      out = self.backbone(group.reshape(n_views * batch, *group.shape[2:]), group_masks, key=group_key)
      cls_groups.append(out["cls"].reshape(n_views, batch, -1))
      if index == 0 and (masks is not None or patch_index is not None):
        global_patches = out["patch"].reshape(n_views, batch, *out["patch"].shape[1:])
        if patch_index is not None:
          if patch_index.ndim != 2 or batch % patch_index.shape[0]:
            raise ValueError(
              f"patch_index must be [G, M] with G groups dividing the batch of {batch} global crops, "
              f"got {patch_index.shape}."
            )
          groups = patch_index.shape[0]
          # [n_views, B, N, D] -> [G, n_views · B/G · N, D]: each group's tokens (a data shard's, no communication).
          per_group = jnp.moveaxis(global_patches.reshape(n_views, groups, -1, global_patches.shape[-1]), 1, 0)
          global_patches = jnp.take_along_axis(
            per_group.reshape(groups, -1, per_group.shape[-1]), patch_index[..., None], axis=1
          )
    cls = jnp.concatenate(cls_groups, axis=0)
    dim = cls.shape[-1]
    tokens = cls.reshape(-1, dim)
    shared = global_patches is not None and self.ibot_head is None
    if shared:
      tokens = jnp.concatenate([tokens, global_patches.reshape(-1, dim)], axis=0)
    head_out = self.head(tokens)
    num_cls = cls.shape[0] * cls.shape[1]
    outputs = {"cls": cls, "head": head_out[:num_cls].reshape(*cls.shape[:2], -1)}
    if global_patches is not None:
      patch_out = head_out[num_cls:] if shared else self.ibot_head(global_patches.reshape(-1, dim))
      outputs["patch_head"] = patch_out.reshape(*global_patches.shape[:-1], -1)
    prototypes = self.head.prototypes()
    if prototypes is not None:
      outputs["prototypes"] = prototypes
    return outputs
