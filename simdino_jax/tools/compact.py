"""Converts the compact CIFAR-10 bundle (shared-header JPEG slices) into the npz source's arrays.

    python -m simdino_jax.tools.compact --source COMPACT_DIR --out DIR

writes DIR/cifar10_train.npz and DIR/cifar10_test.npz with "image" uint8 [N, 32, 32, 3] and "label" int32 [N],
read with `config.data.name = "npz"`, `config.data.path = "DIR/cifar10_{split}.npz"`. Needs numpy and Pillow only
(no TensorFlow), so it runs on a bare GPU machine.
"""

import io
import os

import numpy as np
from absl import app
from absl import flags

from simdino_jax import cli


def decode_compact(path: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The images of one compact .npz (the first `limit`, or all): header + scan slice + trailer is a JPEG."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  with np.load(path) as z:
    scans, offsets = z["jpeg"].tobytes(), z["offsets"]
    header, trailer = z["jpeg_header"].tobytes(), z["jpeg_trailer"].tobytes()
    labels = z["label"][:limit].astype(np.int32)
  images = np.empty((len(labels), 32, 32, 3), np.uint8)
  for i in range(len(labels)):
    jpeg = header + scans[offsets[i] : offsets[i + 1]] + trailer
    images[i] = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
  return images, labels


def convert(source: str, out: str) -> list[str]:
  """Writes `out/cifar10_{train,test}.npz`; returns their paths. Writes to a temporary name, then renames."""
  paths = []
  for split in ("train", "test"):
    src = os.path.join(source, f"{split}.npz")
    if not os.path.exists(src):
      raise FileNotFoundError(
        f"{src} not found: --source must be the cifar10_compact folder holding train.npz and test.npz."
      )
    images, labels = decode_compact(src)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"cifar10_{split}.npz")
    tmp = path + ".incomplete.npz"
    np.savez(tmp, image=images, label=labels)
    os.replace(tmp, path)
    paths.append(path)
  return paths


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (so the module imports anywhere)."""
  flags.DEFINE_string("source", None, "Folder of the compact CIFAR-10 bundle (cifar10_compact).", required=True)
  flags.DEFINE_string("out", None, "Folder to write cifar10_train.npz and cifar10_test.npz into.", required=True)


def main(argv) -> None:
  del argv
  for path in convert(flags.FLAGS.source, flags.FLAGS.out):
    print(f"wrote {path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
