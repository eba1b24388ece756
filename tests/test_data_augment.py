"""Multi-crop augmentation: operations against NumPy/PIL/SciPy references and per-view statistics."""

import colorsys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from simdino_jax import data
from simdino_jax.data import augment
from tests import train_utils

RNG = np.random.default_rng(0)


def _image(shape=(32, 32, 3)):
  return RNG.integers(0, 256, shape, dtype=np.uint8)


# Deterministic operations against references.


@pytest.mark.parametrize("box", [(0, 0, 32, 32), (3, 5, 20, 14), (7, 0, 25, 31), (10, 2, 8, 9)])
def test_resized_crop_matches_pil_crop_then_bicubic_resize(box):
  image = _image()
  top, left, h, w = box
  ref = np.asarray(Image.fromarray(image).crop((left, top, left + w, top + h)).resize((16, 16), Image.BICUBIC))
  out = np.asarray(augment.resized_crop(jnp.asarray(image, jnp.float32) / 255, jnp.array(box), 16, "bicubic"))
  diff = np.abs(out * 255 - ref)
  # PIL works in 8-bit fixed point and clips between its two passes: small differences only.
  assert diff.mean() < 0.6
  if h >= 16 and w >= 16:  # downsampling (antialiased): no overshoot clipping
    assert diff.max() < 1.5


def test_full_crop_at_same_size_is_identity():
  image = _image()
  out = augment.resized_crop(jnp.asarray(image, jnp.float32) / 255, jnp.array([0, 0, 32, 32]), 32, "bicubic")
  np.testing.assert_allclose(np.asarray(out) * 255, image, atol=1e-3)


def test_crop_box_scale_ratio_and_bounds():
  u = jax.random.uniform(jax.random.key(1), (20000, 4, 10))
  boxes = np.asarray(jax.vmap(lambda v: augment.crop_box(v, 32, 32, (0.05, 0.4)))(u))
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
  area = h * w / 1024
  # Integer rounding of the sides moves the area a little outside the scale range, never far.
  assert area.min() >= 0.03 and area.max() <= 0.45
  assert np.quantile(area, 0.01) < 0.07 and np.quantile(area, 0.99) > 0.37
  ratio = w / h
  assert ratio.min() > 0.6 and ratio.max() < 1.7
  # Uniform over the scale range: the median area is near the middle.
  assert abs(np.median(area) - 0.225) < 0.02


def test_crop_box_falls_back_to_center_crop():
  # Areas above the image (scale > 1) never fit: torchvision falls back to the whole (square) image.
  u = jax.random.uniform(jax.random.key(2), (4, 10))
  np.testing.assert_array_equal(augment.crop_box(u, 32, 32, (1.5, 2.0)), [0, 0, 32, 32])
  # A wide image falls back to the central crop of aspect ratio 4/3.
  np.testing.assert_array_equal(augment.crop_box(u, 30, 60, (1.5, 2.0)), [0, 10, 30, 40])


def _np_gray(x):
  return x[..., 0] * 0.2989 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _np_brightness(x, f):
  return np.clip(x * f, 0, 1)


def _np_contrast(x, f):
  return np.clip(f * x + (1 - f) * _np_gray(x).mean(), 0, 1)


def _np_saturation(x, f):
  return np.clip(f * x + (1 - f) * _np_gray(x)[..., None], 0, 1)


def _np_hue(x, shift):
  out = np.empty_like(x)
  for idx in np.ndindex(x.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*x[idx])
    out[idx] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
  return out


@pytest.mark.parametrize("factor", [0.6, 1.3])
def test_color_ops_match_numpy_reference(factor):
  x = _image((8, 8, 3)).astype(np.float32) / 255
  for ours, ref in (
    (augment.adjust_brightness, _np_brightness),
    (augment.adjust_contrast, _np_contrast),
    (augment.adjust_saturation, _np_saturation),
  ):
    np.testing.assert_allclose(ours(jnp.asarray(x), factor), ref(x, factor), atol=1e-5)
  shift = (factor - 1.0) / 4  # -0.1 and 0.075
  np.testing.assert_allclose(augment.adjust_hue(jnp.asarray(x), shift), _np_hue(x, shift), atol=1e-5)
  np.testing.assert_allclose(augment.grayscale(jnp.asarray(x))[..., 0], _np_gray(x), atol=1e-6)


