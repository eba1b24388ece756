"""The benchmark runs on a tiny config and reports every figure (a check that it runs, not a speed test)."""

import math

from simdino_jax import benchmark
from simdino_jax.data import benchmark as data_benchmark
from tests import train_utils


def test_benchmark_reports_step_figures():
  config = train_utils.tiny_config("dino")
  step = benchmark.benchmark_step(config, steps=2, warmup=1, peak_tflops=1.0)
  assert step["images_per_s"] > 0 and step["step_ms"] > 0
  assert step["xla_tflop"] > 0 and step["analytic_tflop"] > 0
  assert math.isclose(step["mfu_analytic"], step["analytic_tflops_per_s"] / 1.0)
  pipe = benchmark.benchmark_pipeline(config, steps=2, warmup=1)
  assert pipe["host_images_per_s"] > 0 and pipe["augment_images_per_s"] > 0


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
