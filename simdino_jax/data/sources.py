"""Host-side data: sources, resumable train iterators and evaluation splits.

Sources by `config.data.name`:
- "digits": scikit-learn's handwritten digits (shipped with scikit-learn, no download), 8x8 grayscale 0..16 made
  uint8 RGB and resized to S; a fixed split of 1,500 "train" / 297 "test" images.
- "npz": `config.data.path`, a .npz with "image" uint8 [N, H, W, C] (C = 1 or 3) and optionally "label" (else -1);
  a "{split}" in the path is replaced by the split name.
- any other name: a TFDS dataset prepared in the array_record layout under `config.data.data_dir` (see
  `simdino_jax.tools.prepare`), read with `tfds.data_source` through grain, without TensorFlow.

Train iterators shard by process (each process reads its own strided slice of equal size), reshuffle every epoch
(deterministically from seed and epoch), repeat forever, and yield host-local batches
{"image": uint8 [b, S, S, 3], "label": int32 [b]}; a batch may span an epoch boundary, and every epoch is a full
pass over the process's slice. `get_state()` / `set_state()` resume exactly.

Evaluation streams: `open_split` gives random access to a split without decoding anything, and `eval_batches`
yields fixed-size host batches of one process's rows of it (a cap applies before any image is read), so host memory
stays O(batch) whatever the split's size.

TFDS datasets whose images have varied sizes (imagenet2012, image folders) are cut into their multi-crop views on
the host from the original images (`host_crops`; `config.crops_on_host` = "auto" | "true" | "false"): batches are then
{"global": uint8 [b, 2, G, G, 3], "local": uint8 [b, L, l, l, 3], "label": int32 [b]}, decoded in
`config.workers` grain worker processes.

With `config.on_device`, the whole training split is loaded once (any source) and exposed as `resident_images`
for the trainer to hold on the accelerators; the iterator then yields only {"index": int32 [b]}, rows of that
split, drawn exactly as the in-memory sources draw their images.

numpy is the only import at module level: tensorflow_datasets and grain are imported for TFDS datasets only.
"""

import contextlib
import functools
import importlib.util
import os

import numpy as np

from simdino_jax.data import host_crops
from simdino_jax.registry import Registry

_SOURCES: Registry = Registry("dataset")
_DIGITS_TRAIN = 1500


def create_train_iterator(config, *, batch_size: int, seed: int, process_index: int, process_count: int, aug=None):
  """A resumable iterator of host-local training batches (`batch_size` is per process).

  Args:
    config: the `data` config section.
    aug: the `aug` config section: the crops to cut when they are cut on the host (None: never on the host).
    batch_size: examples per batch on this process.
    seed: shuffle seed (the same on every process).
    process_index: this process's index, jax.process_index().
    process_count: jax.process_count().

  Returns:
    An iterator with `get_state()`, `set_state(state)`, `num_examples` (the whole training split) and
    `resident_images` / `resident_labels` (the whole split when `config.on_device`, else None).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  on_device = bool(getattr(config, "on_device", False))
  if config.name in _SOURCES or on_device:
    images, labels = load_split(config, config.train_split)
    if aug is not None and host_crops.crops_on_host(config.get("crops_on_host", "auto"), images.shape[1:]):
      raise ValueError(
        f"config.data.crops_on_host={config.crops_on_host!r} needs a TFDS dataset read from the "
        f"host; dataset {config.name!r}{' held on device' if on_device else ''} is cropped on the "
        "device. Set config.data.crops_on_host='auto'."
      )
    return ArrayIterator(
      images,
      labels,
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      indices_only=on_device,
    )
  return _tfds_train_iterator(
    config, aug, batch_size=batch_size, seed=seed, process_index=process_index, process_count=process_count
  )


def load_split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split in host memory: (images uint8 [n, S, S, 3], labels int32 [n]; -1 when unlabeled).

  Only for data held whole anyway (`config.on_device`, the in-memory sources); evaluation streams `eval_batches`.
  """
  source = open_split(config, split)
  if isinstance(source, ArraySplit):
    return source.images, source.labels
  parts = [source.read(np.arange(start, min(start + 1024, len(source)))) for start in range(0, len(source), 1024)]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def open_split(config, split: str, crop_size: int | None = None):
  """Random access to a split, decoding nothing yet: `len(source)`, `source.image_shape` (S, S, 3) and
  `source.read(rows) -> (images uint8 [r, S, S, 3], labels int32 [r])`.

  `crop_size` None: the training images (S = config.image_size, `resize_square`). An int: the evaluation view of
  every image, `evaluation_image(image, config.image_size, crop_size)` (S = crop_size): of the original photo for
  TFDS datasets, of the stored S x S image for the in-memory ones."""
  if config.name in _SOURCES:
    return ArraySplit(*_SOURCES.get(config.name)(config, split), crop_size=crop_size)
  return _TfdsSplit(_tfds_source(config, split), config.image_size, crop_size)


