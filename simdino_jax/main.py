"""Entry point: `python -m simdino_jax.main --config=configs/<name>.py[:args] --workdir=DIR [--config.x=y ...]`.

On a TPU pod, under SLURM, or with explicit coordinator flags, JAX's distributed runtime is initialized first, so
the same command runs on one device, one host with many devices, or many hosts.
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def maybe_initialize_distributed() -> None:
  """`jax.distributed.initialize` with explicit flags, or auto-detected on TPU pods and under SLURM."""
  import jax
  # CPU processes exchange collectives through gloo (GPU and TPU use their own); harmless elsewhere.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
  elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    jax.distributed.initialize()


def main(argv) -> None:
  del argv
  maybe_initialize_distributed()
  import jax
  from simdino_jax import train
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
        f"{jax.device_count()} devices ({jax.devices()[0].platform})", flush=True)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
