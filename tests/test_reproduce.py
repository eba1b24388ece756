"""The one-command reproduction in --quick mode: curves, plots and kNN above chance."""

import csv
import json
import os

from simdino_jax import reproduce


def test_quick_reproduction_writes_curves_and_learns(tmp_path):
  methods = ("dino", "simdino")
  summary = reproduce.run(str(tmp_path), quick=True, methods=methods, epochs=3.0)
  for name in ("curves.csv", "knn.png", "losses.png", "prototypes.png", "summary.json"):
    assert os.path.getsize(tmp_path / name) > 0, name
  with open(tmp_path / "curves.csv") as f:
    rows = list(csv.DictReader(f))
  for method in methods:
    knn = [float(r["knn_top1_k20"]) for r in rows if r["method"] == method and r.get("knn_top1_k20")]
    assert len(knn) == 3, f"{method}: one kNN evaluation per epoch expected, got {knn}"
    # Chance is 10% on the 10 digit classes.
    assert summary[method]["knn_top1_k20"] > 0.3, summary
  assert json.loads((tmp_path / "summary.json").read_text())["runs"].keys() == set(methods)
