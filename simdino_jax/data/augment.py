"""Multi-crop augmentation of the DINO family, run on the accelerator inside jit.

Every example of every view draws its own parameters (its own vector of uniforms, vmap), and shapes are static.
The recipe (docs/objectives.md#training-recipe): random resized crop → horizontal flip → colour jitter (random
order) → grayscale → Gaussian blur → solarize (global 2 only) → normalization, with the per-view blur probabilities
as intended (global 1, global 2, locals = 1.0, 0.1, 0.5), not DINOv2's inverted ones. Pixel values are floats in [0, 1]
between the crop and the normalization; colour ops follow torchvision's tensor definitions.

Two entry points: `multicrop` cuts the crops here from fixed-size images (digits, CIFAR-10, npz); `photometric`
takes crops cut on the host from the original images (`host_crops`, datasets of varied image sizes) and applies
everything after the crop.

Only jax and numpy are imported: this module runs where TensorFlow, grain and ml_collections are absent.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from simdino_jax.data.host_crops import CROP_RATIO
from simdino_jax.data.host_crops import CROP_TRIES
from simdino_jax.data.host_crops import center_crop_box
from simdino_jax.interpolation import keys_cubic

# torchvision's rgb_to_grayscale weights.
_GRAY = (0.2989, 0.587, 0.114)


def multicrop(key: jax.Array, images: jax.Array, config) -> dict[str, jax.Array]:
  """Two global and `n_local` local crops of a batch of images.

  Args:
    key: PRNG key. All random numbers come from one draw of shape [2 + L, B, 54] (`uniforms`): each view of each
      example has its own independent vector (one call site keeps the compile fast; threefry dominates it otherwise).
    images: uint8 [B, H, W, 3]; crops are sampled in pixels of this image.
    config: the `aug` config section (attribute access).

  Returns:
    {"global": float32 [2, B, G, G, 3], "local": float32 [L, B, l, l, 3]}, normalized. When `n_local` is 0 the
    "local" key is absent (no empty group is returned).
  """
  return from_uniforms(uniforms(key, images, config), images, config)


def photometric(key: jax.Array, crops: dict, config) -> dict[str, jax.Array]:
  """Everything after the crop, for crops cut on the host (`host_crops`).

  Args:
    key: PRNG key; one draw of shape [2 + L, B, 14] (`uniforms`; each view of each example its own vector).
    crops: {"global": uint8 [B, 2, G, G, 3], "local": uint8 [B, L, l, l, 3]} (batch-major, as the host batches
      them; "local" may be absent).
    config: the `aug` config section.

  Returns:
    multicrop's output: {"global": float32 [2, B, G, G, 3], "local": float32 [L, B, l, l, 3]}, normalized.
  """
  return from_uniforms(uniforms(key, crops, config), crops, config)


def uniforms(key: jax.Array, images: jax.Array | dict, config) -> jax.Array:
  """The batch's one draw, float32 [2 + L, B, n]: n = 54 for images (`multicrop`: crop tries, then the photometric
  numbers), 14 for host crops (`photometric`). Each view of each example reads only its own vector, so a data shard
  augments its own images from its slice [:, rows] (the train step: `from_uniforms` per shard)."""
  if isinstance(images, dict):
    n_local = images["local"].shape[1] if "local" in images else 0
    shape = (2 + n_local, images["global"].shape[0], _N_PHOTOMETRIC)
  else:
    shape = (2 + config.n_local, images.shape[0], _N_UNIFORM)
  return jax.random.uniform(key, shape)


def from_uniforms(u: jax.Array, images: jax.Array | dict, config) -> dict[str, jax.Array]:
  """`multicrop` (images uint8 [B, H, W, 3]) or `photometric` (a dict of host crops) from their `uniforms` u."""
  if isinstance(images, dict):

    def one(u_example, crop, blur_p, solarize_p):
      return photometric_view(u_example, crop.astype(jnp.float32) / 255.0, config, blur_p=blur_p, solarize_p=solarize_p)

    out = {"global": _views(one, u[:2], images["global"], 1, *_view_probabilities(config, "global", 2))}
    if "local" in images:
      out["local"] = _views(
        one, u[2:], images["local"], 1, *_view_probabilities(config, "local", images["local"].shape[1])
      )
    return out

  x = images.astype(jnp.float32) / 255.0

  def crop_and_augment(size, scale):
    def one(u_example, image, blur_p, solarize_p):
      return augment_image(u_example, image, config, size=size, scale=scale, blur_p=blur_p, solarize_p=solarize_p)

    return one

  out = {
    "global": _views(
      crop_and_augment(config.global_size, tuple(config.global_scale)),
      u[:2],
      x,
      None,
      *_view_probabilities(config, "global", 2),
    )
  }
  if config.n_local > 0:
    out["local"] = _views(
      crop_and_augment(config.local_size, tuple(config.local_scale)),
      u[2:],
      x,
      None,
      *_view_probabilities(config, "local", config.n_local),
    )
  return out


def _view_probabilities(config, group: str, n_views: int) -> tuple[jax.Array, jax.Array]:
  """Per-view blur and solarize probabilities [V] of a crop group (solarize: global 2 only)."""
  blur_p = tuple(config.blur_p)
  if group == "global":
    return jnp.asarray(blur_p[:2], jnp.float32), jnp.asarray([0.0, config.solarize_p], jnp.float32)
  return jnp.full((n_views,), blur_p[2], jnp.float32), jnp.zeros((n_views,), jnp.float32)


def _views(one, u, x, view_axis, blur_p, solarize_p):
  """`one(u [n], image, blur_p, solarize_p)` over views and examples: u [V, B, n], per-view probabilities [V];
  x is [B, ...] shared by every view (view_axis None) or [B, V, ...] (view_axis 1)."""
  per_example = jax.vmap(one, in_axes=(0, 0, None, None))
  return jax.vmap(per_example, in_axes=(0, view_axis, 0, 0))(u, x, blur_p, solarize_p)


# Uniform draws per example and view: crop tries (area, ratio, top, left), then the photometric ones: the coins
# (flip, jitter, grayscale, blur, solarize), blur sigma, four jitter factors and four jitter sort keys.
_N_PHOTOMETRIC = 5 + 1 + 4 + 4
_N_UNIFORM = 4 * CROP_TRIES + _N_PHOTOMETRIC


def augment_image(u, image, config, *, size, scale, blur_p, solarize_p):
  """One view of one float image [H, W, 3] in [0, 1] from its uniforms u [54] -> normalized [size, size, 3]."""
  crop_u, u = u[: 4 * CROP_TRIES].reshape(4, CROP_TRIES), u[4 * CROP_TRIES :]
  height, width = image.shape[:2]
  box = crop_box(crop_u, height, width, scale)
  x = resized_crop(image, box, size, config.interpolation)
  return photometric_view(u, x, config, blur_p=blur_p, solarize_p=solarize_p)


def photometric_view(u, x, config, *, blur_p, solarize_p):
  """Flip, colour jitter, grayscale, blur, solarize and normalization of one crop [s, s, 3] in [0, 1] from its
  uniforms u [14]."""
  flip_u, jitter_u, gray_u, blur_u, solarize_u, sigma_u = u[:6]
  x = jnp.where(flip_u < config.flip_p, x[:, ::-1], x)
  jittered = color_jitter(u[6:14], x, config.brightness, config.contrast, config.saturation, config.hue)
  x = jnp.where(jitter_u < config.color_jitter_p, jittered, x)
  x = jnp.where(gray_u < config.grayscale_p, jnp.repeat(grayscale(x), 3, axis=-1), x)
  sigma_min, sigma_max = config.blur_sigma
  sigma = sigma_min + (sigma_max - sigma_min) * sigma_u
  x = jnp.where(blur_u < blur_p, gaussian_blur(x, sigma, blur_radius(sigma_max, x.shape[0])), x)
  x = jnp.where(solarize_u < solarize_p, solarize(x, config.solarize_threshold), x)
  return normalize(x, config.mean, config.std)


def crop_box(u, height: int, width: int, scale) -> jax.Array:
  """torchvision RandomResizedCrop parameters (top, left, h, w) as int32 [4], from uniforms u [4, 10].

  Area in pixels of the source image ~ U(scale)·H·W, aspect ratio log-uniform in (3/4, 4/3), integer sides by
  rounding; the first of 10 tries that fits wins, else torchvision's center-crop fallback.
  """
  area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
  log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
  ratio = jnp.exp(log_lo + (log_hi - log_lo) * u[1])
  w = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  # randint(0, H - h + 1): uniform over the valid top rows (and left columns).
  top = jnp.floor(u[2] * (height - h + 1)).astype(jnp.int32)
  left = jnp.floor(u[3] * (width - w + 1)).astype(jnp.int32)
  first = jnp.argmax(fits)
  fallback = jnp.asarray(center_crop_box(height, width), jnp.int32)
  sampled = jnp.stack([top[first], left[first], h[first], w[first]])
  return jnp.where(jnp.any(fits), sampled, fallback)


def _linear(t):
  return jnp.maximum(0.0, 1.0 - jnp.abs(t))


_KERNELS = {"bicubic": lambda t: keys_cubic(t, -0.5, xp=jnp), "bilinear": _linear}


def resize_weights(start, length, in_size: int, out_size: int, method: str) -> jax.Array:
  """[out_size, in_size] resampling matrix of the pixels [start, start + length) to out_size pixels.

  PIL's convention: pixel centers at +0.5, the kernel widened by the scale factor when downsampling
  (antialiasing), weights restricted to the cropped pixels and normalized per output pixel.
  """
  length = length.astype(jnp.float32)
  factor = length / out_size
  support = jnp.maximum(factor, 1.0)
  centers = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * factor
  pixels = jnp.arange(in_size, dtype=jnp.float32) + 0.5
  weights = _KERNELS[method]((pixels[None, :] - centers[:, None]) / support)
  inside = (pixels >= start) & (pixels < start + length)
  weights = jnp.where(inside[None, :], weights, 0.0)
  return weights / jnp.sum(weights, axis=1, keepdims=True)


def resized_crop(image, box, size: int, method: str) -> jax.Array:
  """The crop `box` = (top, left, h, w) of `image` [H, W, C] resampled to [size, size, C] (separable)."""
  top, left, h, w = box[0], box[1], box[2], box[3]
  rows = resize_weights(top, h, image.shape[0], size, method)
  cols = resize_weights(left, w, image.shape[1], size, method)
  out = jnp.einsum("oh,hwc,pw->opc", rows, image, cols, precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(out, 0.0, 1.0)


def grayscale(x):
  """Luma [.., 1] of an RGB image [.., 3] (torchvision weights)."""
  return x[..., 0:1] * _GRAY[0] + x[..., 1:2] * _GRAY[1] + x[..., 2:3] * _GRAY[2]


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


def color_jitter(u, x, brightness: float, contrast: float, saturation: float, hue: float):
  """torchvision ColorJitter from uniforms u [8] (4 factors, 4 sort keys for the random order).

  Factors are U(max(0, 1-s), 1+s), the hue shift U(-h, h); ops with strength 0 are left out, as torchvision does.
  """
  ops = []
  for i, (strength, fn) in enumerate(
    ((brightness, adjust_brightness), (contrast, adjust_contrast), (saturation, adjust_saturation))
  ):
    if strength > 0:
      lo = max(0.0, 1.0 - strength)
      factor = lo + (1.0 + strength - lo) * u[i]
      ops.append(lambda y, fn=fn, factor=factor: fn(y, factor))
  if hue > 0:
    shift = hue * (2.0 * u[3] - 1.0)
    ops.append(lambda y: adjust_hue(y, shift))
  if not ops:
    return x
  order = jnp.argsort(u[4 : 4 + len(ops)])  # a uniformly random permutation
  return jax.lax.fori_loop(0, len(ops), lambda step, y: jax.lax.switch(order[step], ops, y), x)


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
  x = sum(kernel[k] * padded[k : k + height] for k in range(2 * radius + 1))
  padded = jnp.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
  return sum(kernel[k] * padded[:, k : k + width] for k in range(2 * radius + 1))


def solarize(x, threshold: float):
  """PIL solarize on the uint8 scale: values >= threshold/255 are inverted."""
  return jnp.where(x >= threshold / 255.0, 1.0 - x, x)


def normalize(x, mean, std):
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
