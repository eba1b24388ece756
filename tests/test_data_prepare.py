"""Preparation into the TFDS array_record layout, and the TFDS source read through grain without TensorFlow."""

import io
import os
import pickle
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from simdino_jax.data import sources
from simdino_jax.tools import prepare
from tests import train_utils

CIFAR = train_utils.shared_data("cifar10")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_config(data_dir, name="cifar10", **overrides):
  base = dict(
    name=name, data_dir=str(data_dir), path=None, image_size=32, train_split="train", eval_split="test", read_threads=2
  )
  return types.SimpleNamespace(**{**base, **overrides})


PER_BATCH = 600  # Images kept of each CIFAR-10 python batch: 3,000 train and 600 test images, real ones.


@pytest.fixture(scope="module")
def cifar_source(tmp_path_factory):
  """A miniature of the CIFAR-10 python download, in its exact layout: the first PER_BATCH images of each batch."""
  source = tmp_path_factory.mktemp("cifar-10-batches-py")
  for name in (*[f"data_batch_{i}" for i in range(1, 6)], "test_batch"):
    with open(os.path.join(CIFAR, name), "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    batch[b"data"], batch[b"labels"] = batch[b"data"][:PER_BATCH], batch[b"labels"][:PER_BATCH]
    with open(source / name, "wb") as f:
      pickle.dump(batch, f)
  shutil.copy(os.path.join(CIFAR, "batches.meta"), source / "batches.meta")
  return source


@pytest.fixture(scope="module")
def cifar_dir(cifar_source, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  prepare.prepare_cifar10(str(cifar_source), str(data_dir))
  return data_dir


def _pickle_arrays(source, name):
  with open(os.path.join(source, name), "rb") as f:
    batch = pickle.load(f, encoding="bytes")
  return batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(batch[b"labels"])


def test_cifar10_round_trip_through_tfds_data_source_without_tensorflow(cifar_source, cifar_dir, tmp_path):
  # Every record of each split (in TFDS's stored order), read by tfds.data_source without TensorFlow, holds the
  # original pixels and label of the example its id names (train_00017: the 18th image of the python batches).
  code = f"""
import sys, numpy as np
import tensorflow_datasets as tfds
out = {{}}
for split in ("train", "test"):
  source = tfds.data_source("cifar10", data_dir={str(cifar_dir)!r}, split=split)
  records = source.__getitems__(list(range(len(source))))
  out[split + "_n"] = len(source)
  out[split + "_index"] = [int(r["id"].decode().split("_")[1]) for r in records]  # ids are bytes
  out[split + "_image"] = np.stack([r["image"] for r in records])
  out[split + "_label"] = np.array([r["label"] for r in records], np.int64)
info = tfds.builder("cifar10", data_dir={str(cifar_dir)!r}).info
out["names"] = info.features["label"].names
out["features"] = sorted(info.features.keys()) + [str(info.features["image"].shape), info.file_format.value]
assert "tensorflow" not in sys.modules
np.savez({str(tmp_path / "read.npz")!r}, **out)
"""
  result = train_utils.run_python(code, blocked=("tensorflow",))
  assert result.returncode == 0, result.stderr[-3000:]
  read = np.load(tmp_path / "read.npz")
  assert read["features"].tolist() == ["id", "image", "label", "(32, 32, 3)", "array_record"]
  assert read["names"].tolist() == [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
  ]
  train = [_pickle_arrays(cifar_source, f"data_batch_{i}") for i in range(1, 6)]
  originals = {
    "train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
    "test": _pickle_arrays(cifar_source, "test_batch"),
  }
  for split, (images, labels) in originals.items():
    index = read[f"{split}_index"]
    assert int(read[f"{split}_n"]) == len(labels) and sorted(index.tolist()) == list(range(len(labels)))
    assert read[f"{split}_image"].dtype == np.uint8
    np.testing.assert_array_equal(read[f"{split}_image"], images[index], err_msg=split)
    np.testing.assert_array_equal(read[f"{split}_label"], labels[index], err_msg=split)
  assert len(originals["train"][1]) == 5 * PER_BATCH and len(originals["test"][1]) == PER_BATCH


def test_tfds_train_iterator_resumes_shards_and_reshuffles(cifar_dir):
  config = data_config(cifar_dir)
  make = lambda: sources.create_train_iterator(config, batch_size=16, seed=1, process_index=0, process_count=1)
  assert make().num_examples == 5 * PER_BATCH
  _, expected, resumed = train_utils.next_batches_after_resume(make, advance=1, count=3)
  for want, got in zip(expected, resumed):
    assert got["image"].shape == (16, 32, 32, 3) and got["image"].dtype == np.uint8
    assert got["label"].dtype == np.int32
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  # Shards of two processes are disjoint strided slices of equal size.
  firsts = [
    next(sources.create_train_iterator(config, batch_size=16, seed=1, process_index=i, process_count=2))
    for i in range(2)
  ]
  assert not {x.tobytes() for x in firsts[0]["image"]} & {x.tobytes() for x in firsts[1]["image"]}


def test_tfds_epochs_are_full_reshuffled_passes(tmp_path):
  # A 30-image folder dataset: two epochs through grain are two different permutations of the same images.
  root = tmp_path / "imgs"
  root.mkdir()
  for i in range(30):
    Image.fromarray(np.full((6, 6, 3), i * 8, np.uint8)).save(root / f"{i:02d}.png")
  prepare.prepare_folder(str(root), "flat30", str(tmp_path / "tfds"))
  config = data_config(tmp_path / "tfds", name="flat30", image_size=6)
  it = sources.create_train_iterator(config, batch_size=10, seed=0, process_index=0, process_count=1)
  epochs = [np.concatenate([next(it)["image"][:, 0, 0, 0] for _ in range(3)]) for _ in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(0, 240, 8))
  assert (epochs[0] != epochs[1]).any()
  images, labels = sources.load_split(config, "train")
  assert images.shape == (30, 6, 6, 3) and (labels == -1).all()


def test_load_split_of_prepared_cifar(cifar_source, cifar_dir):
  images, labels = sources.load_split(data_config(cifar_dir, image_size=16), "test")
  originals, original_labels = _pickle_arrays(cifar_source, "test_batch")
  assert images.shape == (PER_BATCH, 16, 16, 3)
  assert np.bincount(labels, minlength=10).tolist() == np.bincount(original_labels, minlength=10).tolist()


def test_folder_import_with_labels_and_test_split(tmp_path):
  root = tmp_path / "pets"
  rng = np.random.default_rng(0)
  for label, ext in (("cat", "jpg"), ("dog", "png")):
    (root / label).mkdir(parents=True)
    for i in range(5):
      image = Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8))
      image.save(root / label / f"{i}.{ext}")
  (root / "dog" / "notes.txt").write_text("not an image")
  Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(root / "dog" / "gray.png")
  prepare.prepare_folder(str(root), "pets", str(tmp_path / "tfds"), test_fraction=0.25)
  config = data_config(tmp_path / "tfds", name="pets", image_size=16)
  train, train_labels = sources.load_split(config, "train")
  test, test_labels = sources.load_split(config, "test")
  assert len(train) + len(test) == 11 and len(test) == 3
  assert train.shape[1:] == (16, 16, 3)
  assert sorted(np.concatenate([train_labels, test_labels]).tolist()) == [0] * 5 + [1] * 6
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  builder = tfds.builder("pets", data_dir=str(tmp_path / "tfds"))
  assert builder.info.features["label"].names == ["cat", "dog"]
  # JPEG files are stored as they are (training decodes them at a reduced DCT scale); other formats as PNG.
  stored = {}
  for split in ("train", "test"):
    records = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    stored.update({records[i]["id"].decode(): records[i]["image"] for i in range(len(records))})
  assert len(stored) == 11
  for name, encoded in stored.items():
    if name.endswith(".jpg"):
      assert encoded == (root / name).read_bytes(), name
    else:
      assert encoded[:8] == b"\x89PNG\r\n\x1a\n", name
      original = np.asarray(Image.open(root / name).convert("RGB"))
      np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encoded))), original)


