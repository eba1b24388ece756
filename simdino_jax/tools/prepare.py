"""Offline preparation of datasets into the TFDS array_record layout (needs tensorflow-datasets and TensorFlow).

  python -m simdino_jax.tools.prepare cifar10 --source PATH/TO/cifar-10-batches-py --data_dir DIR
  python -m simdino_jax.tools.prepare folder --source ROOT --name NAME --data_dir DIR [--test_fraction F]

`cifar10` reads the python version of CIFAR-10 (cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/
cifar.html, extracted) and writes it with TFDS's own cifar10 builder (same name, version, splits, features and
example ids), so `tfds.data_source("cifar10", data_dir=DIR, split="train")` reads it without TensorFlow.
`folder` imports ROOT/LABEL/*.jpg (labels = sorted sub-folder names) or a flat folder of unlabeled images.
TFDS builds into an `incomplete.*` directory and renames it at the end, so an interrupted build leaves nothing
that looks prepared (run the command again).
"""

import io
import os
import pickle

import numpy as np
from absl import app
from absl import flags

from simdino_jax import cli

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_CIFAR10_HELP = (
  "Expected the python version of CIFAR-10: a folder with data_batch_1..data_batch_5, test_batch "
  "and batches.meta (download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/"
  "cifar.html and extract it; the folder is cifar-10-batches-py)."
)


class SourceError(ValueError):
  """A dataset source is missing or not in the expected format."""


def read_cifar10_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10 python batch -> (images uint8 [n, 32, 32, 3], labels int64 [n])."""
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], np.uint8)
    labels = np.asarray(batch[b"labels"], np.int64)
  except FileNotFoundError as e:
    raise SourceError(f"Missing {path}. {_CIFAR10_HELP}") from e
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
    raise SourceError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}). {_CIFAR10_HELP}") from e
  if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
    raise SourceError(
      f"{path}: expected data uint8 [n, 3072] and n labels; got {data.shape} and {labels.shape}. {_CIFAR10_HELP}"
    )
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10(source: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
  """The CIFAR-10 python batches -> ({"train": (images, labels), "test": ...}, label names)."""
  if not os.path.isdir(source):
    raise SourceError(f"CIFAR-10 source {source!r} is not a directory. {_CIFAR10_HELP}")
  missing = [
    f
    for f in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE, CIFAR10_META_FILE)
    if not os.path.isfile(os.path.join(source, f))
  ]
  if missing:
    raise SourceError(f"CIFAR-10 source {source!r} lacks {', '.join(missing)}. {_CIFAR10_HELP}")
  try:
    with open(os.path.join(source, CIFAR10_META_FILE), "rb") as f:
      names = [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]]
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError) as e:
    raise SourceError(f"{source}/{CIFAR10_META_FILE} is not CIFAR-10 metadata. {_CIFAR10_HELP}") from e
  train = [read_cifar10_batch(os.path.join(source, f)) for f in CIFAR10_TRAIN_FILES]
  splits = {
    "train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
    "test": read_cifar10_batch(os.path.join(source, CIFAR10_TEST_FILE)),
  }
  return splits, names


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      "Preparing datasets needs tensorflow-datasets and TensorFlow: pip install "
      "tensorflow-datasets array-record tensorflow-cpu"
    ) from e
  return tfds


def _download_config(tfds):
  return tfds.download.DownloadConfig(try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP)


def prepare_cifar10(source: str, data_dir: str) -> str:
  """Writes CIFAR-10 as TFDS's `cifar10` (array_record) under data_dir; returns the dataset directory."""
  tfds = _tfds()
  splits, names = read_cifar10(source)
  stock = tfds.builder_cls("cifar10")

  class Cifar10FromPython(stock, skip_registration=True):
    """TFDS's cifar10 builder fed from the python batches instead of its binary download."""

    name = "cifar10"
    url_infos = None  # nothing is downloaded (and TFDS's checksum lookup needs importlib_resources)

    def _split_generators(self, dl_manager):
      del dl_manager
      self.info.features["label"].names = names
      return {split: self._generate_examples(f"{split}_", arrays) for split, arrays in splits.items()}

    def _generate_examples(self, prefix, arrays):  # pylint: disable=arguments-renamed
      images, labels = arrays
      for index, (image, label) in enumerate(zip(images, labels)):
        yield index, {"id": f"{prefix}{index:05d}", "image": _png(image), "label": int(label)}

  builder = Cifar10FromPython(data_dir=data_dir, file_format="array_record")
  _check_not_prepared(builder)
  builder.download_and_prepare(download_config=_download_config(tfds))
  return os.fspath(builder.data_dir)


