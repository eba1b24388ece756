"""Operations: exact resume after a kill, SIGTERM during start-up, collapse warnings, the entry points' help.

What stops a run cleanly (non-finite steps, bad input, damaged checkpoints, full disks) is in test_guards.py.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from simdino_jax import checkpointing
from simdino_jax import collapse as collapse_lib
from simdino_jax import metrics as metrics_lib
from simdino_jax import train
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


# --- Exact resume ------------------------------------------------------------------------------------------------


def test_run_resumed_after_a_kill_matches_the_straight_run_bitwise(tmp_path, capsys):
  config = train_utils.tiny_config("dino", total_steps=4, checkpoint_every_steps=2, log_every_steps=1)
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train.run(config, str(straight))
  assert train_utils.checkpoint_steps(straight) == [2, 4]
  # The disk state of the same run (same config, so the same schedules over 4 steps) killed with SIGKILL after
  # its checkpoint of step 2 and its metrics of step 3: the checkpoint of step 2 and the log up to step 3.
  os.makedirs(resumed / "checkpoints")
  shutil.copytree(straight / "checkpoints" / "2", resumed / "checkpoints" / "2")
  with open(resumed / "metrics.jsonl", "w") as f:
    f.writelines(line for line in open(straight / "metrics.jsonl") if json.loads(line)["step"] <= 3)
  train.run(config, str(resumed))
  out = capsys.readouterr().out
  assert "Resumed from the checkpoint of step 2" in out
  # Where the time went: step 3, logged by the killed attempt, is trained again.
  assert re.search(
    r"^goodput \d+% of [\d.]+ min \(train \d+ s, setup \d+ s, restore \d+ s, compile \d+ s, data "
    r"\d+ s, eval \d+ s, save \d+ s\); steps retrained after restarts: 1$",
    out,
    re.M,
  ), out
  raw = metrics_lib.read_metrics(str(resumed / "metrics.jsonl"))
  assert [r["goodput/steps_retrained"] for r in raw] == [0, 0, 1, 1]  # Steps 1-2 from before; 3-4 resumed.
  assert all(0 < r["goodput/compile_s"] <= r["goodput/total_s"] and 0 <= r["goodput/fraction"] <= 1 for r in raw)
  assert train_utils.checkpoint_steps(resumed) == [2, 4]

  template, shardings = _template(config)
  a = _restore_step(straight, config, 4, template, shardings)
  b = _restore_step(resumed, config, 4, template, shardings)
  assert int(a.step) == int(b.step) == 4 and int(a.skipped) == int(b.skipped) == 0
  # Bitwise: student, teacher, optimizer moments, DINO center, rng and counters.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert (
    max(
      float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
      for x, y in zip(jax.tree.leaves(a.student), jax.tree.leaves(template.student))
    )
    > 0
  )
  # The log of step 3 (written after the last checkpoint) is dropped on resume and written again by the replay:
  # one record per step, the same values as the straight run.
  straight_log, resumed_log = train_utils.strict_metrics(straight), train_utils.strict_metrics(resumed)
  assert [m["step"] for m in straight_log] == [m["step"] for m in resumed_log] == [1, 2, 3, 4]
  for s, r in zip(straight_log, resumed_log):
    assert s["loss"] == r["loss"] and s["dino"] == r["dino"] and s["grad_norm"] == r["grad_norm"]
  assert all(math.isfinite(m["loss"]) for m in straight_log)


def test_steps_retrained_add_up_over_restarts():
  """Each attempt adds the steps an earlier one logged beyond its resume step to the count it keeps."""
  first = [{"step": 2}, {"step": 4}, {"step": 6}]  # Killed after logging step 6; resumes at 4.
  assert metrics_lib.steps_retrained(first, 4) == 2
  second = [
    {"step": 2},
    {"step": 4},
    {"step": 6, "goodput/steps_retrained": 2},
    {"step": 8, "goodput/steps_retrained": 2},
    {"step": 10, "goodput/steps_retrained": 2},
  ]  # Resumed at 4, killed after 10, resumes at 8.
  assert metrics_lib.steps_retrained(second, 8) == 4
  assert metrics_lib.steps_retrained(second, 0) == 10  # No checkpoint had finished: all again.
  assert metrics_lib.steps_retrained([], 0) == 0


# --- SIGTERM (reaching one process of two: test_distributed.py) ------------------------------------------------


def test_compilation_cache_defaults_to_the_workdir_and_a_restart_reads_it(tmp_path):
  """config.compilation_cache="auto": the run's compiled programs land in WORKDIR/xla_cache (a gs:// workdir: each
  host's ~/.cache), so a restarted job finds its train step there; JAX_COMPILATION_CACHE_DIR, when set, wins."""
  assert train.compilation_cache_dir("auto", "/runs/a") == "/runs/a/xla_cache"
  assert train.compilation_cache_dir("auto", "gs://bucket/run").endswith("/.cache/simdino_jax/xla_cache")
  assert train.compilation_cache_dir("/fast/cache", "gs://bucket/run") == "/fast/cache"
  assert train.compilation_cache_dir("", "/runs/a") is None
  config = train_utils.tiny_config("dino")  # The suite's tiny DINO step (its compile is over a second).
  config.total_steps = 1
  env = {k: v for k, v in train_utils.subprocess_env().items() if k != "JAX_COMPILATION_CACHE_DIR"}
  workdir = tmp_path / "work"
  result = subprocess.run(
    train_utils.main_command(workdir, config), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  entries = os.listdir(workdir / "xla_cache")
  assert any("jit_step" in name for name in entries), entries


def test_sigterm_during_start_up_exits_with_a_message(tmp_path):
  workdir = tmp_path / "work"
  proc = subprocess.Popen(
    [sys.executable, "-m", "simdino_jax.main", "--config=configs/digits.py", f"--workdir={workdir}"],
    cwd=REPO,
    env=train_utils.subprocess_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 300  # A loaded machine imports slowly.
  caught = lambda: any(
    line.startswith("SigCgt:") and int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1))
    for line in open(f"/proc/{proc.pid}/status")
  )
  while proc.poll() is None and not caught() and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, (proc.returncode, err[-3000:])
  assert err.strip().splitlines()[-1].startswith("error: SIGTERM received during start-up"), err[-3000:]
  assert not workdir.exists()


