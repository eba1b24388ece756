"""launch/tpu_pod.sh builds a remote script that keeps every argument as given (gcloud replaced by a recorder)."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import psutil

from simdino_jax import checkpointing
from simdino_jax import train
from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_GCLOUD = """#!/usr/bin/env bash
echo "$@" >> "$RECORD.calls"
while [[ $# -gt 0 ]]; do
  if [[ "$1" == --command ]]; then printf '%s' "$2" > "$RECORD.remote"; fi
  shift
done
"""


def test_tpu_pod_launch_keeps_quoting_runs_detached_and_logs_per_worker(tmp_path):
  (tmp_path / "gcloud").write_text(FAKE_GCLOUD)
  (tmp_path / "gcloud").chmod(0o755)
  record = tmp_path / "record"
  env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "RECORD": str(record), "TPU_NAME": "pod",
         "ZONE": "us-central2-b", "RUN_NAME": "run1"}
  args = ["configs/dino.py:model=ViT-B/16", "gs://bucket/run", "--config.data.data_dir=gs://bucket/my data",
          "--config.note=it's $HOME"]
  subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), *args], env=env, check=True, timeout=60)
  calls = (tmp_path / "record.calls").read_text().splitlines()
  assert calls[0].startswith("compute tpus tpu-vm scp") and "--worker=all" in calls[0]
  assert calls[1].startswith("compute tpus tpu-vm ssh pod") and "--worker=all" in calls[1]
  remote = (tmp_path / "record.remote").read_text()
  assert "uv venv --python 3.11 .venv" in remote and "'jax[tpu]'" in remote and "tensorflow" in remote  # filtered
  assert "tensorflow-cpu tensorboard" not in remote  # Only with WITH_TF=1.
  launch = next(line for line in remote.splitlines() if line.startswith("setsid nohup "))
  assert '> "$log" 2>&1 < /dev/null &' in launch and "log=logs/run1.worker$worker.log" in remote
  # The shell on the worker sees exactly the arguments given here.
  words = launch.removeprefix("setsid nohup .venv/bin/python -m simdino_jax.main ").split(" > ")[0]
  echoed = subprocess.run(["bash", "-c", f"printf '%s\\n' {words}"], capture_output=True, text=True, check=True)
  assert echoed.stdout.splitlines() == [f"--config={args[0]}", f"--workdir={args[1]}", *args[2:]]
  subprocess.run(["bash", "-n", "-c", remote], check=True)


def _restore_step(workdir, step: int):
  config = train_utils.tiny_config("simdino")
  setup = train.build(config, num_examples=64)
  checkpoints = checkpointing.Checkpoints(str(workdir), config)
  try:
    return checkpoints.restore(step, setup.state, setup.state_shardings)[0]
  finally:
    checkpoints.close()


def _local_job(workdir, env_overrides: dict) -> subprocess.Popen:
  """launch/local.sh with 2 processes × 1 CPU device on the tiny digits config (40 steps, a checkpoint every 2)."""
  config = train_utils.tiny_config("simdino")
  config.total_steps, config.checkpoint_every_steps, config.log_every_steps = 40, 2, 2
  _, _, _, config_flag, _, *overrides = train_utils.main_command(workdir, config)
  env = {**train_utils.subprocess_env(), "PYTHON": sys.executable, "NUM_PROCESSES": "2", **env_overrides}
  return subprocess.Popen(["bash", os.path.join(ROOT, "launch", "local.sh"), config_flag.split("=", 1)[1],
                           str(workdir), *overrides], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def test_local_launch_restarts_the_job_after_a_dead_worker_and_ends_as_an_uninterrupted_run(tmp_path):
  """Process 1 is SIGKILLed after the first checkpoint: process 0 stops by itself (measured), the launcher restarts
  both, and the final checkpoint equals that of an uninterrupted run bitwise."""
  reference = _local_job(tmp_path / "reference", {"MAX_RESTARTS": "0"})
  job = _local_job(tmp_path / "work", {"MAX_RESTARTS": "1"})
  deadline = time.time() + 300
  while not (tmp_path / "work" / "checkpoints" / "2").is_dir() and job.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  children = psutil.Process(job.pid).children()
  workers = {next(a for a in p.cmdline() if a.startswith("--process_id=")): p for p in children}
  workers["--process_id=1"].send_signal(signal.SIGKILL)
  killed = time.time()
  survivor = workers["--process_id=0"]
  survivor.wait(timeout=60)
  detection = time.time() - killed
  output = job.communicate(timeout=600)[0]
  assert job.returncode == 0, output[-4000:]
  assert detection < 45, detection
  assert "launch/local.sh: a process failed" in output and "restart 1 of 1" in output, output[-4000:]
  print(f"dead worker detected after {detection:.1f} s")
  reference_output = reference.communicate(timeout=600)[0]
  assert reference.returncode == 0, reference_output[-4000:]
  final, expected = (_restore_step(tmp_path / name, 40) for name in ("work", "reference"))
  jax.tree.map(np.testing.assert_array_equal, final, expected)
