"""Multi-crop geometry on the host, cut from the original decoded image (natural images of varied sizes).

Each image is decoded once and its 2 global and n local crops are cut with torchvision's RandomResizedCrop rule
(area ~ U(scale)·H·W, aspect ratio log-uniform in (3/4, 4/3), the first of 10 tries that fits, else the largest
centered crop with the ratio clamped to that range) and resized to their output sizes (PIL bicubic, antialiased).
The photometric part (flip, colour, blur, solarize, normalization) runs on the accelerator, batched:
`augment.photometric`. Flipping stays there too: it is free on the device and would cost a copy per crop here.

Decoding is the cost, so a JPEG is decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8; PIL's draft mode) at
which every crop still has at least its output size in pixels; crop boxes are drawn in pixels of the original and
mapped to the decoded scale. Which path a dataset takes is `crops_on_host(setting, image_shape)`: "auto" cuts on
the host when the dataset's images have varied sizes (TFDS imagenet2012, image folders), and keeps the all-on-
device path for fixed-size data (digits, CIFAR-10, npz). See docs/architecture.md (Data).

Only numpy and PIL are imported here (PIL lazily): this module runs in grain's worker processes.
"""

import dataclasses
import io
import math

import numpy as np

from simdino_jax.data.augment import CROP_RATIO
from simdino_jax.data.augment import CROP_TRIES
from simdino_jax.data.augment import center_crop_box

_DRAFT_FACTORS = (8, 4, 2)
_SETTINGS = {"auto": "auto", "true": True, "false": False}


def crops_on_host(setting, image_shape) -> bool:
  """Whether crops are cut on the host: `config.data.crops_on_host` ("auto" | "true" | "false", any case, or a
  bool) for a dataset whose images have shape `image_shape` ([H, W, C], None where sizes vary)."""
  key = str(setting).lower()
  if key not in _SETTINGS:
    raise ValueError(f"config.data.crops_on_host={setting!r} is not valid; use 'auto' (the dataset decides: "
                     "images of varied sizes are cropped on the host), 'true' or 'false'.")
  if _SETTINGS[key] == "auto":
    return image_shape is None or None in tuple(image_shape)[:2]
  return _SETTINGS[key]


def crop_box(rng: np.random.Generator, height: int, width: int, scale) -> tuple[int, int, int, int]:
  """RandomResizedCrop parameters (top, left, h, w) in pixels of a height x width image.

  Per try: area A = U(scale)·H·W, ratio r = exp(U(log 3/4, log 4/3)), w = round(√(A·r)), h = round(√(A/r));
  the first try with 0 < w <= W and 0 < h <= H is placed uniformly (top ~ randint(0, H-h+1)), else the fallback.
  """
  log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
  for _ in range(CROP_TRIES):
    area = height * width * rng.uniform(scale[0], scale[1])
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return center_crop_box(height, width)


