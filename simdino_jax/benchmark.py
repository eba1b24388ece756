"""Times the full train step and the input pipeline; prints images/s, step time, TFLOP/s, MFU and peak memory.

    python -m simdino_jax.benchmark --config=configs/dino.py:model=ViT-B/16 --batch=64

The step is exactly the training step (on-device augmentation and masks, teacher and student forward, objective,
backward, AdamW, EMA), fed with synthetic uint8 images already on the device. Timing: `--warmup` steps, then the
median of `--steps` steps, each ended by `block_until_ready`. FLOPs come from XLA's cost analysis of the compiled
step and from the analytic formula `analytic_step_flops` (the usual ViT count, any patch size); MFU divides
by `--peak_tflops` (746 = the bf16 matmul rate measured on the reference H100).
"""

import statistics
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (so the module imports anywhere)."""
  config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config.", lock_config=True)
  flags.DEFINE_integer("batch", 0, "Global batch size (0: the config's).")
  flags.DEFINE_integer("steps", 20, "Timed steps.")
  flags.DEFINE_integer("warmup", 3, "Untimed warm-up steps (the first compiles).")
  flags.DEFINE_float("peak_tflops", 746.0, "Peak TFLOP/s for MFU (0: don't report MFU).")
  flags.DEFINE_bool("pipeline", True, "Also time the host input pipeline and the augmentation alone.")


def vit_forward_flops(size: int, *, width: int, depth: int, patch: int, registers: int = 0) -> float:
  """`L·n·(24d² + 4nd) + N_p·2·(p²·3)·d`: qkv, projection and MLP, attention, and the patch embedding."""
  patches = (size // patch) ** 2
  tokens = patches + 1 + registers
  return depth * tokens * (24 * width ** 2 + 4 * tokens * width) + patches * 2 * (patch * patch * 3) * width


def head_forward_flops(width: int, head) -> float:
  """The head's MLP `D → hidden → … → bottleneck` on one CLS token (the prototype layer is added separately)."""
  dims = [width] + [head.hidden_dim] * (head.n_layers - 1) + [head.bottleneck_dim]
  return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))


def analytic_step_flops(config, width: int, depth: int, num_prototypes: int) -> float:
  """`B·[3·(2F(G) + n_l F(l) + V·H) + (2F(G) + 2H)]`: student forward+backward (3×), teacher forward."""
  a, m = config.aug, config.model
  f_global = vit_forward_flops(a.global_size, width=width, depth=depth, patch=m.patch_size,
                               registers=m.num_registers)
  f_local = vit_forward_flops(a.local_size, width=width, depth=depth, patch=m.patch_size,
                              registers=m.num_registers) if a.n_local else 0.0
  h = head_forward_flops(width, m.head) + 2 * m.head.bottleneck_dim * num_prototypes
  views = 2 + a.n_local
  per_image = 3 * (2 * f_global + a.n_local * f_local + views * h) + (2 * f_global + 2 * h)
  return config.batch_size * per_image


def _median_time(fn, steps: int) -> tuple[float, float, float]:
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  q = np.percentile(times, [10, 90])
  return statistics.median(times), float(q[0]), float(q[1])


def benchmark_step(config, *, steps: int, warmup: int, peak_tflops: float) -> dict:
  """Compiles and times the train step on synthetic images; returns the figures."""
  from flax import nnx

  from simdino_jax import parallel, train, validation

  validation.validate_config(config)
  trainer = train.build(config, num_examples=max(config.batch_size * 1000, 1))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (config.batch_size, config.data.image_size, config.data.image_size, 3), np.uint8)
  with jax.set_mesh(trainer.mesh):
    batch = parallel.global_batch({"image": images}, trainer.mesh)["image"]
    compiled = trainer.step_fn.lower(trainer.state, batch).compile()
    state = trainer.state

    def one_step():
      nonlocal state
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics["loss"])

    for _ in range(warmup):
      one_step()
    median, p10, p90 = _median_time(one_step, steps)

  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
  memory = compiled.memory_analysis()
  compiled_peak = None
  if memory is not None:
    compiled_peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                     - memory.alias_size_in_bytes)
  stats = jax.devices()[0].memory_stats() or {}
  params = jax.tree.leaves(state.student)
  width = _backbone_width(state.student)
  depth = _backbone_depth(state.student)
  num_prototypes = nnx.merge(trainer.graphdef, state.student).head.num_prototypes
  analytic = analytic_step_flops(config, width, depth, num_prototypes)
  return {
      "images_per_s": config.batch_size / median, "step_ms": 1e3 * median, "p10_ms": 1e3 * p10,
      "p90_ms": 1e3 * p90, "xla_tflop": xla_flops / 1e12, "analytic_tflop": analytic / 1e12,
      "xla_tflops_per_s": xla_flops / median / 1e12, "analytic_tflops_per_s": analytic / median / 1e12,
      "mfu_xla": (xla_flops / median / 1e12) / peak_tflops if peak_tflops else None,
      "mfu_analytic": (analytic / median / 1e12) / peak_tflops if peak_tflops else None,
      "compiled_peak_gb": compiled_peak / 1e9 if compiled_peak is not None else None,
      "runtime_peak_gb": stats.get("peak_bytes_in_use", 0) / 1e9 if stats else None,
      "parameters": sum(int(np.prod(p.shape)) for p in params),
  }


