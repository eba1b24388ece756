"""The one-command reproduction: seed aggregation, the raw-pixel baseline, the per-seed CSV, and the --quick
pipeline check run as users run it."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from simdino_jax import configs
from simdino_jax.tools import reproduce
from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_aggregate_gives_mean_and_sample_std_per_method():
  runs = [
    {"method": "dino", "seed": 0, "knn_top1_k20": 0.5, "wall_s": 10.0, "unique_prototypes": None},
    {"method": "dino", "seed": 1, "knn_top1_k20": 0.7, "wall_s": 14.0, "unique_prototypes": None},
    {"method": "dino", "seed": 2, "knn_top1_k20": 0.6, "wall_s": 12.0, "unique_prototypes": None},
    {"method": "simdino", "seed": 0, "knn_top1_k20": 0.8, "wall_s": 20.0, "unique_prototypes": 7},
  ]
  summary = reproduce.aggregate(runs)
  assert list(summary) == ["dino", "simdino"]
  dino = summary["dino"]
  assert dino["seeds"] == [0, 1, 2]
  assert dino["knn_top1_k20_mean"] == pytest.approx(0.6)
  assert dino["knn_top1_k20_std"] == pytest.approx(0.1)  # ddof = 1: sqrt((0.01 + 0.01 + 0) / 2).
  assert dino["wall_s_mean"] == pytest.approx(12.0) and dino["wall_s_std"] == pytest.approx(2.0)
  assert "unique_prototypes_mean" not in dino  # No run of dino has the figure.
  assert summary["simdino"] == {
    "seeds": [0],
    "knn_top1_k20_mean": 0.8,
    "knn_top1_k20_std": 0.0,
    "wall_s_mean": 20.0,
    "wall_s_std": 0.0,
    "unique_prototypes_mean": 7.0,
    "unique_prototypes_std": 0.0,
  }


def test_raw_pixel_knn_matches_numpy(tmp_path):
  rng = np.random.default_rng(2)
  size = 16  # The evidence preset's global-crop size: the pixels are not resized.
  prototypes = rng.uniform(0, 255, (3, size, size, 3))  # Classes of varied purity: cosines that T weighs.
  splits = {}
  for split, n in (("train", 60), ("test", 100)):
    labels = rng.integers(0, 3, n).astype(np.int32)
    purity = rng.uniform(0, 0.3, (n, 1, 1, 1))
    images = (purity * prototypes[labels] + (1 - purity) * rng.uniform(0, 255, (n, size, size, 3))).astype(np.uint8)
    np.savez(tmp_path / f"tiny_{split}.npz", image=images, label=labels)
    splits[split] = (images, labels)
  config = reproduce.method_config(
    "dino",
    preset="evidence",
    dataset="npz",
    model="vit_micro",
    epochs=1.0,
    batch=64,
    eval_every=1.0,
    seed=0,
    data_path=os.fspath(tmp_path / "tiny_{split}.npz"),
  )
  config.eval_settings.batch_size = 8  # Several batches, the last one padded.

  def features(images):
    x = (images.astype(np.float64) / 255.0 - np.asarray(config.aug.mean)) / np.asarray(config.aug.std)
    x = x.reshape(len(x), -1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  train_x, test_x = features(splits["train"][0]), features(splits["test"][0])
  similarity = test_x @ train_x.T
  top = np.argsort(-similarity, axis=1)[:, :20]

  def accuracy(temperature):
    scores = np.zeros((len(test_x), 3))
    for i, neighbours in enumerate(top):
      np.add.at(scores[i], splits["train"][1][neighbours], np.exp(similarity[i, neighbours] / temperature))
    return np.mean(scores.argmax(1) == splits["test"][1])

  assert accuracy(0.07) != accuracy(1.0)  # The data set tells the eval config's T = 0.07 from an unweighted vote.
  assert reproduce.raw_pixel_knn(config)["knn_top1_k20"] == pytest.approx(accuracy(0.07))


def test_evidence_preset_shares_the_small_image_recipe_and_keeps_each_objective():
  for method in reproduce.METHODS:
    config = reproduce.method_config(
      method, preset="evidence", dataset="digits", model="vit_micro", epochs=15.0, batch=64, eval_every=3.0, seed=0
    )
    recipe = configs.load(method, "model=vit_micro,data=digits,batch=64")
    # Shared (docs/small_image_recipe.md): crops, head, lr, and the fast teacher under which DINO learns here.
    assert (config.aug.n_local, config.aug.global_scale, config.aug.local_scale, config.aug.flip_p) == (
      4,
      (0.5, 1.0),
      (0.25, 0.6),
      0.0,
    )
    assert (config.model.head.hidden_dim, config.model.head.bottleneck_dim, config.model.head.out_dim) == (
      128,
      32,
      4096,
    )
    assert (config.optim.base_lr, config.teacher.momentum) == (2e-3, 0.95)
    # The method's own: temperatures and the objective (the KoLeo-proto run adds its λ).
    assert (config.teacher.warmup_temp, config.teacher.temp) == (recipe.teacher.warmup_temp, recipe.teacher.temp)
    if method != "dino_koleo_proto":
      assert config.objective.to_dict() == recipe.objective.to_dict(), method


def test_collect_and_write_csv_keep_each_seed(tmp_path):
  for seed, knn in ((0, 0.25), (1, 0.5)):
    run_dir = tmp_path / "dino" / f"seed_{seed}"
    run_dir.mkdir(parents=True)
    records = [{"step": 0, "knn_top1_k20": knn}, {"step": 10, "loss": 2.0 + seed, "knn_top1_k20": 2 * knn}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  rows = reproduce.collect(tmp_path, ["dino"], {"dino": 5}, seeds=[0, 1])
  reproduce.write_csv(rows, tmp_path / "curves.csv")
  with open(tmp_path / "curves.csv") as f:
    table = list(csv.DictReader(f))
  assert [(r["seed"], r["epoch"], r["knn_top1_k20"]) for r in table] == [
    ("0", "0.0", "0.25"),
    ("0", "2.0", "0.5"),
    ("1", "0.0", "0.5"),
    ("1", "2.0", "1.0"),
  ]
  # The band of knn.png: mean, min and max over the seeds at each epoch.
  assert reproduce.seed_band(rows, "dino", "knn_top1_k20") == ([0.0, 2.0], [0.375, 0.75], [0.25, 0.5], [0.5, 1.0])


def test_quick_reproduction_writes_curves_and_baselines(tmp_path):
  env = train_utils.subprocess_env()  # One CPU device, as on a user's machine.
  result = subprocess.run(  # One method (SimDINO compiles fastest): the pipeline, not the comparison.
    [
      sys.executable,
      "-m",
      "simdino_jax.tools.reproduce",
      "--quick",
      f"--workdir={tmp_path}",
      "--methods=simdino",
      "--epochs=1",
      "--model=vit_nano",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for name in ("curves.csv", "knn.png", "losses.png", "prototypes.png", "summary.json"):
    assert os.path.getsize(tmp_path / name) > 0, name
  with open(tmp_path / "curves.csv") as f:
    rows = list(csv.DictReader(f))
  knn = [(float(r["epoch"]), float(r["knn_top1_k20"])) for r in rows if r.get("knn_top1_k20")]
  assert [epoch for epoch, _ in knn] == [0.0, 1.0], knn  # The untrained network first, then the trained one.
  summary = json.loads((tmp_path / "summary.json").read_text())
  simdino = summary["methods"]["simdino"]
  assert simdino["seeds"] == [0] and simdino["knn_top1_k20_std"] == 0.0
  assert simdino["knn_top1_k20_mean"] == pytest.approx(knn[-1][1])
  assert simdino["untrained_knn_top1_k20_mean"] == pytest.approx(knn[0][1])
  assert summary["raw_pixel_knn_top1_k20"] > 0.8  # Raw pixels of the digits test split: far above chance (10%).


def test_run_over_seeds_aggregates_each_methods_runs(tmp_path, monkeypatch):
  from simdino_jax import train  # pylint: disable=import-outside-toplevel

  def fake_train_run(config, workdir):  # A stand-in trainer: kNN 0.3 untrained, then 0.5 + seed / 10.
    os.makedirs(workdir)
    final = 0.5 + config.seed / 10
    records = [
      {"step": 0, "knn_top1_k20": 0.3, "diag_unique_prototypes": 4096.0},
      {"step": 46, "loss": 1.0, "knn_top1_k20": final, "diag_unique_prototypes": 4000.0 + config.seed},
    ]
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    return {"steps_per_epoch": 23, "knn_top1_k20": final, "diag_unique_prototypes": 4000.0 + config.seed}

  monkeypatch.setattr(train, "run", fake_train_run)
  summary = reproduce.run(os.fspath(tmp_path), preset="evidence", methods=["dino", "simdino"], seed=1, seeds=2)
  with open(tmp_path / "curves.csv") as f:
    table = list(csv.DictReader(f))
  assert [(r["method"], r["seed"], r["epoch"]) for r in table] == [
    ("dino", "1", "0.0"),
    ("dino", "1", "2.0"),
    ("dino", "2", "0.0"),
    ("dino", "2", "2.0"),
    ("simdino", "1", "0.0"),
    ("simdino", "1", "2.0"),
    ("simdino", "2", "0.0"),
    ("simdino", "2", "2.0"),
  ]
  assert summary == json.loads((tmp_path / "summary.json").read_text())
  dino = summary["methods"]["dino"]
  assert dino["seeds"] == [1, 2]
  assert dino["knn_top1_k20_mean"] == pytest.approx(0.65) and dino["knn_top1_k20_std"] == pytest.approx(0.0707107)
  assert dino["untrained_knn_top1_k20_mean"] == 0.3 and dino["unique_prototypes_mean"] == 4001.5
  assert summary["raw_pixel_knn_top1_k20"] > 0.8  # Raw pixels of the digits test split: far above chance (10%).
  for name in ("knn.png", "losses.png", "prototypes.png"):
    assert os.path.getsize(tmp_path / name) > 0, name
