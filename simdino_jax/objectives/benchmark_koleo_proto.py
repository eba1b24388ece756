"""Time and peak memory of koleo_proto_loss (value and gradient) and unique_prototypes at K × d.

  python -m simdino_jax.objectives.benchmark_koleo_proto [--k 65536] [--d 256] [--chunk_size 4096]

Each measurement runs in a fresh process, so its peak resident memory (getrusage max RSS) is its own; the RSS of
a process that has only imported JAX and built the prototypes is reported as the baseline.
"""

import argparse
import functools
import json
import multiprocessing
import resource
import time


def _measure(stage: str, k: int, d: int, chunk_size: int, seed: int) -> dict:
  import jax
  import numpy as np

  from simdino_jax.objectives.koleo import koleo_proto_loss, unique_prototypes

  prototypes = jax.device_put(np.random.default_rng(seed).normal(size=(k, d)).astype(np.float32))
  result = {"stage": stage}
  if stage == "baseline":
    pass
  elif stage == "unique_prototypes":
    start = time.perf_counter()
    result["count, largest_group"] = unique_prototypes(prototypes, 0.025, chunk_size=chunk_size)
    result["seconds (incl. compile)"] = round(time.perf_counter() - start, 2)
  else:
    loss = functools.partial(koleo_proto_loss, chunk_size=chunk_size)
    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(prototypes).compile()
    result["compile_seconds"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    value, gradient = jax.block_until_ready(compiled(prototypes))
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["loss"] = float(value)
    result["grad_norm"] = float(np.linalg.norm(np.asarray(gradient)))
  result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--k", type=int, default=65536)
  parser.add_argument("--d", type=int, default=256)
  parser.add_argument("--chunk_size", type=int, default=4096)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  print(json.dumps(vars(args)))
  context = multiprocessing.get_context("spawn")
  for stage in ("baseline", "koleo_proto_value_and_grad", "unique_prototypes"):
    with context.Pool(1) as pool:
      print(json.dumps(pool.apply(_measure, (stage, args.k, args.d, args.chunk_size, args.seed))), flush=True)


if __name__ == "__main__":
  main()
