"""Multi-crop cut on the host from the original images (simdino_jax.data.host_crops) and its device half."""

import io
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from simdino_jax import data
from simdino_jax.data import augment
from simdino_jax.data import host_crops
from simdino_jax.tools import prepare
from simdino_jax.data import sources

RED = (255, 0, 0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(**overrides):
  aug = data.default_config().aug
  aug.n_local = 4
  for key, value in overrides.items():
    aug[key] = value
  return host_crops.CropPlan.from_config(aug)


MAD_LIMIT = 2.0  # Mean absolute difference, in 1/255, of any host crop from PIL's antialiased resize of its box.


def _mad(a, b) -> float:
  return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _pil_crops(image, boxes, sizes, interpolation=Image.Resampling.BICUBIC):
  """PIL's antialiased resize of each box of the fully decoded image (torchvision's RandomResizedCrop)."""
  pil = host_crops.open_image(image).convert("RGB")
  return [
    np.asarray(pil.resize((size, size), interpolation, box=(left, top, left + w, top + h)))
    for (top, left, h, w), size in zip(boxes, sizes)
  ]


def _photos() -> list[bytes]:
  """scikit-learn's two JPEG photos (640x427), as files."""
  import sklearn.datasets  # pylint: disable=import-outside-toplevel

  folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
  return [open(os.path.join(folder, name), "rb").read() for name in ("china.jpg", "flower.jpg")]


def _checkerboard(height=427, width=640) -> np.ndarray:
  """One-pixel checkerboards (red, and green in the opposite phase) over a smooth blue ramp: the content a resize
  without antialiasing folds into false patterns."""
  y, x = np.mgrid[0:height, 0:width]
  checker = (x + y) % 2
  return np.stack([checker * 255, (1 - checker) * 200, x * 255 // width], -1).astype(np.uint8)


def _near_nyquist(height=427, width=640) -> np.ndarray:
  """The hardest case for interpolating the prefiltered image: a chirp rising to the Nyquist frequency and white
  noise."""
  y, x = np.mgrid[0:height, 0:width]
  chirp = 127.5 + 127.5 * np.cos(np.pi * x**2 / (2 * width))
  noise = np.random.default_rng(0).integers(0, 256, (height, width))
  return np.stack([chirp, noise, chirp.T[:height, :width] if height == width else noise[::-1]], -1).astype(np.uint8)


def _worst_mad(image, plan, draws: int, interpolation="bicubic") -> float:
  pil_filter = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
  rng, worst = np.random.default_rng(0), 0.0
  for _ in range(draws):
    boxes = plan.draw_boxes(rng, *host_crops.image_size(image))
    pixels, scale_x, scale_y = host_crops.decode(image, boxes, plan.sizes())
    for box, size, reference in zip(boxes, plan.sizes(), _pil_crops(image, boxes, plan.sizes(), pil_filter)):
      crop = host_crops.resized_crop(pixels, box, size, scale_x, scale_y, interpolation)
      assert crop.shape == reference.shape and crop.dtype == np.uint8
      worst = max(worst, _mad(crop, reference))
  return worst


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_every_crop_is_pils_antialiased_resize_within_2_of_255(interpolation):
  plan = _plan(global_size=224, local_size=96, n_local=10, interpolation=interpolation)  # The ImageNet sizes.
  for image in _photos() + [_checkerboard()]:
    assert _worst_mad(image, plan, draws=4, interpolation=interpolation) <= MAD_LIMIT


def test_near_nyquist_content_stays_close_to_pil():
  """Where the prefiltered image still holds frequencies near Nyquist (downscales by 1-2x of a chirp or noise),
  cubic sampling between its pixels departs from PIL's exact weights: measured 3.97/255 at worst (docs/data.md),
  above the 2/255 that photos and the checkerboard keep."""
  plan = _plan(global_size=224, local_size=96, n_local=10)
  assert 1.0 < _worst_mad(_near_nyquist(), plan, draws=6) <= 4.0


def test_a_resize_without_antialiasing_fails_the_quality_bound():
  """The bound is tight enough to matter: plain cubic sampling (no prefilter) of the same boxes aliases."""
  import cv2  # pylint: disable=import-outside-toplevel

  image, plan = _checkerboard(), _plan(global_size=224, local_size=96, n_local=10)
  boxes = plan.draw_boxes(np.random.default_rng(0), *image.shape[:2])
  aliased = [
    cv2.resize(image[top : top + h, left : left + w], (size, size), interpolation=cv2.INTER_CUBIC)
    for (top, left, h, w), size in zip(boxes, plan.sizes())
  ]
  assert max(_mad(a, r) for a, r in zip(aliased, _pil_crops(image, boxes, plan.sizes()))) > 4 * MAD_LIMIT


def test_png_and_grayscale_jpeg_take_the_same_path_as_arrays():
  rgb = _checkerboard(120, 160)
  png, gray_jpeg = io.BytesIO(), io.BytesIO()
  Image.fromarray(rgb).save(png, format="PNG")
  Image.fromarray(rgb[..., 1]).save(gray_jpeg, format="JPEG", quality=95)
  plan = _plan(global_size=32, local_size=16)
  from_png = host_crops.cut_crops(png.getvalue(), np.random.default_rng(1), plan)
  from_array = host_crops.cut_crops(rgb, np.random.default_rng(1), plan)
  for group in ("global", "local"):
    np.testing.assert_array_equal(from_png[group], from_array[group])
  gray = host_crops.cut_crops(gray_jpeg.getvalue(), np.random.default_rng(1), plan)["global"]
  assert gray.shape == (2, 32, 32, 3) and np.array_equal(gray[..., 0], gray[..., 2])  # Gray made RGB.


WORKER_SCRIPT = """
import os, sys
import simdino_jax  # first, as in every entry point of the package (python -m simdino_jax.main, the scripts)
from absl import flags
import grain
import numpy as np
from simdino_jax.data import host_crops

HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "torch", "ml_collections")


class Photos:  # A grain source; it notes what its worker process has imported.
  def __init__(self, photo, report):
    self.photo, self.report = photo, report

  def __len__(self):
    return 8

  def __getitem__(self, index):
    with open(self.report, "w") as f:
      f.write(" ".join(sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))) + "|" + str(os.getpid()))
    return {"image": self.photo, "label": index}


if __name__ == "__main__":
  flags.FLAGS.mark_as_parsed()
  photo, report = open(sys.argv[1], "rb").read(), sys.argv[2]
  plan = host_crops.CropPlan(224, 96, 10, (0.4, 1.0), (0.05, 0.4))
  source = grain.MapDataset.source(Photos(photo, report))
  batches = iter(host_crops.crop_batches(source, plan, batch_size=4, seed=0, workers=1, threads=1))
  batch = next(batches)
  assert batch["global"].shape == (4, 2, 224, 224, 3) and batch["local"].shape == (4, 10, 96, 96, 3)
  batches.close()
  print(open(report).read() + "|" + str(os.getpid()))
"""


def test_worker_processes_import_neither_jax_nor_tensorflow(tmp_path):
  """A grain worker cutting crops (spawned by an entry point of the package) holds numpy, grain and the image
  libraries: grain's optional imports of JAX and Orbax are refused there (simdino_jax/__init__.py)."""
  script = tmp_path / "workers.py"
  script.write_text(WORKER_SCRIPT)
  photo = os.path.join(os.path.dirname(__import__("sklearn.datasets").datasets.__file__), "images", "china.jpg")
  result = subprocess.run(
    [sys.executable, str(script), photo, str(tmp_path / "report.txt")],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  heavy, worker, main = result.stdout.strip().splitlines()[-1].split("|")
  assert heavy == "" and worker != main, result.stdout  # Noted in a worker process, which holds none of them.
  assert "Failed to load jax profiler" not in result.stderr, result.stderr[-3000:]


def _reference_box(rng, height, width, scale):
  """The RandomResizedCrop rule written out independently: all ten tries drawn at once, the first that fits."""
  areas = height * width * rng.uniform(scale[0], scale[1], size=10)
  ratios = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), size=10))
  ws, hs = np.rint(np.sqrt(areas * ratios)), np.rint(np.sqrt(areas / ratios))
  fits = np.flatnonzero((ws >= 1) & (ws <= width) & (hs >= 1) & (hs <= height))
  if fits.size:
    h, w = int(hs[fits[0]]), int(ws[fits[0]])
    return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w
  # The largest centered crop whose aspect ratio is the image's clamped to [3/4, 4/3].
  ratio = min(max(width / height, 3 / 4), 4 / 3)
  h, w = min(height, int(round(width / ratio))), min(width, int(round(height * ratio)))
  return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
  "height,width,scale", [(375, 500, (0.05, 0.4)), (375, 500, (0.4, 1.0)), (150, 400, (0.4, 1.0))]
)
def test_crop_boxes_follow_the_rule_like_an_independent_implementation(height, width, scale):
  n = 3000
  rng, reference_rng = np.random.default_rng(0), np.random.default_rng(1)
  ours = np.array([host_crops.crop_box(rng, height, width, scale) for _ in range(n)], np.float64)
  reference = np.array([_reference_box(reference_rng, height, width, scale) for _ in range(n)], np.float64)
  for boxes in (ours, reference):
    top, left, h, w = boxes.T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width) & (h >= 1) & (w >= 1))
  features = lambda b: {
    "area": b[:, 2] * b[:, 3] / (height * width),
    "log ratio": np.log(b[:, 3] / b[:, 2]),
    "top": b[:, 0] / np.maximum(height - b[:, 2], 1),
    "left": b[:, 1] / np.maximum(width - b[:, 3], 1),
  }
  for name, values in features(ours).items():
    assert stats.ks_2samp(values, features(reference)[name]).pvalue > 1e-3, name
  # Aspect ratios within [3/4, 4/3] up to the rounding of the sides to whole pixels.
  assert np.all(np.abs(np.log(ours[:, 3] / ours[:, 2])) <= math.log(4 / 3) + 1 / ours[:, 2:].min(axis=1))