class ArraySplit:
  """A split held in host arrays, read by rows like a lazily decoded one; with `crop_size`, each image read is
  its centre crop (`evaluation_image` of an image whose shorter side is already the resize size)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, crop_size: int | None = None):
    self.images, self.labels = images, np.asarray(labels, np.int32)
    self.crop_size = None if crop_size in (None, images.shape[1]) else crop_size
    self.image_shape = images.shape[1:] if self.crop_size is None else (self.crop_size, self.crop_size, 3)
    self.num_classes = int(self.labels.max(initial=-1)) + 1

  def __len__(self) -> int:
    return len(self.images)

  def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = self.images[rows]
    if self.crop_size is not None:
      images = np.stack([evaluation_image(image, min(image.shape[:2]), self.crop_size) for image in images])
    return images, self.labels[rows]


def eval_batches(
  source, *, batch_size: int, process_index: int = 0, process_count: int = 1, max_examples: int = 0, workers: int = 0
):
  """Host batches {"image" uint8 [b,S,S,3], "label" int32 [b], "valid" bool [b]} of this process's rows.

  `source` is a split of `open_split` (any object with `len`, `image_shape` and `read(rows)`). Only its first
  `max_examples` rows (0: all) are read; process p takes rows p, p + P, ... of them, and every process yields the
  same number of batches, the last ones padded with zero images marked `valid=False`. `batch_size` is per
  process; a TFDS split decodes in `workers` grain workers (`read_batches`).
  """
  total = min(len(source), max_examples) if max_examples else len(source)
  if total == 0 or batch_size < 1:
    raise ValueError(f"Need a non-empty split and batch_size >= 1; got {total} examples, batch_size {batch_size}.")
  rows = np.arange(process_index, total, process_count)
  per_process = -(-total // process_count)  # ceil division
  num_batches = -(-per_process // batch_size)
  padded = np.full(num_batches * batch_size, -1, np.int64)
  padded[: len(rows)] = rows
  yield from read_batches(source, padded.reshape(num_batches, batch_size), workers=workers)


def read_batches(source, rows: np.ndarray, *, workers: int = 0):
  """Host batches {"image" uint8 [b, S, S, 3], "label" int32 [b], "valid" bool [b]} of `source`'s rows [n, b]
  (-1: a padding slot, a zero image marked invalid), in order. A TFDS split decodes in `workers` grain worker
  processes (-1: one per usable CPU; 0: threads of this process), a few batches ahead; host memory O(batch)."""
  workers = _usable_cpus() if workers < 0 else workers
  if isinstance(source, _TfdsSplit):
    yield from source.batches(rows, workers=workers)
    return
  for chunk in rows:
    valid = chunk >= 0
    batch = {
      "image": np.zeros((len(chunk), *source.image_shape), np.uint8),
      "label": np.full((len(chunk),), -1, np.int32),
      "valid": valid,
    }
    if valid.any():
      batch["image"][valid], batch["label"][valid] = source.read(chunk[valid])
    yield batch


def process_shard_size(num_examples: int, process_count: int, batch_size: int) -> int:
  """Examples in each process's strided training shard (equal sizes: the remainder is left out); ValueError when a
  shard holds fewer than one batch."""
  shard_size = num_examples // process_count
  if shard_size < batch_size:
    raise ValueError(
      f"Each of the {process_count} processes holds {shard_size} examples, fewer than batch_size {batch_size}."
    )
  return shard_size


def check_data_dir(data_config) -> None:
  """Raises storage.StorageError, in one line, when `data_config.data_dir` has a file where a folder should be, or
  reads a TFDS array_record dataset from cloud storage: array_record's reader (under grain) opens local files only.
  The built-in datasets and npz files (data.path) read gs:// paths."""
  from simdino_jax import storage  # pylint: disable=import-outside-toplevel

  data_dir = data_config.get("data_dir")
  if not data_dir:
    return
  if not storage.is_remote(data_dir):
    storage.nearest_existing_folder(data_dir, "--config.data.data_dir")
    return
  if data_config.name in source_names():
    return
  raise storage.StorageError(
    f"--config.data.data_dir={data_dir}: the TFDS array_record files of {data_config.name!r} are read by "
    "array_record, which opens local files only. Copy the dataset to local disk (gcloud storage cp -r "
    f"{data_dir}/{data_config.name} /data/tfds/ and --config.data.data_dir=/data/tfds), or mount the bucket "
    "with GCSFuse and pass the mount's path (docs/operations.md, \"Cloud storage\")."
  )


