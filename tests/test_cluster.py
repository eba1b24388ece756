"""`--distributed=auto|on|off`: when `jax.distributed.initialize` is called, decided by JAX's cluster detection."""

import jax
import pytest

from simdino_jax import cluster

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
CLUSTER_VARIABLES = tuple(SLURM) + (
  "SLURM_NTASKS",
  "OMPI_MCA_orte_hnp_uri",
  "TPU_WORKER_HOSTNAMES",
  "TPU_PROCESS_ADDRESSES",
)


@pytest.fixture
def calls(monkeypatch):
  """Records the calls to jax.distributed.initialize instead of starting a runtime; clears cluster variables."""
  recorded = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: recorded.append(args))
  monkeypatch.setattr(jax.config, "update", lambda *args: None)
  monkeypatch.setattr(cluster, "_start_peer_watch", lambda: None)  # No runtime: no key-value store to watch.
  for name in CLUSTER_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  return recorded


def _slurm(monkeypatch, tasks: int) -> None:
  for name, value in {**SLURM, "SLURM_NTASKS": str(tasks)}.items():
    monkeypatch.setenv(name, value)


def test_auto_initializes_under_slurm_with_several_tasks_only(calls, monkeypatch):
  assert cluster.initialize("auto") is False and calls == []  # No cluster: one process.
  _slurm(monkeypatch, tasks=1)
  assert cluster.detected_process_count() == 1
  assert cluster.initialize("auto") is False and calls == []  # One task: nothing to coordinate.
  _slurm(monkeypatch, tasks=16)
  assert cluster.detected_process_count() == 16
  assert cluster.initialize("auto") is True and calls == [()]  # JAX reads the rest from the SLURM variables.
  assert cluster.initialize("off") is False and calls == [()]


def test_on_requires_a_cluster_and_explicit_coordinates_win(calls, monkeypatch):
  with pytest.raises(RuntimeError, match="--distributed=on: JAX detected no cluster.*--coordinator_address"):
    cluster.initialize("on")
  _slurm(monkeypatch, tasks=1)
  assert cluster.initialize("on") is True and calls == [()]
  assert cluster.initialize("auto", coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
  assert calls[-1] == ("10.0.0.1:1234", 4, 3)
  with pytest.raises(ValueError, match="--distributed=off contradicts --coordinator_address"):
    cluster.initialize("off", coordinator_address="10.0.0.1:1234")
  with pytest.raises(ValueError, match="Unknown --distributed='yes'; valid: auto, on, off"):
    cluster.initialize("yes")
