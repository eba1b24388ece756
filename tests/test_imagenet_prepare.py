"""ImageNet preparation as docs/data.md shows it, on a miniature of the manual download with its real layout, then
2 training steps on 8 simulated devices, the offline evaluation and a resumption on the prepared data."""

import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from simdino_jax import evaluate
from simdino_jax import train
from simdino_jax.tools import prepare
from simdino_jax.tools import prepare_imagenet
from simdino_jax.data import sources
from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _validation_synsets(n: int = 8) -> list[str]:
  """The first n lines of the validation labels TFDS ships: the synsets of ILSVRC2012_val_00000001..n."""
  import tensorflow_datasets  # pylint: disable=import-outside-toplevel

  path = os.path.join(
    os.path.dirname(tensorflow_datasets.__file__), "datasets", "imagenet2012", "validation_labels.txt"
  )
  with open(path) as f:
    return f.read().split()[:n]


VAL_SYNSETS = _validation_synsets()


def _jpeg(rng, height: int, width: int) -> bytes:
  out = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)).save(out, format="JPEG")
  return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def make_miniature_download(manual_dir, rng, per_class: int = 5) -> None:
  """ILSVRC2012_img_train.tar (one tar of JPEGs per synset) and ILSVRC2012_img_val.tar, as image-net.org ships them."""
  with tarfile.open(os.path.join(manual_dir, prepare_imagenet.TRAIN_ARCHIVE), "w") as train_tar:
    for synset in sorted(set(VAL_SYNSETS[:4])):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as class_tar:
        for i in range(per_class):
          _add(class_tar, f"{synset}_{i + 1}.JPEG", _jpeg(rng, 20 + 3 * i, 28))
      _add(train_tar, f"{synset}.tar", inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, prepare_imagenet.VAL_ARCHIVE), "w") as val_tar:
    for i in range(len(VAL_SYNSETS)):
      _add(val_tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(rng, 24, 18 + 2 * i))


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
  manual_dir, data_dir = tmp_path_factory.mktemp("imagenet_download"), tmp_path_factory.mktemp("tfds")
  make_miniature_download(manual_dir, np.random.default_rng(0))
  path = prepare_imagenet.prepare_imagenet2012(str(manual_dir), str(data_dir))
  assert path.startswith(str(data_dir)) and "imagenet2012" in path
  return manual_dir, data_dir


def test_prepared_miniature_reads_without_tensorflow_with_the_real_labels(imagenet_dir):
  _, data_dir = imagenet_dir
  config = train_utils.tiny_config("dino").data
  config.name, config.data_dir = "imagenet2012", str(data_dir)
  train_split = sources.open_split(config, "train")
  images, labels = sources.load_split(config, "validation")
  assert len(train_split) == 20 and images.shape == (8, 16, 16, 3) and images.dtype == np.uint8
  with open(os.path.join(ROOT, "docs", "data.md")) as f:
    assert "python -m simdino_jax.tools.prepare_imagenet --manual_dir" in f.read()
  import tensorflow_datasets as tfds  # The label ids of TFDS's synset list, as in the real dataset.

  synsets = tfds.builder("imagenet2012", data_dir=str(data_dir)).info.features["label"].names
  assert sorted(synsets[label] for label in labels) == sorted(VAL_SYNSETS)  # Stored in TFDS's shuffled order.
  _, train_labels = train_split.read(np.arange(20))
  assert sorted({synsets[label] for label in train_labels}) == sorted(VAL_SYNSETS[:4])


def test_missing_archives_name_the_fix(tmp_path):
  with pytest.raises(prepare.SourceError, match="lacks ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar.*image-net"):
    prepare_imagenet.prepare_imagenet2012(str(tmp_path), str(tmp_path / "tfds"))


@pytest.mark.sharded
def test_train_two_steps_on_eight_devices_evaluate_and_resume(imagenet_dir, tmp_path, capsys):
  _, data_dir = imagenet_dir
  overrides = {
    "data.name": "imagenet2012",
    "data.data_dir": str(data_dir),
    "data.eval_split": "validation",
    "batch_size": 8,
    "total_steps": 2,
    "checkpoint_every_steps": 1,
    "eval_every_epochs": 100.0,
    "eval_settings.knn_k": (3,),
    "eval_settings.batch_size": 8,
  }
  workdir = str(tmp_path / "run")
  first = train.run(train_utils.tiny_config("dino", **overrides), workdir)
  assert np.isfinite(first["loss"]) and 0.0 <= first["knn_top1_k3"] <= 1.0
  results = evaluate.evaluate_checkpoint(workdir, {"knn": {"k": (3,)}}, settings={"batch_size": 8})
  assert results["step"] == 2 and results["dataset"] == "imagenet2012"
  assert results["knn_top1_k3"] == pytest.approx(first["knn_top1_k3"], abs=1e-9)
  resumed = train.run(
    train_utils.tiny_config(
      "dino", **{**overrides, "total_steps": 3, "eval_every_epochs": 0.0, "allow_config_mismatch": True}
    ),
    workdir,
  )
  assert "Resumed from the checkpoint of step 2" in capsys.readouterr().out
  assert np.isfinite(resumed["loss"]) and "3" in os.listdir(os.path.join(workdir, "checkpoints"))
