"""One command for the SimDINO-vs-DINO curves: trains each pair of methods, evaluates kNN every epoch, and writes a
CSV and PNG plots.

    python -m simdino_jax.tools.reproduce --quick --workdir=/tmp/repro                    # pipeline check, 2 CPU cores
    python -m simdino_jax.tools.reproduce --evidence --workdir=/tmp/evidence --seeds=3    # the digits comparison, CPU
    python -m simdino_jax.tools.reproduce --workdir=runs/repro --dataset=cifar10 --data_dir=DIR     # one GPU, CIFAR-10
    python -m simdino_jax.tools.reproduce --workdir=runs/repro --dataset=npz --data_path=DIR/cifar10_{split}.npz

Runs: the registered objectives with their recipe files (simdino_jax/configs/<method>.py): dino vs simdino and
dinov2 vs simdinov2, each pair differing only in the objective and the settings the SimDINO paper changes with it
(docs/recipes.md), and dino_koleo_proto (DINO + KoLeo-proto, for the unique-prototype curve). The backbone, image
and crop sizes, batch, epochs and seeds are the same for every run; `--seeds=N` trains every method N times (seeds
seed, seed + 1, ...). Two baselines come with every table and plot: the untrained network (the epoch-0 kNN of each
run) and the same weighted kNN on the raw pixels of the evaluation-preprocessed images (`raw_pixel_knn`).
Outputs in the workdir: `<method>/seed_<s>/` (checkpoints, metrics.jsonl), `curves.csv` (one row per logged step,
method and seed), `knn.png` and `prototypes.png` (mean over seeds, min-max band), `losses.png`, `summary.json`
(per method: mean and std over seeds, each seed's figures, the baselines). `--evidence` is the small-image recipe
searched in docs/small_image_recipe.md; `--quick` is a pipeline check at the smallest sizes, not evidence (both are
`preset=` arguments of the recipe files: simdino_jax/configs/common.py).
"""

import csv
import io
import json
import os
import time

from absl import app
from absl import flags
import numpy as np

from simdino_jax import configs
from simdino_jax import data as data_lib
from simdino_jax import metrics as metrics_lib
from simdino_jax import objectives
from simdino_jax import parallel
from simdino_jax import storage
from simdino_jax.evaluation import features as features_lib
from simdino_jax.evaluation import knn as knn_lib

METHODS = (*objectives.OBJECTIVES.names(), "dino_koleo_proto")

FLAGS = flags.FLAGS


