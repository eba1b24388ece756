"""Robustness sweeps (simdino_jax/tools/sweep.py): which runs are shared, what a cell's figures are, resuming, and one
tiny sweep cell end to end as users run it."""

import csv
import json
import os
import subprocess
import sys

import pytest

from simdino_jax.tools import sweep
from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_each_value_changes_only_its_setting():
  dino = sweep.run_config("dino", "momentum", 0.0, 0)
  assert (dino.teacher.momentum, dino.teacher.momentum_end) == (0.0, 0.0)  # Teacher = student throughout.
  assert sweep.run_config("dino", "momentum", 0.9, 0).teacher.momentum_end == 1.0  # The recipe's cosine to 1.
  recipe = sweep.run_config("dino", "lr", 1.0, 0)
  assert sweep.run_config("dino", "lr", 4.0, 0).optim.base_lr == pytest.approx(4 * recipe.optim.base_lr)
  hot = sweep.run_config("dino", "teacher_temp", 0.07, 0)
  assert (hot.teacher.warmup_temp, hot.teacher.temp) == (recipe.teacher.warmup_temp, 0.07)
  assert sweep.run_config("dino", "prototypes", 1024, 0).model.head.out_dim == 1024
  assert sweep.run_config("dino", "batch", 16, 0).batch_size == 16
  assert sweep.run_config("simdino", "model", "vit_mini", 0).model.name == "vit_mini"
  long = sweep.run_config("simdino", "epochs", 60.0, 0)
  assert long.total_epochs == 60.0 and long.eval_every_epochs == 60.0  # kNN untrained and at the end only.


def test_plan_shares_runs_with_equal_configs():
  grids = {"momentum": (0.0, 0.95), "teacher_temp": (0.02, 0.04), "prototypes": (1024, 4096)}
  jobs = sweep.plan(grids, "dino", [0, 1])
  # The recipe's own value (momentum 0.95, temperature 0.04, K 4096) is one run per method and seed, and SimDINO,
  # which has no temperature and no prototypes, runs its recipe for every value of those sweeps.
  for seed in (0, 1):
    center = jobs[("momentum", 0.95, "dino", seed)]
    assert center.cell == "center" and center.seed == seed
    assert jobs[("teacher_temp", 0.04, "dino", seed)] is center and jobs[("prototypes", 4096, "dino", seed)] is center
    assert jobs[("teacher_temp", 0.02, "dino", seed)].cell == "teacher_temp=0.02"
    simdino_center = jobs[("momentum", 0.95, "simdino", seed)]
    for key in (("teacher_temp", 0.02), ("teacher_temp", 0.04), ("prototypes", 1024), ("prototypes", 4096)):
      assert jobs[(*key, "simdino", seed)] is simdino_center, key
  assert len(set(jobs.values())) == 2 * (4 + 2)  # Seeds × (DINO: center, m 0, T 0.02, K 1024; SimDINO: center, m 0).


def test_summary_gives_mean_sample_std_and_each_seed():
  rows = [
    {
      "method": m,
      "value": v,
      "seed": s,
      "knn_gain": g,
      "final_knn": 0.5,
      "untrained_knn": 0.5 - g,
      "effective_rank": 2.0 + s,
      "wall_s": 1.0,
    }
    for m, v, s, g in (
      ("dino", 0.9, 0, 0.1),
      ("dino", 0.9, 1, 0.3),
      ("simdino", 0.9, 0, -0.2),
      ("simdino", 0.9, 1, 0.0),
    )
  ] + [{"method": "dino", "value": 0.95, "seed": 0, "knn_gain": 0.0, "shared_run": "center"}]
  summary = sweep.summarize(rows, "momentum", "dino", (0.9,))  # The center row is outside the values asked.
  dino, simdino = summary["cells"]
  assert (dino["method"], dino["value"], dino["seeds"]) == ("dino", 0.9, [0, 1])
  assert dino["knn_gain"] == [0.1, 0.3] and dino["knn_gain_mean"] == pytest.approx(0.2)
  assert dino["knn_gain_std"] == pytest.approx(0.14142136)  # ddof = 1.
  assert simdino["knn_gain_mean"] == pytest.approx(-0.1) and simdino["effective_rank_mean"] == 2.5
  assert summary["center"] == 0.95  # The value whose run is the recipe's, marked in the figure.


def test_finished_run_is_not_trained_again(tmp_path):
  job = sweep.Job("dino", "momentum=0.9", "momentum", 0.9, 0)
  run_dir = tmp_path / "runs" / "dino" / "momentum=0.9" / "seed_0"
  run_dir.mkdir(parents=True)
  (run_dir / "result.json").write_text(json.dumps({"knn_gain": 0.25}))
  env = {"PATH": ""}  # No python on the path: a subprocess would fail.
  assert sweep._run_job(job, tmp_path, preset="evidence", epochs=None, env=env) == {"knn_gain": 0.25}


def test_unknown_sweep_lists_the_valid_ones():
  with pytest.raises(ValueError, match="Unknown sweep 'momentom'; valid: momentum, teacher_temp, batch"):
    sweep.run("/nonexistent", sweep="momentom")


def test_one_sweep_cell_end_to_end(tmp_path):
  env = train_utils.subprocess_env()
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "simdino_jax.tools.sweep",
      "--sweep=model",
      "--values=vit_nano",
      "--quick",
      "--epochs=1",
      "--seeds=1",
      f"--workdir={tmp_path}",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(tmp_path / "model" / "sweep.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["method"], r["value"], r["seed"]) for r in rows] == [
    ("dino", "vit_nano", "0"),
    ("simdino", "vit_nano", "0"),
  ]
  for row in rows:
    run_dir = tmp_path / "runs" / row["method"] / "model=vit_nano" / "seed_0"
    evals = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if "knn_top1_k20" in line]
    assert [e["step"] for e in evals] == [0, evals[-1]["step"]] and evals[-1]["step"] > 0
    assert float(row["untrained_knn"]) == pytest.approx(evals[0]["knn_top1_k20"])
    assert float(row["final_knn"]) == pytest.approx(evals[-1]["knn_top1_k20"])
    assert float(row["knn_gain"]) == pytest.approx(evals[-1]["knn_top1_k20"] - evals[0]["knn_top1_k20"])
    assert float(row["effective_rank"]) >= 1.0
  summary = json.loads((tmp_path / "model" / "summary.json").read_text())
  assert summary["values"] == ["vit_nano"] and summary["methods"] == ["dino", "simdino"]
  assert os.path.getsize(tmp_path / "model" / "sweep.png") > 0
  assert "[2/2]" in result.stdout