def source_names() -> list[str]:
  """The built-in (non-TFDS) dataset names."""
  return _SOURCES.names()


class ArrayIterator:
  """Batches over in-memory arrays: a strided shard per process, a new permutation of it every epoch.

  With `indices_only`, batches are {"index": int32 [b]}, rows of the whole split (`resident_images`) instead of
  the images themselves: the same examples in the same order.
  """

  def __init__(
    self,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    indices_only: bool = False,
  ):
    self.num_examples = len(images)
    shard_size = process_shard_size(self.num_examples, process_count, batch_size)
    # Row i of this process's shard is row process_index + i * process_count of the split.
    self._rows = np.arange(process_index, shard_size * process_count, process_count, dtype=np.int32)
    self.resident_images = images if indices_only else None
    self.resident_labels = labels if indices_only else None
    shard = slice(process_index, shard_size * process_count, process_count)
    self._images = None if indices_only else images[shard]
    self._labels = labels[shard].astype(np.int32)
    self._batch_size = batch_size
    self._seed = seed
    self._position = 0  # examples consumed from the infinite shuffled stream
    self._perm_epoch = -1
    self._perm = None

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    positions = self._position + np.arange(self._batch_size)
    shard_size = len(self._rows)
    index = np.empty(self._batch_size, np.int64)
    for epoch in np.unique(positions // shard_size):
      in_epoch = positions // shard_size == epoch
      index[in_epoch] = self._permutation(int(epoch))[positions[in_epoch] % shard_size]
    self._position += self._batch_size
    if self._images is None:
      return {"index": self._rows[index]}
    return {"image": self._images[index], "label": self._labels[index]}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self._seed, epoch]).permutation(len(self._rows))
      self._perm_epoch = epoch
    return self._perm

  def get_state(self) -> dict:
    return {"position": int(self._position), "seed": self._seed, "shard_size": len(self._rows)}

  def set_state(self, state: dict) -> None:
    _check_state(state, {"seed": self._seed, "shard_size": len(self._rows)})
    self._position = int(state["position"])


def _check_state(state: dict, expected: dict) -> None:
  for name, value in expected.items():
    if state.get(name) != value:
      raise ValueError(
        f"Iterator state has {name}={state.get(name)!r} but this iterator has {value!r}: the "
        "state comes from a different seed, dataset or process count."
      )


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] -> [size, size, 3]: gray to RGB, shorter side to `size` (bicubic), center crop."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  height, width = image.shape[:2]
  if height == width == size:
    return image
  from PIL import Image  # pylint: disable=import-outside-toplevel

  factor = size / min(height, width)
  new_h, new_w = max(size, round(height * factor)), max(size, round(width * factor))
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return resized[top : top + size, left : left + size]


