"""iBOT block masks for the global crops (docs/objectives.md#ibot-masked-patch-loss), made on the device inside jit.

Of the 2B global crops a random `probability` fraction is masked. The k-th masked image gets a target of
int(N · U(p_k, p_k+1)) ≤ int(N · p_k+1) patches with p = linspace(ratio_min, ratio_max, n_masked + 1), so ratios
are stratified and the batch holds at most masked_patch_bound = Σ_k int(N · p_k+1) masked tokens (DINOv2's
`upperbound`, a function of B alone).
Each target is filled BEiT-style: rectangles of area U(min_block, remaining) and aspect ratio log-uniform in
[aspect_ratio, 1/aspect_ratio], each adding at most min(remaining, 0.5·N) new patches, up to 10 tries per
block; filling stops when the target is reached or a block finds no place.

Only jax and numpy are imported.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

_BLOCK_TRIES = 10
_MAX_BLOCK_FRACTION = 0.5  # DINOv2's max_num_patches = 0.5 · N.


def block_masks(key: jax.Array, batch_size: int, grid: tuple[int, int], config) -> jax.Array:
  """Masks for the two global crops of a batch.

  Args:
    key: PRNG key.
    batch_size: B (static).
    grid: (h, w) patches of a global crop (static); N = h·w.
    config: the `masking` config section (attribute access).

  Returns:
    bool [2, B, N], view-major like the crops; True = masked. All False when `config.enabled` is False.
  """
  height, width = grid
  n_patches = height * width
  n_images = 2 * batch_size
  if not config.enabled:
    return jnp.zeros((2, batch_size, n_patches), bool)
  bins, caps = _strata(n_images, n_patches, config)
  n_masked = len(caps)
  max_block = int(_MAX_BLOCK_FRACTION * n_patches)
  max_target = max_masked_patches(n_patches, config)  # every block adds >= 1 patch: at most this many blocks
  # One uniform draw for everything (threefry call sites dominate the compile time): image order, ratios and
  # 4 x 10 numbers per block try.
  u = jax.random.uniform(key, (n_images * (1 + 4 * _BLOCK_TRIES * max_target) + n_masked,))
  order_u, ratio_u, block_u = jnp.split(u, [n_images, n_images + n_masked])
  ratios = bins[:-1] + (bins[1:] - bins[:-1]) * ratio_u
  targets = jnp.minimum(jnp.floor(n_patches * ratios).astype(jnp.int32), caps)
  targets = jnp.concatenate([targets, jnp.zeros((n_images - n_masked,), jnp.int32)])
  targets = targets[jnp.argsort(order_u)]  # a random half (fraction) of the images gets the masks
  block_u = block_u.reshape(n_images, max_target, 4, _BLOCK_TRIES)
  fill = lambda u_image, t: _fill_mask(u_image, t, height, width, max_block, config)
  masks = jax.vmap(fill)(block_u, targets)
  return masks.reshape(2, batch_size, n_patches)


def max_masked_patches(n_patches: int, config) -> int:
  """The most tokens block_masks masks in one image: max(1, int(N · ratio_max))."""
  return max(1, int(n_patches * config.ratio_max))


def masked_patch_bound(n_images: int, n_patches: int, config) -> int:
  """The most tokens block_masks masks in a batch of `n_images` = 2B global crops: Σ_k int(N · p_k+1) over its
  int(n_images · probability) masked images (DINOv2's `upperbound`; 0 when masking is off). Static."""
  if not config.enabled:
    return 0
  return int(_strata(n_images, n_patches, config)[1].sum())


def _strata(n_images: int, n_patches: int, config) -> tuple[np.ndarray, np.ndarray]:
  """(bins p [n_masked + 1] float32, caps [n_masked] int32): stratum k draws its ratio in [p_k, p_k+1) and masks at
  most cap_k = min(int(N · p_k+1), max_masked_patches) tokens (in block_masks' float32 arithmetic)."""
  n_masked = int(n_images * config.probability)
  bins = np.linspace(config.ratio_min, config.ratio_max, n_masked + 1, dtype=np.float32)
  caps = np.floor(np.float32(n_patches) * bins[1:]).astype(np.int32)
  return bins, np.minimum(caps, max_masked_patches(n_patches, config))


def _fill_mask(u, target, height: int, width: int, max_block: int, config):
  """Adds blocks to an empty [height, width] mask until `target` patches are masked or none fits.

  u: [max blocks, 4, 10] uniforms; block i uses u[i].
  """

  def cond(state):
    _, count, _, stalled = state
    return (count < target) & ~stalled

  def body(state):
    mask, count, step, _ = state
    limit = jnp.minimum(target - count, max_block)
    mask, added = _add_block(u[step], mask, limit, config)
    return mask, count + added, step + 1, added == 0

  init = (jnp.zeros((height, width), bool), jnp.int32(0), jnp.int32(0), jnp.bool_(False))
  mask, _, _, _ = jax.lax.while_loop(cond, body, init)
  return mask.reshape(-1)


def _add_block(u, mask, limit, config):
  """BEiT's `_mask` from uniforms u [4, 10]: the first of 10 sampled rectangles that adds 1..`limit` patches."""
  height, width = mask.shape
  area = config.min_block + (limit.astype(jnp.float32) - config.min_block) * u[0]
  log_aspect = math.log(config.aspect_ratio)
  aspect = jnp.exp(log_aspect - 2.0 * log_aspect * u[1])
  h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  # random.randint(0, height - h): inclusive of both ends.
  top = jnp.floor(u[2] * (height - h + 1)).astype(jnp.int32)
  left = jnp.floor(u[3] * (width - w + 1)).astype(jnp.int32)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  rect = (
    (rows >= top[:, None, None])
    & (rows < (top + h)[:, None, None])
    & (cols >= left[:, None, None])
    & (cols < (left + w)[:, None, None])
  )
  new = jnp.sum(rect & ~mask, axis=(1, 2))
  ok = (w < width) & (h < height) & (new > 0) & (new <= limit)
  first = jnp.argmax(ok)
  found = jnp.any(ok)
  return jnp.where(found, mask | rect[first], mask), jnp.where(found, new[first], 0)