# --- Collapse monitor --------------------------------------------------------------------------------------------


def test_collapse_monitor_warns_after_patience_on_each_signature():
  # The objectives log the DINO loss already divided by log K ("dino_over_log_k"; 1 = a uniform teacher).
  monitor = collapse_lib.CollapseMonitor(patience=3)
  assert monitor.update(1, {"dino_over_log_k": 1.01}) is None
  assert monitor.update(2, {"dino_over_log_k": 0.99}) is None
  warning = monitor.update(3, {"dino_over_log_k": 1.0})
  assert warning is not None and "step 3" in warning and "loss / log K = 1.0000" in warning
  assert monitor.update(4, {"dino_over_log_k": 1.0}) is not None
  # A loss 3% away from log K resets the count; so does a log step without the metric.
  assert monitor.update(5, {"dino_over_log_k": 0.97}) is None
  assert monitor.update(6, {"dino_over_log_k": 1.0}) is None and monitor.update(7, {"dino_over_log_k": 1.0}) is None
  assert monitor.update(8, {"loss": 1.0}) is None and monitor.dino_streak == 0

  simdino = collapse_lib.CollapseMonitor(patience=2)
  assert simdino.update(1, {"dino": 0.0, "teacher_feature_std": 5e-4}) is None  # the raw DINO loss is not watched
  warning = simdino.update(2, {"teacher_feature_std": 1e-4})
  assert warning is not None and "teacher feature std 1.00e-04" in warning and "below 0.001" in warning
  assert simdino.update(3, {"teacher_feature_std": 1 / math.sqrt(16)}) is None
  assert simdino.update(4, {"teacher_feature_std": float("nan")}) is None and simdino.std_streak == 0
  strict = collapse_lib.CollapseMonitor(patience=1, dino_rel_tol=0.001, min_feature_std=0.1)
  assert strict.update(1, {"dino_over_log_k": 1.01, "teacher_feature_std": 0.2}) is None
  both = strict.update(2, {"dino_over_log_k": 1.0, "teacher_feature_std": 0.05})
  assert "DINO loss" in both and "teacher feature std" in both
  with pytest.raises(ValueError, match="patience"):
    collapse_lib.CollapseMonitor(patience=0)


def test_training_loop_reports_collapse_in_the_log(tmp_path, capsys):
  # Thresholds so wide that any run counts as collapsed: the loop must surface the monitor's warning.
  config = train_utils.tiny_config("simdino", **{"collapse.patience": 1, "collapse.min_feature_std": 10.0})
  train.run(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "WARNING: Possible collapse at step 2: the teacher feature std" in out, out


# --- Command-line entry points -----------------------------------------------------------------------------------

ENTRY_POINTS = (
  "simdino_jax.main",
  "simdino_jax.evaluate",
  "simdino_jax.tools.reproduce",
  "simdino_jax.tools.benchmark",
  "simdino_jax.convert",
  "simdino_jax.tools.prepare",
  "simdino_jax.tools.prepare_imagenet",
  "simdino_jax.tools.compact",
  "simdino_jax.tools.benchmark_koleo_proto",
)

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
  result = subprocess.run(
    [sys.executable, "-c", _HELP_SCRIPT, *ENTRY_POINTS],
    cwd=REPO,
    env=train_utils.subprocess_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(result.stdout.strip().splitlines()[-1])
  for name in ENTRY_POINTS:
    entry = results[name]
    assert entry["code"] in (0, 1) and entry["flags"], (name, entry)
    for flag, text in entry["flags"].items():
      assert len(text.split()) >= 2, (name, flag, text)  # Help text, not a placeholder.
      assert f"--{flag}:" in entry["out"] or f"--[no]{flag}:" in entry["out"], (name, flag)
  assert "--workdir" in results["simdino_jax.main"]["out"] and "--profile_steps" in results["simdino_jax.main"]["out"]