def list_image_folder(root: str) -> tuple[list[tuple[str, int]], list[str] | None]:
  """Image files of ROOT/LABEL/* (labels = sorted sub-folders) or of a flat ROOT (labels None, ids -1)."""
  if not os.path.isdir(root):
    raise SourceError(
      f"Image folder {root!r} is not a directory. Expected ROOT/LABEL/*.jpg (one sub-folder per "
      "class) or a flat folder of unlabeled images."
    )
  is_image = lambda f: f.lower().endswith(IMAGE_EXTENSIONS)
  entries = sorted(os.listdir(root))
  classes = [d for d in entries if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")]
  if classes:
    files = [
      (os.path.join(root, c, f), label)
      for label, c in enumerate(classes)
      for f in sorted(os.listdir(os.path.join(root, c)))
      if is_image(f)
    ]
    present = {label for _, label in files}
    empty = [c for label, c in enumerate(classes) if label not in present]
    if empty:
      raise SourceError(
        f"Class folders without images ({', '.join(IMAGE_EXTENSIONS)}) in {root!r}: "
        f"{', '.join(empty)}. Expected ROOT/LABEL/*.jpg."
      )
    return files, classes
  files = [(os.path.join(root, f), -1) for f in entries if is_image(f)]
  if not files:
    raise SourceError(
      f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {root!r}. Expected ROOT/LABEL/*.jpg (one "
      "sub-folder per class) or a flat folder of unlabeled images."
    )
  return files, None


def _png(image: np.ndarray) -> bytes:
  """PNG bytes made with PIL at a fast compression level (TFDS stores bytes as they are; its own encoder runs
  TensorFlow per image and is several times slower)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="png", compress_level=1)
  return buffer.getvalue()


def _image_bytes(path: str, resize: int | None) -> bytes:
  """What is stored for one image: an RGB or grayscale JPEG as the file's own bytes (training decodes it at a
  reduced DCT scale: docs/data.md), anything else (CMYK JPEG, PNG, ...; and every image when `resize` is given) as
  PNG of its RGB pixels."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  from simdino_jax.data.sources import resize_square  # pylint: disable=import-outside-toplevel

  try:
    with Image.open(path) as image:
      if resize is None and image.format == "JPEG" and image.mode in ("RGB", "L"):
        image.load()  # A truncated or corrupt file fails here, not in training.
        with open(path, "rb") as f:
          return f.read()
      array = np.asarray(image.convert("RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise SourceError(f"Cannot decode image {path}: {e}") from e
  return _png(resize_square(array, resize) if resize else array)


def prepare_folder(
  source: str, name: str, data_dir: str, *, test_fraction: float = 0.0, resize: int | None = None, seed: int = 0
) -> str:
  """Writes an image folder as TFDS dataset `name` (array_record); returns the dataset directory.

  Features: image (uint8 [H, W, 3]: JPEG files as they are, other formats as PNG; resized to `resize` x `resize`
  and PNG when given), id (the path relative to
  `source`) and, for class folders, label (ClassLabel of the folder names). A `test_fraction` of the images
  (a fixed random choice) goes to a "test" split, the rest to "train".
  """
  tfds = _tfds()
  files, classes = list_image_folder(source)
  order = np.random.default_rng(seed).permutation(len(files))
  n_test = int(round(test_fraction * len(files)))
  split_files = {"train": sorted(order[n_test:])}
  if n_test:
    split_files["test"] = sorted(order[:n_test])
  features = {
    "image": tfds.features.Image(shape=(resize, resize, 3) if resize else (None, None, 3)),
    "id": tfds.features.Text(),
  }
  if classes is not None:
    features["label"] = tfds.features.ClassLabel(names=classes)

  def examples(indices):
    for i in indices:
      path, label = files[i]
      example = {"image": _image_bytes(path, resize), "id": os.path.relpath(path, source)}
      if classes is not None:
        example["label"] = label
      yield int(i), example

  class FolderBuilder(tfds.dataset_builders.AdhocBuilder, skip_registration=True):
    """An ad-hoc builder that downloads nothing."""

    url_infos = None

  builder = FolderBuilder(
    name=name,
    version="1.0.0",
    features=tfds.features.FeaturesDict(features),
    split_datasets={split: examples(indices) for split, indices in split_files.items()},
    data_dir=data_dir,
    description=f"Images imported from {source} by simdino_jax.tools.prepare.",
  )
  _check_not_prepared(builder)
  builder.download_and_prepare(download_config=_download_config(tfds), file_format="array_record")
  return os.fspath(builder.data_dir)


def _check_not_prepared(builder) -> None:
  if builder.is_prepared():
    raise FileExistsError(
      f"Dataset {builder.name!r} is already prepared in {builder.data_dir}; delete that directory to rebuild it."
    )


KINDS = ("cifar10", "folder")


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (so the module imports anywhere)."""
  flags.DEFINE_string(
    "source",
    None,
    "cifar10: the cifar-10-batches-py folder (data_batch_1..5, test_batch, "
    "batches.meta); folder: ROOT holding LABEL/*.jpg, or a flat folder of unlabeled images.",
    required=True,
  )
  flags.DEFINE_string("data_dir", None, "TFDS data_dir to write into (then --config.data.data_dir=DIR).", required=True)
  flags.DEFINE_string("name", None, "folder: the TFDS dataset name to create (then --config.data.name=NAME).")
  flags.DEFINE_float("test_fraction", 0.0, "folder: fraction of the images held out as the 'test' split.")
  flags.DEFINE_integer("resize", None, "folder: store the images resized to RESIZE x RESIZE pixels.")


def main(argv) -> None:
  kind = argv[1] if len(argv) == 2 else None
  if kind not in KINDS:
    raise app.UsageError(f"give exactly one kind of source, {' or '.join(KINDS)}; got {argv[1:]}.")
  flag_values = flags.FLAGS
  try:
    if kind == "cifar10":
      path = prepare_cifar10(flag_values.source, flag_values.data_dir)
    else:
      if not flag_values.name:
        raise SourceError("folder needs --name, the TFDS dataset name to create (then --config.data.name=NAME).")
      path = prepare_folder(
        flag_values.source,
        flag_values.name,
        flag_values.data_dir,
        test_fraction=flag_values.test_fraction,
        resize=flag_values.resize,
      )
  except (SourceError, FileExistsError) as e:
    cli.fail(str(e))
  print(f"Prepared {path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
