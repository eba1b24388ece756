"""Host sources: digits and npz iterators (resume, epochs, sharding), splits, errors, imports without TF."""

import types

import numpy as np
import pytest

from simdino_jax.data import sources
from tests import train_utils


def data_config(**overrides):
  base = dict(
    name="digits", data_dir=None, path=None, image_size=32, train_split="train", eval_split="test", read_threads=2
  )
  return types.SimpleNamespace(**{**base, **overrides})


def _ids(images):
  """A per-image fingerprint to follow examples through shuffles."""
  return [img.tobytes() for img in images]


def test_digits_splits():
  x, y = sources.load_split(data_config(), "train")
  xt, yt = sources.load_split(data_config(), "test")
  assert x.shape == (1500, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
  assert xt.shape == (297, 32, 32, 3) and set(np.unique(y)) == set(range(10))
  assert not set(_ids(x)) & set(_ids(xt)) - {np.zeros((32, 32, 3), np.uint8).tobytes()}
  assert x.max() == 255 and (x[..., 0] == x[..., 1]).all()
  x16, _ = sources.load_split(data_config(image_size=16), "train")
  assert x16.shape == (1500, 16, 16, 3)


def test_iterator_state_resumes_exactly_and_is_json():
  config = data_config()
  make = lambda: sources.create_train_iterator(config, batch_size=64, seed=3, process_index=0, process_count=1)
  assert make().num_examples == 1500
  # Past the first epoch boundary (1500 / 64 = 23.4 batches).
  state, expected, resumed = train_utils.next_batches_after_resume(make, advance=30, count=5)
  for want, got in zip(expected, resumed):
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  other = sources.create_train_iterator(config, batch_size=64, seed=4, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="seed"):
    other.set_state(state)


def test_epochs_are_full_passes_reshuffled_each_epoch():
  x, _ = sources.load_split(data_config(), "train")
  it = sources.create_train_iterator(data_config(), batch_size=100, seed=0, process_index=0, process_count=1)
  epoch1 = np.concatenate([next(it)["image"] for _ in range(15)])
  epoch2 = np.concatenate([next(it)["image"] for _ in range(15)])
  assert sorted(_ids(epoch1)) == sorted(_ids(x)) == sorted(_ids(epoch2))
  assert _ids(epoch1) != _ids(epoch2)
  again = sources.create_train_iterator(data_config(), batch_size=100, seed=0, process_index=0, process_count=1)
  np.testing.assert_array_equal(next(again)["image"], epoch1[:100])


def test_process_shards_are_disjoint_and_cover_the_split(tmp_path):
  # Labels = example index, so every example is identifiable.
  images = np.random.default_rng(0).integers(0, 256, (1000, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "d.npz", image=images, label=np.arange(1000))
  config = data_config(name="npz", path=str(tmp_path / "d.npz"), image_size=8)
  shards = []
  for index in range(2):
    it = sources.create_train_iterator(config, batch_size=50, seed=0, process_index=index, process_count=2)
    assert it.num_examples == 1000
    labels = [np.concatenate([next(it)["label"] for _ in range(10)]) for _ in range(2)]  # two epochs of 500
    assert sorted(labels[0]) == sorted(labels[1]) and len(set(labels[0])) == 500
    assert (labels[0] != labels[1]).any()
    shards.append(set(labels[0]))
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(range(1000))


def test_on_device_iterator_yields_the_rows_the_host_iterator_reads(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (1000, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "d.npz", image=images, label=np.arange(1000))
  host_config = data_config(name="npz", path=str(tmp_path / "d.npz"), image_size=8)
  device_config = data_config(name="npz", path=str(tmp_path / "d.npz"), image_size=8, on_device=True)
  for index in range(2):
    make = lambda config, index=index: sources.create_train_iterator(
      config, batch_size=50, seed=0, process_index=index, process_count=2
    )
    host, on_device = make(host_config), make(device_config)
    assert host.resident_images is None
    np.testing.assert_array_equal(on_device.resident_images, images)  # Every process holds the whole split.
    for _ in range(25):  # 2.5 epochs of the 500-example shard.
      rows, batch = next(on_device), next(host)
      assert set(rows) == {"index"} and rows["index"].dtype == np.int32
      np.testing.assert_array_equal(images[rows["index"]], batch["image"])
      np.testing.assert_array_equal(rows["index"], batch["label"])
    _, expected, resumed = train_utils.next_batches_after_resume(lambda: make(device_config), advance=12, count=3)
    for want, got in zip(expected, resumed):
      np.testing.assert_array_equal(got["index"], want["index"])


def test_npz_source(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (40, 20, 24, 1), dtype=np.uint8)
  np.savez(tmp_path / "d_train.npz", image=images, label=np.arange(40))
  np.savez(tmp_path / "d_test.npz", image=images[:10])
  config = data_config(name="npz", path=str(tmp_path / "d_{split}.npz"), image_size=16)
  x, y = sources.load_split(config, "train")
  assert x.shape == (40, 16, 16, 3) and (y == np.arange(40)).all()
  xt, yt = sources.load_split(config, "test")
  assert xt.shape == (10, 16, 16, 3) and (yt == -1).all()
  batch = next(sources.create_train_iterator(config, batch_size=8, seed=0, process_index=0, process_count=1))
  assert batch["image"].shape == (8, 16, 16, 3) and batch["label"].dtype == np.int32
  np.savez(tmp_path / "bad_train.npz", pixels=images)
  with pytest.raises(ValueError, match="expected an array 'image'"):
    sources.load_split(data_config(name="npz", path=str(tmp_path / "bad_{split}.npz")), "train")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.load_split(data_config(name="npz", path=str(tmp_path / "missing.npz")), "train")


def test_errors_for_unknown_names_and_splits(tmp_path):
  with pytest.raises(ValueError, match="Unknown dataset 'no_such_data'.*digits, npz"):
    sources.load_split(data_config(name="no_such_data", data_dir=str(tmp_path)), "train")
  with pytest.raises(ValueError, match="Valid splits: test, train"):
    sources.load_split(data_config(), "validation")
  with pytest.raises(ValueError, match="fewer than batch_size"):
    sources.create_train_iterator(data_config(), batch_size=1000, seed=0, process_index=0, process_count=2)


def test_training_path_imports_and_runs_without_tf_grain_ml_collections():
  code = """
import jax, numpy as np, types
from simdino_jax.data import sources, augment, masking, multicrop, block_masks
c = types.SimpleNamespace(name="digits", image_size=32, train_split="train")
batch = next(sources.create_train_iterator(c, batch_size=4, seed=0, process_index=0, process_count=1))
assert batch["image"].shape == (4, 32, 32, 3)
try:
  sources.load_split(types.SimpleNamespace(name="cifar10", data_dir=None, image_size=32), "train")
except ImportError as e:
  print("ERROR:", e)
for m in ("tensorflow", "tensorflow_datasets", "grain", "ml_collections"):
  assert m not in sys.modules, m
"""
  result = train_utils.run_python(code, blocked=("tensorflow", "tensorflow_datasets", "grain", "ml_collections"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "missing: tensorflow-datasets, grain" in result.stdout
