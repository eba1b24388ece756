"""Offline evaluation of a checkpoint (kNN and linear probe), as a function and as a CLI."""

import json
import os
import subprocess
import sys

import jax
import optax
import pytest

from simdino_jax import data
from simdino_jax import evaluate
from simdino_jax import parallel
from simdino_jax import train
from simdino_jax.evaluation import evaluators
from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
create_mesh = parallel.create_mesh


def backbone_norm_evaluator(options, inputs):
  """A custom evaluator: the global norm of the evaluated backbone."""
  del options, inputs
  return lambda params: {"backbone_norm": float(optax.global_norm(params["backbone"]))}


evaluators.EVALUATORS.add("backbone_norm", backbone_norm_evaluator)  # A new evaluator: this one line.


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A tiny simdino run whose last step also ran the in-training kNN (k = 20) on the teacher."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = train_utils.tiny_config("simdino", eval_every_epochs=100.0)
  config.evals.backbone_norm = {"every_epochs": -1.0}
  # On one device, like the offline evaluations of the tests (a module fixture runs before conftest's per-test
  # one-device default): other device counts round the features differently.
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(parallel, "create_mesh", lambda devices=None: create_mesh(jax.devices()[:1]))
    last = train.run(config, workdir)
  return workdir, config, last


def test_offline_knn_and_linear_probe_of_a_checkpoint(trained_workdir):
  workdir, config, last = trained_workdir
  results = evaluate.evaluate_checkpoint(
    workdir,
    evaluate.protocol_evals(
      "both",
      {
        "knn": {"k": (10, 20)},
        "linear_probe": {"epochs": 3, "learning_rates": (1e-3, 1e-2), "n_last_blocks": 1, "avgpool": True},
      },
    ),
  )
  assert results["step"] == config.total_steps and results["backbone"] == "teacher"
  # The same teacher, features and kNN rule as the training loop's evaluation: the same accuracy.
  assert results["knn_top1_k20"] == pytest.approx(last["knn_top1_k20"], abs=1e-9)
  for key in ("knn_top1_k10", "knn_top1_k20", "linear_top1_best", "linear_top1_final"):
    assert 0.0 <= results[key] <= 1.0, (key, results)
  assert results["linear_top1_best"] >= results["linear_top1_final"]
  # Reported as trained: the base lr scaled by batch / 256 (batch 1024 < the digits train split).
  assert min(abs(results["linear_best_lr"] - lr * 1024 / 256) for lr in (1e-3, 1e-2)) < 1e-9
  with open(os.path.join(workdir, f"eval_{config.total_steps}.json")) as f:
    assert json.load(f)["knn_top1_k20"] == results["knn_top1_k20"]
  student = evaluate.evaluate_checkpoint(workdir, {"knn": {"k": (20,)}}, backbone="student")
  assert student["backbone"] == "student" and 0.0 <= student["knn_top1_k20"] <= 1.0


def test_evaluation_errors_name_the_fix(tmp_path, trained_workdir):
  with pytest.raises(FileNotFoundError, match="pass the --workdir of a training run"):
    evaluate.evaluate_checkpoint(str(tmp_path))
  with pytest.raises(ValueError, match=r"No checkpoint of step 3 .* available: \[4\]"):
    evaluate.evaluate_checkpoint(trained_workdir[0], step=3)
  with pytest.raises(
    ValueError,
    match="Unknown protocol 'svm'; valid: dino_knn, dinov2_knn, dino_linear, dinov2_linear, simdinov2_linear, knn, "
    "linear, both",
  ):
    evaluate.protocol_evals("svm")


def test_evaluate_cli_prints_the_table(trained_workdir):
  env = train_utils.subprocess_env()
  result = subprocess.run(
    [sys.executable, "-m", "simdino_jax.evaluate", f"--workdir={trained_workdir[0]}", "--knn_k=20"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "knn_top1_k20" in result.stdout and "objective" in result.stdout, result.stdout


def test_periodic_eval_of_a_resident_split_equals_streaming_it_from_the_source():
  """config.data.on_device: the loop's kNN reads the split it already holds, with the same result."""
  config = train_utils.tiny_config(
    "dino", eval_every_epochs=1.0, **{"eval_settings.max_train_examples": 300, "eval_settings.max_test_examples": 100}
  )
  trainer = train.build(config, num_examples=config.batch_size)
  resident = data.load_split(config.data, config.data.train_split)

  def run_in_training(resident_split):
    inputs = lambda: evaluators.open_inputs(config, trainer.mesh, trainer.graphdef, resident_split)
    return evaluators.run_all(evaluators.scheduled(config, inputs, trainer.steps_per_epoch), trainer.state.teacher)

  with jax.set_mesh(trainer.mesh):
    streamed, held = run_in_training(None), run_in_training(resident)
  assert streamed == pytest.approx(held, abs=1e-6)
  assert 0.0 < streamed["knn_top1_k20"] <= 1.0 and streamed["diag_unique_prototypes"] > 1


def test_a_registered_evaluator_runs_in_training_and_offline(trained_workdir):
  workdir, config, last = trained_workdir
  metrics = [r for r in train_utils.strict_metrics(workdir) if "backbone_norm" in r]
  assert [r["step"] for r in metrics] == [0, config.total_steps]  # The untrained network, then the end.
  offline = evaluate.evaluate_checkpoint(workdir, {"backbone_norm": {}})
  assert offline["backbone_norm"] == pytest.approx(last["backbone_norm"], rel=1e-6) and last["backbone_norm"] > 0
