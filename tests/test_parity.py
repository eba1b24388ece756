"""Device parity: a train step on 8 devices, and on 2 processes × 2 CPU devices (jax.distributed with gloo on
localhost), follows the trajectory of one device (the parity config; its 1-device step compiles once here)."""

import os
import subprocess
import sys

import jax
import numpy as np

from simdino_jax import parallel
from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_match_one_device(tmp_path):
  port = train_utils.free_port()
  out = tmp_path / "process0.npz"
  env = train_utils.subprocess_env(devices=2)
  workers = [subprocess.Popen([sys.executable, "-m", "tests.multihost_worker", str(port), str(i), str(out)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
  logs = [w.communicate(timeout=600)[0] for w in workers]
  for w, log in zip(workers, logs):
    assert w.returncode == 0, log[-3000:]
  multi = np.load(out)

  _, _, single_state, single_metrics = train_utils.run_steps(
      train_utils.parity_config(), train_utils.PARITY_STEPS, mesh=parallel.create_mesh(jax.devices()[:1]))
  np.testing.assert_allclose(multi["losses"], [m["loss"] for m in single_metrics], rtol=2e-5)
  train_utils.assert_same_parameters(multi, single_state.student, lr=max(m["lr"] for m in single_metrics),
                                     steps=train_utils.PARITY_STEPS)
  # Evaluation features streamed by two processes (each its own rows) are those of one process.
  features, labels = train_utils.eval_features_of_a_small_split(parallel.create_mesh(jax.devices()[:2]))
  np.testing.assert_array_equal(multi["eval_labels"], np.arange(37))
  np.testing.assert_allclose(multi["eval_features"], features, rtol=1e-6)


def test_one_device_and_eight_devices_give_the_same_trajectory():
  config = train_utils.parity_config()
  single = parallel.create_mesh(jax.devices()[:1])
  eight = parallel.create_mesh(jax.devices()[:8])
  _, _, state_1, metrics_1 = train_utils.run_steps(config, 3, mesh=single)
  _, _, state_8, metrics_8 = train_utils.run_steps(config, 3, mesh=eight)
  np.testing.assert_allclose([m["loss"] for m in metrics_1], [m["loss"] for m in metrics_8], rtol=2e-5)
  flat_8 = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(state_8.student)[0]}
  train_utils.assert_same_parameters(flat_8, state_1.student, lr=max(m["lr"] for m in metrics_1), steps=3)
