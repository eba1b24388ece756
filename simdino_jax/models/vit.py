"""Vision Transformer backbone (DINO / DINOv2 style) as a Flax NNX module.

Parameters are float32; matmuls run in the compute `dtype` (bfloat16 by default) while the residual stream and
every LayerNorm stay float32, as PyTorch autocast does in the reference code. Parameter paths (relative to the
backbone): `patch_embed/{kernel,bias}` (a Linear on flattened `p x p x 3` patches, kernel `[p*p*3, D]`),
`cls_token [1,1,D]`, `pos_embed [1,1+N0,D]` (N0 patches at `image_size`), `register_tokens [1,R,D]` (only when
R > 0), `mask_token [1,1,D]`, `blocks/<i>/{norm1,attn/qkv,attn/proj,ls1/gamma,norm2,mlp/fc1,mlp/fc2,ls2/gamma}`
(`mlp/{w12,w3}` with the SwiGLU feed-forward) and `norm/{scale,bias}`. Token order inside the blocks:
`[CLS, registers, patches]`.
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simdino_jax.interpolation import keys_cubic

TRUNC_NORMAL = jax.nn.initializers.truncated_normal(stddev=0.02)
# PyTorch's default Linear/Conv init (kaiming-uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).
TORCH_DEFAULT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
LAYERNORM_EPS = 1e-6
ATTENTION_IMPLS = (None, "xla", "cudnn")
DROP_PATH_SCHEDULES = {
  "linear": lambda rate, depth: [rate * i / (depth - 1) if depth > 1 else rate for i in range(depth)],
  "uniform": lambda rate, depth: [rate] * depth,
}
CUDNN_TOKEN_MULTIPLE = 64


def dot_product_attention(
  query: jax.Array, key: jax.Array, value: jax.Array, *, implementation: Optional[str] = None, token_multiple: int = 1
) -> jax.Array:
  """`jax.nn.dot_product_attention` on `[B, T, H, d]` inputs, optionally padding T up to `token_multiple`.

  Padded positions are excluded through `query_seq_lengths` / `key_value_seq_lengths` (cuDNN's fused kernel needs
  T to be a multiple of 64, e.g. 197 -> 256) and sliced off the output.
  """
  num_tokens = query.shape[1]
  padded_tokens = -(-num_tokens // token_multiple) * token_multiple
  if padded_tokens == num_tokens:
    return jax.nn.dot_product_attention(query, key, value, implementation=implementation)
  padding = ((0, 0), (0, padded_tokens - num_tokens), (0, 0), (0, 0))
  lengths = jnp.full((query.shape[0],), num_tokens, jnp.int32)
  out = jax.nn.dot_product_attention(
    jnp.pad(query, padding),
    jnp.pad(key, padding),
    jnp.pad(value, padding),
    query_seq_lengths=lengths,
    key_value_seq_lengths=lengths,
    implementation=implementation,
  )
  return out[:, :num_tokens]


def drop_path(x: jax.Array, rate, key: Optional[jax.Array]) -> jax.Array:
  """Stochastic depth: zeroes whole samples of a residual branch with probability `rate`, rescales the rest.

  `rate` may be a traced scalar (the scanned blocks); a rate of 0 then keeps every sample, unscaled.
  """
  if key is None or (not isinstance(rate, jax.Array) and rate == 0):
    return x
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(key, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * (keep.astype(x.dtype) / jnp.asarray(keep_prob, x.dtype))


def bicubic_matrix(in_size: int, out_size: int, scale: float, antialias: bool) -> np.ndarray:
  """[out_size, in_size] weights of PyTorch's 1-D bicubic resampling (align_corners=False), in float64.

  `scale` is the source step per output pixel (in/out, or 1/scale_factor). Without antialias: source
  s_i = scale·(i + ½) − ½, taps ⌊s_i⌋−1 … ⌊s_i⌋+2 clamped to the edge, W_a with a = −0.75. With antialias
  (PyTorch's separable filter, a = −0.5 as in PIL): centre c_i = scale·(i + ½), support 2·max(scale, 1), taps
  j in [c_i − support + ½, c_i + support + ½) ∩ [0, in), weights W_a((j − c_i + ½)/max(scale, 1)) normalized to sum 1.
  """
  weights = np.zeros((out_size, in_size))
  for i in range(out_size):
    if antialias:
      stretch = max(scale, 1.0)
      centre, support = scale * (i + 0.5), 2.0 * stretch
      low, high = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
      taps = np.arange(low, high)
      w = keys_cubic((taps - centre + 0.5) / stretch, -0.5)
      weights[i, taps] = w / w.sum()
    else:
      source = scale * (i + 0.5) - 0.5
      floor = math.floor(source)
      w = keys_cubic(source - np.arange(floor - 1, floor + 3), -0.75)
      np.add.at(weights[i], np.clip(np.arange(floor - 1, floor + 3), 0, in_size - 1), w)
  return weights


def interpolate_pos_embed(
  pos_embed: jax.Array, grid: tuple[int, int], *, offset: float = 0.1, antialias: bool = False
) -> jax.Array:
  """Resizes patch position embeddings `[1, M*M, D]` (square stored grid) to `[1, h*w, D]` as the reference ViTs
  do at run time: PyTorch's `interpolate(mode="bicubic", align_corners=False)`, with the scale factor
  `(h + offset)/M` when offset > 0 (DINO, DINOv2: 0.1) or the output size when offset = 0 (the SimDINO
  repository's DINOv2 family, with antialias). Identity when the grid matches the stored one.
  """
  stored_side = int(round(pos_embed.shape[1] ** 0.5))
  if stored_side * stored_side != pos_embed.shape[1]:
    raise ValueError(f"Stored position embeddings ({pos_embed.shape[1]} patches) are not a square grid.")
  if tuple(grid) == (stored_side, stored_side):
    return pos_embed
  rows, cols = (
    bicubic_matrix(stored_side, n, stored_side / (n + offset) if offset else stored_side / n, antialias).astype(
      np.float32
    )
    for n in grid
  )
  table = pos_embed.reshape(stored_side, stored_side, pos_embed.shape[-1])
  resized = jnp.einsum("hi,ijd,wj->hwd", rows, table, cols, precision=jax.lax.Precision.HIGHEST)
  return resized.reshape(1, grid[0] * grid[1], -1)


def drop_path_rates(rate: float, depth: int, schedule: str) -> list[float]:
  """Per-block drop-path rates: "linear" from 0 to `rate` over depth (DINO) or "uniform" (DINOv2)."""
  return DROP_PATH_SCHEDULES[schedule](rate, depth)


def _linear(in_features: int, out_features: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
    in_features,
    out_features,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=TRUNC_NORMAL,
    bias_init=jax.nn.initializers.zeros,
    rngs=rngs,
  )


def _layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=LAYERNORM_EPS, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)


class LayerScale(nnx.Module):
  """Per-channel scaling `x * gamma` of a residual branch (CaiT / DINOv2)."""

  def __init__(self, dim: int, init_value: float):
    self.gamma = nnx.Param(jnp.full((dim,), init_value, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x * self.gamma[...].astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection (with bias)."""

  def __init__(
    self, dim: int, num_heads: int, *, dtype, implementation: Optional[str], token_multiple: int, rngs: nnx.Rngs
  ):
    if dim % num_heads:
      raise ValueError(f"Width {dim} is not divisible by {num_heads} heads.")
    self.num_heads = num_heads
    self.implementation = implementation
    self.token_multiple = token_multiple
    self.qkv = _linear(dim, 3 * dim, dtype, rngs)
    self.proj = _linear(dim, dim, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, tokens, dim = x.shape
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
    out = dot_product_attention(
      qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], implementation=self.implementation, token_multiple=self.token_multiple
    )
    return self.proj(out.reshape(batch, tokens, dim))


class Mlp(nnx.Module):
  """Two-layer MLP with exact GELU."""

  def __init__(self, dim: int, hidden_dim: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = _linear(dim, hidden_dim, dtype, rngs)
    self.fc2 = _linear(hidden_dim, dim, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def swiglu_hidden_dim(hidden_dim: int) -> int:
  """DINOv2's `SwiGLUFFNFused` width: (int(hidden · 2/3) + 7) // 8 · 8 (4096 for ViT-g's 4 · 1536)."""
  return (int(hidden_dim * 2 / 3) + 7) // 8 * 8


class SwiGLU(nnx.Module):
  """DINOv2's fused SwiGLU feed-forward: `w3(silu(x1) · x2)` with `[x1, x2] = w12(x)` (layers/swiglu_ffn.py)."""

  def __init__(self, dim: int, hidden_dim: int, *, dtype, rngs: nnx.Rngs):
    hidden = swiglu_hidden_dim(hidden_dim)
    self.w12 = _linear(dim, 2 * hidden, dtype, rngs)
    self.w3 = _linear(hidden, dim, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(self.w12(x), 2, axis=-1)
    return self.w3(jax.nn.silu(x1) * x2)


# GELU MLP (DINO, DINOv2 ViT-S/B/L) or DINOv2's fused SwiGLU (ViT-g/14, vitl14.yaml).
FFNS = {"mlp": Mlp, "swiglu": SwiGLU}


class Block(nnx.Module):
  """Pre-norm transformer block with optional LayerScale and per-sample drop path on both branches; the
  feed-forward `ffn` is a GELU MLP or DINOv2's SwiGLU."""

  def __init__(
    self,
    dim: int,
    num_heads: int,
    *,
    mlp_ratio: float,
    drop_path_rate: float,
    layerscale: float,
    dtype,
    attention_impl: Optional[str],
    token_multiple: int,
    rngs: nnx.Rngs,
    ffn: str = "mlp",
  ):
    self.drop_path_rate = drop_path_rate
    self.norm1 = _layer_norm(dim, rngs)
    self.attn = Attention(
      dim, num_heads, dtype=dtype, implementation=attention_impl, token_multiple=token_multiple, rngs=rngs
    )
    self.ls1 = LayerScale(dim, layerscale) if layerscale > 0.0 else None
    self.norm2 = _layer_norm(dim, rngs)
    self.mlp = FFNS[ffn](dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.ls2 = LayerScale(dim, layerscale) if layerscale > 0.0 else None

  def __call__(self, x: jax.Array, key: Optional[jax.Array] = None, rate=None) -> jax.Array:
    """`rate` overrides the block's drop-path rate (a traced scalar when the blocks are scanned)."""
    rate = self.drop_path_rate if rate is None else rate
    attn_key = mlp_key = None
    if key is not None:
      attn_key, mlp_key = jax.random.split(key)
    branch = self.attn(self.norm1(x))
    if self.ls1 is not None:
      branch = self.ls1(branch)
    x = x + drop_path(branch, rate, attn_key)
    branch = self.mlp(self.norm2(x))
    if self.ls2 is not None:
      branch = self.ls2(branch)
    return x + drop_path(branch, rate, mlp_key)


class VisionTransformer(nnx.Module):
  """ViT backbone: patch embedding, CLS (+ optional register) tokens, learned position embeddings, blocks.

  Call: `backbone(images [B,H,W,3], masks=None, *, key=None, n_last=1)` -> dict of float32 arrays
  `"cls" [B,D]`, `"patch" [B,N,D]` (registers excluded), `"last_cls" [n_last,B,D]` (CLS of the last `n_last`
  blocks, each through the final norm). `masks [B,N]` bool replaces those patch embeddings by the mask token
  before the CLS token and position embeddings are added; `key` drives drop path (None = deterministic).
  """

  def __init__(
    self,
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    patch_size: int,
    image_size: int = 224,
    mlp_ratio: float = 4.0,
    num_registers: int = 0,
    drop_path_rate: float = 0.0,
    drop_path_schedule: str = "linear",
    layerscale: float = 0.0,
    dtype=jnp.bfloat16,
    attention_impl: Optional[str] = None,
    attention_token_multiple: Optional[int] = None,
    remat: bool = False,
    remat_policy: str = "nothing_saveable",
    scan_blocks: bool = False,
    ffn: str = "mlp",
    interpolate_offset: float = 0.1,
    interpolate_antialias: bool = False,
    rngs: nnx.Rngs,
  ):
    """Builds the backbone.

    Args:
      attention_impl: None / "xla" (XLA attention) or "cudnn" (fused kernel, tokens padded to a multiple of 64).
      attention_token_multiple: pad the token axis of q/k/v to this multiple inside attention; defaults to 64
        for "cudnn" and 1 (no padding) otherwise.
      remat: rematerialize each block in the backward pass.
      remat_policy: what a rematerialized block saves, by `jax.checkpoint_policies` name.
      scan_blocks: run the blocks as one `lax.scan` over their stacked parameters, so XLA compiles one block
        instead of `depth` (much faster compiles of deep models; same parameters, outputs and drop-path draws).
      ffn: the blocks' feed-forward, "mlp" (GELU) or "swiglu" (DINOv2's fused SwiGLU).
      interpolate_offset, interpolate_antialias: how position embeddings are resized to another grid
        (`interpolate_pos_embed`; DINO and DINOv2: 0.1, False; the SimDINO repository's DINOv2 family: 0, True).
    """
    if patch_size <= 0 or image_size % patch_size:
      raise ValueError(f"image_size {image_size} must be a positive multiple of patch_size {patch_size}.")
    if attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"Unknown attention_impl {attention_impl!r}; valid: {ATTENTION_IMPLS}.")
    if attention_impl == "cudnn" and jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
      raise ValueError(f"attention_impl='cudnn' needs a bfloat16/float16 compute dtype, got {jnp.dtype(dtype)}.")
    if not 0.0 <= drop_path_rate < 1.0:
      raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}.")
    if num_registers < 0 or layerscale < 0.0:
      raise ValueError("num_registers and layerscale must be non-negative.")
    if attention_token_multiple is None:
      attention_token_multiple = CUDNN_TOKEN_MULTIPLE if attention_impl == "cudnn" else 1
    self.embed_dim = embed_dim
    self.patch_size = patch_size
    self.num_registers = num_registers
    self.remat = remat
    self.remat_policy = getattr(jax.checkpoint_policies, remat_policy)
    self.scan_blocks = scan_blocks
    self.interpolate_offset = interpolate_offset
    self.interpolate_antialias = interpolate_antialias
    grid = image_size // patch_size
    self.patch_embed = nnx.Linear(
      patch_size * patch_size * 3,
      embed_dim,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=TORCH_DEFAULT,
      bias_init=jax.nn.initializers.zeros,
      rngs=rngs,
    )
    self.cls_token = nnx.Param(TRUNC_NORMAL(rngs.params(), (1, 1, embed_dim), jnp.float32))
    self.pos_embed = nnx.Param(TRUNC_NORMAL(rngs.params(), (1, 1 + grid * grid, embed_dim), jnp.float32))
    self.register_tokens = (
      nnx.Param(TRUNC_NORMAL(rngs.params(), (1, num_registers, embed_dim), jnp.float32)) if num_registers else None
    )
    self.mask_token = nnx.Param(jnp.zeros((1, 1, embed_dim), jnp.float32))
    rates = drop_path_rates(drop_path_rate, depth, drop_path_schedule)
    self.blocks = nnx.List(
      [
        Block(
          embed_dim,
          num_heads,
          mlp_ratio=mlp_ratio,
          drop_path_rate=rate,
          layerscale=layerscale,
          dtype=dtype,
          attention_impl=attention_impl,
          token_multiple=attention_token_multiple,
          rngs=rngs,
          ffn=ffn,
        )
        for rate in rates
      ]
    )
    self.norm = _layer_norm(embed_dim, rngs)

  def grid_size(self, height: int, width: int) -> tuple[int, int]:
    """The patch grid of a `height x width` image; raises if the size is not a multiple of the patch size."""
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f"Image size {height}x{width} is not divisible by patch size {self.patch_size}.")
    return height // self.patch_size, width // self.patch_size

  def _embed(self, images: jax.Array, masks: Optional[jax.Array]) -> jax.Array:
    batch, height, width, channels = images.shape
    grid = self.grid_size(height, width)
    patch = self.patch_size
    patches = images.reshape(batch, grid[0], patch, grid[1], patch, channels).transpose(0, 1, 3, 2, 4, 5)
    x = self.patch_embed(patches.reshape(batch, grid[0] * grid[1], patch * patch * channels))
    x = x.astype(jnp.float32)
    if masks is not None:
      if masks.shape != x.shape[:2]:
        raise ValueError(f"masks must have shape {x.shape[:2]} (batch, patches), got {masks.shape}.")
      x = jnp.where(masks[..., None], self.mask_token[...], x)
    pos_embed = self.pos_embed[...]
    x = x + interpolate_pos_embed(
      pos_embed[:, 1:], grid, offset=self.interpolate_offset, antialias=self.interpolate_antialias
    )
    cls = jnp.broadcast_to(self.cls_token[...] + pos_embed[:, :1], (batch, 1, self.embed_dim))
    tokens = [cls]
    if self.register_tokens is not None:
      tokens.append(jnp.broadcast_to(self.register_tokens[...], (batch, self.num_registers, self.embed_dim)))
    return jnp.concatenate(tokens + [x], axis=1)

  def __call__(
    self, images: jax.Array, masks: Optional[jax.Array] = None, *, key: Optional[jax.Array] = None, n_last: int = 1
  ) -> dict[str, jax.Array]:
    if not 1 <= n_last <= len(self.blocks):
      raise ValueError(f"n_last must be in [1, {len(self.blocks)}], got {n_last}.")
    x = self._embed(images, masks)
    if self.scan_blocks:
      x, last_cls = self._scanned_blocks(x, key, n_last)
    else:
      x, last_cls = self._unrolled_blocks(x, key, n_last)
    x = self.norm(x)
    return {"cls": x[:, 0], "patch": x[:, 1 + self.num_registers :], "last_cls": self.norm(last_cls)}

  def _unrolled_blocks(self, x: jax.Array, key: Optional[jax.Array], n_last: int) -> tuple[jax.Array, jax.Array]:
    """(output tokens, CLS of the last n_last blocks [n_last, B, D]), one traced copy of each block."""
    apply_block = nnx.remat(_apply_block, policy=self.remat_policy) if self.remat else _apply_block
    last_outputs: list[jax.Array] = []
    for index, block in enumerate(self.blocks):
      block_key = None if key is None or block.drop_path_rate == 0.0 else jax.random.fold_in(key, index)
      x = apply_block(block, x, block_key)
      if index >= len(self.blocks) - n_last:
        last_outputs.append(x[:, 0])
    return x, jnp.stack(last_outputs)

  def _scanned_blocks(self, x: jax.Array, key: Optional[jax.Array], n_last: int) -> tuple[jax.Array, jax.Array]:
    """`_unrolled_blocks` as one `lax.scan`: block i's parameters, drop-path rate and key fold_in(key, i) are the
    i-th slice of stacked inputs (the stacking is a copy per call, and its gradient flows back to each block)."""
    graphdef, _ = nnx.split(self.blocks[0])
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(block) for block in self.blocks])
    rates = [block.drop_path_rate for block in self.blocks]
    keys = None  # no drop path at all: no draws in the loop either
    if key is not None and any(rates):
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(self.blocks)))

    def body(tokens, block_inputs):
      block_params, rate, block_key = block_inputs
      tokens = nnx.merge(graphdef, block_params)(tokens, block_key, rate)
      return tokens, tokens[:, 0]

    x, cls_per_block = jax.lax.scan(
      jax.checkpoint(body, policy=self.remat_policy) if self.remat else body,
      x,
      (params, jnp.asarray(rates, jnp.float32), keys),
    )
    return x, cls_per_block[len(self.blocks) - n_last :]


def _apply_block(block: Block, x: jax.Array, key: Optional[jax.Array]) -> jax.Array:
  return block(x, key)
