"""Operations: exact resume, SIGTERM, the non-finite guard, clear errors for bad input, collapse warnings."""

import dataclasses
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


def _metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _subprocess_env() -> dict:
  env = dict(os.environ)
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             JAX_DISABLE_MOST_OPTIMIZATIONS="true", PYTHONUNBUFFERED="1")
  return env


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
  # The resumed run re-logs step 3 (its metrics came after the last checkpoint) with the same values.
  straight_log, resumed_log = _metrics(straight), _metrics(resumed)
  assert [m["step"] for m in straight_log] == [1, 2, 3, 4]
  assert [m["step"] for m in resumed_log] == [1, 2, 3, 3, 4]
  for s, r in zip(straight_log[2:], resumed_log[3:]):
    assert s["loss"] == r["loss"] and s["dino"] == r["dino"] and s["grad_norm"] == r["grad_norm"]
  assert resumed_log[2]["loss"] == resumed_log[3]["loss"]
  assert all(math.isfinite(m["loss"]) for m in straight_log)


# --- SIGTERM -----------------------------------------------------------------------------------------------------


def test_sigterm_saves_a_restorable_checkpoint_and_exits_cleanly(tmp_path):
  config = train_utils.tiny_config("simdino", total_steps=10_000, log_every_steps=1)
  config.async_checkpointing = True  # The production path: the SIGTERM save must wait for the async write.
  workdir = tmp_path / "work"
  proc = subprocess.Popen(_main_command(workdir, config, "simdino"), cwd=REPO, env=_subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines, progressed = [], threading.Event()

  def read():
    for line in proc.stdout:
      lines.append(line)
      if line.startswith("step 2/"):
        progressed.set()
  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  deadline = time.time() + 240
  while not progressed.is_set() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert progressed.is_set(), "".join(lines)[-3000:]
  proc.send_signal(signal.SIGTERM)
  rc = proc.wait(timeout=120)
  reader.join(timeout=10)
  out = "".join(lines)
  assert rc == 0, out[-3000:]
  stop = [line for line in lines if line.startswith("SIGTERM received")]
  assert len(stop) == 1, out[-3000:]
  step = int(stop[0].split("step ")[1].split()[0])
  assert 1 <= step < 10_000 and _steps(workdir) == [step]
  template, shardings = _template(config)
  state, data_state = checkpointing.Checkpoints(str(workdir), config).restore_latest(template, shardings)
  assert int(state.step) == step and bool(train_state_lib.all_finite(state))
  assert isinstance(data_state, dict) and data_state


# --- Non-finite guard --------------------------------------------------------------------------------------------


def _nan_student_objective(get_objective):
  """Wraps the objective so every student output it sees is NaN (a diverged forward pass)."""

  def wrapped(objective_config):
    objective = get_objective(objective_config)

    def loss(student_out, *args):
      poisoned = jax.tree.map(lambda x: x * np.float32("nan") if x.dtype.kind == "f" else x, student_out)
      return objective.loss(poisoned, *args)
    return dataclasses.replace(objective, loss=loss)
  return wrapped


def test_consecutive_non_finite_steps_stop_the_run_and_no_checkpoint_holds_a_nan(tmp_path, monkeypatch, capsys):
  config = train_utils.tiny_config("dino", total_steps=6, checkpoint_every_steps=2, log_every_steps=1,
                                   max_consecutive_skips=3)
  monkeypatch.setattr(train.objectives, "get_objective", _nan_student_objective(train.objectives.get_objective))
  with pytest.raises(FloatingPointError) as e:
    train.run(config, str(tmp_path))
  message = str(e.value)
  assert "Training stopped at step 3: 3 consecutive steps" in message
  assert "config.max_consecutive_skips=3" in message
  assert "'loss': nan" in message and "'dino': nan" in message and "'finite': 0.0" in message
  assert "step 1: 1 consecutive step(s) skipped" in capsys.readouterr().out
  monkeypatch.undo()
  steps = _steps(tmp_path)
  assert steps == [2]
  template, shardings = _template(config)
  for step in steps:
    state = _restore_step(tmp_path, config, step, template, shardings)
    assert int(state.step) == step and int(state.skipped) == step
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state))
    # Skipped steps keep the initial parameters.
    for x, y in zip(jax.tree.leaves(state.student), jax.tree.leaves(template.student)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


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
                            "teacher.temp: 0.07 -> 0.05", "optim.base_lr: 0.0005 -> 0.001",
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
       "--config.optim.base_lrr=0.1"], cwd=REPO, env=_subprocess_env(), capture_output=True, text=True,
      timeout=120)
  assert result.returncode != 0
  assert "base_lrr" in result.stderr, result.stderr[-3000:]
  assert "base_lr" in result.stderr.replace("base_lrr", "")  # The valid field is named.
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


def test_sigterm_under_jax_distributed_stops_every_process_at_the_same_saved_step(tmp_path):
  # Two processes × 1 CPU device (gloo); SIGTERM reaches only process 1, as when one host is preempted first.
  config = train_utils.tiny_config("simdino", total_steps=10_000, log_every_steps=1)
  workdir = tmp_path / "work"
  port = str(train_utils.free_port())
  env = _subprocess_env()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
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
  assert _steps(workdir) == stops[0]
