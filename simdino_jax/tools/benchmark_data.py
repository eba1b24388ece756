"""Throughput of the data pipeline.

  python -m simdino_jax.tools.benchmark_data --mode=host_crops [--photos=DIR] [--workers=1,2]
  python -m simdino_jax.tools.benchmark_data --mode=feed [--model=ViT-T/16] [--batch=8] [--workers=1,2]
  python -m simdino_jax.tools.benchmark_data [--dataset=digits|cifar10|NAME] [--data_dir=DIR] [--batch=64]

--mode=host_crops: the crops of natural images cut on the host from the originals (`host_crops`, the path of
ImageNet and image folders), on a folder of photos (default: the two photos scikit-learn ships, china.jpg and
flower.jpg, 640x427 JPEG). First the CPU time of one image's views in this process beside torchvision's way (PIL
full decode, then RandomResizedCrop's resize per view) and their ratio, then decode + crops + batch in grain worker
processes: images/s per worker (wall clock, and per CPU-second of the workers: a figure that other load on the
machine changes less) and each worker's resident memory.

--mode=feed: the real train step fed from that path; the fraction of the loop spent waiting for data per worker
count, and the cores per accelerator the path needs at known step rates.

--mode=square (default): host (read + decode + resize + batch), host with the split held on device
(`data.on_device`: row indices only), and device (gather + multicrop + masks). Device figures are the median of
timed repeats after a warm-up (compile) call, with block_until_ready.
"""

import os
import time

from absl import app
from absl import flags
import numpy as np

from simdino_jax import cli
from simdino_jax import data
from simdino_jax.data import host_crops


def host_images_per_second(config, batch: int, n_batches: int) -> float:
  iterator = data.create_train_iterator(config, batch_size=batch, seed=0, process_index=0, process_count=1)
  next(iterator)  # opening and the first read
  start = time.perf_counter()
  for _ in range(n_batches):
    next(iterator)
  return n_batches * batch / (time.perf_counter() - start)


def device_images_per_second(
  config, split: np.ndarray, rows: np.ndarray, patch_size: int, repeats: int
) -> tuple[float, float]:
  """(images/s, compile seconds) of jitted gather of `rows` from the device-held split + multicrop + masks."""
  import jax  # pylint: disable=import-outside-toplevel  # not in the workers this module's runs spawn

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


class Photos:
  """A grain source of n records {"image": JPEG bytes}, cycling over the files given (picklable)."""

  def __init__(self, encoded: list[bytes], n: int):
    self._encoded, self._n = encoded, n

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict:
    return {"image": self._encoded[index % len(self._encoded)]}


def read_photos(folder: str | None) -> tuple[list[bytes], list[str]]:
  """The encoded images of `folder` (default: scikit-learn's sample photos) and their names."""
  if folder is None:
    import sklearn.datasets  # pylint: disable=import-outside-toplevel

    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
  from simdino_jax.tools.prepare import IMAGE_EXTENSIONS  # pylint: disable=import-outside-toplevel

  names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r}.")
  encoded = []
  for name in names:
    with open(os.path.join(folder, name), "rb") as f:
      encoded.append(f.read())
  return encoded, names


def host_crop_rate(
  encoded: list[bytes], plan, *, batch: int, n_batches: int, workers: int
) -> tuple[float, float, list[float]]:
  """(images/s wall, images per CPU-second of the workers, resident MiB of each worker) of host crops in `workers`
  grain worker processes."""
  import grain  # pylint: disable=import-outside-toplevel
  import psutil  # pylint: disable=import-outside-toplevel

  source = grain.MapDataset.source(Photos(encoded, batch * (n_batches + 2 * workers)))
  iterator = iter(host_crops.crop_batches(source, plan, batch_size=batch, seed=0, workers=workers, threads=1))
  for _ in range(workers):  # start-up: every worker has imported, opened and produced one batch
    next(iterator)
  children = [
    p
    for p in psutil.Process().children(recursive=True)  # The workers, not multiprocessing's tracker.
    if not any("resource_tracker" in part for part in p.cmdline())
  ]
  cpu = lambda: sum(sum(p.cpu_times()[:2]) for p in children)
  start, cpu_start = time.perf_counter(), cpu()
  for _ in range(n_batches):
    next(iterator)
  wall, cpu_s = time.perf_counter() - start, cpu() - cpu_start
  resident = [p.memory_info().rss / 2**20 for p in children]
  iterator.close()  # stops the workers
  return n_batches * batch / wall, n_batches * batch / cpu_s, resident


