"""Recipe files: loadable by name from any directory, valid, paired like with like, published numbers in place."""

import importlib
import os
import subprocess
import sys

import pytest

from simdino_jax import configs
from simdino_jax import objectives
from simdino_jax import reproduce
from simdino_jax import validation
from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flat(config) -> dict:
  """{"a.b": value} of a ConfigDict."""
  def walk(d, prefix):
    for key, value in d.items():
      yield from walk(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
  return dict(walk(config.to_dict(), ""))


def differences(a, b) -> dict:
  a, b = flat(a), flat(b)
  return {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


@pytest.mark.parametrize("name", configs.names())
@pytest.mark.parametrize("data", ["imagenet2012", "cifar10"])
def test_every_recipe_is_valid_and_reachable_from_the_repository_root(name, data):
  config = configs.load(name) if name == "digits" else configs.load(name, f"data={data}")
  validation.validate_config(config, num_devices=8)
  assert config.objective.name in objectives.OBJECTIVES.names()
  # The thin file at the root (`--config=configs/<name>.py`) is the package's recipe.
  root_file = importlib.import_module(f"configs.{name}")
  assert root_file.get_config is importlib.import_module(f"simdino_jax.configs.{name}").get_config


def test_unknown_names_list_the_valid_ones():
  with pytest.raises(ValueError, match="valid: digits, dino, dino_boosted"):
    configs.load("dino_v3")
  with pytest.raises(ValueError, match="dino, dinov2, simdino, simdinov2"):
    configs.load("digits", "method=ibot")


def test_published_batches_and_schedules():
  """The numbers the published results belong to (docs/recipes.md)."""
  expected = {  # name: (model, batch, lr scaling, epochs, epoch length, locals, teacher temps, group size)
      "dino_vanilla": ("ViT-S/16", 512, "linear", 100, 0, 8, (0.04, 0.04, 0), 0),
      "dino_boosted": ("ViT-S/16", 1024, "linear", 300, 0, 8, (0.04, 0.07, 30), 0),
      "dino": ("ViT-B/16", 512, "linear", 100, 0, 10, (0.04, 0.04, 0), 0),
      "simdino": ("ViT-B/16", 512, "linear", 100, 0, 10, (0.04, 0.04, 0), 64),
      "dinov2_meta": ("ViT-L/16", 2048, "sqrt", 100, 1250, 8, (0.04, 0.07, 30), 0),
      "dinov2": ("ViT-L/16", 512, "sqrt", 100, 1250, 10, (0.04, 0.07, 30), 0),
      "simdinov2": ("ViT-L/16", 512, "sqrt", 100, 1250, 10, (0.04, 0.07, 30), 64)}
  for name, values in expected.items():
    c = configs.load(name)
    t = c.teacher
    assert (c.model.name, c.batch_size, c.optim.lr_scaling, c.total_epochs, c.epoch_length_steps, c.aug.n_local,
            (t.warmup_temp, t.temp, t.warmup_temp_epochs), c.objective.covariance_group_size) == values, name
  assert not configs.load("dino_boosted").model.head.norm_last_layer
  for name in ("dinov2_meta", "dinov2", "simdinov2"):
    o = configs.load(name).optim
    assert (o.layer_decay, o.patch_embed_lr_mult, o.clip_mode) == (0.9, 0.2, "per_module"), name


def test_reproduction_pairs_differ_only_in_the_objective_and_the_papers_changes():
  run = lambda method: reproduce.method_config(method, preset="full", dataset="cifar10", model="ViT-T/4",
                                               epochs=100.0, batch=256, eval_every=5.0, seed=0)
  assert differences(run("dino"), run("simdino")) == {
      "objective.name": ("dino", "simdino"), "objective.covariance_group_size": (0, 64)}
  assert differences(run("dinov2"), run("simdinov2")) == {
      "objective.name": ("dinov2", "simdinov2"), "objective.covariance_group_size": (0, 64),
      "objective.koleo_weight": (0.1, 0.0), "teacher.momentum": (0.992, 0.9), "model.drop_path_rate": (0.3, 0.2),
      "model.layerscale": (1e-5, 0.1), "optim.warmup_from_min_lr": (False, True)}
  assert set(reproduce.METHODS) == {*objectives.OBJECTIVES.names(), "dino_koleo_proto"}


def test_recipes_load_by_name_outside_the_repository(tmp_path):
  env = {**train_utils.subprocess_env(), "PYTHONPATH": ROOT}
  code = ("from simdino_jax import configs, reproduce; "
          "print(sorted(configs.load(n).objective.name for n in configs.names())); "
          "print(reproduce.method_config('simdino', preset='quick', dataset='digits', model='vit_micro', epochs=1.0, "
          "batch=64, eval_every=1.0, seed=0).objective.name)")
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split("\n")[1] == "simdino"
