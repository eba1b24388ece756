"""The published evaluation protocols: the evaluation view against torchvision's Resize(BICUBIC) + CenterCrop on
real JPEG photos, the probe's training crops against torchvision's RandomResizedCrop, and the augmented probe's
grid (same batches for every head, the reported head chosen as the official code chooses it, 8 devices equal to 1).

torchvision itself does not import beside this torch build (its C++ operators do not load), so the references
are torchvision's algorithms on torch: `transforms.functional.resize` of a tensor is `interpolate(bicubic,
antialias=True)` at the size `_compute_resized_output_size` gives (the shorter side to `size`, the longer to
int(size · long / short)); `center_crop` starts at int(round((side − crop) / 2)); `RandomResizedCrop.get_params`
is the loop below."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn
import torch
from flax import nnx
from PIL import Image

from simdino_jax import evaluate
from simdino_jax import models
from simdino_jax import parallel
from simdino_jax.data import sources
from simdino_jax.data.host_crops import CROP_TRIES
from simdino_jax.evaluation import augmented_probe
from simdino_jax.evaluation import features as features_lib
from simdino_jax.evaluation import protocols
from tests import train_utils

PHOTOS = [
  os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", name) for name in ("china.jpg", "flower.jpg")
]  # Real JPEG photos, 427 x 640.


def torchvision_resize_center_crop(image: np.ndarray, size: int, crop: int) -> np.ndarray:
  """torchvision's Resize(size, BICUBIC, antialias=True) + CenterCrop(crop) of a uint8 [H, W, 3] tensor image."""
  height, width = image.shape[:2]
  short, long = min(height, width), max(height, width)
  new_short, new_long = size, int(size * long / short)
  new_h, new_w = (new_short, new_long) if height <= width else (new_long, new_short)
  x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].double()
  x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
  x = x.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
  top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
  return x[top : top + crop, left : left + crop]


def torchvision_random_resized_crop_params(generator, height: int, width: int, scale, ratio):
  """torchvision RandomResizedCrop.get_params: (top, left, h, w)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
    aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
      left = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("resize, crop", [(256, 224), (160, 128), (37, 32)])
def test_evaluation_view_equals_torchvision_resize_and_center_crop_on_jpeg_photos(resize, crop):
  for path in PHOTOS:
    with Image.open(path) as photo:
      rgb = photo.convert("RGB")
      for image in (rgb, rgb.transpose(Image.Transpose.TRANSPOSE), rgb.crop((0, 0, 333, 427))):  # wide, tall, odd
        ours = sources.evaluation_image(np.asarray(image), resize, crop)
        theirs = torchvision_resize_center_crop(np.asarray(image), resize, crop)
        assert ours.shape == theirs.shape == (crop, crop, 3)
        assert np.mean(np.abs(ours.astype(np.float64) - theirs)) / 255 <= 1 / 255  # Images in [0, 1]: ≤ 1/255.


def test_evaluation_view_of_a_gray_image_and_a_crop_larger_than_the_image():
  gray = np.arange(40 * 50, dtype=np.uint8).reshape(40, 50)
  view = sources.evaluation_image(gray, 40, 32)
  assert view.shape == (32, 32, 3) and (view[..., 0] == view[..., 2]).all()
  with pytest.raises(ValueError, match="larger than the resized image"):
    sources.evaluation_image(gray, 24, 32)


def test_probe_crops_follow_torchvision_random_resized_crop_statistics():
  """Area fraction, log aspect ratio and flip rate of 4,000 crops of a 256 x 200 image: ours (the on-device crop box
  of `probe_view`) against torchvision's RandomResizedCrop.get_params and RandomHorizontalFlip."""
  height, width, n = 256, 200, 4000
  u = jax.random.uniform(jax.random.key(0), (n, 4 * CROP_TRIES + 1))
  boxes = np.asarray(jax.vmap(lambda ui: augment_box(ui, height, width))(u))
  generator = torch.Generator().manual_seed(0)
  theirs = np.array(
    [torchvision_random_resized_crop_params(generator, height, width, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)]
  )
  for box in (boxes, theirs):
    assert (box[:, 0] >= 0).all() and (box[:, 0] + box[:, 2] <= height).all()
    assert (box[:, 1] >= 0).all() and (box[:, 1] + box[:, 3] <= width).all()
  stats = lambda b: (b[:, 2] * b[:, 3] / (height * width), np.log(b[:, 3] / b[:, 2]))
  (area, ratio), (area_ref, ratio_ref) = stats(boxes), stats(theirs)
  for ours, ref in ((area, area_ref), (ratio, ratio_ref)):
    assert abs(ours.mean() - ref.mean()) < 4 * ref.std() / math.sqrt(n) * math.sqrt(2)
    assert abs(ours.std() - ref.std()) < 0.05 * ref.std()
  flipped = np.asarray(u[:, -1] < 0.5)
  assert abs(flipped.mean() - 0.5) < 0.03
  image = jnp.asarray(np.random.default_rng(0).random((height, width, 3)), jnp.float32)
  view = augmented_probe.probe_view(u[0], image, 32, "bicubic")
  assert view.shape == (32, 32, 3) and 0.0 <= float(view.min()) <= float(view.max()) <= 1.0


