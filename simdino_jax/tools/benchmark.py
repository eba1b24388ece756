"""The train step's compiled cost and speed: FLOPs (XLA's and analytic), peak memory, images/s, MFU.

    python -m simdino_jax.tools.benchmark --config=configs/dino.py:model=ViT-B/16 --batch=64
    python -m simdino_jax.tools.benchmark --compile_only --methods=dino,simdino,dinov2 --models=ViT-S/16,ViT-B/16

The step is exactly the training step (on-device augmentation and masks, teacher and student forward, objective,
backward, AdamW, EMA), fed with synthetic uint8 images already on the device. Timing: `--warmup` steps, then the
median of `--steps` steps, each ended by `block_until_ready`. FLOPs come from XLA's cost analysis of the compiled
step and from `analytic_step_flops`; MFU divides by `--peak_tflops` (746 = the bf16 matmul rate of an H100).
`--compile_only` lowers and compiles the step of each method × model recipe (ImageNet crops) without running it
and prints XLA's FLOPs per image against the analytic count of the backbone + CLS heads and of the iBOT patch head
on its static masked-token buffer (padding included), their ratio, the compiled peak memory and the compile
seconds (docs/benchmarks.md, "Compiled cost"). With `--topology=v5e:4x4` it compiles for a Cloud TPU slice
(libtpu beside JAX) and prints per-chip HBM, FLOPs and collectives ("Pod table"); `--largest_batch` then searches
the largest per-chip batch of each recipe that the chips hold, starting from `--batch` images a chip.
"""

import importlib.util
import math
import os
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (so the module imports anywhere)."""
  config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config (timing mode).", lock_config=True)
  flags.DEFINE_integer("batch", 0, "Global batch size (0: the config's; 64 with --compile_only).")
  flags.DEFINE_integer("steps", 20, "Timed steps.")
  flags.DEFINE_integer("warmup", 3, "Untimed warm-up steps (the first compiles).")
  flags.DEFINE_float(
    "peak_tflops",
    746.0,
    "Peak TFLOP/s of one device, for MFU: your accelerator's dense bf16 peak (0: don't report MFU).",
  )
  flags.DEFINE_bool("pipeline", True, "Also time the input pipeline (host and on-device augmentation).")
  flags.DEFINE_bool(
    "compile_only",
    False,
    "Compile the recipes of --methods × --models without running them; "
    "print XLA's cost analysis and memory per recipe.",
  )
  flags.DEFINE_list("methods", ["dino", "simdino", "dinov2"], "Recipes for --compile_only.")
  flags.DEFINE_list("models", ["ViT-S/16", "ViT-B/16"], "Models for --compile_only.")
  flags.DEFINE_string(
    "topology",
    None,
    "With --compile_only: compile for this Cloud TPU slice (e.g. v5e:4x4, "
    "v4:2x2x2, v5p:2x2x4) on this machine, through libtpu, and print per chip: HBM, FLOPs, "
    "collective bytes, compile seconds.",
  )
  flags.DEFINE_integer("num_slices", 1, "With --topology: that many slices, data parallel across them (DCN).")
  flags.DEFINE_list("set", [], "With --compile_only: config overrides field=value, e.g. fsdp=True,model.remat=True.")
  flags.DEFINE_bool(
    "largest_batch",
    False,
    "With --topology: search the largest per-chip batch of each recipe that fits the slice's chips, starting "
    "from --batch images a chip (one of PER_CHIP_LADDER).",
  )
  flags.DEFINE_bool(
    "data_parallel",
    False,
    "With --compile_only: each recipe's step on all local devices at "
    "--batch per device against one device at --batch (per-device FLOPs and temporaries, "
    "collectives), on devices cut on the device and on the host.",
  )


def recipe_config(method: str, model: str, *, batch: int = 64, attention_impl=None):
  """The ImageNet recipe `method` (simdino_jax/configs/<method>.py) with `model` at global batch `batch`."""
  from simdino_jax import configs

  config = configs.load(method, f"model={model}")
  config.batch_size = batch
  config.model.attention_impl = attention_impl
  # Groups of the published per-GPU batches (DINOv2's KoLeo over 64, SimDINOv2's covariance over 128): the whole
  # batch when it is smaller.
  for group in ("koleo_group_size", "covariance_group_size"):
    config.objective[group] = min(config.objective[group], batch)
  return config


def vit_forward_flops(size: int, *, width: int, depth: int, patch: int, registers: int = 0, ffn: str = "mlp") -> float:
  """`L·n·(8d² + 2F + 4nd) + N_p·2·(3p²)·d`: qkv and projection matmuls, the feed-forward's F multiply-adds per
  token (GELU MLP: 8d²; SwiGLU: 3·d·h with h = swiglu_hidden_dim(4d)), attention, and the patch embedding."""
  from simdino_jax.models import vit  # pylint: disable=import-outside-toplevel

  patches = (size // patch) ** 2
  tokens = patches + 1 + registers
  ffn_macs = 3 * width * vit.swiglu_hidden_dim(4 * width) if ffn == "swiglu" else 8 * width**2
  return depth * tokens * (8 * width**2 + 2 * ffn_macs + 4 * tokens * width) + patches * 2 * (patch * patch * 3) * width


def head_flops_per_token(head_params) -> float:
  """`2·Σ in·out` over the head's matrices (its MLP layers and, for the DINO head, the prototypes)."""
  return float(sum(2 * math.prod(leaf.shape) for leaf in jax.tree.leaves(head_params) if leaf.ndim == 2))


