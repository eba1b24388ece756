"""Robustness sweeps: a pair of methods trained over one setting at a time around the evidence recipe.

    python -m simdino_jax.tools.sweep --sweep=momentum --seeds=3 --workdir=/tmp/sweeps     # one sweep
    python -m simdino_jax.tools.sweep --sweep=all --seeds=3 --workers=2 --workdir=/tmp/sweeps
    python -m simdino_jax.tools.sweep --sweep=lr --values=0.5,2 --pair=dinov2 --workdir=/tmp/sweeps_v2

The SimDINO paper's claim is robustness: SimDINO trains over a wider range of hyper-parameters and design choices
than DINO and does not collapse where DINO does (its Table 8: teacher = student). Each named sweep in `SWEEPS`
changes one setting of the `--evidence` recipe (docs/small_image_recipe.md) and trains both methods of the pair
(`dino` vs `simdino`, or `dinov2` vs `simdinov2`) `seeds` times per value. The figure of merit is the kNN gain:
final kNN top-1 (k = 20) minus the same run's untrained (epoch-0) kNN, with the teacher's effective rank beside it.

A run whose config equals another's (the recipe's own value in every sweep; a setting the method does not have,
such as SimDINO's teacher temperature or prototype count) is trained once and shared. Every run is a subprocess
(`--workers` at a time, one CPU core each) writing `runs/<method>/<cell>/seed_<s>/result.json`; a finished run
is never trained again, so a stopped sweep resumes where it was. Outputs per sweep under the workdir:
`<sweep>/sweep.csv` (one row per run), `<sweep>/summary.json` (per method and value: mean, std and every seed)
and `<sweep>/sweep.png` (kNN gain, mean ± std over seeds with each seed as a dot; effective rank). Results and
verdicts: docs/results.md.
"""

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from concurrent import futures
from typing import Any, Callable

import numpy as np
from absl import app
from absl import flags

from simdino_jax import metrics as metrics_lib
from simdino_jax.tools import reproduce
from simdino_jax import storage

PAIRS = {"dino": ("dino", "simdino"), "dinov2": ("dinov2", "simdinov2")}


def _set_momentum(c, value: float) -> None:
  """Start momentum of the teacher's cosine schedule to 1; 0 means teacher = student (momentum 0 throughout)."""
  c.teacher.momentum = value
  c.teacher.momentum_end = 1.0 if value else 0.0


def _has_prototypes(c) -> bool:
  from simdino_jax import objectives  # pylint: disable=import-outside-toplevel

  return objectives.get_objective(c.objective).head_kind == "dino"


def _set_teacher_temp(c, value: float) -> None:
  """Final teacher temperature; the warm-up starts at min(recipe's warm-up temperature, value). Objectives
  without a softmax over prototypes (SimDINO, SimDINOv2) have no temperature: unchanged."""
  if not _has_prototypes(c):
    return
  c.teacher.temp = value
  c.teacher.warmup_temp = min(c.teacher.warmup_temp, value)


def _set_lr_scale(c, value: float) -> None:
  c.optim.base_lr = c.optim.base_lr * value


def _set_model(c, value: str) -> None:
  c.model.name = value


def _set_prototypes(c, value: int) -> None:
  if _has_prototypes(c):  # SimDINO's head has no prototypes.
    c.model.head.out_dim = value


@dataclasses.dataclass(frozen=True)
class Sweep:
  """One setting and its values (the recipe's own among them), and how a value is applied: `apply(config, value)`
  or `run_arg`, a `reproduce.method_config` argument (batch, epochs)."""

  setting: str
  values: tuple
  apply: Callable | None = None
  run_arg: str | None = None


SWEEPS = {
  "momentum": Sweep("teacher momentum (0: teacher = student)", (0.0, 0.9, 0.95, 0.996), _set_momentum),
  "teacher_temp": Sweep("teacher temperature", (0.02, 0.04, 0.07), _set_teacher_temp),
  "batch": Sweep("batch size (lr × batch / 256)", (16, 64, 256), run_arg="batch"),
  "lr": Sweep("learning rate × the recipe's", (0.25, 1.0, 4.0), _set_lr_scale),
  "model": Sweep("backbone (width, depth)", ("vit_nano", "vit_micro", "vit_mini"), _set_model),
  "prototypes": Sweep("prototypes K", (1024, 4096, 16384), _set_prototypes),
  "epochs": Sweep("training budget (epochs)", (15.0, 60.0), run_arg="epochs"),
}
MODEL_LABELS = {"vit_nano": "nano 32×1", "vit_micro": "micro 32×2", "vit_mini": "mini 96×4"}