def _backbone_width(params) -> int:
  return int(params["backbone"]["cls_token"].shape[-1])


def _backbone_depth(params) -> int:
  blocks = params["backbone"]["blocks"]
  return len(blocks) if isinstance(blocks, dict) else int(jax.tree.leaves(blocks)[0].shape[0])


def benchmark_pipeline(config, *, steps: int, warmup: int) -> dict:
  """images/s of the host iterator (read, decode, resize, batch) and of the jitted augmentation + masks alone."""
  from simdino_jax import data as data_lib
  from simdino_jax.data import augment, masking

  iterator = data_lib.create_train_iterator(config.data, batch_size=config.batch_size, seed=0,
                                            process_index=0, process_count=1)
  for _ in range(warmup):
    next(iterator)
  host_median, _, _ = _median_time(lambda: next(iterator), steps)

  grid = (config.aug.global_size // config.model.patch_size,) * 2

  @jax.jit
  def augment_fn(key, images):
    out = augment.multicrop(key, images, config.aug)
    out["masks"] = masking.block_masks(key, images.shape[0], grid, config.masking)
    return out

  images = jax.device_put(next(iterator)["image"])
  key = jax.random.PRNGKey(0)
  for _ in range(warmup):
    jax.block_until_ready(augment_fn(key, images))
  aug_median, _, _ = _median_time(lambda: jax.block_until_ready(augment_fn(key, images)), steps)
  return {"host_images_per_s": config.batch_size / host_median,
          "augment_images_per_s": config.batch_size / aug_median}


def format_table(rows: list[tuple[str, object]]) -> str:
  width = max(len(k) for k, _ in rows)
  fmt = lambda v: "n/a" if v is None else (f"{v:,.4g}" if isinstance(v, float) else str(v))
  return "\n".join(f"{k:<{width}}  {fmt(v)}" for k, v in rows)


def main(argv) -> None:
  del argv
  config = FLAGS.config
  if FLAGS.batch:
    config.batch_size = FLAGS.batch
  device = jax.devices()[0]
  step = benchmark_step(config, steps=FLAGS.steps, warmup=FLAGS.warmup, peak_tflops=FLAGS.peak_tflops)
  rows = [("device", f"{jax.device_count()} x {device.device_kind}"), ("model", config.model.name),
          ("objective", config.objective.name), ("batch", config.batch_size),
          ("crops", f"2x{config.aug.global_size} + {config.aug.n_local}x{config.aug.local_size}"),
          ("parameters (student)", step["parameters"]), ("images/s", step["images_per_s"]),
          ("step ms (median)", step["step_ms"]), ("step ms p10-p90", f"{step['p10_ms']:.1f}-{step['p90_ms']:.1f}"),
          ("TFLOP/step (XLA)", step["xla_tflop"]), ("TFLOP/step (analytic)", step["analytic_tflop"]),
          ("TFLOP/s (XLA)", step["xla_tflops_per_s"]), ("TFLOP/s (analytic)", step["analytic_tflops_per_s"]),
          (f"MFU (XLA, peak {FLAGS.peak_tflops:g})", step["mfu_xla"]),
          (f"MFU (analytic, peak {FLAGS.peak_tflops:g})", step["mfu_analytic"]),
          ("peak memory GB (compiled)", step["compiled_peak_gb"]),
          ("peak memory GB (runtime)", step["runtime_peak_gb"])]
  if FLAGS.pipeline:
    pipe = benchmark_pipeline(config, steps=FLAGS.steps, warmup=FLAGS.warmup)
    rows += [("host pipeline images/s", pipe["host_images_per_s"]),
             ("augmentation images/s", pipe["augment_images_per_s"]),
             ("augmentation / step", pipe["augment_images_per_s"] / step["images_per_s"])]
  print(format_table(rows), flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
