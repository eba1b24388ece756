"""iBOT block masks for the global crops (SPEC §1.2), made on the device inside jit.

Of the 2B global crops a random `probability` fraction is masked. The k-th masked image gets a target of
int(N · U(p_k, p_k+1)) patches with p = linspace(ratio_min, ratio_max, n_masked + 1), so ratios are stratified.
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
  n_masked = int(n_images * config.probability)
  k_perm, k_ratio, k_blocks = jax.random.split(key, 3)
  bins = np.linspace(config.ratio_min, config.ratio_max, n_masked + 1, dtype=np.float32)
  ratios = jax.random.uniform(k_ratio, (n_masked,), minval=bins[:-1], maxval=bins[1:])
  targets = jnp.floor(n_patches * ratios).astype(jnp.int32)
  targets = jnp.concatenate([targets, jnp.zeros((n_images - n_masked,), jnp.int32)])
  targets = targets[jax.random.permutation(k_perm, n_images)]
  max_block = int(_MAX_BLOCK_FRACTION * n_patches)
  fill = lambda k, t: _fill_mask(k, t, height, width, max_block, config)
  masks = jax.vmap(fill)(jax.random.split(k_blocks, n_images), targets)
  return masks.reshape(2, batch_size, n_patches)


def _fill_mask(key, target, height: int, width: int, max_block: int, config):
  """Adds blocks to an empty [height, width] mask until `target` patches are masked or none fits."""
  def cond(state):
    _, count, _, stalled = state
    return (count < target) & ~stalled

  def body(state):
    mask, count, key, _ = state
    key, sub = jax.random.split(key)
    limit = jnp.minimum(target - count, max_block)
    mask, added = _add_block(sub, mask, limit, config)
    return mask, count + added, key, added == 0

  init = (jnp.zeros((height, width), bool), jnp.int32(0), key, jnp.bool_(False))
  mask, _, _, _ = jax.lax.while_loop(cond, body, init)
  return mask.reshape(-1)


def _add_block(key, mask, limit, config):
  """BEiT's `_mask`: the first of 10 sampled rectangles that adds between 1 and `limit` new patches."""
  height, width = mask.shape
  k_area, k_aspect, k_top, k_left = jax.random.split(key, 4)
  area = jax.random.uniform(
      k_area, (_BLOCK_TRIES,), minval=config.min_block, maxval=limit.astype(jnp.float32))
  log_aspect = math.log(config.aspect_ratio)
  aspect = jnp.exp(jax.random.uniform(k_aspect, (_BLOCK_TRIES,), minval=log_aspect, maxval=-log_aspect))
  h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  # random.randint(0, height - h): inclusive of both ends.
  top = jnp.floor(jax.random.uniform(k_top, (_BLOCK_TRIES,)) * (height - h + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(k_left, (_BLOCK_TRIES,)) * (width - w + 1)).astype(jnp.int32)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  rect = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
          & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))
  new = jnp.sum(rect & ~mask, axis=(1, 2))
  ok = (w < width) & (h < height) & (new > 0) & (new <= limit)
  first = jnp.argmax(ok)
  found = jnp.any(ok)
  return jnp.where(found, mask | rect[first], mask), jnp.where(found, new[first], 0)
