"""The one-command reproduction in --quick mode, run as users run it: curves, plots and kNN above chance."""

import csv
import json
import os
import subprocess
import sys

from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_reproduction_writes_curves_and_learns(tmp_path):
  methods = ("dino", "simdino")
  env = train_utils.subprocess_env()  # One CPU device, as on a user's machine.
  result = subprocess.run(
      [sys.executable, "-m", "simdino_jax.reproduce", "--quick", f"--workdir={tmp_path}",
       f"--methods={','.join(methods)}", "--epochs=1"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for name in ("curves.csv", "knn.png", "losses.png", "prototypes.png", "summary.json"):
    assert os.path.getsize(tmp_path / name) > 0, name
  with open(tmp_path / "curves.csv") as f:
    rows = list(csv.DictReader(f))
  summary = json.loads((tmp_path / "summary.json").read_text())["runs"]
  assert summary.keys() == set(methods)
  for method in methods:
    knn = [(float(r["epoch"]), float(r["knn_top1_k20"])) for r in rows
           if r["method"] == method and r.get("knn_top1_k20")]
    # The untrained network first (epoch 0), then the kNN of the trained one.
    assert [epoch for epoch, _ in knn] == [0.0, 1.0], f"{method}: {knn}"
    # Chance is 10% on the 10 digit classes.
    assert summary[method]["knn_top1_k20"] > 0.3, summary
