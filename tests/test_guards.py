"""What stops a run cleanly: non-finite steps, bad input (refused before the workdir changes), a checkpoint of
another config, damaged checkpoints and full disks."""

import errno
import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from simdino_jax import checkpointing
from simdino_jax import data as data_lib
from simdino_jax import metrics as metrics_lib
from simdino_jax import train
from simdino_jax import validation
from simdino_jax.configs import digits
from tests import train_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- Non-finite guard --------------------------------------------------------------------------------------------


def _nan_student(create):
  """Wraps train_state.create so the student starts with a NaN in every parameter (a diverged network): each step
  then has a NaN loss, through the same compiled step as a healthy run."""

  def wrapped(*args, **kwargs):
    state, graphdef, shardings = create(*args, **kwargs)
    return state.replace(student=jax.tree.map(lambda x: x * np.float32("nan"), state.student)), graphdef, shardings

  return wrapped


def test_consecutive_non_finite_steps_stop_the_run_and_no_checkpoint_holds_a_nan(tmp_path, monkeypatch, capsys):
  config = train_utils.tiny_config(
    "dino", total_steps=6, checkpoint_every_steps=2, log_every_steps=1, max_consecutive_skips=3
  )
  monkeypatch.setattr(train.train_state_lib, "create", _nan_student(train.train_state_lib.create))
  with pytest.raises(FloatingPointError) as e:
    train.run(config, str(tmp_path))
  message = str(e.value)
  assert "Training stopped at step 3: 3 consecutive steps" in message
  assert "config.max_consecutive_skips=3" in message
  assert "'loss': nan" in message and "'dino': nan" in message and "'finite': 0.0" in message
  assert "No checkpoint was written. To go on, start again with a lower --config.optim.base_lr" in message
  out = capsys.readouterr().out
  assert "step 1: 1 consecutive step(s) skipped" in out
  # Step 2 was due a checkpoint, but inside the streak: none is written.
  assert "Not saving the checkpoint of step 2: it is inside a streak of 2 skipped step(s)" in out
  assert not os.path.exists(tmp_path / "checkpoints") or train_utils.checkpoint_steps(tmp_path) == []
  # The log is strict JSON: the non-finite loss is the string "NaN", read back as a float by read_metrics.
  log = train_utils.strict_metrics(tmp_path)
  assert [m["step"] for m in log] == [1, 2, 3] and all(m["loss"] == "NaN" for m in log)
  assert all(math.isnan(m["loss"]) for m in metrics_lib.read_metrics(str(tmp_path / "metrics.jsonl")))


def test_overflowing_update_is_skipped_and_a_run_ending_in_a_streak_fails(tmp_path, capsys):
  # lr 1e41 gives finite gradients but an update that overflows float32: the step must not be accepted, the
  # checkpoint of step 2 (inside the streak) not written, and the run must not end as a success.
  config = train_utils.tiny_config(
    "simdino", total_steps=2, checkpoint_every_steps=1, log_every_steps=1, **{"optim.base_lr": 1e41}
  )
  with pytest.raises(FloatingPointError) as e:
    train.run(config, str(tmp_path))
  message = str(e.value)
  assert "The run ended inside a streak of 2 skipped step(s) (2 of 2 skipped in total)" in message
  assert "lower --config.optim.base_lr" in message
  out = capsys.readouterr().out
  assert "step 1: 1 consecutive step(s) skipped for a non-finite loss, gradient or update" in out
  assert "done: step 2, 2 steps" in out and "2 skipped" in out and "last checkpoint: none" in out
  assert not os.path.exists(tmp_path / "checkpoints") or train_utils.checkpoint_steps(tmp_path) == []
  log = train_utils.strict_metrics(tmp_path)
  assert [m["finite"] for m in log] == [0.0, 0.0] and all(math.isfinite(m["loss"]) for m in log)


# --- Bad input: refused before anything in the workdir changes ---------------------------------------------------