def _check(sweep: str, pair: str) -> None:
  if sweep not in SWEEPS:
    raise ValueError(f"Unknown sweep {sweep!r}; valid: {', '.join(SWEEPS)} (or all).")
  if pair not in PAIRS:
    raise ValueError(f"Unknown pair {pair!r}; valid: {', '.join(PAIRS)}.")


def run_config(method: str, sweep: str, value, seed: int, *, preset: str = "evidence", epochs=None):
  """The config of one run: `method`'s evidence recipe with the sweep's setting at `value`."""
  spec = SWEEPS[sweep]
  defaults = reproduce.DEFAULTS[preset]
  sizes = dict(
    dataset=defaults["dataset"],
    model=defaults["model"],
    epochs=epochs or defaults["epochs"],
    batch=defaults["batch"],
    eval_every=defaults["eval_every"],
  )
  if spec.run_arg:
    sizes[spec.run_arg] = value
  c = reproduce.method_config(method, preset=preset, seed=seed, **sizes)
  if spec.apply:
    spec.apply(c, value)
  c.eval_every_epochs = sizes["epochs"]  # kNN at epoch 0 (untrained) and at the end only.
  return c


def _recipe_config(method: str, seed: int, *, preset: str, epochs=None):
  """The run every sweep is centred on: the recipe with no setting changed."""
  return run_config(method, "lr", 1.0, seed, preset=preset, epochs=epochs)


@dataclasses.dataclass(frozen=True)
class Job:
  method: str
  cell: str  # "center" or "<sweep>=<value>"
  sweep: str
  value: Any
  seed: int

  def directory(self, workdir) -> str:
    return os.fspath(storage.path(workdir) / "runs" / self.method / self.cell / f"seed_{self.seed}")


def _config_key(config) -> str:
  return json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)


def plan(grids: dict[str, tuple], pair: str, seeds, *, preset: str = "evidence", epochs=None) -> dict[tuple, Job]:
  """{(sweep, value, method, seed): Job} for `grids` ({sweep: values}), where runs with the same config share one
  Job (the recipe's own, "center")."""
  jobs, by_config = {}, {}
  for method in PAIRS[pair]:
    for seed in seeds:
      center_key = _config_key(_recipe_config(method, seed, preset=preset, epochs=epochs))
      for sweep, values in grids.items():
        for value in values:
          key = _config_key(run_config(method, sweep, value, seed, preset=preset, epochs=epochs))
          cell = "center" if key == center_key else f"{sweep}={value}"
          jobs[(sweep, value, method, seed)] = by_config.setdefault(key, Job(method, cell, sweep, value, seed))
  return jobs


def job_command(job: Job, workdir, *, preset: str, epochs=None) -> list[str]:
  command = [
    sys.executable,
    "-m",
    "simdino_jax.tools.sweep",
    f"--job_dir={job.directory(workdir)}",
    f"--method={job.method}",
    f"--sweep={job.sweep}",
    f"--values={job.value}",
    f"--seed={job.seed}",
  ]
  command += ["--quick"] if preset == "quick" else []
  return command + ([f"--epochs={epochs}"] if epochs else [])


def _worker_env() -> dict:
  """One CPU core per run (the runs are the parallelism) and a compilation cache shared by the runs: the seeds of
  a cell compile their step once."""
  env = dict(os.environ)
  env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def _run_job(job: Job, workdir, *, preset: str, epochs, env: dict) -> dict:
  run_dir = storage.path(job.directory(workdir))
  result_path = run_dir / "result.json"
  if result_path.exists():
    return json.loads(result_path.read_text())
  if run_dir.exists():  # A run stopped midway (the evidence recipe keeps no checkpoint): start it again.
    run_dir.rmtree()
  run_dir.mkdir(parents=True)
  with open(os.fspath(run_dir / "log.txt"), "w", encoding="utf-8") as log:
    done = subprocess.run(
      job_command(job, workdir, preset=preset, epochs=epochs),
      stdout=log,
      stderr=subprocess.STDOUT,
      env=env,
      check=False,
    )
  if done.returncode:
    raise RuntimeError(f"run {job.directory(workdir)} failed (exit {done.returncode}); its log: {run_dir / 'log.txt'}")
  return json.loads(result_path.read_text())