PRESETS = ("quick", "evidence", "full")


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (so the module imports anywhere)."""
  flags.DEFINE_string("workdir", None, "Output directory.", required=True)
  flags.DEFINE_bool("quick", False, "Pipeline check: the smallest digits run (seconds per method), not evidence.")
  flags.DEFINE_bool(
    "evidence",
    False,
    "The digits comparison on CPU: the small-image recipe of "
    "docs/small_image_recipe.md (a few minutes per run on one core).",
  )
  flags.DEFINE_list("methods", list(METHODS), f"Subset of {', '.join(METHODS)}.")
  flags.DEFINE_string(
    "dataset", None, "digits | cifar10 (TFDS, prepared) | npz (default: quick/evidence→digits, else cifar10)."
  )
  flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the prepared cifar10.")
  flags.DEFINE_string("data_path", None, "npz path with '{split}' for --dataset=npz.")
  flags.DEFINE_string("model", None, "Backbone (default: the preset's, see DEFAULTS).")
  flags.DEFINE_float("epochs", None, "Epochs per run (default: the preset's).")
  flags.DEFINE_integer("batch", None, "Global batch (default: the preset's).")
  flags.DEFINE_float("eval_every_epochs", None, "kNN every this many epochs (default: the preset's).")
  flags.DEFINE_integer("seed", 0, "First seed.")
  flags.DEFINE_integer("seeds", 1, "Runs per method, with seeds seed, seed + 1, ...")
  flags.DEFINE_float("koleo_proto_weight", 0.1, "λ of the KoLeo-proto run.")


# Per preset: dataset, model, epochs, batch, kNN every this many epochs.
DEFAULTS = {
  "quick": dict(dataset="digits", model="vit_micro", epochs=6.0, batch=64, eval_every=1.0),
  "evidence": dict(dataset="digits", model="vit_micro", epochs=15.0, batch=64, eval_every=3.0),
  "full": dict(dataset="cifar10", model="ViT-T/4", epochs=100.0, batch=256, eval_every=5.0),
}


def method_config(
  method: str,
  *,
  preset: str,
  dataset: str,
  model: str,
  epochs: float,
  batch: int,
  eval_every: float,
  seed: int,
  data_dir=None,
  data_path=None,
  koleo_proto_weight=0.1,
):
  """The config of one run of the comparison: the method's recipe file at the comparison's shared sizes,
  `configs.load(method, "model=..,data=..,preset=..,batch=..")` (the presets: simdino_jax/configs/common.py).

  preset (PRESETS): "quick" the pipeline-check sizes, "evidence" the small-image recipe of
  docs/small_image_recipe.md, "full" the full mode.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown method {method!r}; valid: {', '.join(METHODS)}.")
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; valid: {', '.join(PRESETS)}.")
  arg = f"model={model},data={'digits' if dataset == 'digits' else 'cifar10'},preset={preset},batch={batch}"
  if method == "dino_koleo_proto":
    arg += f",weight={koleo_proto_weight}"
  c = configs.load(method, arg)
  c.data.name = dataset
  if dataset == "npz":
    if not data_path:
      raise ValueError(
        "--dataset=npz needs --data_path (e.g. DIR/cifar10_{split}.npz from `python -m simdino_jax.tools.compact`)."
      )
    c.data.path = data_path
  if data_dir:
    c.data.data_dir = data_dir
  c.total_epochs = epochs
  c.eval_every_epochs = eval_every
  c.seed = seed
  return c


def raw_pixel_knn(config) -> dict[str, float]:
  """The kNN of the run's evaluation (same splits, k, T, code path) on raw pixels instead of features.

  The features are the flattened `evaluation_inputs` (the normalized images at the global-crop size): what the
  learned features must beat to be worth anything. Returns {"knn_top1_k{k}": accuracy, ...}.
  """

  def pixels(params, images):
    del params
    inputs = features_lib.evaluation_inputs(config, images)
    return inputs.reshape(inputs.shape[0], -1)

  mesh = parallel.create_mesh()
  splits = [
    features_lib.split_features(
      pixels,
      None,
      data_lib.open_split(config.data, split, crop_size=config.aug.global_size),
      batch_size=config.eval_settings.batch_size,
      mesh=mesh,
      max_examples=max_examples,
    )
    for split, max_examples in (
      (config.data.train_split, config.eval_settings.max_train_examples),
      (config.data.eval_split, config.eval_settings.max_test_examples),
    )
  ]
  (train_x, train_y), (test_x, test_y) = splits
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  return knn_lib.knn_classify(
    train_x,
    train_y,
    test_x,
    test_y,
    num_classes=num_classes,
    k=tuple(config.eval_settings.knn_k),
    temperature=config.eval_settings.knn_temperature,
    mesh=mesh,
  )


def aggregate(runs: list[dict]) -> dict:
  """Per method, mean and std (ddof = 1; 0 for one seed) over seeds of each numeric field of `runs`.

  `runs`: one dict per (method, seed) with "method", "seed" and numbers (None where a run has no such figure).
  Returns {method: {"seeds": [...], "<field>_mean": m, "<field>_std": s, ...}}.
  """
  out = {}
  for method in dict.fromkeys(r["method"] for r in runs):
    mine = [r for r in runs if r["method"] == method]
    result = {"seeds": [r["seed"] for r in mine]}
    for key in [k for k in mine[0] if k not in ("method", "seed")]:
      values = [r[key] for r in mine if r.get(key) is not None]
      if values:
        result[f"{key}_mean"] = float(np.mean(values))
        result[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    out[method] = result
  return out


def collect(workdir: str, methods, steps_per_epoch: dict, seeds=None) -> list[dict]:
  """One CSV row per logged step, method (and seed): epoch, kNN, loss components, diagnostics.

  With `seeds`, run `<method>/seed_<s>/` of each seed, whose rows carry a "seed" column; without, `<method>/`.
  """
  rows = []
  for method in methods:
    for seed in [None] if seeds is None else seeds:
      run_dir = storage.path(workdir) / method
      if seed is not None:
        run_dir = run_dir / f"seed_{seed}"
      for record in metrics_lib.read_metrics(run_dir / "metrics.jsonl"):
        tag = {"method": method} if seed is None else {"method": method, "seed": seed}
        rows.append({**tag, "epoch": record["step"] / steps_per_epoch[method], **metrics_lib.without_goodput(record)})
  return rows


def write_csv(rows: list[dict], path) -> None:
  first = [k for k in ("method", "seed", "epoch", "step") if any(k in r for r in rows)]
  keys = first + sorted({k for r in rows for k in r} - set(first))
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=keys)
  writer.writeheader()
  writer.writerows(rows)
  storage.write_shared(path, text.getvalue())


