"""Recipe files: loadable by name from any directory, valid, paired like with like, published numbers in place."""

import ast
import importlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from simdino_jax import configs
from simdino_jax import objectives
from simdino_jax import optim
from simdino_jax import validation
from simdino_jax.objectives import methods
from simdino_jax.tools import reproduce
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


IMAGENET_TRAIN = 1_281_167
# Published values, transcribed from the official files (docs/recipes.md gives each source in full):
# D-main facebookresearch/dino main_dino.py (argparse defaults: --batch_size_per_gpu 64, --lr 0.0005, linear rule
#   "args.lr * batch / 256."), D-readme its README.md (vanilla 8 GPUs; boosted 2 nodes × 8, --norm_last_layer false),
#   D-vit its vision_transformer.py interpolate_pos_encoding (w0 + 0.1, scale_factor, no antialias);
# S-main RobinWu218/SimDINO simdino/main_dino.py (--batch_size_per_gpu 64, --reduce_cov 0), S-readme its README.md
#   (torchrun --nproc_per_node=8 for both methods);
# V2-cfg facebookresearch/dinov2 dinov2/configs/ssl_default_config.yaml @01c3638: l.62 batch_size_per_gpu 64, l.68
#   OFFICIAL_EPOCH_LENGTH 1250, l.84-85 interpolate_antialias false / offset 0.1, l.96 base_lr 0.004,
#   l.102 sqrt_wrt_1024;
#   V2-short train/vitl16_short.yaml + V2-readme --nodes 4 (32 GPUs); V2-head dinov2/layers/dino_head.py @05c66df
#   l.36-37 (weight_norm, weight_g filled with 1, left trainable); V2-groups dinov2/utils/param_groups.py @2007c5b
#   l.24-39 (register_tokens at layer 0);
# S2-def the SimDINO repository's simdinov2/configs/ssl_default_config.yaml (read in its fork khairulislam/SimDINO
#   @4327827): l.86 batch_size_per_gpu 128, l.92 OFFICIAL_EPOCH_LENGTH -1 (one pass: len(dataset) // global batch in
#   train.py do_train), l.113-115 num_register_tokens 4, interpolate_antialias true, offset 0.0; S2-cfg
#   simdinov2/configs/simdino_config.yaml @c9d54f2 l.50 reduce_cov 0; S2-train simdinov2/train/train.py
#   build_schedulers l.86 start_warmup_value=min_lr (read in microsoft/Neuro-inspired_Phase_Encoding @a0af7fb).
PUBLISHED = {
  # name: (model, batch, (covariance, KoLeo) group, epoch length, lr rule, peak lr, gain trainable,
  #        register lr multiplier = CLS's, (interpolation offset, antialias), per-iteration temp warm-up,
  #        lr warm-up from min_lr)
  "dino_vanilla": ("ViT-S/16", 512, (0, 0), 2502, "linear", 1e-3, False, True, (0.1, False), False, False),
  "dino_boosted": ("ViT-S/16", 1024, (0, 0), 1251, "linear", 2e-3, True, True, (0.1, False), False, False),
  "dino": ("ViT-B/16", 512, (0, 0), 2502, "linear", 1e-3, False, True, (0.1, False), False, False),
  "simdino": ("ViT-B/16", 512, (64, 0), 2502, "linear", 1e-3, False, True, (0.1, False), False, False),
  "dinov2_meta": ("ViT-L/16", 2048, (0, 64), 1250, "sqrt", 4e-3 * 2**0.5, True, True, (0.1, False), True, False),
  "dinov2": ("ViT-L/16", 1024, (0, 128), 1251, "sqrt", 4e-3, True, True, (0.0, True), True, True),
  "simdinov2": ("ViT-L/16", 1024, (128, 0), 1251, "sqrt", 4e-3, None, True, (0.0, True), True, True),
}


def register_multiplier_is_clss(config) -> bool:
  """Whether the register tokens get the CLS token's lr multiplier (layer 0 of the layer-wise decay)."""
  tree = {
    "backbone": {
      "cls_token": np.zeros((1, 1, 2)),
      "register_tokens": np.zeros((1, 4, 2)),
      "blocks": {"0": {"w": np.zeros((2, 2))}, "1": {"w": np.zeros((2, 2))}},
    }
  }
  scales = optim.lr_multipliers(
    tree, layer_decay=config.optim.layer_decay, patch_embed_lr_mult=config.optim.patch_embed_lr_mult
  )
  return scales["backbone"]["register_tokens"] == scales["backbone"]["cls_token"]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_values(name):
  """Each recipe on ImageNet against the values of its official files (PUBLISHED; docs/recipes.md)."""
  (
    model,
    batch,
    groups,
    epoch_steps,
    rule,
    peak,
    gain_trainable,
    registers_at_layer_0,
    interpolation,
    per_iteration,
    from_min_lr,
  ) = PUBLISHED[name]
  c = configs.load(name)
  assert (c.model.name, c.batch_size) == (model, batch)
  koleo_group = c.objective.koleo_group_size if methods.resolve_koleo_weight(c.objective) else 0
  assert (c.objective.covariance_group_size, koleo_group) == groups
  assert optim.epoch_length(c, num_examples=IMAGENET_TRAIN, batch_size=c.batch_size) == epoch_steps
  assert c.optim.lr_scaling == rule
  assert optim.peak_learning_rate(c.optim.base_lr, c.batch_size, c.optim.lr_scaling) == pytest.approx(peak)
  if gain_trainable is not None:  # SimDINOv2's head has no prototype layer.
    assert c.model.head.norm_last_layer is (not gain_trainable)
  assert register_multiplier_is_clss(c) is registers_at_layer_0
  assert (c.model.interpolate_offset, c.model.interpolate_antialias) == interpolation
  assert (c.teacher.warmup_temp_per_iteration, c.optim.warmup_from_min_lr) == (per_iteration, from_min_lr)