def train_one(job_dir: str, method: str, sweep: str, value, seed: int, *, preset: str, epochs=None) -> dict:
  """Trains one run in this process and writes its `result.json`: untrained and final kNN, their difference
  (the gain), the final effective rank and unique-prototype count, and the wall time."""
  from simdino_jax import train  # pylint: disable=import-outside-toplevel

  config = run_config(method, sweep, value, seed, preset=preset, epochs=epochs)
  started = time.perf_counter()
  train.run(config, job_dir)
  evals = [r for r in metrics_lib.read_metrics(storage.path(job_dir) / "metrics.jsonl") if "knn_top1_k20" in r]
  first, last = evals[0], evals[-1]
  result = {
    "method": method,
    "sweep": sweep,
    "value": value,
    "seed": seed,
    "untrained_knn": first["knn_top1_k20"],
    "final_knn": last["knn_top1_k20"],
    "knn_gain": last["knn_top1_k20"] - first["knn_top1_k20"],
    "effective_rank": last.get("diag_effective_rank"),
    "unique_prototypes": last.get("diag_unique_prototypes"),
    "final_loss": last.get("loss"),
    "wall_s": time.perf_counter() - started,
  }
  storage.path(job_dir).joinpath("result.json").write_text(json.dumps(result, indent=2))
  return result


def run(
  workdir,
  *,
  sweep: str = "all",
  pair: str = "dino",
  values=None,
  seed: int = 0,
  seeds: int = 3,
  workers: int = 1,
  preset: str = "evidence",
  epochs=None,
) -> dict:
  """Trains every run of the sweep(s) (`workers` subprocesses at a time), then writes each sweep's CSV, summary
  and figure. `values` (strings, one sweep only): a subset or extension of its grid. Returns {sweep: summary}."""
  sweeps = list(SWEEPS) if sweep == "all" else [sweep]
  for name in sweeps:
    _check(name, pair)
  if seeds < 1 or workers < 1:
    raise ValueError(f"--seeds and --workers must be at least 1, got {seeds} and {workers}.")
  if values and len(sweeps) > 1:
    raise ValueError("--sweep_values needs one --sweep (not all): the values are that sweep's.")
  grids = {name: tuple(_parse_value(name, v) for v in values) if values else SWEEPS[name].values for name in sweeps}
  seed_list = list(range(seed, seed + seeds))
  jobs = plan(grids, pair, seed_list, preset=preset, epochs=epochs)
  # Seed-major: every cell's first seed comes before any cell's second (an early full picture, a warm cache).
  unique = sorted(set(jobs.values()), key=lambda j: (j.seed, sweeps.index(j.sweep), str(j.value), j.method))
  env = _worker_env()
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.fspath(storage.path(workdir) / "xla_cache"))
  print(
    f"sweep {', '.join(sweeps)} | {' vs '.join(PAIRS[pair])} | seeds {seed_list} | {len(unique)} runs "
    f"({len(jobs)} cells × seeds before sharing) | {workers} at a time",
    flush=True,
  )
  results, started = {}, time.perf_counter()
  with futures.ThreadPoolExecutor(workers) as pool:
    pending = {pool.submit(_run_job, job, workdir, preset=preset, epochs=epochs, env=env): job for job in unique}
    for count, done in enumerate(futures.as_completed(pending), 1):
      job = pending[done]
      results[job] = done.result()
      r = results[job]
      print(
        f"[{count}/{len(unique)}] {job.method} {job.cell} seed {job.seed}: kNN {100 * r['untrained_knn']:.1f}"
        f" → {100 * r['final_knn']:.1f}% (gain {100 * r['knn_gain']:+.1f}), rank {r['effective_rank']:.2f}, "
        f"{r['wall_s']:.0f} s  [{(time.perf_counter() - started) / 60:.1f} min]",
        flush=True,
      )
  out = {}
  for name in sweeps:
    rows = [
      {**results[jobs[(name, value, method, s)]], "sweep": name, "value": value, "shared_run": cell}
      for value in grids[name]
      for method in PAIRS[pair]
      for s in seed_list
      for cell in [jobs[(name, value, method, s)].cell]
    ]
    out[name] = write_outputs(storage.path(workdir) / name, name, pair, grids[name], rows)
  return out


def summarize(rows: list[dict], name: str, pair: str, values) -> dict:
  """Per method and value: mean, std (ddof = 1) and the seeds' values of the gain, final kNN and rank."""
  cells = []
  for method in PAIRS[pair]:
    for value in values:
      mine = [r for r in rows if r["method"] == method and r["value"] == value]
      cell = {"method": method, "value": value, "seeds": [r["seed"] for r in mine]}
      for key in ("knn_gain", "final_knn", "untrained_knn", "effective_rank", "unique_prototypes", "wall_s"):
        figures = [r[key] for r in mine if r.get(key) is not None]
        if figures:
          cell[key] = figures
          cell[f"{key}_mean"] = float(np.mean(figures))
          cell[f"{key}_std"] = float(np.std(figures, ddof=1)) if len(figures) > 1 else 0.0
      cells.append(cell)
  centers = [r["value"] for r in rows if r.get("shared_run") == "center" and r["method"] == PAIRS[pair][0]]
  return {
    "sweep": name,
    "setting": SWEEPS[name].setting,
    "center": centers[0] if centers else None,
    "values": list(values),
    "methods": list(PAIRS[pair]),
    "cells": cells,
  }