def seed_band(rows: list[dict], method: str, key: str) -> tuple[list, list, list, list]:
  """(epochs, mean, min, max) over seeds of `key` for `method`, at the epochs every seed logged it."""
  by_epoch = {}
  for r in rows:
    if r["method"] == method and r.get(key) is not None:
      by_epoch.setdefault(round(r["epoch"], 6), []).append(r[key])
  seeds = max((len(v) for v in by_epoch.values()), default=0)
  epochs = sorted(e for e, v in by_epoch.items() if len(v) == seeds)
  values = [np.asarray(by_epoch[e], np.float64) for e in epochs]
  return epochs, [v.mean() for v in values], [v.min() for v in values], [v.max() for v in values]


def plot(rows: list[dict], workdir: str, methods, raw_pixel_top1: float | None = None) -> list[str]:
  """knn.png (kNN top-1 vs epoch per method, mean over seeds with a min-max band, the raw-pixel kNN dashed),
  losses.png (each loss component, mean over seeds), prototypes.png (unique prototypes, mean and band)."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  colours = {method: f"C{i}" for i, method in enumerate(methods)}  # One colour per method in every figure.
  seeds = len({r.get("seed") for r in rows})

  def band_plot(ax, key, scale=1.0):
    for method in methods:
      x, mean, low, high = seed_band(rows, method, key)
      if not x:
        continue
      ax.plot(x, [scale * v for v in mean], marker="o", color=colours[method], label=method)
      if seeds > 1:
        ax.fill_between(x, [scale * v for v in low], [scale * v for v in high], color=colours[method], alpha=0.2)

  paths = []
  fig, ax = plt.subplots(figsize=(6, 4))
  band_plot(ax, "knn_top1_k20", 100.0)
  if raw_pixel_top1 is not None:
    ax.axhline(100 * raw_pixel_top1, color="k", linestyle="--", label="raw pixels")
  spread = f"mean of {seeds} seeds, band min-max; " if seeds > 1 else ""
  ax.set(
    xlabel="epoch", ylabel="kNN top-1 (%), k=20", title=f"kNN accuracy of the teacher ({spread}epoch 0: untrained)"
  )
  ax.title.set_fontsize(9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  paths.append(_save_figure(fig, storage.path(workdir) / "knn.png", dpi=120))

  components = ("loss", "dino", "ibot", "koleo", "koleo_proto", "comp", "expa", "patch")
  present = [c for c in components if any(c in r for r in rows)]
  columns = min(4, len(present))
  grid_rows = -(-len(present) // columns)
  fig, axes = plt.subplots(grid_rows, columns, figsize=(3.4 * columns, 2.8 * grid_rows), squeeze=False)
  for ax, comp in zip(axes.flat, present):
    for method in methods:
      x, mean, _, _ = seed_band(rows, method, comp)
      if x:
        ax.plot(x, mean, color=colours[method], label=method)
    ax.set(title=comp, xlabel="epoch")
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(present) :]:
    ax.axis("off")
  fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower right", fontsize=8)
  paths.append(_save_figure(fig, storage.path(workdir) / "losses.png", dpi=110))

  fig, ax = plt.subplots(figsize=(6, 4))
  band_plot(ax, "diag_unique_prototypes")
  ax.set(xlabel="epoch", ylabel="unique prototypes (ε = 0.025)", title="Partial prototype collapse")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
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


def run(
  workdir: str,
  *,
  preset: str,
  methods=METHODS,
  dataset=None,
  model=None,
  epochs=None,
  batch=None,
  eval_every=None,
  seed=0,
  seeds=1,
  data_dir=None,
  data_path=None,
  koleo_proto_weight=0.1,
) -> dict:
  """Trains every method `seeds` times, then writes curves.csv, the plots and summary.json; returns the summary."""
  from simdino_jax import train  # pylint: disable=import-outside-toplevel

  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; valid: {', '.join(PRESETS)}.")
  if seeds < 1:
    raise ValueError(f"--seeds must be at least 1, got {seeds}.")
  defaults = DEFAULTS[preset]
  dataset = dataset or defaults["dataset"]
  model = model or defaults["model"]
  epochs = epochs or defaults["epochs"]
  batch = batch or defaults["batch"]
  eval_every = eval_every or defaults["eval_every"]
  workdir = storage.path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  seed_list = list(range(seed, seed + seeds))
  runs, steps_per_epoch, config = [], {}, None
  for method in methods:
    for run_seed in seed_list:
      config = method_config(
        method,
        preset=preset,
        dataset=dataset,
        model=model,
        epochs=epochs,
        batch=batch,
        eval_every=eval_every,
        seed=run_seed,
        data_dir=data_dir,
        data_path=data_path,
        koleo_proto_weight=koleo_proto_weight,
      )
      start = time.perf_counter()
      last = train.run(config, os.fspath(workdir / method / f"seed_{run_seed}"))
      steps_per_epoch[method] = train.count_steps_per_epoch(config)
      runs.append(
        {
          "method": method,
          "seed": run_seed,
          "knn_top1_k20": last.get("knn_top1_k20"),
          "wall_s": time.perf_counter() - start,
          "unique_prototypes": last.get("diag_unique_prototypes"),
        }
      )
      print(
        f"{method} seed {run_seed}: kNN top-1 {100 * runs[-1]['knn_top1_k20']:.2f}%  ({runs[-1]['wall_s']:.0f} s)",
        flush=True,
      )
  rows = collect(workdir, methods, steps_per_epoch, seed_list)
  for run_record in runs:  # The untrained network: each run's epoch-0 evaluation.
    run_record["untrained_knn_top1_k20"] = next(
      (
        r["knn_top1_k20"]
        for r in rows
        if r["method"] == run_record["method"]
        and r["seed"] == run_record["seed"]
        and r["step"] == 0
        and "knn_top1_k20" in r
      ),
      None,
    )
  raw_pixels = raw_pixel_knn(config)["knn_top1_k20"]
  print(f"raw pixels: kNN top-1 {100 * raw_pixels:.2f}%", flush=True)
  write_csv(rows, workdir / "curves.csv")
  plot(rows, workdir, methods, raw_pixel_top1=raw_pixels)
  summary = {
    "dataset": dataset,
    "model": model,
    "batch": batch,
    "epochs": epochs,
    "seeds": seed_list,
    "raw_pixel_knn_top1_k20": raw_pixels,
    "methods": aggregate(runs),
    "runs": runs,
  }
  storage.write_shared(workdir / "summary.json", json.dumps(summary, indent=2))
  return summary


def main(argv) -> None:
  del argv
  if FLAGS.quick and FLAGS.evidence:
    raise app.UsageError("--quick and --evidence are two presets: pass one of them (or neither: the full mode).")
  preset = "quick" if FLAGS.quick else "evidence" if FLAGS.evidence else "full"
  run(
    FLAGS.workdir,
    preset=preset,
    methods=FLAGS.methods,
    dataset=FLAGS.dataset,
    model=FLAGS.model,
    epochs=FLAGS.epochs,
    batch=FLAGS.batch,
    eval_every=FLAGS.eval_every_epochs,
    seed=FLAGS.seed,
    seeds=FLAGS.seeds,
    data_dir=FLAGS.data_dir,
    data_path=FLAGS.data_path,
    koleo_proto_weight=FLAGS.koleo_proto_weight,
  )


if __name__ == "__main__":
  _define_flags()
  app.run(main)