def analytic_step_flops(config, head_params, shards: int = 1, patch_head_params=None) -> float:
  """Matmul FLOPs of one step on `shards` data shards: backbone_cls_flops + ibot_head_flops (the patch tokens
  through `patch_head_params`, a separate iBOT head, or the CLS head)."""
  return backbone_cls_flops(config, head_params) + ibot_head_flops(config, head_params, shards, patch_head_params)


def backbone_cls_flops(config, head_params) -> float:
  """Backbone and CLS heads: `B·[3·(2F(G) + n_l·F(l) + V·H) + 2F(G) + 2H]`.

  Student forward + backward (3× the forward) on all V crops, teacher forward on the 2 global crops; F(s) is the
  ViT forward at s pixels (vit_forward_flops), H the head on one token. Elementwise work, the loss and the optimizer
  are not counted.
  """
  from simdino_jax import models

  a, m = config.aug, config.model
  architecture = models.MODELS.get(m.name)
  vit = lambda size: vit_forward_flops(
    size,
    width=architecture.embed_dim,
    depth=architecture.depth,
    patch=m.patch_size,
    registers=m.num_registers,
    ffn=m.ffn,
  )
  head = head_flops_per_token(head_params)
  student = 2 * vit(a.global_size) + a.n_local * vit(a.local_size) + (2 + a.n_local) * head
  teacher = 2 * vit(a.global_size) + 2 * head
  return config.batch_size * (3 * student + teacher)


def ibot_head_flops(config, head_params, shards: int = 1, patch_head_params=None) -> float:
  """The iBOT / SimDINOv2 patch head on its static buffer of S masked-token slots (padding included): `4·S·H`
  (student forward + backward, teacher forward); S = the mask plan's token_slots, 0 without masks. H is
  `patch_head_params`' (a separate iBOT head) when given, else the CLS head's."""
  from simdino_jax import objectives, train

  if not objectives.get_objective(config.objective).needs_masks:
    return 0.0
  head = head_params if patch_head_params is None else patch_head_params
  return 4 * train.mask_plan(config, shards).token_slots * head_flops_per_token(head)