def evaluation_image(image: np.ndarray, resize: int, crop: int) -> np.ndarray:
  """The official evaluation view, torchvision's `Resize(resize, BICUBIC)` + `CenterCrop(crop)` (DINO's and
  DINOv2's kNN and linear evaluations: 256 and 224): uint8 [H, W, C] -> [crop, crop, 3], the shorter side to
  `resize` and the longer to int(resize · long / short) (PIL's antialiased bicubic), then the crop at
  round((side − crop) / 2) from the top and the left."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  height, width = image.shape[:2]
  short, long = min(height, width), max(height, width)
  if short != resize:
    from PIL import Image  # pylint: disable=import-outside-toplevel

    new_long = int(resize * long / short)
    height, width = (resize, new_long) if height <= width else (new_long, resize)
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
  if crop > min(height, width):
    raise ValueError(
      f"Evaluation crop {crop} is larger than the resized image ({height} x {width}): make "
      f"config.data.image_size at least config.aug.global_size."
    )
  top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
  return image[top : top + crop, left : left + crop]


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1:] == (size, size, 3):
    return images
  return np.stack([resize_square(image, size) for image in images])


@_SOURCES.register("digits")
def _digits_split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  if split not in ("train", "test"):
    raise ValueError(f"Unknown split {split!r} of dataset 'digits'. Valid splits: test, train.")
  images, labels = _digits(config.image_size)
  order = np.random.default_rng(0).permutation(len(images))
  index = order[:_DIGITS_TRAIN] if split == "train" else order[_DIGITS_TRAIN:]
  return images[index], labels[index]


def digits_8x8() -> tuple[np.ndarray, np.ndarray]:
  """The 1,797 UCI handwritten digits as scikit-learn ships them (its `load_digits`): images float [N, 8, 8] in
  0..16, labels int [N]. Read from scikit-learn's CSV without importing scikit-learn (1.6 s per process)."""
  package = importlib.util.find_spec("sklearn")
  if package is None:
    raise ModuleNotFoundError(
      "Dataset 'digits' ships with scikit-learn, which is not installed: pip install -r requirements.txt"
    )
  table = np.loadtxt(
    os.path.join(package.submodule_search_locations[0], "datasets", "data", "digits.csv.gz"), delimiter=","
  )
  return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int32)


@functools.lru_cache(maxsize=4)
def _digits(size: int) -> tuple[np.ndarray, np.ndarray]:
  images_8x8, labels = digits_8x8()
  gray = np.round(images_8x8 * (255.0 / 16.0)).astype(np.uint8)
  images = _resize_all(np.repeat(gray[..., None], 3, axis=-1), size)
  images.setflags(write=False)
  return images, labels


