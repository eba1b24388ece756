"""The benchmark runs on a tiny config and reports every figure (a check that it runs, not a speed test)."""

import math

import numpy as np
from flax import nnx

from simdino_jax.tools import benchmark
from simdino_jax import objectives
from simdino_jax import train
from simdino_jax.tools import benchmark_data as data_benchmark
from tests import train_utils


def test_benchmark_reports_step_figures():
  config = train_utils.tiny_config("dino")
  step = benchmark.benchmark_step(config, steps=2, warmup=1, peak_tflops=1.0)
  assert step["images_per_s"] > 0 and step["step_ms"] > 0 and step["compiled_peak_gb"] > 0
  assert step["xla_tflop"] > 0 and step["analytic_tflop"] > 0
  assert math.isclose(step["mfu_analytic"], step["analytic_tflops_per_s"] / 1.0)
  pipe = benchmark.benchmark_pipeline(config, batches=2)
  assert pipe["host_images_per_s"] > 0 and pipe["augment_images_per_s"] > 0


def test_head_flops_count_every_matrix_of_the_head():
  config = train_utils.tiny_config("dinov2")
  objective = objectives.get_objective(config.objective)
  model = nnx.eval_shape(lambda: train.model_factory(config, objective)(nnx.Rngs(0)))
  head = nnx.to_pure_dict(nnx.state(model))["head"]
  d, (h, p, k) = 32, (config.model.head[f] for f in ("hidden_dim", "bottleneck_dim", "out_dim"))
  per_token = 2 * (d * h + h * h + h * p + p * k)  # 3-layer MLP, then the prototypes
  assert benchmark.head_flops_per_token(head) == per_token
  # 2 globals of 16 px + 2 locals of 8 px, patch 4 (N = 16); the patch head scores DINOv2's upperbound of masked
  # tokens per data shard: Σ_k int(N · p_k+1) over the int(0.5 · 2b) masked crops of its b images.
  vit = lambda size: benchmark.vit_forward_flops(size, width=d, depth=1, patch=4, registers=config.model.num_registers)
  student = 2 * vit(16) + 2 * vit(8) + 4 * per_token
  teacher = 2 * vit(16) + 2 * per_token
  backbone_cls = config.batch_size * (3 * student + teacher)
  assert benchmark.backbone_cls_flops(config, head) == backbone_cls
  for shards in (1, 8):
    b = config.batch_size // shards
    slots = shards * sum(int(16 * p) for p in np.linspace(0.1, 0.5, b + 1)[1:])
    assert benchmark.ibot_head_flops(config, head, shards) == 4 * slots * per_token
    assert benchmark.analytic_step_flops(config, head, shards) == backbone_cls + 4 * slots * per_token
  assert benchmark.ibot_head_flops(train_utils.tiny_config("dino"), head) == 0


def test_compile_figures_show_the_ibot_share():
  config = train_utils.tiny_config("dinov2")
  figures = benchmark.compile_figures(config)
  assert figures["compile_s"] > 0 and figures["peak_gb"] > 0
  assert figures["ibot_slots_per_crop"] == sum(int(16 * p) for p in np.linspace(0.1, 0.5, 17)[1:]) / 32
  total = figures["backbone_cls_gflop_per_image"] + figures["ibot_gflop_per_image"]
  assert math.isclose(figures["ibot_share"], figures["ibot_gflop_per_image"] / total)
  assert math.isclose(
    figures["xla_over_backbone_cls"] / figures["xla_over_analytic"], total / figures["backbone_cls_gflop_per_image"]
  )


def test_analytic_flops_match_the_reference_formula():
  # perf_anchors.md: ViT-S/16 forward at 224 = 9.197 GFLOP, at 96 = 1.618 GFLOP.
  assert abs(benchmark.vit_forward_flops(224, width=384, depth=12, patch=16) / 1e9 - 9.197) < 1e-3
  assert abs(benchmark.vit_forward_flops(96, width=384, depth=12, patch=16) / 1e9 - 1.618) < 1e-3
  assert abs(benchmark.vit_forward_flops(224, width=768, depth=12, patch=16) / 1e9 - 35.126) < 1e-3


def test_data_benchmark_prints_host_and_device_throughput(capsys):
  data_benchmark.run_square(batch=16, n_batches=2, repeats=1, image_size=16, global_size=16, local_size=8)
  out = capsys.readouterr().out
  for line in ("host pipeline", "host with the split on device", "device gather + multicrop"):
    [figure] = [l for l in out.splitlines() if l.startswith(line)]
    assert float(figure.split(": ")[1].split()[0].replace(",", "")) > 0, figure


def test_compiling_for_a_tpu_slice_without_libtpu_says_how_to_install_it():
  """`--compile_only --topology=...` needs libtpu (not in the requirements): one line naming the install command."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  assert importlib.util.find_spec("libtpu") is None, "this test checks the message of a machine without libtpu"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "simdino_jax.tools.benchmark",
      "--compile_only",
      "--topology=v5e:2x2",
      "--methods=dino",
      "--models=ViT-S/16",
      "--batch=64",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env=train_utils.subprocess_env(),
  )
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines[-1] == (
    f"error: compiling for a TPU slice needs libtpu beside JAX: pip install 'jax[tpu]=="
    f"{jax.__version__}' (docs/benchmarks.md, Pod table)."
  ), result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def test_the_largest_batch_walk_finds_the_threshold_from_any_start():
  """--largest_batch walks the ladder of per-chip batches with the compiler's fit as its only test: from any start,
  the largest batch that fits, each batch compiled at most once, and None when none fits."""
  ladder = benchmark.PER_CHIP_LADDER
  for threshold in (0, *ladder, 10_000):
    for start in ladder:
      tried = []
      fits = lambda b: tried.append(b) or b <= threshold
      expected = max((b for b in ladder if b <= threshold), default=None)
      assert benchmark.largest_on_ladder(fits, start) == expected
      assert len(tried) == len(set(tried)) and len(tried) <= abs(ladder.index(start) - ladder.index(expected or 4)) + 2
