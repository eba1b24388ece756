"""Throughput of the data pipeline: host (read + decode + resize + batch), host with the split held on device
(`data.on_device`: row indices only), and device (gather + multicrop + masks).

  python -m simdino_jax.data.benchmark [--dataset digits|cifar10|NAME] [--data_dir DIR] [--batch 64]

Device figures are the median of timed repeats after a warm-up (compile) call, with block_until_ready.
"""

import argparse
import time

import jax
import numpy as np

from simdino_jax import data


def host_images_per_second(config, batch: int, n_batches: int) -> float:
  iterator = data.create_train_iterator(config, batch_size=batch, seed=0, process_index=0, process_count=1)
  next(iterator)  # opening and the first read
  start = time.perf_counter()
  for _ in range(n_batches):
    next(iterator)
  return n_batches * batch / (time.perf_counter() - start)


def device_images_per_second(config, split: np.ndarray, rows: np.ndarray, patch_size: int,
                             repeats: int) -> tuple[float, float]:
  """(images/s, compile seconds) of jitted gather of `rows` from the device-held split + multicrop + masks."""
  batch = rows.shape[0]
  grid = (config.aug.global_size // patch_size,) * 2

  @jax.jit
  def step(key, dataset, index):
    k_crop, k_mask = jax.random.split(key)
    x = dataset[index]
    return data.multicrop(k_crop, x, config.aug), data.block_masks(k_mask, batch, grid, config.masking)

  dataset, index = jax.device_put(split), jax.device_put(rows)
  start = time.perf_counter()
  jax.block_until_ready(step(jax.random.key(0), dataset, index))
  compile_s = time.perf_counter() - start
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(jax.random.key(i + 1), dataset, index))
    times.append(time.perf_counter() - start)
  return batch / float(np.median(times)), compile_s


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m simdino_jax.data.benchmark", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", default="digits")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--host_batches", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--patch_size", type=int, default=4)
  parser.add_argument("--image_size", type=int, default=None, help="S; default: the config's")
  parser.add_argument("--global_size", type=int, default=None)
  parser.add_argument("--local_size", type=int, default=None)
  args = parser.parse_args(argv)
  config = data.default_config()
  config.data.name, config.data.data_dir = args.dataset, args.data_dir
  for section, field, value in ((config.data, "image_size", args.image_size),
                                (config.aug, "global_size", args.global_size),
                                (config.aug, "local_size", args.local_size)):
    if value:
      section[field] = value
  host = host_images_per_second(config.data, args.batch, args.host_batches)
  config.data.on_device = True
  host_rows = host_images_per_second(config.data, args.batch, args.host_batches)
  iterator = data.create_train_iterator(config.data, batch_size=args.batch, seed=0, process_index=0,
                                        process_count=1)
  device, compile_s = device_images_per_second(config, iterator.resident_images, next(iterator)["index"],
                                               args.patch_size, args.repeats)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
  print(f"dataset {args.dataset}, batch {args.batch}, S={config.data.image_size}, "
        f"crops 2x{config.aug.global_size} + {config.aug.n_local}x{config.aug.local_size}")
  print(f"host pipeline (read+decode+resize+batch): {host:,.0f} images/s")
  print(f"host with the split on device (row indices only): {host_rows:,.0f} images/s")
  print(f"device gather + multicrop + block masks (jit): {device:,.0f} images/s (compile {compile_s:.1f} s)")


if __name__ == "__main__":
  main()