def test_published_schedules_and_crops():
  """The numbers the published results belong to (docs/recipes.md)."""
  expected = {  # name: (epochs, locals, teacher temps)
    "dino_vanilla": (100, 8, (0.04, 0.04, 0)),
    "dino_boosted": (300, 8, (0.04, 0.07, 30)),
    "dino": (100, 10, (0.04, 0.04, 0)),
    "simdino": (100, 10, (0.04, 0.04, 0)),
    "dinov2_meta": (100, 8, (0.04, 0.07, 30)),
    "dinov2": (100, 10, (0.04, 0.07, 30)),
    "simdinov2": (100, 10, (0.04, 0.07, 30)),
  }
  for name, values in expected.items():
    c = configs.load(name)
    t = c.teacher
    assert (c.total_epochs, c.aug.n_local, (t.warmup_temp, t.temp, t.warmup_temp_epochs)) == values, name
  for name in ("dinov2_meta", "dinov2", "simdinov2"):
    o = configs.load(name).optim
    assert (o.layer_decay, o.patch_embed_lr_mult, o.clip_mode) == (0.9, 0.2, "per_module"), name
  # S-readme: "change the student.arch field in simdino_config.yaml to train other models": ViT-B keeps 8 × 128.
  assert configs.load("simdinov2", "model=ViT-B/16").batch_size == 1024


def test_presets_are_recipe_arguments():
  """The run-size presets are `preset=` arguments; groups that do not divide a smaller batch become one group."""
  c = configs.load("dinov2", "data=digits,preset=evidence,batch=64")
  assert (c.aug.global_size, c.aug.n_local, c.model.head.out_dim, c.optim.base_lr, c.teacher.momentum) == (
    16,
    4,
    4096,
    2e-3,
    0.95,
  )
  assert (c.batch_size, c.objective.koleo_group_size, c.data.on_device) == (64, 64, True)
  assert configs.load("simdino", "preset=dry_run").objective.covariance_group_size == 0
  with pytest.raises(ValueError, match="Unknown preset 'fast'"):
    configs.load("dino", "preset=fast")


def test_recipes_are_overlays_on_one_base_and_set_one_field_per_line():
  """A recipe imports `common` and at most one base recipe, and sets no field its base already holds at the same
  value, except that a recipe with another objective states that objective's and its head's settings (digits, the
  small-image recipe over all four methods, is built by arguments); no tuple assignments."""
  folder = os.path.join(ROOT, "simdino_jax", "configs")
  for name in configs.names():
    source = open(os.path.join(folder, f"{name}.py")).read()
    imported = re.findall(r"^from simdino_jax\.configs import (\w+)$", source, re.M)
    assert not re.search(r"^\s*c\.[\w.]+\s*,\s*c\.", source, re.M), name
    recipes = [b for b in imported if b != "common"]
    assert len(recipes) <= 1, (name, imported)
    base = re.search(r"c = (\w+)\.recipe\(\)", source)
    if base is None or name == "digits":
      continue
    parent = importlib.import_module(f"simdino_jax.configs.{base.group(1)}").recipe()
    for field, value in re.findall(r"^  c\.([\w.]+) = (.+?)(?:  #.*)?$", source, re.M):
      try:
        literal = ast.literal_eval(value)
      except ValueError:  # a value computed from arguments
        continue
      if "c.objective.name = " in source and field.startswith(("objective.", "model.head.")):
        continue
      node = parent
      for part in field.split("."):
        node = node[part]
      assert node != literal, f"{name}: c.{field} = {value} is its base's value already"


def test_reproduction_pairs_differ_only_in_the_objective_and_the_papers_changes():
  run = lambda method: reproduce.method_config(
    method, preset="full", dataset="cifar10", model="ViT-T/4", epochs=100.0, batch=256, eval_every=5.0, seed=0
  )
  assert differences(run("dino"), run("simdino")) == {
    "objective.name": ("dino", "simdino"),
    "objective.covariance_group_size": (0, 64),
  }
  assert differences(run("dinov2"), run("simdinov2")) == {
    "objective.name": ("dinov2", "simdinov2"),
    "objective.covariance_group_size": (0, 128),
    "objective.koleo_weight": (0.1, 0.0),
    "teacher.momentum": (0.992, 0.9),
    "model.drop_path_rate": (0.3, 0.2),
    "model.layerscale": (1e-5, 0.1),
  }
  assert set(reproduce.METHODS) == {*objectives.OBJECTIVES.names(), "dino_koleo_proto"}


def test_recipes_load_by_name_outside_the_repository(tmp_path):
  env = {**train_utils.subprocess_env(), "PYTHONPATH": ROOT}
  code = (
    "from simdino_jax import configs; from simdino_jax.tools import reproduce; "
    "print(sorted(configs.load(n).objective.name for n in configs.names())); "
    "print(reproduce.method_config('simdino', preset='quick', dataset='digits', model='vit_micro', epochs=1.0, "
    "batch=64, eval_every=1.0, seed=0).objective.name)"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split("\n")[1] == "simdino"