@_SOURCES.register("npz")
def _npz_split(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  if not config.path:
    raise ValueError(
      "Dataset 'npz' needs config.data.path: a .npz file with 'image' uint8 [N, H, W, C] and "
      "'label' int [N] ('{split}' in the path is replaced by the split name)."
    )
  from simdino_jax import storage  # pylint: disable=import-outside-toplevel

  path = storage.path(config.path.replace("{split}", split))
  if not path.exists():
    raise FileNotFoundError(f"npz file {os.fspath(path)!r} (split {split!r}) does not exist.")
  with path.open("rb") as f, np.load(f) as arrays:
    if "image" not in arrays:
      raise ValueError(f"{path}: expected an array 'image' (uint8 [N, H, W, C]); found {sorted(arrays)}.")
    images = arrays["image"]
    labels = arrays["label"] if "label" in arrays else np.full(len(images), -1)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{path}: 'image' must be uint8 [N, H, W, C] with C in (1, 3); got {images.dtype} {images.shape}.")
  if labels.shape != (len(images),):
    raise ValueError(f"{path}: 'label' must have shape ({len(images)},); got {labels.shape}.")
  return _resize_all(images, config.image_size), labels.astype(np.int32)


# TFDS datasets, read through grain.


def _import_tfds_and_grain():
  missing = []
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    missing.append("tensorflow-datasets")
  try:
    import grain  # pylint: disable=import-outside-toplevel
  except ImportError:
    missing.append("grain")
  if missing:
    raise ImportError(
      f"TFDS datasets are read with tensorflow-datasets and grain; missing: {', '.join(missing)} "
      f"(pip install {' '.join(missing)} array-record). Datasets that need neither: "
      f"{', '.join(source_names())}."
    )
  return tfds, grain


def _tfds_source(config, split: str, decoders=None):
  """`tfds.data_source` of a prepared array_record dataset, with errors that say how to prepare it."""
  from simdino_jax import storage  # pylint: disable=import-outside-toplevel

  tfds, _ = _import_tfds_and_grain()
  try:
    data_dir = None if config.data_dir is None else os.fspath(storage.path(config.data_dir))
    with _quiet_absl():  # TFDS logs a warning for a data_dir without the prepared set; the error below says it
      builder = tfds.builder(config.name, data_dir=data_dir)
      prepared = builder.is_prepared()
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(
      f"Unknown dataset {config.name!r}: not a built-in dataset ({', '.join(source_names())}), nor a TFDS "
      f"dataset prepared in data_dir {config.data_dir!r}. {_prepare_hint(config)}"
    ) from e
  if not prepared:
    raise FileNotFoundError(
      f"TFDS dataset {config.name!r} is not prepared in data_dir {config.data_dir!r} (looked for "
      f"{builder.data_dir}). {_prepare_hint(config)}"
    )
  try:
    return builder.as_data_source(split=split, decoders=decoders)
  except NotImplementedError as e:
    raise ValueError(
      f"TFDS dataset {config.name!r} in {builder.data_dir} is not in the array_record format. Convert it: "
      f"tfds convert_format --dataset_dir={builder.data_dir} --out_file_format=array_record"
    ) from e


@contextlib.contextmanager
def _quiet_absl():
  """absl's log level raised to ERROR for the block."""
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)


def _prepare_hint(config) -> str:
  data_dir = config.data_dir or "DIR"
  if config.name == "cifar10":
    return (
      "Prepare it with: python -m simdino_jax.tools.prepare cifar10 --source PATH/TO/cifar-10-batches-py "
      f"--data_dir {data_dir}"
    )
  return (
    f"Prepare it with: python -m simdino_jax.tools.prepare folder --source IMAGE_ROOT --name {config.name} "
    f"--data_dir {data_dir}  (or: tfds build {config.name} --file_format=array_record "
    f"--data_dir {data_dir})"
  )


class _Decode:
  """Per-record transform: image resized to S x S RGB uint8 (`resize_square`; with `crop`, the evaluation view
  `evaluation_image(image, S, crop)`), label int32 (-1 when the dataset has none)."""

  def __init__(self, size: int, crop: int | None = None):
    self.size, self.crop = size, crop

  def __call__(self, record: dict) -> dict[str, np.ndarray]:
    image = np.asarray(record["image"])
    image = resize_square(image, self.size) if self.crop is None else evaluation_image(image, self.size, self.crop)
    return {"image": image, "label": np.int32(record.get("label", -1))}


class TfdsIterator:
  """A grain iterator of host batches with a JSON-serializable state."""

  resident_images = resident_labels = None

  def __init__(self, iterator, num_examples: int, check: dict):
    self._iterator = iterator
    self._check = check
    self.num_examples = num_examples

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def get_state(self) -> dict:
    return {"grain": self._iterator.get_state(), **self._check}

  def set_state(self, state: dict) -> None:
    _check_state(state, self._check)
    self._iterator.set_state(state["grain"])