def test_color_jitter_applies_ops_in_the_sampled_order():
  x = _image((8, 8, 3)).astype(np.float32) / 255
  jitter = jax.jit(lambda u, x: augment.color_jitter(u, x, 0.4, 0.4, 0.2, 0.1))
  orders = set()
  for seed in range(6):
    u = np.asarray(jax.random.uniform(jax.random.key(seed), (8,)))
    factors = (0.6 + 0.8 * u[0], 0.6 + 0.8 * u[1], 0.8 + 0.4 * u[2], 0.1 * (2 * u[3] - 1))
    refs = (_np_brightness, _np_contrast, _np_saturation, _np_hue)
    order = np.argsort(u[4:8])
    orders.add(tuple(order))
    expected = x
    for op in order:
      expected = refs[op](expected, factors[op])
    out = jitter(jnp.asarray(u), jnp.asarray(x))
    np.testing.assert_allclose(out, expected, atol=1e-5)
  assert len(orders) > 1


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_gaussian_blur_matches_scipy(sigma):
  x = _image((16, 16, 3)).astype(np.float32) / 255
  radius = augment.blur_radius(2.0, 16)
  out = augment.gaussian_blur(jnp.asarray(x), sigma, radius)
  ref = x
  for axis in (0, 1):  # jnp.pad "reflect" is SciPy's "mirror"
    ref = ndimage.gaussian_filter1d(ref, sigma, axis=axis, mode="mirror", truncate=radius / sigma)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_solarize_and_normalize():
  levels = np.arange(256, dtype=np.float32)
  out = np.asarray(augment.solarize(jnp.asarray(levels / 255), 128)) * 255
  np.testing.assert_allclose(out, np.where(levels >= 128, 255 - levels, levels), atol=1e-4)
  np.testing.assert_allclose(
    augment.normalize(jnp.ones((2, 2, 3)) * 0.5, data.IMAGENET_MEAN, data.IMAGENET_STD)[0, 0],
    (0.5 - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD),
    rtol=1e-6,
  )


# Whole-pipeline statistics: one compiled function whose probabilities and crop scales are traced arguments.

_STATIC = dict(
  global_size=32,
  local_size=16,
  n_local=2,
  interpolation="bicubic",
  brightness=0.4,
  contrast=0.4,
  saturation=0.2,
  hue=0.1,
  blur_sigma=(1.0, 2.0),
  solarize_threshold=128,
  mean=data.IMAGENET_MEAN,
  std=data.IMAGENET_STD,
)
_OFF = dict(
  flip_p=0.0,
  color_jitter_p=0.0,
  grayscale_p=0.0,
  blur_p=(0.0, 0.0, 0.0),
  solarize_p=0.0,
  global_scale=(1.0, 1.0),
  local_scale=(0.25, 0.25),
)
_NAMES = ("flip_p", "color_jitter_p", "grayscale_p", "blur_p", "solarize_p", "global_scale", "local_scale")


@jax.jit
def _run(key, images, params):
  config = types.SimpleNamespace(**_STATIC, **dict(zip(_NAMES, params)))
  return data.multicrop(key, images, config)


def _augment(images, seed=0, **overrides):
  params = {**_OFF, **overrides}
  as_array = lambda v: tuple(jnp.float32(x) for x in v) if isinstance(v, tuple) else jnp.float32(v)
  out = _run(jax.random.key(seed), images, tuple(as_array(params[n]) for n in _NAMES))
  return np.asarray(out["global"]), np.asarray(out["local"])


@pytest.fixture(scope="module")
def noise_images():
  return jnp.asarray(RNG.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8))


def _changed(a, b):
  """Per view and example: whether the outputs differ."""
  return np.abs(a - b).max(axis=(-3, -2, -1)) > 1e-4