def test_missing_and_malformed_sources(tmp_path):
  with pytest.raises(prepare.SourceError, match="not a directory.*cifar-10-python"):
    prepare.prepare_cifar10(str(tmp_path / "nope"), str(tmp_path / "tfds"))
  bad = tmp_path / "cifar"
  bad.mkdir()
  for name in prepare.CIFAR10_TRAIN_FILES + (prepare.CIFAR10_TEST_FILE, prepare.CIFAR10_META_FILE):
    (bad / name).write_bytes(b"garbage")
  with pytest.raises(prepare.SourceError, match="batches.meta is not CIFAR-10 metadata"):
    prepare.prepare_cifar10(str(bad), str(tmp_path / "tfds"))
  (bad / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10}))
  with pytest.raises(prepare.SourceError, match="data_batch_1 is not a CIFAR-10 python batch"):
    prepare.prepare_cifar10(str(bad), str(tmp_path / "tfds"))
  os.remove(bad / "test_batch")
  with pytest.raises(prepare.SourceError, match="lacks test_batch"):
    prepare.prepare_cifar10(str(bad), str(tmp_path / "tfds"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(prepare.SourceError, match="No images"):
    prepare.prepare_folder(str(tmp_path / "empty"), "x", str(tmp_path / "tfds"))
  # The CLI exits with the message on one line instead of a traceback.
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "simdino_jax.tools.prepare",
      "folder",
      "--source",
      str(tmp_path / "nope"),
      "--name",
      "x",
      "--data_dir",
      str(tmp_path),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
  assert result.stderr.startswith("error: ") and "nope" in result.stderr


def test_interrupted_build_leaves_nothing_that_looks_prepared(tmp_path):
  root = tmp_path / "imgs"
  root.mkdir()
  for i in range(6):
    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(root / f"{i}.png")
  (root / "3.png").write_bytes(b"truncated")  # the build fails in the middle of the split
  data_dir = tmp_path / "tfds"
  with pytest.raises(prepare.SourceError, match="Cannot decode image"):
    prepare.prepare_folder(str(root), "broken", str(data_dir))
  assert not (data_dir / "broken" / "1.0.0").exists()
  with pytest.raises(ValueError, match="nor a TFDS dataset prepared.*python -m simdino_jax.tools.prepare folder"):
    sources.load_split(data_config(data_dir, name="broken"), "train")
  # Fixed source: the rebuild succeeds.
  Image.fromarray(np.full((8, 8, 3), 3, np.uint8)).save(root / "3.png")
  prepare.prepare_folder(str(root), "broken", str(data_dir))
  assert len(sources.load_split(data_config(data_dir, name="broken", image_size=8), "train")[0]) == 6


def test_unprepared_cifar10_error_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m simdino_jax.tools.prepare cifar10 --source"):
    sources.create_train_iterator(data_config(tmp_path), batch_size=4, seed=0, process_index=0, process_count=1)


def test_evaluation_batches_of_a_tfds_split_decode_in_grain_workers_in_order(cifar_dir):
  """The evaluation view of a prepared split read by grain (2 worker processes, or threads): the same batches, in
  the same order, as row-by-row reads; the padding slots zero and invalid."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  if not flags.FLAGS.is_parsed():  # grain's worker processes read its absl flags (parsed by app.run in a run)
    flags.FLAGS.mark_as_parsed()
  split = sources.open_split(data_config(cifar_dir, image_size=32), "test", crop_size=28)
  expected_images, expected_labels = split.read(np.arange(len(split)))
  assert expected_images.shape[1:] == (28, 28, 3) and split.num_classes == 10
  for workers in (0, 2):
    batches = list(sources.eval_batches(split, batch_size=7, workers=workers))
    valid = np.concatenate([b["valid"] for b in batches])
    assert len(batches) == -(-len(split) // 7) and valid.sum() == len(split) and not valid[len(split) :].any()
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(images[: len(split)], expected_images)
    assert not images[len(split) :].any()
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[: len(split)], expected_labels)
