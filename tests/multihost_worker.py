"""One process of the 2-process × 2-device parity test: trains a few steps and writes losses and parameters.

Run by tests/test_parity.py as `python -m tests.multihost_worker PORT PROCESS_ID OUT.npz`, with 2 simulated CPU
devices per process (train_utils.subprocess_env(devices=2)).
"""

import sys

import jax
import numpy as np


def main(port: str, process_id: str, out_path: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_disable_most_optimizations", True)
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id))
  from simdino_jax import parallel, train
  from tests import train_utils

  config = train_utils.parity_config()
  trainer = train.build(config, num_examples=64)
  images = train_utils.random_images(config.batch_size, config.data.image_size)
  local = np.split(images, jax.process_count())[jax.process_index()]
  losses = []
  with jax.set_mesh(trainer.mesh):
    batch = parallel.global_batch({"image": local}, trainer.mesh)["image"]
    state = trainer.state
    for _ in range(train_utils.PARITY_STEPS):
      state, metrics = trainer.step_fn(state, batch, trainer.schedules)
      losses.append(float(np.asarray(metrics["loss"].addressable_data(0))))
  leaves = jax.tree_util.tree_flatten_with_path(state.student)[0]
  params = {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0)) for k, v in leaves}
  # Streamed evaluation features: each process reads its own rows of a 37-image split.
  features, labels = train_utils.eval_features_of_a_small_split(trainer.mesh)
  if jax.process_index() == 0:
    np.savez(out_path, losses=np.asarray(losses), eval_features=features, eval_labels=labels, **params)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