def compile_step(config):
  """(trainer, compiled step, compile seconds): the train step lowered on abstract images and compiled."""
  from simdino_jax import parallel, train

  trainer = train.build(config, num_examples=max(config.batch_size * 1000, 1))
  size = config.data.image_size
  images = jax.ShapeDtypeStruct(
    (config.batch_size, size, size, 3), np.uint8, sharding=parallel.batch_sharding(trainer.mesh)
  )
  start = time.perf_counter()
  with jax.set_mesh(trainer.mesh):
    compiled = trainer.step_fn.lower(trainer.state, images, trainer.schedules).compile()
  return trainer, compiled, time.perf_counter() - start


def compiled_cost(compiled) -> dict:
  """XLA's FLOPs of the compiled step and its peak memory (arguments + outputs + temporaries − aliased)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  peak = None
  if memory is not None:
    peak = (
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      + memory.temp_size_in_bytes
      - memory.alias_size_in_bytes
    )
  return {
    "xla_flops": float(cost.get("flops", 0.0)) if cost else 0.0,
    "peak_bytes": peak,
    "temp_bytes": memory.temp_size_in_bytes if memory is not None else None,
  }


def compile_figures(config) -> dict:
  """XLA's FLOPs per image against the analytic backbone + CLS heads and iBOT patch head, the iBOT buffer's slots
  per global crop, the peak memory and the compile seconds of the compiled step (nothing runs)."""
  from simdino_jax import parallel, train

  trainer, compiled, compile_s = compile_step(config)
  cost = compiled_cost(compiled)
  head, shards = trainer.state.student["head"], trainer.mesh.shape[parallel.DATA_AXIS]
  backbone_cls = backbone_cls_flops(config, head)
  ibot = ibot_head_flops(config, head, shards, trainer.state.student.get("ibot_head"))
  batch = config.batch_size
  slots = train.mask_plan(config, shards).token_slots if ibot else 0
  return {
    "xla_gflop_per_image": cost["xla_flops"] / batch / 1e9,
    "backbone_cls_gflop_per_image": backbone_cls / batch / 1e9,
    "ibot_gflop_per_image": ibot / batch / 1e9,
    "ibot_slots_per_crop": slots / (2 * batch),
    "ibot_share": ibot / (backbone_cls + ibot),
    "xla_over_backbone_cls": cost["xla_flops"] / backbone_cls,
    "xla_over_analytic": cost["xla_flops"] / (backbone_cls + ibot),
    "peak_gb": cost["peak_bytes"] / 1e9 if cost["peak_bytes"] is not None else None,
    "temp_gb": cost["temp_bytes"] / 1e9 if cost["temp_bytes"] is not None else None,
    "compile_s": compile_s,
  }


def median_seconds(fn, repeats: int) -> float:
  """The median wall time of `repeats` calls of `fn` (which must block until its work is done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def benchmark_step(config, *, steps: int, warmup: int, peak_tflops: float) -> dict:
  """Compiles and times the train step on synthetic images; returns the figures."""
  return time_step(config, *compile_step(config), steps=steps, warmup=warmup, peak_tflops=peak_tflops)


def time_step(config, trainer, compiled, compile_s: float, *, steps: int, warmup: int, peak_tflops: float) -> dict:
  """Times a step from `compile_step` on synthetic images; returns the figures."""
  from simdino_jax import parallel

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (config.batch_size, config.data.image_size, config.data.image_size, 3), np.uint8)
  with jax.set_mesh(trainer.mesh):
    batch = parallel.global_batch({"image": images}, trainer.mesh)["image"]
    state = trainer.state

    def one_step():
      nonlocal state
      state, metrics = compiled(state, batch, trainer.schedules)
      jax.block_until_ready(metrics["loss"])

    for _ in range(warmup):
      one_step()
    seconds = median_seconds(one_step, steps)

  cost = compiled_cost(compiled)
  analytic = analytic_step_flops(
    config, state.student["head"], trainer.mesh.shape[parallel.DATA_AXIS], state.student.get("ibot_head")
  )
  stats = jax.devices()[0].memory_stats() or {}
  mfu = lambda flops: flops / seconds / 1e12 / peak_tflops if peak_tflops else None
  return {
    "images_per_s": config.batch_size / seconds,
    "step_ms": 1e3 * seconds,
    "compile_s": compile_s,
    "xla_tflop": cost["xla_flops"] / 1e12,
    "analytic_tflop": analytic / 1e12,
    "analytic_tflops_per_s": analytic / seconds / 1e12,
    "mfu_xla": mfu(cost["xla_flops"]),
    "mfu_analytic": mfu(analytic),
    "compiled_peak_gb": cost["peak_bytes"] / 1e9 if cost["peak_bytes"] is not None else None,
    "runtime_peak_gb": stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None,
    "parameters": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.student)),
  }


