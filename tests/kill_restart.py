"""Preemption at random instants: the training command SIGKILLed at seeded random times and started again with the
same command until it finishes; what each kill interrupted is read from the checkpoint folder it left.

    python -m tests.kill_restart --kills=10 --backend=local    # or --backend=gs (starts the GCS emulator)

tests/test_preemption.py runs a few kills a backend; this command runs as many as asked and prints each kill's
phase and the final comparison with an uninterrupted run.
"""

import argparse
import os
import random
import signal
import subprocess
import tempfile
import threading
import time

import jax
import numpy as np

from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40


def job_config(steps: int = STEPS):
  """The suite's tiny SimDINO step, a checkpoint after every step (asynchronous, the production path): most of the
  job's time is spent saving, so random kills land inside saves."""
  config = train_utils.tiny_config("simdino")
  config.total_steps, config.checkpoint_every_steps, config.async_checkpointing = steps, 1, True
  config.log_every_steps = 1
  return config


def _fresh_listings() -> None:
  """Drops gcsfs' cached listings (other processes changed the bucket since)."""
  import gcsfs  # pylint: disable=import-outside-toplevel
  from etils.epath import backend  # pylint: disable=import-outside-toplevel

  gcsfs.GCSFileSystem.clear_instance_cache()
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def save_phase(workdir: str) -> str:
  """What a kill interrupted, from the checkpoint folder: no save in flight, or the unfinished save's parts."""
  from simdino_jax import storage  # pylint: disable=import-outside-toplevel

  _fresh_listings()

  directory = storage.path(workdir) / "checkpoints"
  if not directory.is_dir():
    return "before the first save"
  for path in sorted(directory.iterdir()):
    temporary = ".orbax-checkpoint-tmp" in path.name
    if temporary or (path.name.isdigit() and not (path / "commit_success.txt").exists() and storage.is_remote(workdir)):
      parts = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
      state = next((p for p in path.iterdir() if p.name.startswith("state")), path / "state")
      written = "state manifest written" if (state / "manifest.ocdbt").exists() else "state manifest not written"
      return f"inside the save of step {path.name.split('.')[0]} ({', '.join(parts) or 'empty'}; {written})"
  return "between saves"


def run_until_done(
  workdir: str, env: dict, kills: int, seed: int, window_s: float = 2.0, steps: int = STEPS
) -> tuple[list, str]:
  """Starts the job, SIGKILLs it `kills` times at uniform instants in the `window_s` seconds after its first step
  (seeded), restarting it each time; returns (the phase of each kill, the last run's output)."""
  rng = random.Random(seed)
  phases = []
  while True:
    job = subprocess.Popen(
      train_utils.main_command(workdir, job_config(steps)),
      cwd=ROOT,
      env=env,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
    )
    lines, stepped = [], threading.Event()

    def read(job=job, lines=lines, stepped=stepped):
      for line in job.stdout:
        lines.append(line)
        if line.startswith("compiled and ran the first step"):
          stepped.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if len(phases) < kills:
      while not stepped.is_set() and job.poll() is None:
        time.sleep(0.02)
      time.sleep(rng.uniform(0.0, window_s))
      if job.poll() is None:
        job.send_signal(signal.SIGKILL)
        job.wait()
        reader.join(timeout=10)
        phases.append(save_phase(workdir))
        continue
    job.wait(timeout=600)
    reader.join(timeout=10)
    output = "".join(lines)
    if job.returncode != 0:
      raise RuntimeError(f"the job failed after {len(phases)} kills:\n{output[-3000:]}")
    if len(phases) >= kills or "done: step" in output:
      return phases, output


def final_state(workdir: str, steps: int = STEPS):
  from simdino_jax import checkpointing, train  # pylint: disable=import-outside-toplevel

  _fresh_listings()
  config = job_config(steps)
  setup = train.build(config, num_examples=64)
  checkpoints = checkpointing.Checkpoints(workdir, config)
  try:
    state, _ = checkpoints.restore(checkpoints.manager.latest_step(), setup.state, setup.state_shardings)
  finally:
    checkpoints.close()
  return jax.device_get(state)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--backend", choices=("local", "gs"), default="local")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  env = train_utils.subprocess_env()
  server = None
  scratch = tempfile.mkdtemp(prefix="kill_restart_")
  if args.backend == "gs":
    server, emulator = train_utils.start_emulator()
    env.update(emulator)
    os.environ.update(emulator)
  try:
    workdir = f"gs://bucket/kill_restart_{args.seed}" if args.backend == "gs" else os.path.join(scratch, "run")
    started = time.time()
    phases, output = run_until_done(workdir, env, args.kills, args.seed)
    for i, phase in enumerate(phases, 1):
      print(f"kill {i}: {phase}")
    print(output[-600:])
    reference = os.path.join(scratch, "reference")
    subprocess.run(
      train_utils.main_command(reference, job_config()), cwd=ROOT, env=env, check=True, capture_output=True
    )
    same = all(
      np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(final_state(workdir)), jax.tree.leaves(final_state(reference)))
    )
    print(
      f"{len(phases)} kills in {time.time() - started:.0f} s; final state bitwise equal to the uninterrupted "
      f"run: {same}"
    )
  finally:
    if server is not None:
      server.kill()


if __name__ == "__main__":
  main()
