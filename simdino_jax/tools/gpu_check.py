"""One accelerator run that brings back every figure: the step benchmark, the input pipeline, DINO vs SimDINO.

    launch/gpu_check.sh prepare          # here: wheels + CIFAR-10 into .gpu_check/ (see launch/README.md)
    launch/gpu_check.sh run OUT_DIR      # on the GPU machine: python -m simdino_jax.tools.gpu_check --out=OUT_DIR

Writes at most 8 files into --out:
  steps.csv      the train step of dino, simdino and dinov2 at ViT-S/16 and ViT-B/16, batch 64, XLA and cuDNN
                 attention: images/s, ms/step, MFU (analytic FLOPs / --peak_tflops), peak memory, compile
                 seconds; rows that do not fit in --bench_seconds are written with status "skipped (time
                 budget)". runtime_peak_gb is the process's peak so far (JAX never resets it): compiled_peak_gb
                 is the row's own.
  pipeline.csv   images/s of the host pipeline and of the on-device gather + multi-crop + masks (CIFAR-10).
  curves.csv, knn.png, losses.png, prototypes.png
                 DINO vs SimDINO on CIFAR-10 (ViT-T/4, the full-mode recipe of simdino_jax.tools.reproduce, split held
                 on the device): the same number of epochs for both, as many as fit in --train_seconds each
                 (both steps compile first, at once; then each run loads its step from the compilation cache,
                 evaluates kNN six times and trains), kNN every sixth of the run.
  summary.json   the figures above, the device, the epochs and the wall time of each part.
`--parts` picks some of steps, pipeline, curves (default: steps and curves). `--dry_run` runs the same
path at tiny sizes on any backend (a test runs it on CPU).
"""

import concurrent.futures
import csv
import json
import math
import os
import time
from typing import NamedTuple

import numpy as np
from absl import app
from absl import flags

FLAGS = flags.FLAGS

