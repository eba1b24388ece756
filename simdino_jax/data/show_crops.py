"""Draws the multi-crop views of a few real CIFAR-10 test images (reads the python batches directly).

  python -m simdino_jax.data.show_crops --source cifar-10-batches-py [--out docs/crops.png]

Each row: the source image, the two global crops, then the local crops (de-normalized for display).
"""

import argparse
import os

import jax
import numpy as np

from simdino_jax import data
from simdino_jax.data import prepare


def render(images: np.ndarray, out: str, seed: int = 0) -> None:
  """Writes the crops of `images` uint8 [n, S, S, 3] with the default recipe to `out` (PNG)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  config = data.default_config().aug
  crops = jax.jit(lambda k, x: data.multicrop(k, x, config))(jax.random.key(seed), images)
  views = [crops["global"][0], crops["global"][1]] + [crops["local"][i] for i in range(config.n_local)]
  titles = ["source", "global 1", "global 2"] + [f"local {i + 1}" for i in range(config.n_local)]
  mean, std = np.asarray(config.mean), np.asarray(config.std)
  fig, axes = plt.subplots(len(images), len(titles), figsize=(1.1 * len(titles), 1.2 * len(images)))
  for row, image in enumerate(images):
    panels = [image] + [np.clip(np.asarray(v[row]) * std + mean, 0, 1) for v in views]
    for col, panel in enumerate(panels):
      ax = axes[row, col]
      ax.imshow(panel, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(titles[col], fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m simdino_jax.data.show_crops", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", required=True,
                      help="the folder of the CIFAR-10 python batches (cifar-10-batches-py, holding test_batch)")
  parser.add_argument("--out", default="docs/crops.png")
  parser.add_argument("--n", type=int, default=6, help="number of images")
  args = parser.parse_args(argv)
  images, _ = prepare.read_cifar10_batch(os.path.join(args.source, prepare.CIFAR10_TEST_FILE))
  render(images[:args.n], args.out)
  print(f"Wrote {args.out}")


if __name__ == "__main__":
  main()