def augment_box(u, height, width):
  from simdino_jax.data import augment  # pylint: disable=import-outside-toplevel

  return augment.crop_box(u[: 4 * CROP_TRIES].reshape(4, CROP_TRIES), height, width, augmented_probe.PROBE_SCALE)


def test_reported_head_is_chosen_as_the_official_code_chooses_it():
  val_acc = np.array([[0.2, 0.5, 0.1], [0.6, 0.4, 0.3], [0.3, 0.45, 0.55]])
  names = augmented_probe.ProbeGrid(blocks=(1,), avgpools=(False,), learning_rates=(1e-3, 1e-2, 1e-1)).head_names()
  best = augmented_probe.AugmentedProbeResult(val_acc, names, report="best").metrics()  # DINO: best epoch
  assert best["linear_top1"] == 0.6 and best["linear_head_lr"] == 1e-3 and best["linear_head_evaluation"] == 2
  final = augmented_probe.AugmentedProbeResult(val_acc, names, report="final").metrics()  # DINOv2: after training
  assert final["linear_top1"] == 0.55 and final["linear_head_lr"] == 1e-1 and final["linear_head_evaluation"] == 3


def _probe_setup():
  """A vit_nano backbone with random weights on two linearly separable classes of 16 x 16 images (bright or dark
  left half), the evaluation view the same size."""
  config = train_utils.tiny_config("dino")
  config.aug.global_size = config.data.image_size = config.model.image_size = 16
  params = nnx.to_pure_dict(nnx.state(models.create_backbone(config.model, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 96).astype(np.int32)
  images = rng.integers(0, 60, (96, 16, 16, 3)).astype(np.uint8)
  images[labels == 1] += 150
  return config, params, sources.ArraySplit(images[:64], labels[:64]), sources.ArraySplit(images[64:], labels[64:])


def _train(config, params, train, val, mesh, grid, **kw):
  return augmented_probe.train_augmented_probe(
    config,
    mesh,
    jax.device_put(params, parallel.replicated(mesh)),
    train,
    val,
    num_classes=2,
    grid=grid,
    interpolation="bicubic",
    epochs=3,
    steps_per_epoch=2,
    batch_size=16,
    per_epoch_schedule=False,
    report="final",
    eval_batch_size=16,
    **kw,
  )


def test_grid_heads_see_the_same_batches_learn_and_8_devices_equal_one():
  config, params, train, val = _probe_setup()
  grid = augmented_probe.ProbeGrid(blocks=(1,), avgpools=(False, True), learning_rates=(0.5, 0.5, 1e-6))
  one = _train(config, params, train, val, parallel.create_mesh(jax.devices()[:1]), grid)
  eight = _train(config, params, train, val, parallel.create_mesh(jax.devices()[:8]), grid)
  assert one.val_acc.shape == (3, 6)
  # Heads 0 and 1 (and 3 and 4): the same lr on the same batches, hence the same accuracies at every evaluation.
  np.testing.assert_array_equal(one.val_acc[:, 0], one.val_acc[:, 1])
  np.testing.assert_array_equal(one.val_acc[:, 3], one.val_acc[:, 4])
  assert one.val_acc[-1, 0] >= 0.9 and one.val_acc[-1, 2] <= one.val_acc[-1, 0]  # Learned; the tiny lr barely.
  np.testing.assert_allclose(eight.val_acc, one.val_acc, atol=1 / 32)  # 8 devices: the same crops and updates.


def test_protocols_by_name_and_float32_features():
  assert evaluate.protocol_evals("dinov2_linear").linear_probe.learning_rates == protocols.DINOV2_LEARNING_RATES
  assert set(protocols.PROTOCOLS) == {"dino_knn", "dinov2_knn", "dino_linear", "dinov2_linear", "simdinov2_linear"}
  grid = protocols.PROTOCOLS["dinov2_linear"]["linear_probe"]
  assert len(grid["learning_rates"]) * len(grid["blocks"]) * len(grid["avgpools"]) == 52
  with pytest.raises(ValueError, match="Unknown protocol 'dino_lin'"):
    evaluate.protocol_evals("dino_lin")
  # A run trained in bfloat16 is evaluated in float32 unless config.eval_settings.feature_dtype says bfloat16.
  config = train_utils.tiny_config("dino")
  config.model.dtype = "bfloat16"
  assert config.eval_settings.feature_dtype == "float32"
  params = nnx.to_pure_dict(nnx.state(models.create_backbone(config.model, rngs=nnx.Rngs(0))))
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)), jnp.uint8)
  float32 = features_lib.make_feature_fn(config)(params, images)
  config.eval_settings.feature_dtype = "bfloat16"
  bfloat16 = features_lib.make_feature_fn(config)(params, images)
  reference = config.copy_and_resolve_references()
  reference.model.dtype = "float32"
  backbone = models.create_backbone(reference.model, rngs=nnx.Rngs(0))
  exact = backbone(features_lib.evaluation_inputs(reference, images))["cls"]
  np.testing.assert_allclose(float32, exact, rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(bfloat16 - exact))) > 1e-4
