"""ImageNet-1k (ILSVRC 2012) from its manual download into TFDS's `imagenet2012`, array_record layout.

    python -m simdino_jax.tools.prepare_imagenet --manual_dir=/data/imagenet --data_dir=$HOME/tfds

`--manual_dir` holds the two archives of image-net.org as downloaded: ILSVRC2012_img_train.tar (one tar of JPEGs per
class, n01440764.tar ...) and ILSVRC2012_img_val.tar (ILSVRC2012_val_00000001.JPEG ...; the validation labels ship
with TFDS). TFDS's own `imagenet2012` builder decodes, checks and writes them (about 150 GB, hours on a few cores);
training then reads the result without TensorFlow: `--config=configs/dino.py --config.data.data_dir=$HOME/tfds`.
Needs tensorflow-datasets and TensorFlow (requirements.txt).
"""

import os

from absl import app
from absl import flags

from simdino_jax.tools import prepare

TRAIN_ARCHIVE, VAL_ARCHIVE = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"


def prepare_imagenet2012(manual_dir: str, data_dir: str) -> str:
  """Builds `imagenet2012` (array_record) under `data_dir` from the archives in `manual_dir`; returns its path."""
  missing = [name for name in (TRAIN_ARCHIVE, VAL_ARCHIVE) if not os.path.isfile(os.path.join(manual_dir, name))]
  if missing:
    raise prepare.SourceError(
      f"{manual_dir} lacks {', '.join(missing)}: download the ILSVRC 2012 training and validation archives from "
      "https://image-net.org (registration needed) into --manual_dir, unpacked no further."
    )
  tfds = prepare._tfds()  # pylint: disable=protected-access

  class Imagenet2012(tfds.builder_cls("imagenet2012"), skip_registration=True):
    """TFDS's builder as it is; nothing is downloaded (and TFDS's checksum lookup needs importlib_resources)."""

    name = "imagenet2012"
    url_infos = None

  builder = Imagenet2012(data_dir=os.path.expanduser(data_dir), file_format="array_record")
  prepare._check_not_prepared(builder)  # pylint: disable=protected-access
  config = prepare._download_config(tfds)  # pylint: disable=protected-access
  config.manual_dir = os.path.expanduser(manual_dir)
  builder.download_and_prepare(download_config=config)
  return os.fspath(builder.data_dir)


def main(argv) -> None:
  del argv
  try:
    path = prepare_imagenet2012(_MANUAL_DIR.value, _DATA_DIR.value)
  except (prepare.SourceError, FileExistsError) as e:
    raise app.UsageError(str(e)) from e
  print(f"Prepared {path}")


if __name__ == "__main__":
  _MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, f"Folder with {TRAIN_ARCHIVE} and {VAL_ARCHIVE}.", required=True
  )
  _DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to write imagenet2012 into.", required=True)
  app.run(main)
