"""The benchmark runs on a tiny config and reports every figure (a check that it runs, not a speed test)."""

import math

from flax import nnx

from simdino_jax import benchmark
from simdino_jax import objectives
from simdino_jax import train
from simdino_jax.data import benchmark as data_benchmark
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
  # 2 globals of 16 px + 2 locals of 8 px, patch 4; the patch head scores max_masked_patches = 8 slots per crop.
  vit = lambda size: benchmark.vit_forward_flops(size, width=d, depth=1, patch=4,
                                                registers=config.model.num_registers)
  student = 2 * vit(16) + 2 * vit(8) + (4 + 2 * 8) * per_token
  teacher = 2 * vit(16) + (2 + 2 * 8) * per_token
  assert benchmark.analytic_step_flops(config, head) == config.batch_size * (3 * student + teacher)


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
