"""Entry point: `python -m simdino_jax.main --config=configs/<name>.py[:args] --workdir=DIR [--config.x=y ...]`.

On a TPU pod slice, under SLURM with several tasks, or with explicit coordinator flags, JAX's distributed runtime is
initialized first (`--distributed`, see `simdino_jax.cluster`), so the same command runs on one device, one host
with many devices, or many hosts. The workdir may be local or remote (`gs://bucket/run`).
"""

import signal
import sys


def _stop_during_start_up(signum, frame) -> None:
  del signum, frame
  print(
    "error: SIGTERM received during start-up, before the first training step: stopped; the workdir's "
    "checkpoints are as they were.",
    file=sys.stderr,
    flush=True,
  )
  raise SystemExit(143)


if __name__ == "__main__":  # First thing: until the training loop takes SIGTERM over, it stops with a message.
  signal.signal(signal.SIGTERM, _stop_during_start_up)

from absl import app  # pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import flags
from ml_collections import config_flags

from simdino_jax import cli
from simdino_jax import cluster

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config file, configs/<name>.py[:key=value,...]; override any field with --config.path.to.field=value.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Directory for checkpoints and metrics, local or gs://... (created "
  "when training starts; an existing one resumes from its latest checkpoint).",
)
_PROFILE_STEPS = flags.DEFINE_integer(
  "profile_steps",
  0,
  "Trace this many train steps after the first (compiled) one with jax.profiler into WORKDIR/profile (0: no trace).",
)
_DISTRIBUTED = cluster.define_flags()
flags.mark_flags_as_required(["config", "workdir"])

# Bad input: the errors whose message already says what is wrong and how to fix it.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def main(argv) -> None:
  del argv
  cluster.initialize_from_flags(_DISTRIBUTED)
  import jax
  from simdino_jax import checkpointing
  from simdino_jax import train

  try:
    train.run(_CONFIG.value, _WORKDIR.value, profile_steps=_PROFILE_STEPS.value)
  except (*USER_ERRORS, checkpointing.CheckpointError) as e:
    if flags.FLAGS.verbosity >= 1:  # --verbosity=1: the traceback too.
      raise
    if jax.process_index() == 0:
      cli.fail(str(e), status=1)
    sys.exit(1)
  except jax.errors.JaxRuntimeError:
    cluster.stop_if_a_peer_is_lost()  # A collective failed because a peer died: its one line instead.
    raise


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