def _snapshot(workdir) -> dict:
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def _assert_refused(config, workdir, error, *fragments):
  """Runs `config` in a workdir holding a file; the error names the problem and fix, the workdir is unchanged."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "notes.txt"), "w") as f:
    f.write("keep me\n")
  before = _snapshot(workdir)
  with pytest.raises(error) as e:
    train.run(config, str(workdir))
  for fragment in fragments:
    assert fragment in str(e.value), (fragment, str(e.value))
  assert _snapshot(workdir) == before
  assert sorted(os.listdir(workdir)) == sorted({p.split(os.sep)[0] for p in before})
  return str(e.value)


def test_unknown_objective_lists_the_valid_names(tmp_path):
  _assert_refused(
    train_utils.tiny_config(**{"objective.name": "dino3"}),
    tmp_path,
    ValueError,
    "Unknown objective 'dino3'",
    "dino, dinov2, simdino, simdinov2",
  )


def test_unknown_model_lists_the_valid_names(tmp_path):
  _assert_refused(
    train_utils.tiny_config(**{"model.name": "vit_huge"}),
    tmp_path,
    ValueError,
    "Unknown model 'vit_huge'",
    "vit_micro",
    "ViT-S/16",
  )


def test_unknown_dataset_says_what_is_valid_and_how_to_prepare(tmp_path):
  config = train_utils.tiny_config(**{"data.name": "no_such_dataset", "data.data_dir": str(tmp_path / "tfds")})
  _assert_refused(
    config,
    tmp_path / "work",
    ValueError,
    "Unknown dataset 'no_such_dataset'",
    "digits",
    "python -m simdino_jax.tools.prepare",
  )


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
  os.makedirs(tmp_path / "tfds")
  config = train_utils.tiny_config(**{"data.name": "cifar10", "data.data_dir": str(tmp_path / "tfds")})
  _assert_refused(
    config,
    tmp_path / "work",
    FileNotFoundError,
    "'cifar10' is not prepared",
    str(tmp_path / "tfds"),
    "python -m simdino_jax.tools.prepare cifar10",
  )


def test_negative_teacher_temperature(tmp_path):
  _assert_refused(
    train_utils.tiny_config(**{"teacher.temp": -0.07}),
    tmp_path,
    ValueError,
    "config.teacher.temp=-0.07",
    "must be a positive temperature",
  )


@pytest.mark.parametrize(
  "override, message",
  [
    ({"model.drop_path_schedule": "cubic"}, "config.model.drop_path_schedule='cubic' must be one of ('linear', "),
    ({"model.attention_impl": "flash"}, "config.model.attention_impl='flash' must be one of (None, 'xla', 'cudnn')"),
    ({"model.dtype": "float8"}, "config.model.dtype='float8' must be one of ('bfloat16', 'float16', 'float32')"),
    ({"model.ffn": "relu"}, "config.model.ffn='relu' is not a feed-forward: use mlp (GELU) or swiglu"),
    ({"model.head.bottleneck_dim": 0}, "config.model.head.bottleneck_dim=0 must be positive"),
    (
      {"model.name": "ViT-S/16", "model.patch_size": 8},
      "config.model.name='ViT-S/16' has patch size 16 but config.model.patch_size is 8",
    ),
    ({"aug.interpolation": "nearest"}, "config.aug.interpolation='nearest' must be one of ('bicubic', 'bilinear')"),
  ],
)
def test_the_model_and_crop_fields_are_checked_with_the_config(override, message):
  """validation.py is the one home of these checks: the model and crop code assume valid values."""
  with pytest.raises(ValueError, match=re.escape(f"Invalid config: {message}")):
    validation.validate_config(train_utils.tiny_config(**override), num_devices=1)


@pytest.mark.sharded
def test_batch_not_divisible_by_the_devices(tmp_path):
  _assert_refused(
    train_utils.tiny_config(batch_size=12),
    tmp_path,
    ValueError,
    "config.batch_size=12 is not divisible by the 8 devices",
    "use a multiple of 8",
  )


@pytest.mark.sharded
def test_koleo_needs_two_images_per_device(tmp_path):
  _assert_refused(
    train_utils.tiny_config("dinov2", batch_size=8),
    tmp_path,
    ValueError,
    "KoLeo on each device's batch needs at least 2 images per device, got 1",
    "raise config.batch_size",
    "koleo_scope='global'",
  )


def test_local_crops_larger_than_global_crops(tmp_path):
  _assert_refused(
    train_utils.tiny_config(**{"aug.local_size": 32}),
    tmp_path,
    ValueError,
    "config.aug.local_size=32",
    "config.aug.global_size=16",
    "lower config.aug.local_size",
  )


def test_coding_rate_eps_below_float32_resolution(tmp_path):
  _assert_refused(
    train_utils.tiny_config(**{"objective.eps": 1e-45}),
    tmp_path,
    ValueError,
    "config.objective.eps=1e-45 is below float32 resolution",
    "Use a value like 0.05",
  )


def test_negative_eps_names_the_field(tmp_path):
  _assert_refused(
    train_utils.tiny_config(**{"objective.eps": -1.0}), tmp_path, ValueError, "config.objective.eps=-1.0 must be > 0"
  )


def test_float16_is_refused_for_bfloat16(tmp_path):
  _assert_refused(
    train_utils.tiny_config(**{"model.dtype": "float16"}),
    tmp_path,
    ValueError,
    "config.model.dtype='float16' is not supported",
    "--config.model.dtype=bfloat16",
  )


def test_bad_input_leaves_no_new_workdir(tmp_path):
  with pytest.raises(ValueError, match="config.teacher.temp=-0.07"):
    train.run(train_utils.tiny_config(**{"teacher.temp": -0.07}), str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()


def test_command_line_mistakes_are_one_line_each(capsys):
  from absl import flags
  from simdino_jax import cli

  importlib.import_module("simdino_jax.main")  # Its flags: --config and --workdir.

  cases = {
    ("--config=configs/nope.py",): "error: --config: no config file 'configs/nope.py'",
    (
      "--config=configs/digits.py",
      "--config.optim.base_lrr=1",
    ): "error: unknown config field config.optim.base_lrr (from --config.optim.base_lrr); config.optim has: "
    "b1, b2, base_lr,",
    (
      "--config=configs/digits.py:methd=dino",
    ): "error: flag --config=configs/digits.py:methd=dino: Error whilst parsing config file: ValueError: "
    "Unknown config argument 'methd'; valid: method, model.",
  }
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    for args, expected in cases.items():
      with pytest.raises(SystemExit) as e:
        cli.parse_flags(["main", *args, "--workdir=/nonexistent/work"])
      flags.FLAGS.unparse_flags()
      err = capsys.readouterr().err
      assert e.value.code == 2 and err.startswith(expected) and err.count("\n") == 1, err
  finally:
    os.chdir(cwd)


def test_checkpoint_of_another_config_is_refused_unless_allowed(tmp_path, capsys):
  config = train_utils.tiny_config("simdino")
  trainer = train.build(config, num_examples=64)
  ckpts = checkpointing.Checkpoints(str(tmp_path), config)
  iterator = data_lib.create_train_iterator(
    config.data, batch_size=config.batch_size, seed=config.seed, process_index=0, process_count=1
  )
  done = trainer.state.replace(step=trainer.state.step + config.total_steps)  # As if the run had finished.
  ckpts.save(config.total_steps, done, iterator.get_state())
  ckpts.wait()
  ckpts.close()
  other = train_utils.tiny_config("simdino", **{"optim.base_lr": 1e-3, "teacher.temp": 0.05})
  message = _assert_refused(
    other,
    tmp_path,
    ValueError,
    "belong to another config (2 field(s) differ",
    "teacher.temp: 0.04 -> 0.05",
    "optim.base_lr: 0.0005 -> 0.001",
    "Use another --workdir",
    "--config.allow_config_mismatch=True",
  )
  assert "Nothing in the workdir was changed" in message
  other.allow_config_mismatch = True
  train.run(other, str(tmp_path))  # Resumes at the last step: nothing left to train.
  assert f"Resumed from the checkpoint of step {config.total_steps}" in capsys.readouterr().out
  assert train_utils.checkpoint_steps(tmp_path) == [config.total_steps]


def test_checkpoints_from_before_an_added_field_resume_while_it_keeps_its_old_value():
  current = train_utils.tiny_config("dino").to_dict()
  saved = json.loads(json.dumps(current))
  del saved["total_examples"], saved["data"]["on_device"]  # A config written before these fields existed.
  assert checkpointing.config_differences(saved, current) == []
  current["data"]["on_device"], current["total_examples"] = True, 1000
  assert checkpointing.config_differences(saved, current) == ["data.on_device", "total_examples"]


def test_checkpoints_from_before_a_renamed_section_read_under_the_new_name():
  current = train_utils.tiny_config("dino").to_dict()
  saved = json.loads(json.dumps(current))
  saved["eval"] = saved.pop("eval_settings")  # A config written when the section was `eval`.
  assert checkpointing.config_differences(saved, current) == []
  assert checkpointing.with_added_fields(saved)["eval_settings"] == json.loads(json.dumps(current["eval_settings"]))
  assert "eval" not in checkpointing.with_added_fields(saved)


def test_typo_in_a_command_line_override_fails_clearly(tmp_path):
  workdir = tmp_path / "work"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "simdino_jax.main",
      "--config=configs/digits.py",
      f"--workdir={workdir}",
      "--config.optim.base_lrr=0.1",
    ],
    cwd=REPO,
    env=train_utils.subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2
  valid = ", ".join(sorted(digits.get_config().optim.keys()))
  assert result.stderr.strip().splitlines() == [
    f"error: unknown config field config.optim.base_lrr (from --config.optim.base_lrr); config.optim has: {valid}."
  ], result.stderr[-3000:]
  assert "base_lr, " in valid
  assert not workdir.exists()


# --- Damaged checkpoints, full disks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """(config, template, shardings, workdir) with finished checkpoints of steps 2 and 4 (no training: saved states)."""
  config = train_utils.tiny_config("simdino")
  trainer = train.build(config, num_examples=64)
  workdir = tmp_path_factory.mktemp("saved_run")
  iterator = data_lib.create_train_iterator(
    config.data, batch_size=config.batch_size, seed=config.seed, process_index=0, process_count=1
  )
  ckpts = checkpointing.Checkpoints(str(workdir), config)
  for step in (2, 4):
    ckpts.save(step, trainer.state.replace(step=trainer.state.step + step), iterator.get_state())
  ckpts.wait()
  ckpts.close()
  return config, trainer.state, trainer.state_shardings, workdir


def _largest_file(directory) -> str:
  files = [os.path.join(root, f) for root, _, names in os.walk(directory) for f in names]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_file(step_dir / "state")
  os.truncate(path, os.path.getsize(path) // 2)


def _random_bytes(step_dir):
  path = _largest_file(step_dir / "state")
  with open(path, "wb") as f:
    f.write(np.random.default_rng(0).bytes(os.path.getsize(path) or 64))


def _no_manifest(step_dir):
  os.remove(step_dir / "state" / "manifest.ocdbt")


def _garbage_metadata(step_dir):
  with open(step_dir / "state" / "_METADATA", "w") as f:
    f.write("{not json")


def _emptied(step_dir):
  for name in os.listdir(step_dir):
    path = step_dir / name
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@pytest.mark.parametrize("damage", [_truncate, _random_bytes, _no_manifest, _garbage_metadata, _emptied])
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_resumes(saved_run, tmp_path, capsys, damage):
  config, template, shardings, source = saved_run
  workdir = tmp_path / "work"
  shutil.copytree(source, workdir)
  damage(workdir / "checkpoints" / "4")
  damaged, good = _snapshot(workdir / "checkpoints" / "4"), _snapshot(workdir / "checkpoints" / "2")
  os.makedirs(workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1234")  # A save killed midway.
  ckpts = checkpointing.Checkpoints(str(workdir), config)
  state, data_state = ckpts.restore_latest(template, shardings)
  ckpts.close()
  assert int(state.step) == 2 and data_state
  lines = [line for line in capsys.readouterr().out.splitlines() if "does not restore" in line]
  assert len(lines) == 1, lines
  aside = workdir / "unrestorable_checkpoints" / "4"
  assert lines[0].startswith("Checkpoint of step 4 does not restore (")
  assert f"moved {workdir / 'checkpoints' / '4'} to {aside}" in lines[0]
  # Nothing good was lost: the damaged files are kept aside byte for byte, the good checkpoint is untouched.
  assert _snapshot(aside) == damaged and _snapshot(workdir / "checkpoints" / "2") == good
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]


def test_when_no_checkpoint_restores_the_run_stops_and_nothing_is_moved(saved_run, tmp_path):
  config, _, _, source = saved_run
  workdir = tmp_path / "work"
  shutil.copytree(source, workdir)
  _no_manifest(workdir / "checkpoints" / "4")
  _emptied(workdir / "checkpoints" / "2")
  before = _snapshot(workdir)
  with pytest.raises(checkpointing.CheckpointError) as e:
    train.run(config, str(workdir))
  message = str(e.value)
  assert f"No checkpoint in {workdir / 'checkpoints'} restores (step 4: " in message and "; step 2: " in message
  assert "Nothing was changed" in message and "\n" not in message
  assert _snapshot(workdir) == before and sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_a_disk_without_room_for_the_next_checkpoint_fails_before_saving(saved_run, tmp_path, monkeypatch):
  config, template, _, source = saved_run
  workdir = tmp_path / "work"
  shutil.copytree(source, workdir)
  before = _snapshot(workdir)
  monkeypatch.setattr(
    checkpointing.shutil, "disk_usage", lambda path: types.SimpleNamespace(total=10**9, used=10**9, free=1000)
  )
  ckpts = checkpointing.Checkpoints(str(workdir), config)
  with pytest.raises(checkpointing.CheckpointError) as e:
    ckpts.save(6, template.replace(step=template.step + 6), {"position": 6})
  ckpts.close()
  message = str(e.value)
  needed = sum(map(len, _snapshot(workdir / "checkpoints" / "4").values())) / 2**20  # The last checkpoint's size.
  assert message.startswith(
    f"No space left to save the checkpoint of step 6 in {workdir}: 0.0 MiB free, about {needed:.1f} MiB needed."
  )
  assert "the run resumes from the checkpoint of step 4" in message and "\n" not in message
  assert _snapshot(workdir) == before


def test_running_out_of_space_mid_save_is_one_line_and_the_partial_save_is_removed(saved_run, tmp_path):
  config, template, _, source = saved_run
  workdir = tmp_path / "work"
  shutil.copytree(source, workdir)
  before = _snapshot(workdir)
  ckpts = checkpointing.Checkpoints(str(workdir), config)

  def full_disk(step, **kwargs):  # What a full disk does to Orbax: a partial directory, then ENOSPC.
    partial = workdir / "checkpoints" / f"{step}.orbax-checkpoint-tmp-99"
    os.makedirs(partial / "state")
    (partial / "state" / "d").write_bytes(b"\0" * 1000)
    raise OSError(errno.ENOSPC, "No space left on device")

  ckpts.manager.save = full_disk
  with pytest.raises(checkpointing.CheckpointError) as e:
    ckpts.save(6, template.replace(step=template.step + 6), {"position": 6})
  ckpts.close()
  assert str(e.value).startswith(f"No space left to save the checkpoint of step 6 in {workdir}: about ")
  assert _snapshot(workdir) == before and sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_bad_workdirs_and_data_dirs_are_one_line_before_anything_is_built(tmp_path, monkeypatch):
  """A file where a folder of the workdir's or data_dir's path should be, or a workdir the user cannot write (as
  a non-root user sees it: os.access says no): one StorageError naming the path and the fix."""
  from simdino_jax import storage  # pylint: disable=import-outside-toplevel

  blocker = tmp_path / "afile"
  blocker.write_text("not a folder\n")
  config = train_utils.tiny_config()
  with pytest.raises(storage.StorageError, match=r"--workdir=.*afile/run: .*afile is a file, not a folder"):
    train.run(config, str(blocker / "run"))
  data_config = train_utils.tiny_config(**{"data.data_dir": str(blocker / "tfds")})
  with pytest.raises(storage.StorageError, match=r"--config.data.data_dir=.*afile/tfds: .*is a file, not a folder"):
    train.run(data_config, str(tmp_path / "work"))
  monkeypatch.setattr(os, "access", lambda path, mode: False)
  with pytest.raises(
    storage.StorageError,
    match=r"--workdir=.*/run: no permission to write in .*"
    r"Choose a --workdir you can write",
  ):
    train.run(config, str(tmp_path / "readonly" / "run"))
  assert not (tmp_path / "work").exists() and not (tmp_path / "readonly").exists()
