"""Many devices and processes: training on 8 devices, and on 2 processes × 2 CPU devices (jax.distributed with
gloo on localhost), follows the trajectory of one device; SIGTERM reaching one process stops both at one saved step;
SIGKILL of one process stops the other in one line, and launch/local.sh restarts both to the uninterrupted result;
SIGKILL of the coordinator stops the other with the same line.

All use the parity config (DINOv2: masks, centers, KoLeo), so each of its steps (1 device, 8 devices, 2 processes)
compiles once for the file, and its one-device run is shared: the reference of both parity tests, and the DINO-head
case of the per-step checks of test_train.py."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import psutil
import pytest

from simdino_jax import checkpointing
from simdino_jax import cluster
from simdino_jax import parallel
from simdino_jax import train
from simdino_jax import train_state as train_state_lib
from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def one_device_run():
  """(setup, state before the last step, final state, metrics) of PARITY_STEPS steps on one device."""
  return train_utils.run_steps(
    train_utils.parity_config(), train_utils.PARITY_STEPS, mesh=parallel.create_mesh(jax.devices()[:1])
  )


def test_dinov2_steps_update_the_teacher_and_the_centers(one_device_run):
  train_utils.assert_steps_update_the_state(*one_device_run, objective_state=True)


def test_two_processes_match_one_device(tmp_path, one_device_run):
  port = train_utils.free_port()
  out = tmp_path / "process0.npz"
  env = train_utils.subprocess_env(devices=2)
  workers = [
    subprocess.Popen(
      [sys.executable, "-m", "tests.multihost_worker", str(port), str(i), str(out)],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  logs = [w.communicate(timeout=600)[0] for w in workers]
  for w, log in zip(workers, logs):
    assert w.returncode == 0, log[-3000:]
  multi = np.load(out)

  _, _, single_state, single_metrics = one_device_run
  np.testing.assert_allclose(multi["losses"], [m["loss"] for m in single_metrics], rtol=2e-5)
  train_utils.assert_same_parameters(
    multi, single_state.student, lr=max(m["lr"] for m in single_metrics), steps=train_utils.PARITY_STEPS
  )
  # Evaluation features streamed by two processes (each its own rows) are those of one process.
  features, labels = train_utils.eval_features_of_a_small_split(parallel.create_mesh(jax.devices()[:2]))
  np.testing.assert_array_equal(multi["eval_labels"], np.arange(37))
  np.testing.assert_allclose(multi["eval_features"], features, rtol=1e-6)


def test_one_device_and_eight_devices_give_the_same_trajectory(one_device_run):
  _, _, state_1, metrics_1 = one_device_run
  eight = parallel.create_mesh(jax.devices()[:8])
  _, _, state_8, metrics_8 = train_utils.run_steps(train_utils.parity_config(), train_utils.PARITY_STEPS, mesh=eight)
  np.testing.assert_allclose([m["loss"] for m in metrics_1], [m["loss"] for m in metrics_8], rtol=2e-5)
  flat_8 = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(state_8.student)[0]}
  train_utils.assert_same_parameters(
    flat_8, state_1.student, lr=max(m["lr"] for m in metrics_1), steps=train_utils.PARITY_STEPS
  )


def test_sigterm_stops_every_process_at_the_same_step_with_a_restorable_checkpoint(tmp_path):
  """The training command on 2 processes × 2 CPU devices; SIGTERM reaches only process 1, as when one host is
  preempted first. Both save the same step and exit 0; the save is asynchronous (the production path), so the exit
  waits for it."""
  config = train_utils.parity_config()  # The 2-process step above, from its compilation cache.
  config.total_steps, config.log_every_steps, config.async_checkpointing = 10_000, 1, True
  workdir = tmp_path / "work"
  port = str(train_utils.free_port())
  env = train_utils.subprocess_env(devices=2)
  procs = [
    subprocess.Popen(
      train_utils.main_command(workdir, config)
      + [f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
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
  stops = [
    [int(line.split("step ")[1].split()[0]) for line in lines if line.startswith("SIGTERM received")] for lines in logs
  ]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  [step] = stops[0]
  assert 1 <= step < 10_000 and train_utils.checkpoint_steps(workdir) == [step]
  # The checkpoint restores (here in one process) to a finite state of that step, with the data iterator's state.
  setup = train.build(config, num_examples=64)
  template, shardings = setup.state, setup.state_shardings
  state, data_state = checkpointing.Checkpoints(str(workdir), config).restore_latest(template, shardings)
  assert int(state.step) == step and bool(train_state_lib.all_finite(state))
  assert isinstance(data_state, dict) and data_state


def _local_job(workdir, max_restarts: int) -> subprocess.Popen:
  """launch/local.sh: 2 processes × 2 CPU devices on the parity config (the 2-process step above, from the
  compilation cache), 10 steps, an asynchronous checkpoint every 2."""
  config = train_utils.parity_config()
  config.total_steps, config.checkpoint_every_steps, config.async_checkpointing = 10, 2, True
  _, _, _, config_flag, _, *overrides = train_utils.main_command(workdir, config)
  env = {
    **train_utils.subprocess_env(devices=2),
    "PYTHON": sys.executable,
    "NUM_PROCESSES": "2",
    "MAX_RESTARTS": str(max_restarts),
  }
  return subprocess.Popen(
    ["bash", os.path.join(ROOT, "launch", "local.sh"), config_flag.split("=", 1)[1], str(workdir), *overrides],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def test_a_killed_process_stops_the_other_in_one_line_and_local_sh_restarts_both_to_the_uninterrupted_state(tmp_path):
  """Process 1 is SIGKILLed once a checkpoint has finished: process 0 stops within cluster.PEER_TIMEOUT_S with one
  line naming process 1 and the last finished checkpoint, exits 1 and leaves no newer step directory; the launcher
  restarts both, and the final state is bitwise that of an uninterrupted run."""
  work = tmp_path / "work"
  job = _local_job(work, max_restarts=1)
  reference = _local_job(tmp_path / "reference", max_restarts=0)
  deadline = time.time() + 300
  while not (
    (work / "checkpoints" / "2" / "commit_success.txt").exists() or job.poll() is not None or time.time() > deadline
  ):
    time.sleep(0.05)
  workers = {
    next(a for a in p.cmdline() if a.startswith("--process_id=")): p for p in psutil.Process(job.pid).children()
  }
  workers["--process_id=1"].send_signal(signal.SIGKILL)
  killed = time.time()
  workers["--process_id=0"].wait(timeout=60)
  stopped_after = time.time() - killed
  steps_left = train_utils.checkpoint_steps(work)  # Before the restart writes anything.
  output = job.communicate(timeout=600)[0]
  assert job.returncode == 0, output[-4000:]
  lost = [line for line in output.splitlines() if line.startswith("error: lost process")]
  assert len(lost) == 1, output[-4000:]
  last = int(re.search(r"The last finished checkpoint is step (\d+) in ", lost[0]).group(1))
  assert lost[0] == (
    f"error: lost process 1 of 2 (no heartbeat for {cluster.PEER_TIMEOUT_S} s: killed, crashed or its host is "
    f"down); process 0 stops too. The last finished checkpoint is step {last} in {work / 'checkpoints'}. Restart "
    "every process to resume (MAX_RESTARTS of launch/local.sh and launch/tpu_pod.sh does it; "
    'docs/operations.md, "Dead workers and restarts").'
  )
  assert 2 <= last < 10 and max(steps_left) == last, (last, steps_left)  # No partial newer checkpoint.
  assert stopped_after < 45, stopped_after
  print(f"process 0 stopped {stopped_after:.1f} s after process 1 was killed")
  assert "launch/local.sh: a process failed (exit status 1); restart 1 of 1" in output, output[-4000:]
  for noise in ("Traceback", "Fatal Python error", "Check failure"):
    assert noise not in output, output[-4000:]
  assert f"Resumed from the checkpoint of step {last} in {work}." in output
  reference_output = reference.communicate(timeout=600)[0]
  assert reference.returncode == 0, reference_output[-4000:]
  final, expected = (_restore(tmp_path / name, 10) for name in ("work", "reference"))
  jax.tree.map(np.testing.assert_array_equal, final, expected)


def test_the_coordinators_death_stops_the_other_process_in_one_line(tmp_path):
  """Process 0 (the coordinator: JAX's distributed service lives in it) is SIGKILLed once a checkpoint has finished:
  process 1 stops within seconds, its last line the project's, naming process 0 and the last finished checkpoint,
  exits 1 and saves nothing more. (JAX's client prints its C++ fatal message first: it aborts the process the moment
  the coordinator's connection breaks, and cluster.py's SIGABRT handler says the line.)"""
  config = train_utils.parity_config()  # The 2-process step above, from its compilation cache.
  config.total_steps, config.checkpoint_every_steps, config.async_checkpointing = 10_000, 2, True
  work = tmp_path / "work"
  port = str(train_utils.free_port())
  procs = [
    subprocess.Popen(
      train_utils.main_command(work, config)
      + [f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT,
      env=train_utils.subprocess_env(devices=2),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  deadline = time.time() + 300
  while not (
    (work / "checkpoints" / "2" / "commit_success.txt").exists()
    or procs[1].poll() is not None
    or time.time() > deadline
  ):
    time.sleep(0.05)
  procs[0].send_signal(signal.SIGKILL)
  killed = time.time()
  entries_at_the_kill = set(os.listdir(work / "checkpoints"))
  output = procs[1].communicate(timeout=60)[0]
  stopped_after = time.time() - killed
  procs[0].communicate(timeout=60)
  assert procs[1].returncode == 1, output[-4000:]
  last_line = output.rstrip("\n").splitlines()[-1]
  last = int(re.search(r"The last finished checkpoint is step (\d+) in ", last_line).group(1))
  assert last_line == (
    "error: lost process 0 of 2 (the coordinator: it stopped answering; killed, crashed or its host is down); "
    f"process 1 stops too. The last finished checkpoint is step {last} in {work / 'checkpoints'}. Restart every "
    'process to resume (MAX_RESTARTS of launch/local.sh and launch/tpu_pod.sh does it; docs/operations.md, "Dead '
    'workers and restarts").'
  ), output[-4000:]
  assert sum(line.startswith("error: lost process") for line in output.splitlines()) == 1, output[-4000:]
  assert last >= 2 and set(os.listdir(work / "checkpoints")) == entries_at_the_kill
  assert stopped_after < 15, stopped_after
  print(f"process 1 stopped {stopped_after:.1f} s after process 0 was killed")


def _restore(workdir, step: int):
  config = train_utils.parity_config()
  setup = train.build(config, num_examples=64)
  checkpoints = checkpointing.Checkpoints(str(workdir), config)
  try:
    return checkpoints.restore(step, setup.state, setup.state_shardings)[0]
  finally:
    checkpoints.close()
