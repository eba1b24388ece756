"""Multi-crop augmentation of the DINO family, run on the accelerator inside jit.

Every example of every view draws its own parameters from its own PRNG key (vmap), and all shapes are static.
The recipe is SPEC §2: random resized crop → horizontal flip → colour jitter (random order) → grayscale →
Gaussian blur → solarize (global 2 only) → normalization, with the per-view blur probabilities as intended
(global 1, global 2, locals = 1.0, 0.1, 0.5), not DINOv2's inverted ones. Pixel values are floats in [0, 1]
between the crop and the normalization; colour ops follow torchvision's tensor definitions.

Only jax and numpy are imported: this module runs where TensorFlow, grain and ml_collections are absent.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

# torchvision's rgb_to_grayscale weights.
_GRAY = (0.2989, 0.587, 0.114)
_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_CROP_TRIES = 10


def multicrop(key: jax.Array, images: jax.Array, config) -> dict[str, jax.Array]:
  """Two global and `n_local` local crops of a batch of images.

  Args:
    key: PRNG key; every view of every example gets its own subkey.
    images: uint8 [B, S, S, 3] (any square or rectangular size; crops are sampled in its pixels).
    config: the `aug` config section (attribute access).

  Returns:
    {"global": float32 [2, B, G, G, 3], "local": float32 [L, B, l, l, 3]}, normalized. When `n_local` is 0 the
    "local" key is absent (no empty group is returned).
  """
  x = images.astype(jnp.float32) / 255.0
  batch = x.shape[0]
  key_global, key_local = jax.random.split(key)
  blur_p = tuple(config.blur_p)
  out = {
      "global": _views(
          jax.random.split(key_global, (2, batch)), x, config, config.global_size,
          tuple(config.global_scale), jnp.asarray(blur_p[:2], jnp.float32),
          jnp.asarray([0.0, config.solarize_p], jnp.float32))}
  if config.n_local > 0:
    n_local = config.n_local
    out["local"] = _views(
        jax.random.split(key_local, (n_local, batch)), x, config, config.local_size,
        tuple(config.local_scale), jnp.full((n_local,), blur_p[2], jnp.float32),
        jnp.zeros((n_local,), jnp.float32))
  return out


def _views(keys, x, config, size, scale, blur_p, solarize_p):
  """Augments every image once per view: keys [V, B], per-view probabilities [V]."""
  def one(key, image, view_blur_p, view_solarize_p):
    return augment_image(key, image, config, size=size, scale=scale, blur_p=view_blur_p,
                         solarize_p=view_solarize_p)
  per_example = jax.vmap(one, in_axes=(0, 0, None, None))
  return jax.vmap(per_example, in_axes=(0, None, 0, 0))(keys, x, blur_p, solarize_p)


def augment_image(key, image, config, *, size, scale, blur_p, solarize_p):
  """One view of one float image [H, W, 3] in [0, 1] -> normalized float32 [size, size, 3]."""
  k_crop, k_jitter, k_sigma, k_coins = jax.random.split(key, 4)
  flip_u, jitter_u, gray_u, blur_u, solarize_u = jax.random.uniform(k_coins, (5,))
  height, width = image.shape[:2]
  box = sample_crop_box(k_crop, height, width, scale)
  x = resized_crop(image, box, size, config.interpolation)
  x = jnp.where(flip_u < config.flip_p, x[:, ::-1], x)
  jittered = color_jitter(k_jitter, x, config.brightness, config.contrast, config.saturation, config.hue)
  x = jnp.where(jitter_u < config.color_jitter_p, jittered, x)
  x = jnp.where(gray_u < config.grayscale_p, jnp.repeat(grayscale(x), 3, axis=-1), x)
  sigma = jax.random.uniform(k_sigma, minval=config.blur_sigma[0], maxval=config.blur_sigma[1])
  x = jnp.where(blur_u < blur_p, gaussian_blur(x, sigma, blur_radius(config.blur_sigma[1], size)), x)
  x = jnp.where(solarize_u < solarize_p, solarize(x, config.solarize_threshold), x)
  return normalize(x, config.mean, config.std)


def sample_crop_box(key, height: int, width: int, scale) -> jax.Array:
  """torchvision RandomResizedCrop parameters (top, left, h, w) as int32 [4].

  Area in pixels of the source image ~ U(scale)·H·W, aspect ratio log-uniform in (3/4, 4/3), integer sides by
  rounding; the first of 10 tries that fits wins, else the center crop fallback of torchvision.
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  area = height * width * jax.random.uniform(k_area, (_CROP_TRIES,), minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(
      k_ratio, (_CROP_TRIES,), minval=math.log(_CROP_RATIO[0]), maxval=math.log(_CROP_RATIO[1]))
  ratio = jnp.exp(log_ratio)
  w = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  # randint(0, H - h + 1): uniform over the valid top rows.
  top = jnp.floor(jax.random.uniform(k_top, (_CROP_TRIES,)) * (height - h + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(k_left, (_CROP_TRIES,)) * (width - w + 1)).astype(jnp.int32)
  first = jnp.argmax(fits)
  fallback = jnp.asarray(_center_crop_box(height, width), jnp.int32)
  sampled = jnp.stack([top[first], left[first], h[first], w[first]])
  return jnp.where(jnp.any(fits), sampled, fallback)


def _center_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
  """torchvision's fallback: the whole image, clipped to the aspect-ratio range."""
  in_ratio = width / height
  if in_ratio < _CROP_RATIO[0]:
    w, h = width, int(round(width / _CROP_RATIO[0]))
  elif in_ratio > _CROP_RATIO[1]:
    h, w = height, int(round(height * _CROP_RATIO[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image, box, size: int, method: str) -> jax.Array:
  """Resamples the crop `box` = (top, left, h, w) of `image` [H, W, C] to [size, size, C], antialiased."""
  top, left, h, w = (box[i].astype(jnp.float32) for i in range(4))
  scale = jnp.stack([size / h, size / w])
  translation = -jnp.stack([top, left]) * scale
  out = jax.image.scale_and_translate(
      image, (size, size, image.shape[-1]), (0, 1), scale, translation, method=method, antialias=True)
  return jnp.clip(out, 0.0, 1.0)


def grayscale(x):
  """Luma [.., 1] of an RGB image [.., 3] (torchvision weights)."""
  return (x[..., 0:1] * _GRAY[0] + x[..., 1:2] * _GRAY[1] + x[..., 2:3] * _GRAY[2])


def adjust_brightness(x, factor):
  return jnp.clip(x * factor, 0.0, 1.0)


def adjust_contrast(x, factor):
  mean = jnp.mean(grayscale(x))
  return jnp.clip(factor * x + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(x, factor):
  return jnp.clip(factor * x + (1.0 - factor) * grayscale(x), 0.0, 1.0)


def adjust_hue(x, shift):
  """Rotates the hue by `shift` (a fraction of the circle, in [-0.5, 0.5])."""
  h, s, v = _rgb_to_hsv(x)
  return _hsv_to_rgb(jnp.mod(h + shift, 1.0), s, v)


def _rgb_to_hsv(x):
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc = jnp.max(x, axis=-1)
  minc = jnp.min(x, axis=-1)
  delta = maxc - minc
  gray = maxc == minc
  s = delta / jnp.where(gray, 1.0, maxc)
  d = jnp.where(gray, 1.0, delta)
  rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
  h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.where(gray, 0.0, jnp.mod(h / 6.0, 1.0))
  return h, s, maxc


def _hsv_to_rgb(h, s, v):
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(jnp.int32) % 6
  p = v * (1.0 - s)
  q = v * (1.0 - s * f)
  t = v * (1.0 - s * (1.0 - f))
  r = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [v, q, p, p, t], v)
  g = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [t, v, v, q, p], p)
  b = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [p, p, t, v, v], q)
  return jnp.stack([r, g, b], axis=-1)


def color_jitter(key, x, brightness: float, contrast: float, saturation: float, hue: float):
  """torchvision ColorJitter: factors U(max(0, 1-s), 1+s) (hue U(-h, h)), ops in a random order.

  Ops with strength 0 are left out (as torchvision does), so they cost nothing.
  """
  k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
  ops = []
  for strength, k, fn in ((brightness, k_b, adjust_brightness), (contrast, k_c, adjust_contrast),
                          (saturation, k_s, adjust_saturation)):
    if strength > 0:
      factor = jax.random.uniform(k, minval=max(0.0, 1.0 - strength), maxval=1.0 + strength)
      ops.append(lambda y, fn=fn, factor=factor: fn(y, factor))
  if hue > 0:
    shift = jax.random.uniform(k_h, minval=-hue, maxval=hue)
    ops.append(lambda y: adjust_hue(y, shift))
  if not ops:
    return x
  order = jax.random.permutation(k_order, len(ops))
  for step in range(len(ops)):
    x = jax.lax.switch(order[step], ops, x)
  return x


def blur_radius(sigma_max: float, size: int) -> int:
  """Fixed kernel radius ceil(3·σ_max), at most size - 1 (reflect padding needs it)."""
  return max(1, min(int(math.ceil(3.0 * sigma_max)), size - 1))


def gaussian_blur(x, sigma, radius: int):
  """Separable Gaussian blur of [H, W, C] with a (2·radius+1)-tap kernel and reflect padding."""
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * jnp.square(taps / sigma))
  kernel = kernel / jnp.sum(kernel)
  height, width = x.shape[:2]
  padded = jnp.pad(x, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
  x = sum(kernel[k] * padded[k:k + height] for k in range(2 * radius + 1))
  padded = jnp.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
  return sum(kernel[k] * padded[:, k:k + width] for k in range(2 * radius + 1))


def solarize(x, threshold: float):
  """PIL solarize on the uint8 scale: values >= threshold/255 are inverted."""
  return jnp.where(x >= threshold / 255.0, 1.0 - x, x)


def normalize(x, mean, std):
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
