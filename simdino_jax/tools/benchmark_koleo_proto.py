"""Time and peak memory of koleo_proto_loss (value and gradient) and unique_prototypes at K × d on this host.

  python -m simdino_jax.tools.benchmark_koleo_proto [--k=65536] [--d=256] [--chunk_size=4096]

Each measurement runs in a fresh process, so its peak resident memory (getrusage max RSS) is its own; "baseline"
is a process that has only imported JAX and built the Gaussian random prototypes.
"""

import functools
import json
import multiprocessing
import resource
import time

from absl import app
from absl import flags

from simdino_jax import cli


def _koleo_proto_value_and_grad(prototypes, chunk_size: int) -> dict:
  import jax
  import numpy as np

  from simdino_jax.objectives.koleo import koleo_proto_loss

  loss = functools.partial(koleo_proto_loss, chunk_size=chunk_size)
  start = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss)).lower(prototypes).compile()
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  value, gradient = jax.block_until_ready(compiled(prototypes))
  return {
    "compile_seconds": round(compile_seconds, 2),
    "seconds": round(time.perf_counter() - start, 2),
    "loss": float(value),
    "grad_norm": float(np.linalg.norm(np.asarray(gradient))),
  }


def _unique_prototypes(prototypes, chunk_size: int) -> dict:
  from simdino_jax.objectives.koleo import unique_prototypes

  start = time.perf_counter()
  count, largest_group = unique_prototypes(prototypes, 0.025, chunk_size=chunk_size)
  return {"seconds_incl_compile": round(time.perf_counter() - start, 2), "count": count, "largest_group": largest_group}


STAGES = {
  "baseline": lambda prototypes, chunk_size: {},
  "koleo_proto_value_and_grad": _koleo_proto_value_and_grad,
  "unique_prototypes": _unique_prototypes,
}


def _measure(stage: str, k: int, d: int, chunk_size: int, seed: int) -> dict:
  import jax
  import numpy as np

  prototypes = jax.device_put(np.random.default_rng(seed).normal(size=(k, d)).astype(np.float32))
  result = {"stage": stage, **STAGES[stage](prototypes, chunk_size)}
  result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
  return result


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (so the module imports anywhere)."""
  flags.DEFINE_integer("k", 65536, "Number of prototypes K.")
  flags.DEFINE_integer("d", 256, "Prototype dimension d.")
  flags.DEFINE_integer("chunk_size", 4096, "Rows of the K × K distances computed at a time.")
  flags.DEFINE_integer("seed", 0, "Seed of the Gaussian random prototypes.")


def main(argv) -> None:
  del argv
  args = {name: flags.FLAGS[name].value for name in ("k", "d", "chunk_size", "seed")}
  print(json.dumps(args))
  context = multiprocessing.get_context("spawn")
  for stage in STAGES:
    with context.Pool(1) as pool:
      print(
        json.dumps(pool.apply(_measure, (stage, args["k"], args["d"], args["chunk_size"], args["seed"]))), flush=True
      )


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
