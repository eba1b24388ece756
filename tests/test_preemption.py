"""A kill at any instant resumes: the training command SIGKILLed at seeded random instants (a checkpoint after every
step, so most land inside a save) and started again until it finishes, on a local disk and on gs:// (the GCS
emulator); the final state equals an uninterrupted run's bitwise. One kill a backend here; `python -m
tests.kill_restart --kills=10` runs more and prints which phase of a save each one hit (docs/operations.md)."""

import jax
import numpy as np
import pytest

from tests import kill_restart
from tests import train_utils

STEPS = 6  # The kill lands in the save of step 1 or 2; the rest is the resumed run.


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  import subprocess  # pylint: disable=import-outside-toplevel

  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  subprocess.run(
    train_utils.main_command(workdir, kill_restart.job_config(STEPS)),
    cwd=kill_restart.ROOT,
    check=True,
    env=train_utils.subprocess_env(),
    capture_output=True,
  )
  return kill_restart.final_state(workdir, STEPS)


@pytest.mark.parametrize("backend", ["local", "gs"])
def test_kills_at_random_instants_resume_bitwise(backend, tmp_path, reference, monkeypatch):
  env = train_utils.subprocess_env()
  server = None
  if backend == "gs":
    from etils.epath import backend as backend_lib  # pylint: disable=import-outside-toplevel

    server, emulator = train_utils.start_emulator()
    env.update(emulator)
    for key, value in emulator.items():
      monkeypatch.setenv(key, value)
    backend_lib.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  try:
    workdir = "gs://bucket/run" if backend == "gs" else str(tmp_path / "run")
    phases, output = kill_restart.run_until_done(workdir, env, kills=1, seed=1, steps=STEPS)
    assert len(phases) == 1 and "done: step" in output, (phases, output[-2000:])
    # Where the kill lands depends on the box's speed (seed 1 landed inside a save on both backends, and between
    # saves on an idle box); `python -m tests.kill_restart --kills=10` covers the phases (docs/operations.md).
    assert phases[0].startswith(("inside the save", "between saves", "before the first save")), phases
    final = kill_restart.final_state(workdir, STEPS)
  finally:
    if server is not None:
      server.kill()
  assert int(final.step) == STEPS
  jax.tree.map(np.testing.assert_array_equal, final, reference)