@dataclasses.dataclass(frozen=True)
class CropPlan:
  """What to cut from every image: output sizes, counts and area ranges of the two crop groups."""
  global_size: int
  local_size: int
  n_local: int
  global_scale: tuple[float, float]
  local_scale: tuple[float, float]
  interpolation: str = "bicubic"

  @classmethod
  def from_config(cls, aug) -> "CropPlan":
    """From the `aug` config section."""
    if aug.interpolation not in ("bicubic", "bilinear"):
      raise ValueError(f"config.aug.interpolation={aug.interpolation!r}; valid: bicubic, bilinear.")
    return cls(int(aug.global_size), int(aug.local_size), int(aug.n_local), tuple(aug.global_scale),
               tuple(aug.local_scale), aug.interpolation)

  def draw_boxes(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """The 2 + n_local crop boxes (globals first) of one height x width image."""
    return ([crop_box(rng, height, width, self.global_scale) for _ in range(2)] +
            [crop_box(rng, height, width, self.local_scale) for _ in range(self.n_local)])

  def sizes(self) -> list[int]:
    return [self.global_size] * 2 + [self.local_size] * self.n_local


def draft_factor(boxes, sizes) -> int:
  """The largest JPEG DCT reduction (1, 2, 4 or 8) after which every crop box keeps >= its output size."""
  room = min(min(h, w) / size for (_, _, h, w), size in zip(boxes, sizes))
  return next((f for f in _DRAFT_FACTORS if f <= room), 1)


def open_image(image):
  """A PIL image from encoded bytes (JPEG, PNG, ...; not yet decoded), a uint8 array [H, W(, C)] or a PIL image."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  if isinstance(image, Image.Image):
    return image
  if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim >= 2:
    return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
  return Image.open(io.BytesIO(bytes(image)))


def decode(image, boxes, sizes):
  """Decodes `image` once, at the smallest JPEG scale that covers every crop: (PIL RGB image, x scale, y scale)
  where the scales map pixels of the original to pixels of the decoded image."""
  pil = open_image(image)
  width, height = pil.size
  factor = draft_factor(boxes, sizes)
  if factor > 1 and pil.format == "JPEG":
    pil.draft("RGB", (width // factor, height // factor))
  if pil.mode != "RGB":
    pil = pil.convert("RGB")
  return pil, pil.size[0] / width, pil.size[1] / height


def resized_crop(pil, box, size: int, scale_x: float, scale_y: float, interpolation: str = "bicubic"):
  """The crop `box` = (top, left, h, w) in pixels of the original, resampled to uint8 [size, size, 3] (PIL's
  antialiased filter over the box mapped to the decoded image)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  top, left, h, w = box
  region = (left * scale_x, top * scale_y, (left + w) * scale_x, (top + h) * scale_y)
  resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
  return np.asarray(pil.resize((size, size), resample, box=region))


def cut_crops(image, rng: np.random.Generator, plan: CropPlan) -> dict[str, np.ndarray]:
  """Decodes `image` once and cuts its crops: {"global": uint8 [2, G, G, 3], "local": uint8 [L, l, l, 3]}.

  `image` is encoded bytes or a uint8 array [H, W(, C)]. The "local" key is absent when n_local is 0.
  """
  pil = open_image(image)
  boxes, sizes = plan.draw_boxes(rng, pil.size[1], pil.size[0]), plan.sizes()
  pil, scale_x, scale_y = decode(pil, boxes, sizes)
  crops = [resized_crop(pil, box, size, scale_x, scale_y, plan.interpolation) for box, size in zip(boxes, sizes)]
  out = {"global": np.stack(crops[:2])}
  if plan.n_local:
    out["local"] = np.stack(crops[2:])
  return out


@dataclasses.dataclass(frozen=True)
class HostMultiCrop:
  """grain random map: a TFDS record -> its crops and label (int32, -1 when the dataset has none)."""
  plan: CropPlan

  def __call__(self, record: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {**cut_crops(record["image"], rng, self.plan), "label": np.int32(record.get("label", -1))}


def crop_batches(dataset, plan: CropPlan, *, batch_size: int, seed: int, workers: int, threads: int):
  """grain `MapDataset` of records {"image": encoded bytes or uint8 array, "label"?} -> `IterDataset` of batches
  {"global": uint8 [b, 2, G, G, 3], "local": uint8 [b, L, l, l, 3], "label": int32 [b]}.

  The crops of the i-th record are drawn from (seed, i) alone, so an iterator's position fixes them and a restored
  iterator state cuts the same crops. `workers` > 0: that many grain worker processes, each decoding in one thread
  and batching every `workers`-th group of records; 0: `threads` threads of this process (PIL releases the GIL).
  """
  import grain  # pylint: disable=import-outside-toplevel

  read = grain.ReadOptions(num_threads=1 if workers else threads, prefetch_buffer_size=2 * batch_size)
  batches = (dataset.random_map(HostMultiCrop(plan), seed=seed).to_iter_dataset(read)
             .batch(batch_size, drop_remainder=True))
  return batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)) if workers else batches