def write_outputs(directory, name: str, pair: str, values, rows: list[dict]) -> dict:
  """sweep.csv, summary.json and sweep.png of one sweep in `directory`; returns the summary."""
  reproduce.write_csv(rows, directory / "sweep.csv")
  summary = summarize(rows, name, pair, values)
  storage.write_shared(directory / "summary.json", json.dumps(summary, indent=2))
  plot(summary, directory / "sweep.png")
  return summary


def plot(summary: dict, path) -> None:
  """Two panels over the sweep's values: kNN gain (mean ± std over seeds, each seed a dot) and effective rank."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  values = summary["values"]
  labels = [MODEL_LABELS.get(v, str(v)) + (" *" if v == summary["center"] else "") for v in values]
  x = np.arange(len(values))
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  methods = summary["methods"]
  width = 0.8 / len(methods)
  for i, method in enumerate(methods):
    cells = [c for c in summary["cells"] if c["method"] == method]
    offset = (i - (len(methods) - 1) / 2) * width
    for ax, key, scale in ((axes[0], "knn_gain", 100.0), (axes[1], "effective_rank", 1.0)):
      mean = [scale * c.get(f"{key}_mean", np.nan) for c in cells]
      std = [scale * c.get(f"{key}_std", 0.0) for c in cells]
      ax.bar(x + offset, mean, width, yerr=std, color=f"C{i}", alpha=0.75, capsize=3, label=method)
      for j, c in enumerate(cells):
        seeds = [scale * v for v in c.get(key, [])]
        ax.scatter(np.full(len(seeds), x[j] + offset), seeds, s=9, color="k", zorder=3)
  axes[0].axhline(0.0, color="k", linewidth=0.8)
  axes[0].set(ylabel="kNN top-1 gain over untrained (points)")
  axes[1].set(ylabel="effective rank (teacher features)")
  for ax in axes:
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel(f"{summary['setting']} (* the recipe's)", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
  axes[0].legend(fontsize=8)
  seeds = len(summary["cells"][0]["seeds"])
  fig.suptitle(f"sweep {summary['sweep']}: mean ± std over {seeds} seed(s), dots: seeds", fontsize=9)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  storage.write_shared(path, png.getvalue())


def _parse_value(sweep: str, text: str):
  kind = type(SWEEPS[sweep].values[0])
  return kind(float(text)) if kind is int else kind(text)


def main(argv) -> None:
  """The sweep(s) of `--sweep`; with `--job_dir`, one run of a sweep (what `run` starts as a subprocess)."""
  del argv
  f = flags.FLAGS
  preset = "quick" if f.quick else "evidence"
  if f.job_dir:
    train_one(f.job_dir, f.method, f.sweep, _parse_value(f.sweep, f.values[0]), f.seed, preset=preset, epochs=f.epochs)
  else:
    run(
      f.workdir,
      sweep=f.sweep,
      pair=f.pair,
      values=f.values,
      seed=f.seed,
      seeds=f.seeds,
      workers=f.workers,
      preset=preset,
      epochs=f.epochs,
    )


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program."""
  flags.DEFINE_string("workdir", None, "Output directory (runs/, one folder per sweep).")
  flags.DEFINE_string("sweep", "all", f"One of {', '.join(SWEEPS)}, or all.")
  flags.DEFINE_enum("pair", "dino", list(PAIRS), "dino: DINO vs SimDINO; dinov2: DINOv2 vs SimDINOv2.")
  flags.DEFINE_list("values", None, "These values of the one sweep instead of its grid.")
  flags.DEFINE_integer("seed", 0, "First seed.")
  flags.DEFINE_integer("seeds", 3, "Runs per method and value, with seeds seed, seed + 1, ...")
  flags.DEFINE_integer("workers", 1, "Runs at a time, one CPU core each.")
  flags.DEFINE_bool(
    "quick", False, "Centre on the reproduction's --quick preset (a pipeline check) instead of --evidence."
  )
  flags.DEFINE_float("epochs", None, "Epochs per run (default: the preset's).")
  flags.DEFINE_string("job_dir", None, "Internal: train the one run of --method, --sweep, --values, --seed here.")
  flags.DEFINE_string("method", None, "Internal, with --job_dir: the objective recipe.")
  flags.register_validator(
    "workdir", lambda w: w or flags.FLAGS.job_dir, "--workdir is required (the sweep's output directory)."
  )


if __name__ == "__main__":
  _define_flags()
  app.run(main)