def test_fallback_is_the_largest_centered_crop_with_the_ratio_clamped():
  rng = np.random.default_rng(0)
  assert host_crops.crop_box(rng, 10, 1000, (0.9, 1.0)) == (0, 493, 10, 13)  # too wide: 4/3 at full height
  assert host_crops.crop_box(rng, 1000, 12, (0.9, 1.0)) == (492, 0, 16, 12)  # too tall: 3/4 at full width
  assert host_crops.crop_box(rng, 100, 120, (2.0, 3.0)) == (0, 0, 100, 120)  # no try fits: the whole image


def _bordered(height, width, band=6):
  """Gray noise with a red band along the left and right edges (cut away by a center crop of the square)."""
  image = np.random.default_rng(0).integers(80, 160, (height, width, 3), dtype=np.uint8)
  image[:, :band] = image[:, -band:] = RED
  return image


def _has_red(crops):
  return bool(np.any((crops[..., 0] > 200) & (crops[..., 1] < 60) & (crops[..., 2] < 60)))


def test_crops_come_from_the_original_image_border_included():
  image, plan = _bordered(96, 256), _plan(global_size=32, local_size=16)
  rng = np.random.default_rng(0)
  crops = [host_crops.cut_crops(image, rng, plan) for _ in range(20)]
  assert any(_has_red(c["global"]) or _has_red(c["local"]) for c in crops)
  assert not _has_red(sources.resize_square(image, 96))  # the square the device path would crop from
  # Each crop is PIL's bicubic resize of its box of the original (within the host path's tolerance).
  boxes = plan.draw_boxes(np.random.default_rng(0), 96, 256)
  expected = _pil_crops(image, boxes, plan.sizes())
  for crop, reference in zip(list(crops[0]["global"]) + list(crops[0]["local"]), expected):
    assert _mad(crop, reference) <= MAD_LIMIT


