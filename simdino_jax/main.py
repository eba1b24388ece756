"""Entry point: `python -m simdino_jax.main --config=configs/<name>.py[:args] --workdir=DIR [--config.x=y ...]`.

On a TPU pod slice, under SLURM with several tasks, or with explicit coordinator flags, JAX's distributed runtime is
initialized first (`--distributed`, see `simdino_jax.cluster`), so the same command runs on one device, one host
with many devices, or many hosts. The workdir may be local or remote (`gs://bucket/run`).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from simdino_jax import cluster

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (local or gs://...).")
_DISTRIBUTED = cluster.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  del argv
  cluster.initialize_from_flags(_DISTRIBUTED)
  import jax
  from simdino_jax import train
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
        f"{jax.device_count()} devices ({jax.devices()[0].platform})", flush=True)
  train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
