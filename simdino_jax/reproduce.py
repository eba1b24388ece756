"""One command for the SimDINO-vs-DINO curves: trains each pair of methods, evaluates kNN every epoch, and writes a
CSV and PNG plots.

    python -m simdino_jax.reproduce --quick --workdir=/tmp/repro                    # 2 CPU cores, minutes (digits)
    python -m simdino_jax.reproduce --workdir=runs/repro --dataset=cifar10 --data_dir=DIR     # one GPU, CIFAR-10
    python -m simdino_jax.reproduce --workdir=runs/repro --dataset=npz --data_path=DIR/cifar10_{split}.npz

Runs: the registered objectives with their recipe files (simdino_jax/configs/<method>.py): dino vs simdino and
dinov2 vs simdinov2, each pair differing only in the objective and the settings the SimDINO paper changes with it
(docs/recipes.md), and dino_koleo_proto (DINO + KoLeo-proto, for the unique-prototype curve). The backbone, image
and crop sizes, batch, epochs and seed are the same for every run. Outputs in the workdir: `<method>/`
(checkpoints, metrics.jsonl), `curves.csv`, `knn.png`, `losses.png`, `prototypes.png`, `summary.json`.
"""

import csv
import io
import json
import os
import time

from absl import app
from absl import flags

from simdino_jax import configs
from simdino_jax import metrics as metrics_lib
from simdino_jax import objectives
from simdino_jax import storage

METHODS = (*objectives.OBJECTIVES.names(), "dino_koleo_proto")

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (so the module imports anywhere)."""
  flags.DEFINE_string("workdir", None, "Output directory.", required=True)
  flags.DEFINE_bool("quick", False, "A CPU-sized run on the embedded digits (a few minutes).")
  flags.DEFINE_list("methods", list(METHODS), f"Subset of {', '.join(METHODS)}.")
  flags.DEFINE_string("dataset", None, "digits | cifar10 (TFDS, prepared) | npz (default: quick→digits, "
    "else cifar10).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the prepared cifar10.")
  flags.DEFINE_string("data_path", None, "npz path with '{split}' for --dataset=npz.")
  flags.DEFINE_string("model", None, "Backbone (default: quick→vit_micro/4, else ViT-T/4).")
  flags.DEFINE_float("epochs", None, "Epochs per run (default: quick→6, else 100).")
  flags.DEFINE_integer("batch", None, "Global batch (default: quick→64, else 256).")
  flags.DEFINE_float("eval_every_epochs", None, "kNN every this many epochs (default 1 quick, 5 full).")
  flags.DEFINE_integer("seed", 0, "Seed shared by every run.")
  flags.DEFINE_float("koleo_proto_weight", 0.1, "λ of the KoLeo-proto run.")


def method_config(method: str, *, quick: bool, dataset: str, model: str, epochs: float, batch: int,
                  eval_every: float, seed: int, data_dir=None, data_path=None, koleo_proto_weight=0.1):
  """The config of one run of the comparison: the method's recipe file at the comparison's shared sizes."""
  if method not in METHODS:
    raise ValueError(f"Unknown method {method!r}; valid: {', '.join(METHODS)}.")
  c = configs.load(method, f"model={model},data={'digits' if dataset == 'digits' else 'cifar10'}")
  if method == "dino_koleo_proto":
    c.objective.koleo_proto_weight = koleo_proto_weight
  c.data.name = dataset
  if dataset == "npz":
    if not data_path:
      raise ValueError("--dataset=npz needs --data_path (e.g. DIR/cifar10_{split}.npz from "
                       "`python -m simdino_jax.data.compact`).")
    c.data.path = data_path
  if data_dir:
    c.data.data_dir = data_dir
  c.data.on_device = True  # 32-pixel data sets fit on the accelerator: no host pipeline in the step's way.
  if quick:
    c.aug.n_local = 2
    c.data.image_size, c.aug.global_size, c.aug.local_size, c.model.image_size = 16, 16, 8, 16
    c.model.head.hidden_dim, c.model.head.bottleneck_dim, c.model.head.out_dim = 128, 32, 256
    c.optim.warmup_epochs, c.teacher.warmup_temp_epochs = 1.0, 2
    c.checkpoint_every_steps = 0
    c.log_every_steps = 10
    c.tensorboard = False
  else:
    c.optim.warmup_epochs, c.teacher.warmup_temp_epochs = 10.0, 30
    c.checkpoint_every_steps = 2000
  # SimDINO's covariance groups of 64 images need a batch that 64 divides; smaller batches are one group.
  if c.objective.covariance_group_size and batch % c.objective.covariance_group_size:
    c.objective.covariance_group_size = 0
  c.batch_size, c.total_epochs, c.eval_every_epochs, c.seed = batch, epochs, eval_every, seed
  return c


def collect(workdir: str, methods, steps_per_epoch: dict) -> list[dict]:
  """One CSV row per logged step and method: epoch, kNN, loss components, diagnostics."""
  rows = []
  for method in methods:
    for record in metrics_lib.read_metrics(storage.path(workdir) / method / "metrics.jsonl"):
      rows.append({"method": method, "epoch": record["step"] / steps_per_epoch[method], **record})
  return rows


def write_csv(rows: list[dict], path) -> None:
  keys = ["method", "epoch", "step"] + sorted({k for r in rows for k in r} - {"method", "epoch", "step"})
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=keys)
  writer.writeheader()
  writer.writerows(rows)
  storage.write_shared(path, text.getvalue())


def plot(rows: list[dict], workdir: str, methods) -> list[str]:
  """knn.png (kNN top-1 vs epoch per method), losses.png (each loss component), prototypes.png."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  def series(method, key):
    points = [(r["epoch"], r[key]) for r in rows if r["method"] == method and key in r]
    return [p[0] for p in points], [p[1] for p in points]

  paths = []
  fig, ax = plt.subplots(figsize=(6, 4))
  for method in methods:
    x, y = series(method, "knn_top1_k20")
    ax.plot(x, [100 * v for v in y], marker="o", color=f"C{list(methods).index(method)}", label=method)
  ax.set(xlabel="epoch", ylabel="kNN top-1 (%), k=20", title="kNN accuracy of the teacher")
  ax.grid(alpha=0.3)
  ax.legend()
  paths.append(_save_figure(fig, storage.path(workdir) / "knn.png", dpi=120))

  components = ("loss", "dino", "ibot", "koleo", "koleo_proto", "comp", "expa", "patch")
  present = [c for c in components if any(c in r for r in rows)]
  columns = min(4, len(present))
  grid_rows = -(-len(present) // columns)
  fig, axes = plt.subplots(grid_rows, columns, figsize=(3.4 * columns, 2.8 * grid_rows), squeeze=False)
  colours = {method: f"C{i}" for i, method in enumerate(methods)}  # One colour per method in every panel.
  for ax, comp in zip(axes.flat, present):
    for method in methods:
      x, y = series(method, comp)
      if x:
        ax.plot(x, y, color=colours[method], label=method)
    ax.set(title=comp, xlabel="epoch")
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(present):]:
    ax.axis("off")
  fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower right", fontsize=8)
  paths.append(_save_figure(fig, storage.path(workdir) / "losses.png", dpi=110))

  fig, ax = plt.subplots(figsize=(6, 4))
  for method in [m for m in methods if m in ("dino", "dino_koleo_proto", "dinov2")]:
    x, y = series(method, "diag_unique_prototypes")
    ax.plot(x, y, marker="o", color=f"C{list(methods).index(method)}", label=method)
  ax.set(xlabel="epoch", ylabel="unique prototypes (ε = 0.025)", title="Partial prototype collapse")
  ax.grid(alpha=0.3)
  ax.legend()
  paths.append(_save_figure(fig, storage.path(workdir) / "prototypes.png", dpi=120))
  return paths