def test_everything_off_is_crop_and_normalization(noise_images):
  g, l = _augment(noise_images)
  expected = (np.asarray(noise_images, np.float32) / 255 - data.IMAGENET_MEAN) / data.IMAGENET_STD
  np.testing.assert_allclose(g[0], expected, atol=1e-4)
  np.testing.assert_allclose(g[1], expected, atol=1e-4)
  assert l.shape == (2, 128, 16, 16, 3) and g.dtype == np.float32


def test_flip_rate():
  ramp = np.broadcast_to(np.linspace(0, 250, 32, dtype=np.float32)[None, :, None], (32, 32, 3))
  images = jnp.asarray(np.broadcast_to(ramp.astype(np.uint8), (128, 32, 32, 3)))
  g, l = _augment(images, flip_p=0.5, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4))
  flipped = np.concatenate(
    [  # first column brighter than the last
      (v.mean(axis=(2, 4))[..., 0] > v.mean(axis=(2, 4))[..., -1]).ravel() for v in (g, l)
    ]
  )
  assert abs(flipped.mean() - 0.5) < 0.09  # 512 views: 4 standard deviations
  g, _ = _augment(images, flip_p=0.0, global_scale=(0.4, 1.0))
  assert not (g.mean(axis=(2, 4))[..., 0] > g.mean(axis=(2, 4))[..., -1]).any()


def test_blur_and_solarize_go_to_the_right_views_with_the_right_rates(noise_images):
  base_g, base_l = _augment(noise_images)
  g, l = _augment(noise_images, blur_p=(1.0, 0.1, 0.5))
  assert _changed(g[0], base_g[0]).mean() == 1.0
  assert abs(_changed(g[1], base_g[1]).mean() - 0.1) < 0.11  # 4 sd
  assert abs(_changed(l, base_l).mean() - 0.5) < 0.125
  g, l = _augment(noise_images, solarize_p=0.2)
  assert not _changed(g[0], base_g[0]).any() and not _changed(l, base_l).any()
  assert abs(_changed(g[1], base_g[1]).mean() - 0.2) < 0.14


def test_jitter_and_grayscale_rates(noise_images):
  base_g, base_l = _augment(noise_images)
  g, l = _augment(noise_images, color_jitter_p=0.8)
  changed = np.concatenate([_changed(g, base_g).ravel(), _changed(l, base_l).ravel()])
  assert abs(changed.mean() - 0.8) < 0.07
  g, l = _augment(noise_images, grayscale_p=0.2)
  is_gray = lambda v: np.abs(
    v[..., :1] * data.IMAGENET_STD[0] + data.IMAGENET_MEAN[0] - (v * data.IMAGENET_STD + np.asarray(data.IMAGENET_MEAN))
  ).max(axis=(-3, -2, -1))
  gray = np.concatenate([is_gray(g).ravel(), is_gray(l).ravel()]) < 1e-5
  assert abs(gray.mean() - 0.2) < 0.07


def test_multicrop_default_config_contract():
  config = data.default_config().aug
  images = jnp.asarray(_image((4, 32, 32, 3)))
  out = jax.jit(lambda k, x: data.multicrop(k, x, config))(jax.random.key(0), images)
  assert out["global"].shape == (2, 4, 32, 32, 3) and out["global"].dtype == jnp.float32
  assert out["local"].shape == (config.n_local, 4, 16, 16, 3)
  for v in out.values():
    rgb = np.asarray(v) * np.asarray(config.std) + np.asarray(config.mean)
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5


def test_multicrop_without_local_crops_has_no_local_key():
  config = data.default_config().aug
  config.n_local = 0
  out = jax.jit(lambda k, x: data.multicrop(k, x, config))(jax.random.key(0), jnp.asarray(_image((2, 32, 32, 3))))
  assert set(out) == {"global"}


def test_show_crops_writes_a_picture_of_real_cifar10_crops(tmp_path):
  from simdino_jax.tools import prepare, show_crops  # pylint: disable=import-outside-toplevel

  images, _ = prepare.read_cifar10_batch(train_utils.shared_data("cifar10", "test_batch"))
  show_crops.render(images[:2], str(tmp_path / "crops.png"))
  picture = np.asarray(Image.open(tmp_path / "crops.png"))
  assert picture.shape[0] > 100 and picture.shape[1] > 1000 and picture.std() > 10
