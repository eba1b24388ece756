"""Paths through etils.epath: a gs:// location keeps its scheme end to end (faked by a local bucket, no network)."""

import json
import os

import numpy as np
import pytest
from etils.epath import backend as backend_lib
from etils.epath import gpath
from orbax.checkpoint._src.path import gcs_utils

from simdino_jax import checkpointing
from simdino_jax import metrics
from simdino_jax import reproduce
from simdino_jax import storage
from simdino_jax.data import sources
from tests import train_utils


class _LocalBucket:
  """epath's os backend with gs://BUCKET/PATH stored under ROOT/BUCKET/PATH."""

  def __init__(self, root):
    self.root = os.fspath(root)

  def _local(self, value):
    if isinstance(value, (str, os.PathLike)) and os.fspath(value).startswith("gs://"):
      return os.path.join(self.root, os.fspath(value)[len("gs://"):])
    return value

  def __getattr__(self, name):
    method = getattr(backend_lib.os_backend, name)
    return lambda *args, **kwargs: method(*map(self._local, args), **kwargs)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs:// paths read and written under tmp_path/bucket_root; the working directory is tmp_path/cwd."""
  fake = _LocalBucket(tmp_path / "bucket_root")
  monkeypatch.setattr(gpath._GPath, "_backend",  # pylint: disable=protected-access
                      property(lambda self: fake if self._uri_scheme == "gs" else backend_lib.os_backend))
  # Orbax asks the GCS API (google-cloud-storage) whether a bucket has a hierarchical namespace; ours has none.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  return tmp_path / "bucket_root"


def test_remote_paths_keep_their_scheme_and_local_ones_become_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(storage.path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
  assert os.fspath(storage.path("runs/a")) == os.path.join(os.fspath(tmp_path.resolve()), "runs", "a")
  assert os.fspath(storage.path("~/x")) == os.path.join(os.path.expanduser("~"), "x")


def test_shared_files_and_npz_data_go_through_the_bucket(bucket):
  storage.write_shared("gs://bucket/run/eval_3.json", '{"knn_top1_k20": 0.5}')
  assert (bucket / "bucket" / "run" / "eval_3.json").read_text() == '{"knn_top1_k20": 0.5}'
  (bucket / "data").mkdir(parents=True)
  images = train_utils.random_images(6, 8)
  np.savez(bucket / "data" / "digits_train.npz", image=images, label=np.arange(6))
  config = train_utils.tiny_config("simdino").data
  config.name, config.path, config.image_size = "npz", "gs://data/digits_{split}.npz", 8
  read, labels = sources.load_split(config, "train")
  np.testing.assert_array_equal(read, images)
  np.testing.assert_array_equal(labels, np.arange(6))
  with pytest.raises(FileNotFoundError, match="gs://data/digits_test.npz"):
    sources.load_split(config, "test")
  assert os.listdir(".") == []  # Nothing written to a local folder named "gs:".


def test_metrics_and_checkpoint_paths_of_a_gs_workdir(bucket):
  writer = metrics.MultiWriter("gs://bucket/run", tensorboard=False)
  writer.write_scalars(2, {"loss": 1.5})
  writer.write_scalars(4, {"loss": 1.25})
  writer.close()
  resumed = metrics.JsonlWriter("gs://bucket/run", resume_step=4)  # A resume keeps the lines up to its step.
  resumed.write_scalars(6, {"loss": 1.0})
  lines = (bucket / "bucket" / "run" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [{"step": 2, "loss": 1.5}, {"step": 4, "loss": 1.25},
                                                  {"step": 6, "loss": 1.0}]
  checkpoints = checkpointing.Checkpoints("gs://bucket/run", train_utils.tiny_config("simdino"))
  try:
    assert os.fspath(checkpoints.directory) == "gs://bucket/run/checkpoints"
    assert (bucket / "bucket" / "run" / "checkpoints").is_dir()
  finally:
    checkpoints.close()
  with pytest.raises(FileNotFoundError, match="holds no finished checkpoint"):
    checkpointing.read_config("gs://bucket/run")
  assert os.listdir(".") == []


def test_reproduction_outputs_of_a_gs_workdir(bucket):
  for method in ("dino", "simdino"):
    writer = metrics.JsonlWriter(f"gs://bucket/repro/{method}")
    for step in (0, 10):
      writer.write_scalars(step, {"loss": 1.0 - step / 100, "knn_top1_k20": 0.1 + step / 100,
                                  "diag_unique_prototypes": 64.0})
  rows = reproduce.collect("gs://bucket/repro", ("dino", "simdino"), {"dino": 10, "simdino": 10})
  assert [(r["method"], r["epoch"]) for r in rows] == [("dino", 0.0), ("dino", 1.0), ("simdino", 0.0),
                                                      ("simdino", 1.0)]
  reproduce.write_csv(rows, storage.path("gs://bucket/repro") / "curves.csv")
  paths = reproduce.plot(rows, "gs://bucket/repro", ("dino", "simdino"))
  assert paths == [f"gs://bucket/repro/{name}" for name in ("knn.png", "losses.png", "prototypes.png")]
  written = bucket / "bucket" / "repro"
  assert (written / "curves.csv").read_text().splitlines()[0].startswith("method,epoch,step")
  for name in ("knn.png", "losses.png", "prototypes.png"):
    assert (written / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  assert os.listdir(".") == []