def _save_figure(fig, path, *, dpi: int) -> str:
  """Writes `fig` as PNG to `path` (local or gs://, process 0 only) and closes it; returns the path."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=dpi)
  plt.close(fig)
  storage.write_shared(path, png.getvalue())
  return os.fspath(path)


def run(workdir: str, *, quick: bool, methods=METHODS, dataset=None, model=None, epochs=None, batch=None,
        eval_every=None, seed=0, data_dir=None, data_path=None, koleo_proto_weight=0.1) -> dict:
  """Trains every method, then writes curves.csv, the plots and summary.json; returns the summary."""
  from simdino_jax import train  # pylint: disable=import-outside-toplevel

  dataset = dataset or ("digits" if quick else "cifar10")
  model = model or ("vit_micro" if quick else "ViT-T/4")
  epochs = epochs or (6.0 if quick else 100.0)
  batch = batch or (64 if quick else 256)
  eval_every = eval_every or (1.0 if quick else 5.0)
  workdir = storage.path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  summary, steps_per_epoch = {}, {}
  for method in methods:
    config = method_config(method, quick=quick, dataset=dataset, model=model, epochs=epochs, batch=batch,
                           eval_every=eval_every, seed=seed, data_dir=data_dir, data_path=data_path,
                           koleo_proto_weight=koleo_proto_weight)
    start = time.perf_counter()
    last = train.run(config, os.fspath(workdir / method))
    steps_per_epoch[method] = last["steps_per_epoch"]
    summary[method] = {"knn_top1_k20": last.get("knn_top1_k20"), "wall_s": time.perf_counter() - start,
                       "epochs": epochs, "unique_prototypes": last.get("diag_unique_prototypes")}
    print(f"{method}: kNN top-1 {100 * summary[method]['knn_top1_k20']:.2f}%  "
          f"({summary[method]['wall_s']:.0f} s)", flush=True)
  rows = collect(workdir, methods, steps_per_epoch)
  write_csv(rows, workdir / "curves.csv")
  plot(rows, workdir, methods)
  storage.write_shared(workdir / "summary.json", json.dumps(
      {"dataset": dataset, "model": model, "batch": batch, "seed": seed, "runs": summary}, indent=2))
  return summary


def main(argv) -> None:
  del argv
  run(FLAGS.workdir, quick=FLAGS.quick, methods=FLAGS.methods, dataset=FLAGS.dataset, model=FLAGS.model,
      epochs=FLAGS.epochs, batch=FLAGS.batch, eval_every=FLAGS.eval_every_epochs, seed=FLAGS.seed,
      data_dir=FLAGS.data_dir, data_path=FLAGS.data_path, koleo_proto_weight=FLAGS.koleo_proto_weight)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