def benchmark_pipeline(config, *, batches: int) -> dict:
  """images/s of the host input pipeline and of the on-device gather + multi-crop + masks (data/benchmark.py)."""
  from simdino_jax import data
  from simdino_jax.tools import benchmark_data as data_benchmark

  host = data_benchmark.host_images_per_second(config.data, config.batch_size, batches)
  resident = config.data.copy_and_resolve_references()
  resident.on_device = True
  iterator = data.create_train_iterator(
    resident, batch_size=config.batch_size, seed=0, process_index=0, process_count=1
  )
  device, _ = data_benchmark.device_images_per_second(
    config, iterator.resident_images, next(iterator)["index"], config.model.patch_size, batches
  )
  return {"host_images_per_s": host, "augment_images_per_s": device}


def format_table(rows: list[tuple[str, object]]) -> str:
  width = max(len(k) for k, _ in rows)
  fmt = lambda v: "n/a" if v is None else (f"{v:,.4g}" if isinstance(v, float) else str(v))
  return "\n".join(f"{k:<{width}}  {fmt(v)}" for k, v in rows)


COMPILE_COLUMNS = (
  "method",
  "model",
  "crops",
  "xla_gflop_per_image",
  "backbone_cls_gflop_per_image",
  "ibot_gflop_per_image",
  "ibot_slots_per_crop",
  "ibot_share",
  "xla_over_backbone_cls",
  "xla_over_analytic",
  "peak_gb",
  "temp_gb",
  "compile_s",
)


def compile_table(methods, model_names, batch: int) -> list[dict]:
  """compile_figures of every method × model recipe, printed row by row as a Markdown table."""
  print(f"device: {jax.device_count()} x {jax.devices()[0].device_kind}, batch {batch}, compile only")
  print("| " + " | ".join(COMPILE_COLUMNS) + " |\n|" + "---|" * len(COMPILE_COLUMNS), flush=True)
  rows = []
  for model in model_names:
    for method in methods:
      config = recipe_config(method, model, batch=batch)
      a = config.aug
      row = {
        "method": method,
        "model": model,
        "crops": f"2x{a.global_size}+{a.n_local}x{a.local_size}",
        **compile_figures(config),
      }
      fmt = lambda v: f"{v:,.3f}" if isinstance(v, float) else str(v)
      print("| " + " | ".join(fmt(row[c]) for c in COMPILE_COLUMNS) + " |", flush=True)
      rows.append(row)
  return rows


# Capacity of one chip's HBM, GiB (Cloud TPU system architecture pages).
TPU_HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}


def tpu_devices(topology: str, num_slices: int = 1) -> list:
  """The devices of a Cloud TPU slice (`v5e:4x4`) described by libtpu, with no TPU attached."""
  if importlib.util.find_spec("libtpu") is None:
    raise SystemExit(
      f"error: compiling for a TPU slice needs libtpu beside JAX: pip install 'jax[tpu]=="
      f"{jax.__version__}' (docs/benchmarks.md, Pod table)."
    )
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-16")  # quiet libtpu's probes of the absent host
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # v4 chips have two TensorCores; Cloud TPU runs them as one JAX device ("megacore"), libtpu's default
  # description does not.
  megacore = {"chip_config_name": "megacore"} if topology.startswith("v4") else {}
  return topologies.get_topology_desc(topology_name=topology, platform="tpu", num_slices=num_slices, **megacore).devices