def torchvision_crops(image: bytes, boxes, sizes) -> list[np.ndarray]:
  """The official loaders' way (torchvision's RandomResizedCrop on a PIL image): decode the whole image, then
  resize each view's box with PIL's antialiased bicubic filter. The baseline and the quality reference."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  pil = host_crops.open_image(image).convert("RGB")
  return [
    np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h)))
    for (top, left, h, w), size in zip(boxes, sizes)
  ]


def side_by_side(encoded: list[bytes], plan, n_images: int, repeats: int = 9) -> dict[str, float]:
  """CPU milliseconds per image (all views) of `host_crops.cut_crops` and of `torchvision_crops`, measured in
  `repeats` rounds in this process, each round timing both back to back on the same images and boxes: the median
  of each, their ratio (the median of the rounds' ratios: a slow spell of the machine slows both of a round), and
  the worst mean absolute difference of a crop between them (in 1/255)."""
  rng = np.random.default_rng(0)
  images = [encoded[i % len(encoded)] for i in range(n_images)]
  boxes = [plan.draw_boxes(rng, *host_crops.image_size(image)) for image in images]

  def ours():
    out = []
    for image, b in zip(images, boxes):
      pixels, scale_x, scale_y = host_crops.decode(image, b, plan.sizes())
      out.append(
        [
          host_crops.resized_crop(pixels, box, size, scale_x, scale_y, plan.interpolation)
          for box, size in zip(b, plan.sizes())
        ]
      )
    return out

  theirs = lambda: [torchvision_crops(image, b, plan.sizes()) for image, b in zip(images, boxes)]
  times, crops = {"host_crops": [], "torchvision": []}, {}
  for _ in range(repeats):
    for name, fn in (("host_crops", ours), ("torchvision", theirs)):
      start = time.process_time()
      crops[name] = fn()
      times[name].append(1e3 * (time.process_time() - start) / n_images)
  mine, reference = crops["host_crops"], crops["torchvision"]
  worst = max(float(np.mean(np.abs(a.astype(np.float64) - b))) for m, r in zip(mine, reference) for a, b in zip(m, r))
  ratio = float(np.median(np.divide(times["torchvision"], times["host_crops"])))
  return {**{k: float(np.median(v)) for k, v in times.items()}, "ratio": ratio, "worst_crop_mad": worst}


def part_costs(encoded: list[bytes], plan, n_images: int) -> dict[str, float]:
  """CPU milliseconds of one image's parts in this process: decode (at the DCT scale), a global, a local crop."""
  rng = np.random.default_rng(0)
  totals = {"decode": 0.0, "global crop": 0.0, "local crop": 0.0}
  for i in range(n_images):
    image = encoded[i % len(encoded)]
    boxes = plan.draw_boxes(rng, *host_crops.image_size(image))
    start = time.process_time()
    pixels, scale_x, scale_y = host_crops.decode(image, boxes, plan.sizes())
    totals["decode"] += time.process_time() - start
    for j, (box, size) in enumerate(zip(boxes, plan.sizes())):
      start = time.process_time()
      host_crops.resized_crop(pixels, box, size, scale_x, scale_y, plan.interpolation)
      totals["global crop" if j < 2 else "local crop"] += time.process_time() - start
  counts = {"decode": n_images, "global crop": 2 * n_images, "local crop": plan.n_local * n_images}
  return {k: 1e3 * v / counts[k] for k, v in totals.items()}


def run_host_crops(
  *,
  photos: str | None = None,
  workers=(1, 2),
  batch: int = 64,
  n_batches: int = 50,
  global_size: int = 224,
  local_size: int = 96,
  n_local: int = 10,
  parts_images: int = 50,
) -> None:
  """Prints the host-crop figures: ours against torchvision's way, per-part costs, then images/s and resident
  memory for each worker count."""
  config = data.default_config().aug
  config.global_size, config.local_size, config.n_local = global_size, local_size, n_local
  plan = host_crops.CropPlan.from_config(config)
  encoded, names = read_photos(photos)
  sizes = sorted({host_crops.image_size(e)[::-1] for e in encoded})
  print(
    f"host crops: {len(names)} photos ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}; sizes "
    f"{', '.join(f'{w}x{h}' for w, h in sizes[:4])}), 2x{plan.global_size} + {plan.n_local}x"
    f"{plan.local_size} crops (scales {plan.global_scale}, {plan.local_scale}), batch {batch}, "
    f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}"
  )
  both = side_by_side(encoded, plan, parts_images)
  print(
    f"one image, all {2 + plan.n_local} views, CPU ms in this process (medians of rounds): host_crops "
    f"{both['host_crops']:.2f} "
    f"({1e3 / both['host_crops']:.0f} images/s per core), torchvision's way {both['torchvision']:.2f} "
    f"({1e3 / both['torchvision']:.0f}); ratio {both['ratio']:.2f}x; worst crop "
    f"MAD from PIL's resize {both['worst_crop_mad']:.2f}/255"
  )
  costs = part_costs(encoded, plan, parts_images)
  print("per-part cost (CPU ms, one process): " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
  for n in workers:
    wall, per_cpu, resident = host_crop_rate(encoded, plan, batch=batch, n_batches=n_batches, workers=n)
    print(
      f"{n} worker(s): {wall:,.0f} images/s ({wall / n:,.0f} per worker, wall clock); "
      f"{per_cpu:,.0f} images per CPU-second of the workers; resident memory per worker "
      f"{', '.join(f'{r:.0f}' for r in resident)} MiB"
    )


# Train-step rates to feed, images/s per accelerator (docs/benchmarks.md): what the host path must keep up with.
STEP_RATES = (
  ("DINO ViT-S/16, this codebase, one H100 (measured)", 1010.0),
  ("DINO ViT-S/16, the goal on one H100", 1500.0),
  ("ViT-B/16, the goal on one H100", 700.0),
  ("DINO ViT-S/16, the official PyTorch step, one H100", 476.0),
)


def run_feed(
  *,
  photos: str | None = None,
  method: str = "dino",
  model: str = "ViT-T/16",
  batch: int = 8,
  steps: int = 6,
  workers=(1, 2),
) -> None:
  """Feeds the real train step (`method`'s recipe at the ImageNet sizes) from the host-crop path with each worker
  count and prints the fraction of the loop's time spent waiting for data; then how many cores of that path one
  accelerator needs at each rate of `STEP_RATES`."""
  import jax  # pylint: disable=import-outside-toplevel  # not in the workers this module's runs spawn
  import grain  # pylint: disable=import-outside-toplevel
  from simdino_jax import configs  # pylint: disable=import-outside-toplevel
  from simdino_jax import train  # pylint: disable=import-outside-toplevel

  config = configs.load(method, f"model={model},batch={batch}")
  plan = host_crops.CropPlan.from_config(config.aug)
  encoded, names = read_photos(photos)
  setup = train.build(config, num_examples=1_281_167)
  step = train.make_host_step(setup, None)
  per_core = 1e3 / side_by_side(encoded, plan, n_images=20)["host_crops"]
  print(
    f"feed: {method} {model} train step ({jax.devices()[0].device_kind}), batch {batch}, "
    f"2x{plan.global_size} + {plan.n_local}x{plan.local_size} crops from {len(names)} photos; host crops "
    f"{per_core:.0f} images/s per core; load average {os.getloadavg()[0]:.2f}"
  )
  state = setup.state
  for n in workers:
    source = grain.MapDataset.source(Photos(encoded, batch * (steps + 1 + 2 * n)))
    batches = iter(host_crops.crop_batches(source, plan, batch_size=batch, seed=0, workers=n, threads=1))
    state, _ = step(state, next(batches))  # compiles (the first worker count only) and starts the workers
    jax.block_until_ready(state.step)
    waiting = stepping = 0.0
    for _ in range(steps):
      start = time.perf_counter()
      host = next(batches)
      waiting += time.perf_counter() - start
      start = time.perf_counter()
      state, _ = step(state, host)
      jax.block_until_ready(state.step)
      stepping += time.perf_counter() - start
    batches.close()
    print(
      f"{n} worker(s): {batch * steps / (waiting + stepping):.1f} images/s, step {1e3 * stepping / steps:.0f} "
      f"ms, waiting for data {100 * waiting / (waiting + stepping):.1f}% of the loop"
    )
  for name, rate in STEP_RATES:
    print(f"  {name}: {rate:,.0f} images/s needs {rate / per_core:.1f} cores of host crops per accelerator")


def run_square(
  *,
  dataset: str = "digits",
  data_dir: str | None = None,
  batch: int = 64,
  n_batches: int = 50,
  repeats: int = 10,
  patch_size: int = 4,
  image_size: int | None = None,
  global_size: int | None = None,
  local_size: int | None = None,
  n_local: int = 10,
) -> None:
  """Prints the figures of the square path: host, host with the split on device, device multicrop."""
  import jax  # pylint: disable=import-outside-toplevel  # not in the workers this module's runs spawn

  config = data.default_config()
  config.data.name, config.data.data_dir = dataset, data_dir
  config.aug.n_local = n_local
  for section, field, value in (
    (config.data, "image_size", image_size),
    (config.aug, "global_size", global_size),
    (config.aug, "local_size", local_size),
  ):
    if value:
      section[field] = value
  host = host_images_per_second(config.data, batch, n_batches)
  config.data.on_device = True
  host_rows = host_images_per_second(config.data, batch, n_batches)
  iterator = data.create_train_iterator(config.data, batch_size=batch, seed=0, process_index=0, process_count=1)
  device, compile_s = device_images_per_second(
    config, iterator.resident_images, next(iterator)["index"], patch_size, repeats
  )
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
  print(
    f"dataset {dataset}, batch {batch}, S={config.data.image_size}, "
    f"crops 2x{config.aug.global_size} + {config.aug.n_local}x{config.aug.local_size}"
  )
  print(f"host pipeline (read+decode+resize+batch): {host:,.0f} images/s")
  print(f"host with the split on device (row indices only): {host_rows:,.0f} images/s")
  print(f"device gather + multicrop + block masks (jit): {device:,.0f} images/s (compile {compile_s:.1f} s)")


def define_flags() -> None:
  """The command-line flags (defined when run as a program only: other tools define flags of the same names)."""
  flags.DEFINE_enum(
    "mode",
    "square",
    ["square", "host_crops", "feed"],
    "square: images resized to S on the host, cropped on the device; host_crops: crops cut on the "
    "host from the original photos; feed: the train step fed by host crops.",
  )
  flags.DEFINE_string("method", "dino", "feed mode: the recipe whose train step is fed.")
  flags.DEFINE_string("model", "ViT-T/16", "feed mode: the backbone.")
  flags.DEFINE_integer("steps", 6, "feed mode: timed train steps per worker count.")
  flags.DEFINE_string("dataset", "digits", "square mode: digits, npz, cifar10 or a prepared TFDS dataset name.")
  flags.DEFINE_string("data_dir", None, "square mode: TFDS data_dir of the dataset.")
  flags.DEFINE_integer("batch", 64, "Images per batch.")
  flags.DEFINE_integer("host_batches", 50, "Batches timed on the host.")
  flags.DEFINE_integer("repeats", 10, "square mode: timed repeats of the device step.")
  flags.DEFINE_integer("patch_size", 4, "square mode: patch size of the iBOT mask grid.")
  flags.DEFINE_integer("image_size", None, "square mode: S (default: the config's, 32).")
  flags.DEFINE_integer("global_size", None, "Global crop size (default: 32 in square mode, 224 in host_crops).")
  flags.DEFINE_integer("local_size", None, "Local crop size (default: 16 in square mode, 96 in host_crops).")
  flags.DEFINE_integer("n_local", 10, "Local crops per image.")
  flags.DEFINE_string("photos", None, "host_crops mode: a folder of images (default: scikit-learn's sample photos).")
  flags.DEFINE_list("workers", ["1", "2"], "host_crops mode: the grain worker process counts to measure.")
  flags.DEFINE_integer("parts_images", 50, "host_crops mode: images timed for the per-part costs.")


def main(argv) -> None:
  cli.flags_only(argv)
  f = flags.FLAGS
  if f.mode == "feed":
    run_feed(
      photos=f.photos, method=f.method, model=f.model, batch=f.batch, steps=f.steps, workers=[int(w) for w in f.workers]
    )
  elif f.mode == "host_crops":
    run_host_crops(
      photos=f.photos,
      workers=[int(w) for w in f.workers],
      batch=f.batch,
      n_batches=f.host_batches,
      global_size=f.global_size or 224,
      local_size=f.local_size or 96,
      n_local=f.n_local,
      parts_images=f.parts_images,
    )
  else:
    run_square(
      dataset=f.dataset,
      data_dir=f.data_dir,
      batch=f.batch,
      n_batches=f.host_batches,
      repeats=f.repeats,
      patch_size=f.patch_size,
      image_size=f.image_size,
      global_size=f.global_size,
      local_size=f.local_size,
      n_local=f.n_local,
    )


if __name__ == "__main__":
  define_flags()
  app.run(main)
