"""launch/gpu_check.sh's entry point runs end to end at tiny sizes on CPU, without TensorFlow, grain or TFDS."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest

from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The GPU image has no TensorFlow, grain or TFDS: the run must not import them.
BLOCKED = ("tensorflow", "tensorflow_datasets", "grain")
RUNNER = (
  "import runpy, sys\n"
  f"for name in {BLOCKED!r}: sys.modules[name] = None\n"  # importing any of them now raises ImportError
  "import simdino_jax.tools.benchmark\n"  # the steps part's module (its figures: tests/test_benchmark.py)
  "sys.argv = ['gpu_check'] + sys.argv[1:]\n"
  "runpy.run_module('simdino_jax.tools.gpu_check', run_name='__main__', alter_sys=True)\n"
)


def test_dry_run_writes_every_file_without_tensorflow(tmp_path):
  """The pipeline and curves parts end to end in a process without TensorFlow (the steps part's files: below)."""
  cifar = train_utils.shared_data("cifar10_compact")
  out = tmp_path / "out"
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      RUNNER,
      f"--out={out}",
      f"--cifar={cifar}",
      f"--scratch={tmp_path / 'scratch'}",
      "--dry_run",
      "--parts=pipeline,curves",
    ],
    cwd=ROOT,
    env=train_utils.subprocess_env(),
    capture_output=True,
    text=True,
    timeout=1800,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  files = sorted(os.listdir(out))
  assert files == ["curves.csv", "knn.png", "losses.png", "pipeline.csv", "prototypes.png", "summary.json"]
  [pipeline] = list(csv.DictReader(open(out / "pipeline.csv")))
  assert float(pipeline["host_images_per_s"]) > 0 and float(pipeline["augment_images_per_s"]) > 0
  curves = list(csv.DictReader(open(out / "curves.csv")))
  assert {row["method"] for row in curves} == {"dino", "simdino"}
  knn = [float(row["knn_top1_k20"]) for row in curves if row.get("knn_top1_k20")]
  assert knn and all(0.0 <= value <= 1.0 for value in knn)
  summary = json.load(open(out / "summary.json"))
  assert summary["errors"] == {} and summary["versions"]["jax"]
  assert summary["dry_run"] and summary["curves"]["dino"]["epochs"] == summary["curves"]["simdino"]["epochs"]


def test_a_failing_part_keeps_the_others(tmp_path, monkeypatch):
  from simdino_jax.tools import gpu_check

  def broken(**_):
    raise RuntimeError("no cuDNN here")

  monkeypatch.setattr(gpu_check, "step_rows", broken)
  monkeypatch.setattr(gpu_check, "decode_cifar", lambda *_, **__: "unused")
  monkeypatch.setattr(gpu_check, "pipeline_row", lambda *_, **__: {"dataset": "cifar10", "batch": 4})
  monkeypatch.setattr(gpu_check, "curves", lambda *_, **__: {"dino": {"epochs": 1}})
  summary = gpu_check.run(
    str(tmp_path),
    cifar="unused",
    scratch=str(tmp_path),
    dry_run=True,
    bench_seconds=1.0,
    train_seconds=1.0,
    peak_tflops=1.0,
  )
  assert summary["errors"] == {"steps": "RuntimeError: no cuDNN here"}
  assert summary["pipeline"]["batch"] == 4 and summary["curves"]["dino"]["epochs"] == 1
  assert json.load(open(tmp_path / "summary.json"))["errors"] == summary["errors"]
  assert sorted(os.listdir(tmp_path)) == ["pipeline.csv", "summary.json"]

  only = gpu_check.run(
    str(tmp_path / "only"),
    cifar="unused",
    scratch=str(tmp_path),
    dry_run=True,
    bench_seconds=1.0,
    train_seconds=1.0,
    peak_tflops=1.0,
    parts=("curves",),
  )
  assert "steps" not in only and "pipeline" not in only and only["curves"]["dino"]["epochs"] == 1
  with pytest.raises(ValueError, match="Unknown parts.*valid: steps, pipeline, curves"):
    gpu_check.run(
      str(tmp_path),
      cifar="unused",
      scratch=str(tmp_path),
      dry_run=True,
      bench_seconds=1.0,
      train_seconds=1.0,
      peak_tflops=1.0,
      parts=("step",),
    )


def test_step_rows_run_in_plan_order_within_the_budget(monkeypatch, tmp_path):
  """Six CPU rows (XLA attention), each compiled and timed alone in plan order: a failing compile is an error row,
  and once the budget left is below the slowest compile so far, the remaining rows are skipped."""
  from simdino_jax.tools import benchmark, gpu_check

  compiled_names = []

  def compile_step(config):
    name = (config.objective.name, config.model.name)
    compiled_names.append(name)
    if name == ("simdino", "ViT-S/16"):
      raise RuntimeError("no kernel")
    seconds = 1.0 if name == ("dino", "ViT-B/16") else 0.1
    time.sleep(seconds)
    return "trainer", "compiled", seconds

  monkeypatch.setattr(benchmark, "compile_step", compile_step)
  monkeypatch.setattr(
    benchmark,
    "time_step",
    lambda config, trainer, compiled, compile_s, **_: {
      "images_per_s": 100.0,
      "compile_s": compile_s,
      "trainer": trainer,
    },
  )
  rows = gpu_check.step_rows(dry_run=False, budget_s=1.6, peak_tflops=1.0)
  assert [(r["method"], r["model"], r["attention"]) for r in rows] == [
    (m, model, "xla") for model in gpu_check.STEP_MODELS for m in gpu_check.STEP_METHODS
  ]
  assert [r["status"] for r in rows] == [
    "ok",
    "error: RuntimeError: no kernel",
    "ok",
    "ok",
    "skipped (time budget)",
    "skipped (time budget)",
  ]
  assert compiled_names == [(m, model) for model in gpu_check.STEP_MODELS for m in gpu_check.STEP_METHODS][:4]
  assert rows[0]["images_per_s"] == 100.0 and rows[0]["compile_s"] == 0.1 and "trainer" not in rows[0]
  summary = gpu_check.run(
    str(tmp_path),
    cifar="unused",
    scratch=str(tmp_path),
    dry_run=False,
    bench_seconds=1.6,
    train_seconds=1.0,
    peak_tflops=1.0,
    parts=("steps",),
  )
  written = list(csv.DictReader(open(tmp_path / "steps.csv")))
  assert [r["status"] for r in written] == [r["status"] for r in summary["steps"]] and len(written) == 6
  assert float(written[0]["images_per_s"]) == 100.0 and set(written[0]) == set(gpu_check.STEP_COLUMNS)
