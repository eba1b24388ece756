"""Draws the multi-crop views the training step sees (de-normalized for display).

  python -m simdino_jax.tools.show_crops --source=cifar-10-batches-py [--out=docs/crops.png]   # on the device
  python -m simdino_jax.tools.show_crops --mode=photo [--photo=FILE] [--out=docs/crops_photo.png]   # on the host

--mode=cifar10: a few real CIFAR-10 test images (read from the python batches), cropped on the device from the
32x32 image (`augment.multicrop`). --mode=photo: one photo (default: scikit-learn's china.jpg, 640x427), its
crops cut on the host from the original at ImageNet sizes (`host_crops`, 224 and 96 pixels), then the photometric
part on the device (`augment.photometric`); each row is a new draw. Each row: the source, the two global crops,
then the local crops.
"""

import os

from absl import app
from absl import flags
import jax
import numpy as np

from simdino_jax import cli
from simdino_jax import data
from simdino_jax.data import augment
from simdino_jax.data import host_crops
from simdino_jax.tools import prepare


def render(images: np.ndarray, out: str, seed: int = 0) -> None:
  """Writes the crops of `images` uint8 [n, S, S, 3] with the default recipe, cut on the device, to `out`."""
  config = data.default_config().aug
  crops = jax.jit(lambda k, x: data.multicrop(k, x, config))(jax.random.key(seed), images)
  _draw(list(images), crops, config, out)


def render_photo(photo, out: str, rows: int = 3, seed: int = 0) -> None:
  """Writes `rows` draws of the crops of one photo (encoded bytes or uint8 [H, W, 3]) cut on the host from the
  original at ImageNet sizes (224 / 96), with the photometric part on the device, to `out`."""
  config = data.default_config().aug
  config.global_size, config.local_size = 224, 96
  plan = host_crops.CropPlan.from_config(config)
  rng = np.random.default_rng(seed)
  cut = [host_crops.cut_crops(photo, rng, plan) for _ in range(rows)]
  batch = {k: np.stack([c[k] for c in cut]) for k in cut[0]}
  crops = jax.jit(lambda k, x: augment.photometric(k, x, config))(jax.random.key(seed), batch)
  source = np.asarray(host_crops.open_image(photo).convert("RGB"))
  _draw([source] * rows, crops, config, out)


def _draw(sources: list[np.ndarray], crops: dict, config, out: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  views = [crops["global"][0], crops["global"][1]] + [crops["local"][i] for i in range(config.n_local)]
  titles = ["source", "global 1", "global 2"] + [f"local {i + 1}" for i in range(config.n_local)]
  mean, std = np.asarray(config.mean), np.asarray(config.std)
  fig, axes = plt.subplots(len(sources), len(titles), figsize=(1.1 * len(titles), 1.2 * len(sources)), squeeze=False)
  for row, source in enumerate(sources):
    panels = [source] + [np.clip(np.asarray(v[row]) * std + mean, 0, 1) for v in views]
    for col, panel in enumerate(panels):
      ax = axes[row, col]
      ax.imshow(panel, interpolation="nearest" if panel.shape[0] <= 64 else "antialiased")
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(titles[col], fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)


def sample_photo_path() -> str:
  """scikit-learn's china.jpg (640x427 JPEG), shipped with the package."""
  import sklearn.datasets  # pylint: disable=import-outside-toplevel

  return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", "china.jpg")


def define_flags() -> None:
  """The command-line flags (defined when run as a program only)."""
  flags.DEFINE_enum(
    "mode",
    "cifar10",
    ["cifar10", "photo"],
    "cifar10: CIFAR-10 images cropped on the device; photo: one photo cropped on the host.",
  )
  flags.DEFINE_string(
    "source", None, "cifar10 mode: the folder of the CIFAR-10 python batches (cifar-10-batches-py, holding test_batch)."
  )
  flags.DEFINE_string("photo", None, "photo mode: an image file (default: scikit-learn's china.jpg).")
  flags.DEFINE_string("out", None, "Output PNG (default: docs/crops.png, or docs/crops_photo.png in photo mode).")
  flags.DEFINE_integer("n", None, "Rows: images (cifar10 mode, default 6) or draws of the photo (photo, default 3).")
  flags.DEFINE_integer("seed", 0, "Random seed of the crops.")


def main(argv) -> None:
  cli.flags_only(argv)
  f = flags.FLAGS
  if f.mode == "photo":
    out = f.out or "docs/crops_photo.png"
    with open(f.photo or sample_photo_path(), "rb") as file:
      render_photo(file.read(), out, rows=f.n or 3, seed=f.seed)
  else:
    if not f.source:
      raise app.UsageError(
        "--mode=cifar10 needs --source, the folder of the CIFAR-10 python batches "
        "(cifar-10-batches-py); or draw a photo's crops with --mode=photo."
      )
    out = f.out or "docs/crops.png"
    images, _ = prepare.read_cifar10_batch(os.path.join(f.source, prepare.CIFAR10_TEST_FILE))
    render(images[: f.n or 6], out, seed=f.seed)
  print(f"Wrote {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