def _tfds_train_iterator(config, aug, *, batch_size, seed, process_index, process_count):
  tfds, grain = _import_tfds_and_grain()
  source = _tfds_source(config, config.train_split)
  on_host = aug is not None and host_crops.crops_on_host(
    config.get("crops_on_host", "auto"), source.dataset_info.features["image"].shape
  )
  if on_host:  # Encoded bytes: each image is decoded once, at the scale its crops need.
    source = _tfds_source(config, config.train_split, decoders={"image": tfds.decode.SkipDecoding()})
  num_examples = len(source)
  shard_size = process_shard_size(num_examples, process_count, batch_size)
  dataset = (
    grain.MapDataset.source(source)[process_index : shard_size * process_count : process_count]
    .shuffle(seed=seed)  # before repeat: a new order every epoch
    .repeat()
  )
  check = {"seed": seed, "shard_size": shard_size}
  if not on_host:
    dataset = dataset.map(_Decode(config.image_size)).batch(batch_size, drop_remainder=True)
    # Elements here are whole batches: a buffer of two per thread keeps host memory O(batch).
    read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=2 * config.read_threads)
    return TfdsIterator(iter(dataset.to_iter_dataset(read)), num_examples, check)
  plan = host_crops.CropPlan.from_config(aug)
  check["crops"] = repr(plan)
  workers = int(config.get("workers", 0))
  # Crops drawn from (seed, process): independent between processes, fixed by the position within each.
  dataset = host_crops.crop_batches(
    dataset,
    plan,
    batch_size=batch_size,
    workers=_usable_cpus() if workers < 0 else workers,
    threads=config.read_threads,
    seed=int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0]),
  )
  return TfdsIterator(iter(dataset), num_examples, check)


def _usable_cpus() -> int:
  """The CPUs this process may run on (its affinity, e.g. a SLURM allocation), else all of the machine's."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class _RowBatches:
  """A grain data source whose i-th element is the records of `rows[i]` (None at -1) of `source`."""

  def __init__(self, source, rows: np.ndarray):
    self._source, self._rows = source, rows

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index: int):
    return [None if row < 0 else self._source[int(row)] for row in self._rows[index]]


class _DecodeBatch:
  """Records (None: padding) -> one host batch {"image", "label", "valid"} through `decode`."""

  def __init__(self, decode, image_shape):
    self._decode, self._shape = decode, image_shape

  def __call__(self, records) -> dict[str, np.ndarray]:
    batch = {
      "image": np.zeros((len(records), *self._shape), np.uint8),
      "label": np.full((len(records),), -1, np.int32),
      "valid": np.zeros((len(records),), bool),
    }
    for i, record in enumerate(records):
      if record is not None:
        example = self._decode(record)
        batch["image"][i], batch["label"][i], batch["valid"][i] = example["image"], example["label"], True
    return batch


class _TfdsSplit:
  """A TFDS data source read by rows, each record decoded by `_Decode` when read."""

  def __init__(self, source, size: int, crop: int | None = None):
    self._source, self._decode = source, _Decode(size, crop)
    self.image_shape = (crop or size, crop or size, 3)
    features = source.dataset_info.features
    self.num_classes = int(getattr(features["label"], "num_classes", 0) or 0) if "label" in features else 0

  def __len__(self) -> int:
    return len(self._source)

  def batches(self, rows: np.ndarray, *, workers: int):
    """`read_batches` of this split: each element of the grain pipeline is one whole batch (so worker processes
    keep the order and the batch boundaries), decoded in `workers` processes or, with 0, in 4 threads."""
    import grain  # pylint: disable=import-outside-toplevel

    batches = grain.MapDataset.source(_RowBatches(self._source, rows)).map(_DecodeBatch(self._decode, self.image_shape))
    read = grain.ReadOptions(num_threads=1 if workers else 4, prefetch_buffer_size=2 if workers else 4)
    batches = batches.to_iter_dataset(read)
    if workers:
      batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    yield from batches

  def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    examples = [self._decode(record) for record in self._source.__getitems__([int(r) for r in rows])]
    return (
      np.stack([e["image"] for e in examples]).reshape(len(examples), *self.image_shape),
      np.asarray([e["label"] for e in examples], np.int32),
    )