def test_jpeg_is_decoded_at_the_smallest_scale_that_covers_every_crop():
  y, x = np.mgrid[0:600, 0:800]
  image = np.stack([x * 255 // 800, y * 255 // 600, (x + y) * 255 // 1400], -1).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=95)
  plan = _plan(global_size=32, local_size=16)
  boxes = plan.draw_boxes(np.random.default_rng(3), 600, 800)
  factor = host_crops.draft_factor(boxes, plan.sizes())
  assert factor > 1 and all(min(h, w) / factor >= s for (_, _, h, w), s in zip(boxes, plan.sizes()))
  assert host_crops.draft_factor([(0, 0, 20, 40)], [16]) == 1
  crops = host_crops.cut_crops(buffer.getvalue(), np.random.default_rng(3), plan)
  full = host_crops.cut_crops(image, np.random.default_rng(3), plan)  # decoded at full size
  for group in ("global", "local"):
    assert crops[group].shape == full[group].shape
    assert np.mean(np.abs(crops[group].astype(float) - full[group])) < 3.0


def test_imagenet_configs_cut_crops_on_the_host(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from simdino_jax import configs  # pylint: disable=import-outside-toplevel

  shape = tfds.builder("imagenet2012", data_dir=str(tmp_path)).info.features["image"].shape  # TFDS's own features
  config = configs.load("dino")
  assert config.data.name == "imagenet2012" and config.data.workers == -1
  assert host_crops.crops_on_host(config.data.crops_on_host, shape)


def test_the_dataset_decides_and_the_config_can_force():
  assert host_crops.crops_on_host("auto", (None, None, 3))
  assert not host_crops.crops_on_host("auto", (32, 32, 3))
  assert host_crops.crops_on_host(True, (32, 32, 3)) and host_crops.crops_on_host("True", (32, 32, 3))
  assert not host_crops.crops_on_host(False, (None, None, 3))
  with pytest.raises(ValueError, match="crops_on_host='maybe' is not valid; use 'auto'"):
    host_crops.crops_on_host("maybe", (None, None, 3))
  config = data.default_config()
  config.data.crops_on_host = "true"
  with pytest.raises(ValueError, match="crops_on_host='true' needs a TFDS dataset"):
    data.create_train_iterator(config.data, batch_size=4, seed=0, process_index=0, process_count=1, aug=config.aug)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
  """12 images of varied sizes with red side bands, one class folder each (label = image id), as TFDS."""
  root = tmp_path_factory.mktemp("photos")
  for i in range(12):
    (root / f"c{i:02d}").mkdir()
    Image.fromarray(_bordered(40 + 4 * i, 100 + 6 * i)).save(root / f"c{i:02d}" / "x.jpg", quality=95)
  data_dir = tmp_path_factory.mktemp("tfds")
  prepare.prepare_folder(str(root), "photos12", str(data_dir))
  return data_dir


def _iterator(data_dir, process_index=0, process_count=1, **data_overrides):
  config = data.default_config()
  config.data.name, config.data.data_dir, config.data.read_threads = "photos12", str(data_dir), 2
  for key, value in data_overrides.items():
    config.data[key] = value
  config.aug.global_size, config.aug.local_size, config.aug.n_local = 24, 12, 3
  return data.create_train_iterator(
    config.data, batch_size=3, seed=0, process_index=process_index, process_count=process_count, aug=config.aug
  )


def test_varied_size_dataset_is_cropped_on_the_host_and_resumes_the_same_crops(photo_dir):
  iterator = _iterator(photo_dir)
  first_epoch = [next(iterator) for _ in range(4)]  # 12 images, batches of 3
  assert first_epoch[0]["global"].shape == (3, 2, 24, 24, 3) and first_epoch[0]["local"].shape == (3, 3, 12, 12, 3)
  assert first_epoch[0]["global"].dtype == np.uint8 and first_epoch[0]["label"].dtype == np.int32
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(3)]  # the second epoch
  resumed = _iterator(photo_dir)
  resumed.set_state(state)
  for batch in expected:
    got = next(resumed)
    for key in ("global", "local", "label"):
      np.testing.assert_array_equal(got[key], batch[key])
  # A second epoch cuts new crops of the same images.
  crops = lambda batches: {int(l): c for b in batches for l, c in zip(b["label"], b["local"])}
  before, after = crops(first_epoch), crops(expected)
  assert not any(np.array_equal(before[k], after[k]) for k in after)
  assert any(_has_red(b["local"]) or _has_red(b["global"]) for b in expected)
  square = _iterator(photo_dir, crops_on_host="false")
  assert next(square)["image"].shape == (3, 32, 32, 3)


def test_process_shards_are_disjoint_and_cover_the_split(photo_dir):
  seen = []
  for process in range(2):
    iterator = _iterator(photo_dir, process_index=process, process_count=2)
    seen.append({int(label) for _ in range(2) for label in next(iterator)["label"]})
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(12))


def test_worker_processes_cover_each_epoch_once_and_resume(photo_dir):
  from absl import flags  # pylint: disable=import-outside-toplevel

  if not flags.FLAGS.is_parsed():  # grain's worker processes read its absl flags (parsed by app.run in a run)
    flags.FLAGS.mark_as_parsed()
  iterator = _iterator(photo_dir, workers=2)
  first = [next(iterator) for _ in range(2)]
  state = iterator.get_state()
  rest = [next(iterator) for _ in range(2)]
  labels = np.concatenate([b["label"] for b in first + rest])
  assert sorted(labels.tolist()) == list(range(12))  # each worker batches every second image of the stream
  iterator.set_state(state)
  for batch in rest:
    got = next(iterator)
    for key in ("global", "local", "label"):
      np.testing.assert_array_equal(got[key], batch[key])


def test_photometric_on_host_crops_is_the_device_recipe_after_the_crop():
  config = data.default_config().aug
  rng = np.random.default_rng(0)
  crops = {
    "global": rng.integers(0, 256, (3, 2, 8, 8, 3), dtype=np.uint8),
    "local": rng.integers(0, 256, (3, 4, 4, 4, 3), dtype=np.uint8),
  }
  config.flip_p, config.color_jitter_p, config.grayscale_p, config.solarize_p = 1.0, 0.0, 0.0, 0.0
  config.blur_p = (0.0, 0.0, 0.0)
  out = jax.jit(lambda k, c: augment.photometric(k, c, config))(jax.random.key(0), crops)
  for group in ("global", "local"):
    expected = augment.normalize(np.swapaxes(crops[group], 0, 1)[:, :, :, ::-1] / 255.0, config.mean, config.std)
    np.testing.assert_allclose(out[group], expected, atol=1e-6)
  config.solarize_p = 1.0  # global 2 only
  out = jax.jit(lambda k, c: augment.photometric(k, c, config))(jax.random.key(0), crops)
  unflipped = lambda x: np.asarray(x)[..., ::-1, :] * np.asarray(config.std) + np.asarray(config.mean)
  np.testing.assert_allclose(
    unflipped(out["global"][1]),
    np.where(crops["global"][:, 1] >= 128, 1.0 - crops["global"][:, 1] / 255.0, crops["global"][:, 1] / 255.0),
    atol=1e-5,
  )
  np.testing.assert_allclose(unflipped(out["global"][0]), crops["global"][:, 0] / 255.0, atol=1e-5)


def test_train_step_takes_host_crops():
  from simdino_jax import train  # pylint: disable=import-outside-toplevel
  from tests import train_utils  # pylint: disable=import-outside-toplevel

  config = train_utils.tiny_config("dinov2")  # iBOT masks too: their batch size comes from the crops
  config.aug.global_size, config.aug.local_size, config.aug.n_local = 16, 8, 2
  trainer = train.build(config, num_examples=64)
  crops = {
    "global": jax.ShapeDtypeStruct((16, 2, 16, 16, 3), np.uint8),
    "local": jax.ShapeDtypeStruct((16, 2, 8, 8, 3), np.uint8),
  }
  with jax.set_mesh(trainer.mesh):  # traced, not compiled: the photometric half is tested above
    state, metrics = jax.eval_shape(trainer.step_fn, trainer.state, crops, trainer.schedules)
  assert state.step.shape == () and metrics["loss"].shape == () and metrics["finite"].shape == ()


def test_benchmark_compares_with_torchvisions_way_on_the_same_boxes():
  from simdino_jax.tools import benchmark_data as benchmark  # pylint: disable=import-outside-toplevel

  plan = _plan(global_size=224, local_size=96, n_local=10)
  figures = benchmark.side_by_side(_photos(), plan, n_images=2, repeats=1)
  assert figures["host_crops"] > 0 and figures["torchvision"] > 0
  assert figures["ratio"] == pytest.approx(figures["torchvision"] / figures["host_crops"])  # One round: its ratio.
  assert 0 < figures["worst_crop_mad"] <= MAD_LIMIT  # Not bit-equal to PIL, within the bound.
  boxes = plan.draw_boxes(np.random.default_rng(0), 427, 640)
  for ours, theirs in zip(
    benchmark.torchvision_crops(_photos()[0], boxes, plan.sizes()), _pil_crops(_photos()[0], boxes, plan.sizes())
  ):
    np.testing.assert_array_equal(ours, theirs)  # The baseline is PIL's resize of the fully decoded image.