STEP_METHODS = ("dino", "simdino", "dinov2")
STEP_MODELS = ("ViT-S/16", "ViT-B/16")
ATTENTIONS = ("cudnn", "xla")
STEP_COLUMNS = (
  "method",
  "model",
  "attention",
  "batch",
  "status",
  "images_per_s",
  "step_ms",
  "mfu_analytic",
  "mfu_xla",
  "compiled_peak_gb",
  "runtime_peak_gb",
  "compile_s",
)
CURVE_METHODS = ("dino", "simdino")
PARTS = ("steps", "pipeline", "curves")
DEFAULT_PARTS = ("steps", "curves")  # with the default budgets, about 9 minutes on an H100 machine
RUN_OVERHEAD_SECONDS = 45.0  # a run's step from the compilation cache (12 s on an H100) and its six kNN evaluations


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (so the module imports anywhere)."""
  flags.DEFINE_string("out", None, "Output folder (at most 8 files).", required=True)
  flags.DEFINE_string(
    "cifar",
    ".gpu_check/cifar10_compact",
    "Folder with the compact CIFAR-10 train.npz and test.npz (launch/gpu_check.sh prepare copies them there).",
  )
  flags.DEFINE_string("scratch", "/tmp/gpu_check", "Decoded data and training workdirs (not returned).")
  flags.DEFINE_float(
    "bench_seconds",
    110.0,
    "Time budget of the step benchmark: each row compiles (about 1.5 min on "
    "an H100 machine) and runs alone; the default holds one row.",
  )
  flags.DEFINE_float(
    "train_seconds",
    110.0,
    "Wall time of each CIFAR-10 run (its step loaded from the compilation "
    "cache, kNN evaluations and training; the compiles come before, both at once).",
  )
  flags.DEFINE_float("peak_tflops", 746.0, "Peak TFLOP/s for MFU.")
  flags.DEFINE_list(
    "parts",
    list(DEFAULT_PARTS),
    f"Parts to run, in order: any of {', '.join(PARTS)} (the "
    "pipeline is measured in docs/gpu_check_h100/; its compile takes about 1.5 min).",
  )
  flags.DEFINE_bool("dry_run", False, "Tiny sizes on any backend, to check the whole path in seconds.")


def step_rows(*, dry_run: bool, budget_s: float, peak_tflops: float) -> list[dict]:
  """benchmark_step of every method × model × attention at batch 64, most wanted first, within budget_s.

  Rows compile and run one at a time: on an H100, compiles on several threads slowed each other and a compile's
  autotuning beside a running step failed (cudaErrorStreamCaptureUnjoined; docs/gpu_check_h100/README.md). A row
  starts only while the budget left holds the slowest compile so far; the rest are written as skipped.
  """
  import jax

  from simdino_jax import configs
  from simdino_jax.tools import benchmark

  plan = [(method, model, attention) for attention in ATTENTIONS for model in STEP_MODELS for method in STEP_METHODS]
  if dry_run or jax.default_backend() != "gpu":  # the cuDNN kernel needs a GPU
    plan = [p for p in plan if p[2] == "xla"]
  if dry_run:
    plan = plan[:1]
  rows, deadline, slowest_compile_s = [], time.perf_counter() + budget_s, 0.0
  for method, model, attention in plan:
    config = (
      configs.load(method, "preset=dry_run")
      if dry_run
      else benchmark.recipe_config(method, model, batch=64, attention_impl=attention)
    )
    row = {"method": method, "model": model, "attention": attention, "batch": config.batch_size}
    rows.append(row)
    if deadline - time.perf_counter() < slowest_compile_s:
      row["status"] = "skipped (time budget)"
      continue
    start = time.perf_counter()
    try:
      trainer, compiled, compile_s = benchmark.compile_step(config)
      figures = benchmark.time_step(
        config,
        trainer,
        compiled,
        compile_s,
        steps=2 if dry_run else 10,
        warmup=1 if dry_run else 2,
        peak_tflops=peak_tflops,
      )
      row.update(status="ok", **{k: figures[k] for k in STEP_COLUMNS if k in figures})
      del trainer, compiled  # freed before the next row compiles
    except Exception as error:  # pylint: disable=broad-except  # one failing row must not lose the others
      row["status"] = f"error: {type(error).__name__}: {error}"[:300]
    slowest_compile_s = max(slowest_compile_s, row.get("compile_s", time.perf_counter() - start))
    print(row, flush=True)
  return rows


def decode_cifar(source: str, scratch: str, *, dry_run: bool) -> str:
  """The npz source's `path` pattern for CIFAR-10 decoded from the compact bundle (a 256/128 subset in
  a dry run)."""
  from simdino_jax.tools import compact

  out = os.path.join(scratch, "data")
  for split, limit in (("train", 256), ("test", 128)):
    path = os.path.join(out, f"cifar10_{split}.npz")
    if os.path.exists(path):
      continue
    source_path = os.path.join(source, f"{split}.npz")
    if not os.path.exists(source_path):
      raise FileNotFoundError(
        f"{source_path} not found: run `launch/gpu_check.sh prepare` first (it copies "
        "the compact CIFAR-10 into .gpu_check/), and carry .gpu_check."
      )
    images, labels = compact.decode_compact(source_path, limit if dry_run else None)
    os.makedirs(out, exist_ok=True)
    np.savez(path, image=images, label=labels)
  return os.path.join(out, "cifar10_{split}.npz")


def pipeline_row(data_path: str, *, dry_run: bool) -> dict:
  """benchmark_pipeline on CIFAR-10 with the full-mode crops (batch 256)."""
  from simdino_jax.tools import benchmark, reproduce

  config = reproduce.method_config(
    "dino",
    preset="quick" if dry_run else "full",
    dataset="npz",
    model="ViT-T/4",
    epochs=1.0,
    batch=64 if dry_run else 256,
    eval_every=1.0,
    seed=0,
    data_path=data_path,
  )
  return {
    "dataset": "cifar10",
    "batch": config.batch_size,
    **benchmark.benchmark_pipeline(config, batches=2 if dry_run else 20),
  }


def curve_config(method: str, data_path: str, *, dry_run: bool, epochs: float, eval_every: float):
  """The full-mode reproduction recipe (quick sizes in a dry run), no checkpoints or TensorBoard."""
  from simdino_jax.tools import reproduce

  config = reproduce.method_config(
    method,
    preset="quick" if dry_run else "full",
    dataset="npz",
    model="vit_nano" if dry_run else "ViT-T/4",
    epochs=epochs,
    batch=64 if dry_run else 256,
    eval_every=eval_every,
    seed=0,
    data_path=data_path,
  )
  config.checkpoint_every_steps, config.tensorboard, config.async_checkpointing = 0, False, False
  return config


class IndexedStep(NamedTuple):
  """A compiled train step on a device-held split, with what it runs on."""

  trainer: object
  dataset: object  # the split on the device
  rows: object  # one batch of row indices
  compiled: object
  compile_s: float


def compile_indexed_step(config) -> IndexedStep:
  """The train step of `config`, compiled on its device-held split.

  The compiled step lands in the persistent compilation cache, so the training run of the same config loads it.
  """
  import jax

  from simdino_jax import data, parallel, train

  iterator = data.create_train_iterator(
    config.data, batch_size=config.batch_size, seed=0, process_index=0, process_count=1
  )
  trainer = train.build(config, num_examples=iterator.num_examples)
  with jax.set_mesh(trainer.mesh):
    dataset = parallel.replicate(iterator.resident_images, trainer.mesh)
    rows = parallel.global_batch({"index": next(iterator)["index"]}, trainer.mesh)["index"]
    start = time.perf_counter()
    compiled = trainer.indexed_step_fn.lower(trainer.state, dataset, rows, trainer.schedules).compile()
  return IndexedStep(trainer, dataset, rows, compiled, time.perf_counter() - start)


def seconds_per_epoch(step: IndexedStep) -> float:
  """Seconds per epoch of a compiled step (the median of a few timed steps)."""
  import jax

  from simdino_jax.tools import benchmark

  state = step.trainer.state

  def one_step():
    nonlocal state
    state, metrics = step.compiled(state, step.dataset, step.rows, step.trainer.schedules)
    jax.block_until_ready(metrics["loss"])

  with jax.set_mesh(step.trainer.mesh):
    one_step()
    step_s = benchmark.median_seconds(one_step, 5)
  return step_s * step.trainer.steps_per_epoch


def curves(data_path: str, scratch: str, out: str, *, dry_run: bool, train_seconds: float) -> dict:
  """DINO vs SimDINO for the same epochs, as many as fit in train_seconds each; writes curves.csv and plots.

  Both methods' steps compile at once first (into the persistent cache, which the runs then load) and the slower
  step's epoch time sets the epochs: train_seconds = cache load + kNN evaluations + epochs.
  """
  from simdino_jax import train
  from simdino_jax.tools import reproduce

  calibration = {m: curve_config(m, data_path, dry_run=dry_run, epochs=1.0, eval_every=1.0) for m in CURVE_METHODS}
  with concurrent.futures.ThreadPoolExecutor(max_workers=len(CURVE_METHODS)) as pool:
    compiled = dict(zip(CURVE_METHODS, pool.map(compile_indexed_step, calibration.values())))
  epoch_s = max(seconds_per_epoch(step) for step in compiled.values())
  compile_s = {m: round(step.compile_s, 1) for m, step in compiled.items()}
  del compiled  # free both states before the runs
  epochs = 1 if dry_run else max(1, math.floor((train_seconds - RUN_OVERHEAD_SECONDS) / epoch_s))
  print(f"calibration: {epoch_s:.1f} s/epoch, compile s {compile_s}; {epochs} epochs each", flush=True)
  eval_every = max(1.0, float(round(epochs / 6)))
  summary, steps_per_epoch = {}, {}
  for method in CURVE_METHODS:
    config = curve_config(method, data_path, dry_run=dry_run, epochs=float(epochs), eval_every=eval_every)
    start = time.perf_counter()
    last = train.run(config, os.path.join(scratch, "runs", method))
    steps_per_epoch[method] = train.count_steps_per_epoch(config)
    summary[method] = {
      "epochs": epochs,
      "knn_top1_k20": last.get("knn_top1_k20"),
      "compile_s": compile_s[method],
      "wall_s": time.perf_counter() - start,
    }
    print(f"{method}: {summary[method]}", flush=True)
  rows = reproduce.collect(os.path.join(scratch, "runs"), CURVE_METHODS, steps_per_epoch)
  reproduce.write_csv(rows, os.path.join(out, "curves.csv"))
  reproduce.plot(rows, out, CURVE_METHODS)
  return summary


def write_rows(rows: list[dict], path: str, columns) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def run(
  out: str,
  *,
  cifar: str,
  scratch: str,
  dry_run: bool,
  bench_seconds: float,
  train_seconds: float,
  peak_tflops: float,
  parts=PARTS,
) -> dict:
  """The chosen parts in turn; a part that fails is recorded in the summary and the next part still runs.

  summary.json is rewritten after each part, so a run stopped at its time limit keeps what it measured. Compiled
  steps go to a persistent cache under `scratch` (the CIFAR-10 runs reuse their calibration's compile).
  """
  import jax

  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise ValueError(f"Unknown parts {unknown}; valid: {', '.join(PARTS)}.")
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(scratch, "jax_cache"))
  os.makedirs(out, exist_ok=True)
  device = jax.devices()[0]
  summary = {
    "device": f"{jax.device_count()} x {device.device_kind}",
    "backend": jax.default_backend(),
    "versions": _versions(),
    "dry_run": dry_run,
    "wall_s": {},
    "errors": {},
  }
  print(f"device: {summary['device']}, versions: {summary['versions']}", flush=True)

  def steps():
    rows = step_rows(dry_run=dry_run, budget_s=bench_seconds, peak_tflops=peak_tflops)
    write_rows(rows, os.path.join(out, "steps.csv"), STEP_COLUMNS)
    return rows

  def pipeline():
    row = pipeline_row(decode_cifar(cifar, scratch, dry_run=dry_run), dry_run=dry_run)
    write_rows([row], os.path.join(out, "pipeline.csv"), list(row))
    return row

  def curve_runs():
    data_path = decode_cifar(cifar, scratch, dry_run=dry_run)
    return curves(data_path, scratch, out, dry_run=dry_run, train_seconds=train_seconds)

  for name, part in (("steps", steps), ("pipeline", pipeline), ("curves", curve_runs)):
    if name not in parts:
      continue
    start = time.perf_counter()
    try:
      summary[name] = part()
    except Exception as error:  # pylint: disable=broad-except  # keep the other parts' figures
      summary["errors"][name] = f"{type(error).__name__}: {error}"[:2000]
      print(f"{name} failed: {summary['errors'][name]}", flush=True)
    summary["wall_s"][name] = time.perf_counter() - start
    print(f"{name}: {summary.get(name)} ({summary['wall_s'][name]:.0f} s)", flush=True)
    with open(os.path.join(out, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, default=str)
  return summary


def _versions() -> dict:
  """Versions of the packages the step depends on, as found on this machine."""
  from importlib import metadata

  found = {}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy"):
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return found


def main(argv) -> None:
  del argv
  run(
    FLAGS.out,
    cifar=FLAGS.cifar,
    scratch=FLAGS.scratch,
    dry_run=FLAGS.dry_run,
    bench_seconds=FLAGS.bench_seconds,
    train_seconds=FLAGS.train_seconds,
    peak_tflops=FLAGS.peak_tflops,
    parts=FLAGS.parts,
  )


if __name__ == "__main__":
  _define_flags()
  app.run(main)
