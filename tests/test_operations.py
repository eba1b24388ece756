"""Operations: exact resume, SIGTERM, the non-finite guard, clear errors for bad input, collapse warnings."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import digits
from simdino_jax import checkpointing
from simdino_jax import collapse
from simdino_jax import data as data_lib
from simdino_jax import metrics as metrics_lib
from simdino_jax import train
from simdino_jax import train_state as train_state_lib
from tests import train_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _template(config):
  """(state template, shardings) to restore checkpoints of `config` into."""
  trainer = train.build(config, num_examples=64)
  return trainer.state, trainer.state_shardings


def _restore_step(workdir, config, step, template, shardings):
  """The train state of `workdir`'s checkpoint `step`, as numpy."""
  ckpts = checkpointing.Checkpoints(str(workdir), config)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), template, shardings)
  restored = ckpts.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  ckpts.close()
  return jax.device_get(restored["state"])


def _steps(workdir) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _strict(constant):
  raise ValueError(f"metrics.jsonl holds the non-JSON constant {constant}")


def _metrics(workdir) -> list[dict]:
  """The records of metrics.jsonl, read by a strict JSON parser (no bare NaN / Infinity)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line, parse_constant=_strict) for line in f]


def _cli_overrides(config, method: str) -> list[str]:
  """`--config.x=y` flags that turn configs/digits.py:method=... into `config`."""
  base = checkpointing._flatten(checkpointing._normalize(digits.get_config(f"method={method}").to_dict()))
  want = checkpointing._flatten(checkpointing._normalize(config.to_dict()))
  assert set(base) == set(want)
  return [f"--config.{k}={want[k]}" for k in sorted(want) if want[k] != base[k]]


def _main_command(workdir, config, method: str) -> list[str]:
  return [sys.executable, "-m", "simdino_jax.main", f"--config=configs/digits.py:method={method}",
          f"--workdir={workdir}", *_cli_overrides(config, method)]


# --- Exact resume ------------------------------------------------------------------------------------------------


def test_run_resumed_after_a_kill_matches_the_straight_run_bitwise(tmp_path, capsys):
  config = train_utils.tiny_config("dino", total_steps=4, checkpoint_every_steps=2, log_every_steps=1)
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train.run(config, str(straight))
  assert _steps(straight) == [2, 4]
  # The disk state of the same run (same config, so the same schedules over 4 steps) killed with SIGKILL after
  # its checkpoint of step 2 and its metrics of step 3: the checkpoint of step 2 and the log up to step 3.
  os.makedirs(resumed / "checkpoints")
  shutil.copytree(straight / "checkpoints" / "2", resumed / "checkpoints" / "2")
  with open(resumed / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(m) + "\n" for m in _metrics(straight) if m["step"] <= 3)
  train.run(config, str(resumed))
  assert "Resumed from the checkpoint of step 2" in capsys.readouterr().out
  assert _steps(resumed) == [2, 4]

  template, shardings = _template(config)
  a = _restore_step(straight, config, 4, template, shardings)
  b = _restore_step(resumed, config, 4, template, shardings)
  assert int(a.step) == int(b.step) == 4 and int(a.skipped) == int(b.skipped) == 0
  # Bitwise: student, teacher, optimizer moments, DINO center, rng and counters.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a.student), jax.tree.leaves(template.student))) > 0
  # The log of step 3 (written after the last checkpoint) is dropped on resume and written again by the replay:
  # one record per step, the same values as the straight run.
  straight_log, resumed_log = _metrics(straight), _metrics(resumed)
  assert [m["step"] for m in straight_log] == [m["step"] for m in resumed_log] == [1, 2, 3, 4]
  for s, r in zip(straight_log, resumed_log):
    assert s["loss"] == r["loss"] and s["dino"] == r["dino"] and s["grad_norm"] == r["grad_norm"]
  assert all(math.isfinite(m["loss"]) for m in straight_log)


# --- SIGTERM -----------------------------------------------------------------------------------------------------


def test_sigterm_stops_every_process_at_the_same_step_with_a_restorable_checkpoint(tmp_path):
  """Two processes × 1 CPU device (gloo); SIGTERM reaches only process 1, as when one host is preempted first. Both
  save the same step and exit 0; the save is asynchronous (the production path), so the exit waits for it."""
  config = train_utils.tiny_config("simdino", total_steps=10_000, log_every_steps=1, async_checkpointing=True)
  workdir = tmp_path / "work"
  port = str(train_utils.free_port())
  env = train_utils.subprocess_env()
  procs = [subprocess.Popen(_main_command(workdir, config, "simdino") + [
      f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [[], []]
  progressed = threading.Event()

  def read(i):
    for line in procs[i].stdout:
      logs[i].append(line)
      if line.startswith("step 2/"):
        progressed.set()
  readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
  for r in readers:
    r.start()
  deadline = time.time() + 300
  while not progressed.is_set() and all(p.poll() is None for p in procs) and time.time() < deadline:
    time.sleep(0.2)
  assert progressed.is_set(), "".join(logs[0])[-3000:] + "".join(logs[1])[-3000:]
  procs[1].send_signal(signal.SIGTERM)
  codes = [p.wait(timeout=180) for p in procs]
  for r in readers:
    r.join(timeout=10)
  outs = ["".join(lines) for lines in logs]
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  stops = [[int(line.split("step ")[1].split()[0]) for line in lines if line.startswith("SIGTERM received")]
           for lines in logs]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  [step] = stops[0]
  assert 1 <= step < 10_000 and _steps(workdir) == [step]
  # The checkpoint restores (here in one process) to a finite state of that step, with the data iterator's state.
  template, shardings = _template(config)
  state, data_state = checkpointing.Checkpoints(str(workdir), config).restore_latest(template, shardings)
  assert int(state.step) == step and bool(train_state_lib.all_finite(state))
  assert isinstance(data_state, dict) and data_state


# --- Non-finite guard --------------------------------------------------------------------------------------------


def _nan_student(create):
  """Wraps train_state.create so the student starts with a NaN in every parameter (a diverged network): each step
  then has a NaN loss, through the same compiled step as a healthy run."""

  def wrapped(*args, **kwargs):
    state, graphdef, shardings = create(*args, **kwargs)
    return state.replace(student=jax.tree.map(lambda x: x * np.float32("nan"), state.student)), graphdef, shardings
  return wrapped


def test_consecutive_non_finite_steps_stop_the_run_and_no_checkpoint_holds_a_nan(tmp_path, monkeypatch, capsys):
  config = train_utils.tiny_config("dino", total_steps=6, checkpoint_every_steps=2, log_every_steps=1,
                                   max_consecutive_skips=3)
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
  assert not os.path.exists(tmp_path / "checkpoints") or _steps(tmp_path) == []
  # The log is strict JSON: the non-finite loss is the string "NaN", read back as a float by read_metrics.
  log = _metrics(tmp_path)
  assert [m["step"] for m in log] == [1, 2, 3] and all(m["loss"] == "NaN" for m in log)
  assert all(math.isnan(m["loss"]) for m in metrics_lib.read_metrics(str(tmp_path / "metrics.jsonl")))


def test_overflowing_update_is_skipped_and_a_run_ending_in_a_streak_fails(tmp_path, capsys):
  # lr 1e41 gives finite gradients but an update that overflows float32: the step must not be accepted, the
  # checkpoint of step 2 (inside the streak) not written, and the run must not end as a success.
  config = train_utils.tiny_config("simdino", total_steps=2, checkpoint_every_steps=1, log_every_steps=1,
                                   **{"optim.base_lr": 1e41})
  with pytest.raises(FloatingPointError) as e:
    train.run(config, str(tmp_path))
  message = str(e.value)
  assert "The run ended inside a streak of 2 skipped step(s) (2 of 2 skipped in total)" in message
  assert "lower --config.optim.base_lr" in message
  out = capsys.readouterr().out
  assert "step 1: 1 consecutive step(s) skipped for a non-finite loss, gradient or update" in out
  assert "done: step 2, 2 steps" in out and "2 skipped" in out and "last checkpoint: none" in out
  assert not os.path.exists(tmp_path / "checkpoints") or _steps(tmp_path) == []
  log = _metrics(tmp_path)
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
  _assert_refused(train_utils.tiny_config(**{"objective.name": "dino3"}), tmp_path, ValueError,
                  "Unknown objective 'dino3'", "dino, dinov2, simdino, simdinov2")


def test_unknown_model_lists_the_valid_names(tmp_path):
  _assert_refused(train_utils.tiny_config(**{"model.name": "vit_huge"}), tmp_path, ValueError,
                  "Unknown model 'vit_huge'", "vit_micro", "ViT-S/16")


def test_unknown_dataset_says_what_is_valid_and_how_to_prepare(tmp_path):
  config = train_utils.tiny_config(**{"data.name": "no_such_dataset", "data.data_dir": str(tmp_path / "tfds")})
  _assert_refused(config, tmp_path / "work", ValueError, "Unknown dataset 'no_such_dataset'", "digits",
                  "python -m simdino_jax.data.prepare")


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
  os.makedirs(tmp_path / "tfds")
  config = train_utils.tiny_config(**{"data.name": "cifar10", "data.data_dir": str(tmp_path / "tfds")})
  _assert_refused(config, tmp_path / "work", FileNotFoundError, "'cifar10' is not prepared",
                  str(tmp_path / "tfds"), "python -m simdino_jax.data.prepare cifar10")


def test_negative_teacher_temperature(tmp_path):
  _assert_refused(train_utils.tiny_config(**{"teacher.temp": -0.07}), tmp_path, ValueError,
                  "config.teacher.temp=-0.07", "must be a positive temperature")


@pytest.mark.sharded
def test_batch_not_divisible_by_the_devices(tmp_path):
  _assert_refused(train_utils.tiny_config(batch_size=12), tmp_path, ValueError,
                  "config.batch_size=12 is not divisible by the 8 devices", "use a multiple of 8")


@pytest.mark.sharded
def test_koleo_needs_two_images_per_device(tmp_path):
  _assert_refused(train_utils.tiny_config("dinov2", batch_size=8), tmp_path, ValueError,
                  "KoLeo on each device's batch needs at least 2 images per device, got 1",
                  "raise config.batch_size", "koleo_scope='global'")


def test_local_crops_larger_than_global_crops(tmp_path):
  _assert_refused(train_utils.tiny_config(**{"aug.local_size": 32}), tmp_path, ValueError,
                  "config.aug.local_size=32", "config.aug.global_size=16", "lower config.aug.local_size")


def test_coding_rate_eps_below_float32_resolution(tmp_path):
  _assert_refused(train_utils.tiny_config(**{"objective.eps": 1e-45}), tmp_path, ValueError,
                  "config.objective.eps=1e-45 is below float32 resolution", "Use a value like 0.05")


def test_negative_eps_names_the_field(tmp_path):
  _assert_refused(train_utils.tiny_config(**{"objective.eps": -1.0}), tmp_path, ValueError,
                  "config.objective.eps=-1.0 must be > 0")


def test_float16_is_refused_for_bfloat16(tmp_path):
  _assert_refused(train_utils.tiny_config(**{"model.dtype": "float16"}), tmp_path, ValueError,
                  "config.model.dtype='float16' is not supported", "--config.model.dtype=bfloat16")


def test_bad_input_leaves_no_new_workdir(tmp_path):
  with pytest.raises(ValueError, match="config.teacher.temp=-0.07"):
    train.run(train_utils.tiny_config(**{"teacher.temp": -0.07}), str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()


def test_command_line_mistakes_are_one_line_each(capsys):
  from absl import flags
  from simdino_jax import cli
  from simdino_jax import main  # pylint: disable=unused-import  (defines --config and --workdir)
  cases = {
      ("--config=configs/nope.py",): "error: --config: no config file 'configs/nope.py'",
      ("--config=configs/digits.py", "--config.optim.base_lrr=1"):
          "error: unknown config field config.optim.base_lrr (from --config.optim.base_lrr); config.optim has: "
          "b1, b2, base_lr,",
      ("--config=configs/digits.py:methd=dino",):
          "error: flag --config=configs/digits.py:methd=dino: Error whilst parsing config file: ValueError: "
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


def test_sigterm_during_start_up_exits_with_a_message(tmp_path):
  workdir = tmp_path / "work"
  proc = subprocess.Popen([sys.executable, "-m", "simdino_jax.main", "--config=configs/digits.py",
                           f"--workdir={workdir}"], cwd=REPO, env=train_utils.subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  caught = lambda: any(line.startswith("SigCgt:") and int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1))
                       for line in open(f"/proc/{proc.pid}/status"))
  while proc.poll() is None and not caught() and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 143, err[-3000:]
  assert err.strip().splitlines()[-1].startswith("error: SIGTERM received during start-up"), err[-3000:]
  assert not workdir.exists()


def test_checkpoint_of_another_config_is_refused_unless_allowed(tmp_path, capsys):
  config = train_utils.tiny_config("simdino")
  trainer = train.build(config, num_examples=64)
  ckpts = checkpointing.Checkpoints(str(tmp_path), config)
  iterator = data_lib.create_train_iterator(config.data, batch_size=config.batch_size, seed=config.seed,
                                            process_index=0, process_count=1)
  done = trainer.state.replace(step=trainer.state.step + config.total_steps)  # As if the run had finished.
  ckpts.save(config.total_steps, done, iterator.get_state())
  ckpts.wait()
  ckpts.close()
  other = train_utils.tiny_config("simdino", **{"optim.base_lr": 1e-3, "teacher.temp": 0.05})
  message = _assert_refused(other, tmp_path, ValueError, "belong to another config (2 field(s) differ",
                            "teacher.temp: 0.04 -> 0.05", "optim.base_lr: 0.0005 -> 0.001",
                            "Use another --workdir", "--config.allow_config_mismatch=True")
  assert "Nothing in the workdir was changed" in message
  other.allow_config_mismatch = True
  train.run(other, str(tmp_path))  # Resumes at the last step: nothing left to train.
  assert f"Resumed from the checkpoint of step {config.total_steps}" in capsys.readouterr().out
  assert _steps(tmp_path) == [config.total_steps]


def test_checkpoints_from_before_an_added_field_resume_while_it_keeps_its_old_value():
  current = train_utils.tiny_config("dino").to_dict()
  saved = json.loads(json.dumps(current))
  del saved["total_examples"], saved["data"]["on_device"]  # A config written before these fields existed.
  assert checkpointing.config_differences(saved, current) == []
  current["data"]["on_device"], current["total_examples"] = True, 1000
  assert checkpointing.config_differences(saved, current) == ["data.on_device", "total_examples"]


def test_typo_in_a_command_line_override_fails_clearly(tmp_path):
  workdir = tmp_path / "work"
  result = subprocess.run(
      [sys.executable, "-m", "simdino_jax.main", "--config=configs/digits.py", f"--workdir={workdir}",
       "--config.optim.base_lrr=0.1"], cwd=REPO, env=train_utils.subprocess_env(), capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 2
  valid = ", ".join(sorted(digits.get_config().optim.keys()))
  assert result.stderr.strip().splitlines() == [
      "error: unknown config field config.optim.base_lrr (from --config.optim.base_lrr); config.optim has: "
      f"{valid}."], result.stderr[-3000:]
  assert "base_lr, " in valid
  assert not workdir.exists()


# --- Collapse monitor --------------------------------------------------------------------------------------------


def test_collapse_monitor_warns_after_patience_on_each_signature():
  # The objectives log the DINO loss already divided by log K ("dino_over_log_k"; 1 = a uniform teacher).
  monitor = collapse.CollapseMonitor(patience=3)
  assert monitor.update(1, {"dino_over_log_k": 1.01}) is None
  assert monitor.update(2, {"dino_over_log_k": 0.99}) is None
  warning = monitor.update(3, {"dino_over_log_k": 1.0})
  assert warning is not None and "step 3" in warning and "loss / log K = 1.0000" in warning
  assert monitor.update(4, {"dino_over_log_k": 1.0}) is not None
  # A loss 3% away from log K resets the count; so does a log step without the metric.
  assert monitor.update(5, {"dino_over_log_k": 0.97}) is None
  assert monitor.update(6, {"dino_over_log_k": 1.0}) is None and monitor.update(7, {"dino_over_log_k": 1.0}) is None
  assert monitor.update(8, {"loss": 1.0}) is None and monitor.dino_streak == 0

  simdino = collapse.CollapseMonitor(patience=2)
  assert simdino.update(1, {"dino": 0.0, "teacher_feature_std": 5e-4}) is None  # the raw DINO loss is not watched
  warning = simdino.update(2, {"teacher_feature_std": 1e-4})
  assert warning is not None and "teacher feature std 1.00e-04" in warning and "below 0.001" in warning
  assert simdino.update(3, {"teacher_feature_std": 1 / math.sqrt(16)}) is None
  assert simdino.update(4, {"teacher_feature_std": float("nan")}) is None and simdino.std_streak == 0
  strict = collapse.CollapseMonitor(patience=1, dino_rel_tol=0.001, min_feature_std=0.1)
  assert strict.update(1, {"dino_over_log_k": 1.01, "teacher_feature_std": 0.2}) is None
  both = strict.update(2, {"dino_over_log_k": 1.0, "teacher_feature_std": 0.05})
  assert "DINO loss" in both and "teacher feature std" in both
  with pytest.raises(ValueError, match="patience"):
    collapse.CollapseMonitor(patience=0)


def test_training_loop_reports_collapse_in_the_log(tmp_path, capsys):
  # Thresholds so wide that any run counts as collapsed: the loop must surface the monitor's warning.
  config = train_utils.tiny_config("simdino", **{"collapse.patience": 1, "collapse.min_feature_std": 10.0})
  train.run(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "WARNING: Possible collapse at step 2: the teacher feature std" in out, out


# --- Damaged checkpoints, full disks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """(config, template, shardings, workdir) with finished checkpoints of steps 2 and 4 (no training: saved states)."""
  config = train_utils.tiny_config("simdino")
  trainer = train.build(config, num_examples=64)
  workdir = tmp_path_factory.mktemp("saved_run")
  iterator = data_lib.create_train_iterator(config.data, batch_size=config.batch_size, seed=config.seed,
                                            process_index=0, process_count=1)
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
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_resumes(saved_run, tmp_path, capsys,
                                                                                 damage):
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
  monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
  ckpts = checkpointing.Checkpoints(str(workdir), config)
  with pytest.raises(checkpointing.CheckpointError) as e:
    ckpts.save(6, template.replace(step=template.step + 6), {"position": 6})
  ckpts.close()
  message = str(e.value)
  needed = checkpointing._directory_bytes(str(workdir / "checkpoints" / "4")) / 2**20
  assert message.startswith(f"No space left to save the checkpoint of step 6 in {workdir}: 0.0 MiB free, "
                            f"about {needed:.1f} MiB needed.")
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


# --- Command-line entry points -----------------------------------------------------------------------------------

ENTRY_POINTS = ("simdino_jax.main", "simdino_jax.evaluate", "simdino_jax.reproduce", "simdino_jax.benchmark",
                "simdino_jax.convert", "simdino_jax.data.prepare", "simdino_jax.data.prepare_imagenet",
                "simdino_jax.data.compact", "simdino_jax.objectives.benchmark_koleo_proto")

# Runs `python -m MODULE --help` for every module in one process: each module runs as __main__ (as with -m), its
# flags are removed afterwards so the next one can define flags of the same names.
_HELP_SCRIPT = """
import contextlib, importlib.util, io, json, runpy, sys
from absl import app, flags
app.define_help_flags()
results = {}
for name in sys.argv[1:]:
  before = set(flags.FLAGS)
  sys.argv = [name, "--help"]
  out, code = io.StringIO(), None
  with contextlib.redirect_stdout(out):
    try:
      runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code
  defined = sorted(set(flags.FLAGS) - before)
  spec = importlib.util.find_spec(name)
  if spec.submodule_search_locations:  # A package runs its __main__.
    spec = importlib.util.find_spec(name + ".__main__")
  own = [f for f in defined if flags.FLAGS.find_module_defining_flag(f) in (name, spec.name, spec.origin)]
  results[name] = {"code": code, "out": out.getvalue(), "flags": {f: flags.FLAGS[f].help for f in own}}
  for f in defined:
    delattr(flags.FLAGS, f)
print(json.dumps(results))
"""


def test_every_entry_point_has_absl_help_with_text_for_each_flag():
  result = subprocess.run([sys.executable, "-c", _HELP_SCRIPT, *ENTRY_POINTS], cwd=REPO, env=train_utils.subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(result.stdout.strip().splitlines()[-1])
  for name in ENTRY_POINTS:
    entry = results[name]
    assert entry["code"] in (0, 1) and entry["flags"], (name, entry)
    for flag, text in entry["flags"].items():
      assert len(text.split()) >= 2, (name, flag, text)  # Help text, not a placeholder.
      assert f"--{flag}:" in entry["out"] or f"--[no]{flag}:" in entry["out"], (name, flag)
  assert "--workdir" in results["simdino_jax.main"]["out"] and "--profile_steps" in results["simdino_jax.main"]["out"]