def apply_overrides(config, overrides) -> None:
  """field=value strings (dotted paths; values parsed as Python literals where they are) onto `config`."""
  import ast  # pylint: disable=import-outside-toplevel

  for item in overrides:
    key, _, text = item.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value


def pod_figures(config, devices, *, capacity_gib: float | None) -> dict:
  """Per chip: HBM (arguments, temporaries, total against the capacity), TFLOPs and collective bytes of the
  step compiled for `devices`, or the compiler's refusal when it does not fit. The step is ImageNet's: crops cut
  on the host from the original images (data.host_crops), the photometric part on the chip."""
  from simdino_jax import parallel, step_cost  # pylint: disable=import-outside-toplevel

  mesh = parallel.create_mesh(devices)
  row = {"chips": len(devices), "per_chip_batch": config.batch_size // len(devices)}
  try:
    setup, compiled, seconds = step_cost.compile_train_step(config, mesh, host_crops=True)
  except Exception as error:  # pylint: disable=broad-except
    message = str(error)
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
      raise
    import re  # pylint: disable=import-outside-toplevel

    needed = re.search(r"required for HLO temporaries \(([0-9.]+[KMGT]?)\)", message) or re.search(
      r"Used ([0-9.]+[KMGT]?) of [0-9.]+[KMGT]? hbm", message
    )
    return {**row, "fits": False, "temp_gib": needed.group(1) if needed else "?", "message": message.splitlines()[0]}
  cost = step_cost.step_cost(compiled, seconds)
  gib = 2**30
  moved = cost.collective_bytes()
  return {
    **row,
    "fits": capacity_gib is None or cost.total_bytes / gib <= capacity_gib,
    "arguments_gib": cost.argument_bytes / gib,
    "temp_gib": cost.temp_bytes / gib,
    "total_gib": cost.total_bytes / gib,
    "capacity_gib": capacity_gib,
    "tflop_per_chip": cost.flops / 1e12,
    "xla_over_analytic": cost.flops
    * len(devices)
    / analytic_step_flops(config, setup.state.student["head"], len(devices), setup.state.student.get("ibot_head")),
    "all_reduce_mib": moved["all-reduce"] / 2**20,
    "all_gather_mib": moved["all-gather"] / 2**20,
    "reduce_scatter_mib": moved["reduce-scatter"] / 2**20,
    "other_collectives_mib": (moved["all-to-all"] + moved["collective-permute"]) / 2**20,
    "collectives_in_loops": sum(c.in_loop for c in cost.collectives),
    "compile_s": seconds,
  }


POD_COLUMNS = (
  "method",
  "model",
  "batch",
  "chips",
  "per_chip_batch",
  "fits",
  "arguments_gib",
  "temp_gib",
  "total_gib",
  "capacity_gib",
  "tflop_per_chip",
  "xla_over_analytic",
  "all_reduce_mib",
  "all_gather_mib",
  "reduce_scatter_mib",
  "other_collectives_mib",
  "collectives_in_loops",
  "compile_s",
)


def pod_table(methods, model_names, batch: int, topology: str, num_slices: int, overrides) -> list[dict]:
  """pod_figures of every method × model recipe at global batch `batch` on the TPU slice, a Markdown table."""
  devices = tpu_devices(topology, num_slices)
  capacity = TPU_HBM_GIB.get(topology.split(":")[0].lower())
  print(
    f"{num_slices} x {topology} ({len(devices)} chips, {devices[0].device_kind}, {capacity} GiB HBM each), "
    f"global batch {batch}, compile only{', ' + ', '.join(overrides) if overrides else ''}"
  )
  print("| " + " | ".join(POD_COLUMNS) + " |\n|" + "---|" * len(POD_COLUMNS), flush=True)
  rows = []
  for model in model_names:
    for method in methods:
      config = recipe_config(method, model, batch=batch)
      apply_overrides(config, overrides)
      row = {"method": method, "model": model, "batch": batch, **pod_figures(config, devices, capacity_gib=capacity)}
      print("| " + " | ".join(_format(row.get(c)) for c in POD_COLUMNS) + " |", flush=True)
      rows.append(row)
  return rows


def _format(value) -> str:
  return f"{value:,.2f}" if isinstance(value, float) else ("" if value is None else str(value))


PER_CHIP_LADDER = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def largest_per_chip_batch(method: str, model: str, topology: str, start: int, overrides) -> int | None:
  """The largest per-chip batch of PER_CHIP_LADDER whose step fits the chips of `topology` (the compiler decides,
  not an extrapolation: near the limit XLA rematerializes on its own). Walks the ladder from `start`, up while a
  batch fits, down while it does not; prints a pod-table row for each compile and the answer. None: not even the
  smallest batch fits."""
  devices = tpu_devices(topology)
  capacity = TPU_HBM_GIB.get(topology.split(":")[0].lower())
  if start not in PER_CHIP_LADDER:
    raise SystemExit(f"error: --batch={start} is not on the ladder of per-chip batches {PER_CHIP_LADDER}.")
  print(f"{topology} ({len(devices)} chips, {capacity} GiB HBM each): the largest per-chip batch of {method} {model}")
  print("| " + " | ".join(POD_COLUMNS) + " |\n|" + "---|" * len(POD_COLUMNS), flush=True)

  def fits(per_chip: int) -> bool:
    batch = per_chip * len(devices)
    config = recipe_config(method, model, batch=batch)
    apply_overrides(config, overrides)
    row = {"method": method, "model": model, "batch": batch, **pod_figures(config, devices, capacity_gib=capacity)}
    print("| " + " | ".join(_format(row.get(c)) for c in POD_COLUMNS) + " |", flush=True)
    return bool(row["fits"])

  largest = largest_on_ladder(fits, start)
  print(f"largest per-chip batch that fits: {largest}")
  return largest


def largest_on_ladder(fits, start: int) -> int | None:
  """The largest batch b of PER_CHIP_LADDER with fits(b) (monotone: a batch that fits has every smaller one fit),
  walking from `start`: up while fits, down while not. None when the smallest does not fit."""
  index = PER_CHIP_LADDER.index(start)
  if fits(PER_CHIP_LADDER[index]):
    while index + 1 < len(PER_CHIP_LADDER) and fits(PER_CHIP_LADDER[index + 1]):
      index += 1
    return PER_CHIP_LADDER[index]
  while index > 0 and not fits(PER_CHIP_LADDER[index - 1]):
    index -= 1
  return PER_CHIP_LADDER[index - 1] if index > 0 else None


DATA_PARALLEL_COLUMNS = ("method", "crops cut on", "devices", "flops_ratio", "temp_ratio", "collectives")


def data_parallel_table(methods, model: str, per_device: int, overrides) -> list[dict]:
  """Each recipe's step on every local device at `per_device` images a device against one device at
  `per_device`: the per-device FLOPs and temporaries ratios and the collectives (kind: count)."""
  from simdino_jax import parallel, step_cost  # pylint: disable=import-outside-toplevel

  devices = jax.devices()
  print(
    f"{len(devices)} x {devices[0].device_kind} against 1, {per_device} images per device, model {model}"
    f"{', ' + ', '.join(overrides) if overrides else ''}"
  )
  print("| " + " | ".join(DATA_PARALLEL_COLUMNS) + " |\n|" + "---|" * len(DATA_PARALLEL_COLUMNS), flush=True)
  rows = []
  for method in methods:
    for host_crops in (False, True):
      costs = {}
      for n in (1, len(devices)):
        config = recipe_config(method, model, batch=n * per_device)
        apply_overrides(config, overrides)
        config.batch_size = n * per_device * config.grad_accum_steps
        _, compiled, _ = step_cost.compile_train_step(config, parallel.create_mesh(devices[:n]), host_crops=host_crops)
        costs[n] = step_cost.step_cost(compiled)
      one, many = costs[1], costs[len(devices)]
      kinds = {}
      for c in many.collectives:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
      row = {
        "method": method,
        "crops cut on": "host" if host_crops else "device",
        "devices": len(devices),
        "flops_ratio": many.flops / one.flops,
        "temp_ratio": many.temp_bytes / one.temp_bytes,
        "collectives": ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
      }
      fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
      print("| " + " | ".join(fmt(row[c]) for c in DATA_PARALLEL_COLUMNS) + " |", flush=True)
      rows.append(row)
  return rows


# Nothing runs with --compile_only: skip LLVM's optimizations. The optimized HLO, its cost analysis and its buffer
# assignment (the memory analysis) are the same; only the machine code is slower, and it compiles much faster.
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def main(argv) -> None:
  del argv
  if FLAGS.compile_only:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA_FLAGS}".strip()
    if FLAGS.topology and FLAGS.largest_batch:
      for model in FLAGS.models:
        for method in FLAGS.methods:
          largest_per_chip_batch(method, model, FLAGS.topology, FLAGS.batch or 32, FLAGS.set)
    elif FLAGS.topology:
      pod_table(FLAGS.methods, FLAGS.models, FLAGS.batch or 64, FLAGS.topology, FLAGS.num_slices, FLAGS.set)
    elif FLAGS.data_parallel:
      data_parallel_table(FLAGS.methods, FLAGS.models[0], FLAGS.batch or 4, FLAGS.set)
    else:
      compile_table(FLAGS.methods, FLAGS.models, FLAGS.batch or 64)
    return
  config = FLAGS.config
  if FLAGS.batch:
    config.batch_size = FLAGS.batch
  device = jax.devices()[0]
  step = benchmark_step(config, steps=FLAGS.steps, warmup=FLAGS.warmup, peak_tflops=FLAGS.peak_tflops)
  rows = [
    ("device", f"{jax.device_count()} x {device.device_kind}"),
    ("model", config.model.name),
    ("objective", config.objective.name),
    ("batch", config.batch_size),
    ("crops", f"2x{config.aug.global_size} + {config.aug.n_local}x{config.aug.local_size}"),
    ("parameters (student)", step["parameters"]),
    ("images/s", step["images_per_s"]),
    ("step ms (median)", step["step_ms"]),
    ("compile s", step["compile_s"]),
    ("TFLOP/step (XLA)", step["xla_tflop"]),
    ("TFLOP/step (analytic)", step["analytic_tflop"]),
    ("TFLOP/s (analytic)", step["analytic_tflops_per_s"]),
    (f"MFU (XLA, peak {FLAGS.peak_tflops:g})", step["mfu_xla"]),
    (f"MFU (analytic, peak {FLAGS.peak_tflops:g})", step["mfu_analytic"]),
    ("peak memory GB (compiled)", step["compiled_peak_gb"]),
    ("peak memory GB (runtime)", step["runtime_peak_gb"]),
  ]
  if FLAGS.pipeline:
    pipe = benchmark_pipeline(config, batches=FLAGS.steps)
    rows += [
      ("host pipeline images/s", pipe["host_images_per_s"]),
      ("on-device augmentation images/s", pipe["augment_images_per_s"]),
      ("augmentation / step", pipe["augment_images_per_s"] / step["images_per_s"]),
    ]
  print(format_table(rows), flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
