"""Offline evaluation of a training run's checkpoint: weighted kNN and the linear probe (docs/architecture.md).

    python -m simdino_jax.evaluate --workdir=/tmp/digits                         # kNN, k ∈ {10, 20, 100, 200}
    python -m simdino_jax.evaluate --workdir=/tmp/digits --protocol=dino_linear  # DINO's eval_linear.py
    python -m simdino_jax.evaluate --workdir=runs/dino --protocol=dinov2_linear  # DINOv2's grid of 52 heads
    python -m simdino_jax.evaluate --workdir=/tmp/digits --protocol=linear --linear_epochs=100
    python -m simdino_jax.evaluate --workdir=runs/dino --protocol=both --backbone=student --step=10000

`--protocol` names a published protocol (dino_knn, dino_linear, dinov2_knn, dinov2_linear, simdinov2_linear:
evaluation/protocols.py, docs/objectives.md "Evaluation protocols"), or knn / linear / both set by the flags
(`linear`: the quick probe on one precomputed view per image).

The evaluators are those the training loop runs (simdino_jax/evaluation/evaluators.py; `--protocol` picks them).
The run's config is read from the checkpoint itself (the same model, data and crop size), so only the workdir is
needed; only the evaluated backbone's parameters are restored. Features are the backbone CLS at the global-crop
resolution (kNN) or DINO's probe features (`--n_last_blocks`, `--avgpool`), streamed from the data source in
fixed-size batches, each process reading its own rows and the batch sharded over every device (host memory
O(batch)). Under a TPU pod or SLURM, `--distributed` starts `jax.distributed` as for training. Results are printed
and written to `<workdir>/eval_<step>.json` (the workdir may be `gs://...`).
"""

import json

import jax
import ml_collections
from absl import app
from absl import flags
from flax import nnx

from simdino_jax import checkpointing
from simdino_jax import cli
from simdino_jax import cluster
from simdino_jax import models
from simdino_jax import parallel
from simdino_jax import storage
from simdino_jax.evaluation import evaluators
from simdino_jax.evaluation import protocols

# --protocol: the evaluators (simdino_jax/evaluation/evaluators.py) it runs.
PROTOCOLS = {"knn": ("knn",), "linear": ("linear_probe",), "both": ("knn", "linear_probe")}
BACKBONES = ("teacher", "student")
# config.eval_settings for an offline evaluation: every image of both splits.
OFFLINE_SETTINGS = {"batch_size": 256, "max_train_examples": 0, "max_test_examples": 0, "feature_dtype": "float32"}
FLAGS = flags.FLAGS


def _define_flags() -> dict:
  """Command-line flags, defined only when run as a program (so the module imports anywhere)."""
  flags.DEFINE_string("workdir", None, "The training run's workdir (holds checkpoints/).", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_enum(
    "protocol",
    "knn",
    [*protocols.PROTOCOLS, *PROTOCOLS],
    "Which evaluation to run: a published protocol as its official code runs it (dino_knn, "
    "dino_linear, dinov2_knn, dinov2_linear, simdinov2_linear; docs/objectives.md, \"Evaluation "
    "protocols\"), or knn / linear / both with the flags below.",
  )
  flags.DEFINE_enum("backbone", "teacher", BACKBONES, "Which network's backbone to evaluate.")
  flags.DEFINE_list("knn_k", [str(k) for k in protocols.KNN_K], "Neighbour counts of the weighted kNN.")
  flags.DEFINE_float("knn_temperature", 0.07, "T of the kNN vote weights exp(cos / T).")
  flags.DEFINE_integer("linear_epochs", 100, "Linear-probe epochs.")
  flags.DEFINE_list(
    "linear_lrs",
    ["1e-3"],
    "Linear-probe base learning rates (scaled by batch/256), trained together; DINO uses 1e-3, DINOv2 a grid.",
  )
  flags.DEFINE_integer("linear_batch", 1024, "Linear-probe batch size.")
  flags.DEFINE_integer(
    "n_last_blocks",
    4,
    "CLS tokens of the last n blocks in the probe features (DINO's "
    "ViT-S, and SimDINO's ViT-B runs: 4; DINO's ViT-B: 1). Given with --protocol=dino_linear, "
    "it replaces the protocol's.",
  )
  flags.DEFINE_bool(
    "avgpool",
    False,
    "Append the mean patch token to the probe features (DINO's ViT-B: True). "
    "Given with --protocol=dino_linear, it replaces the protocol's.",
  )
  flags.DEFINE_integer("batch_size", 256, "Images per feature-extraction call (rounded to the device count).")
  flags.DEFINE_integer("max_train_examples", 0, "Use only the first n training images (0: all).")
  flags.DEFINE_integer("max_test_examples", 0, "Use only the first n test images (0: all).")
  flags.DEFINE_string("data_dir", None, "Override the run's data.data_dir (e.g. data prepared elsewhere).")
  return cluster.define_flags()


def protocol_evals(protocol: str, options: dict | None = None) -> ml_collections.ConfigDict:
  """The `config.evals` of a --protocol: a published protocol (evaluation/protocols.py) as the official code runs
  it, or one of knn / linear / both with `options` (default: none) for their evaluators."""
  if protocol in protocols.PROTOCOLS:
    return protocols.protocol_options(protocol)
  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown protocol {protocol!r}; valid: {', '.join([*protocols.PROTOCOLS, *PROTOCOLS])}.")
  options = options or {}
  return ml_collections.ConfigDict({name: options.get(name, {}) for name in PROTOCOLS[protocol]})


def evals_from_flags() -> tuple[ml_collections.ConfigDict, dict]:
  """(config.evals, config.eval_settings) of the command line."""
  options = {
    "knn": {"k": FLAGS.knn_k, "temperature": FLAGS.knn_temperature},
    "linear_probe": {
      "epochs": FLAGS.linear_epochs,
      "learning_rates": FLAGS.linear_lrs,
      "batch_size": FLAGS.linear_batch,
      "n_last_blocks": FLAGS.n_last_blocks,
      "avgpool": FLAGS.avgpool,
    },
  }
  settings = {
    "batch_size": FLAGS.batch_size,
    "max_train_examples": FLAGS.max_train_examples,
    "max_test_examples": FLAGS.max_test_examples,
  }
  evals = protocol_evals(FLAGS.protocol, options)
  if FLAGS.protocol in protocols.PROTOCOLS and "linear_probe" in evals:
    if FLAGS["n_last_blocks"].present:
      evals.linear_probe.blocks = (FLAGS.n_last_blocks,)
    if FLAGS["avgpool"].present:
      evals.linear_probe.avgpools = (FLAGS.avgpool,)
  return evals, settings


def read_run_config(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
  """(config, step) stored with the checkpoint `step` (default: the latest) of `workdir`."""
  config, step = checkpointing.read_config(workdir, step)
  return ml_collections.ConfigDict(config), step


def restore_backbone(config, workdir: str, step: int, backbone: str, mesh) -> dict:
  """The teacher's or student's backbone parameters of checkpoint `step` (nothing else is read)."""
  if backbone not in BACKBONES:
    raise ValueError(f"Unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}.")
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: models.create_backbone(config.model, rngs=nnx.Rngs(0)))))
  shardings = parallel.state_shardings(abstract, mesh, fsdp=bool(config.fsdp))
  target = {
    backbone: {
      "backbone": jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    }
  }
  return checkpointing.restore_part(workdir, step, target)[backbone]["backbone"]


def evaluate_checkpoint(
  workdir: str,
  evals=None,
  *,
  step: int | None = None,
  backbone: str = "teacher",
  settings: dict | None = None,
  data_dir: str | None = None,
) -> dict:
  """Runs the evaluators `evals` (a `config.evals`; default the kNN with k ∈ {10, 20, 100, 200}) on one
  checkpoint's backbone; returns the metrics and writes `<workdir>/eval_<step>.json`.

  `settings` overrides OFFLINE_SETTINGS, the run config's `config.eval_settings` entries the evaluators share
  (feature batch, split caps); `data_dir` the run's data.data_dir.
  """
  evals = protocol_evals("knn", {"knn": {"k": protocols.KNN_K}}) if evals is None else evals
  config, step = read_run_config(workdir, step)
  if data_dir:
    config.data.data_dir = data_dir
  config.eval_settings.update({**OFFLINE_SETTINGS, **(settings or {})})
  mesh = parallel.create_mesh()
  params = {"backbone": restore_backbone(config, workdir, step, backbone, mesh)}
  inputs = evaluators.open_inputs(config, mesh)
  results = {
    "step": step,
    "backbone": backbone,
    "dataset": config.data.name,
    "model": config.model.name,
    "objective": config.objective.name,
  }
  for name, options in evals.items():
    results.update(evaluators.build(name, options, inputs)(params))
  storage.write_shared(storage.path(workdir) / f"eval_{step}.json", json.dumps(results, indent=2))
  return results


def main(argv) -> None:
  del argv
  cluster.initialize_from_flags(_DISTRIBUTED)
  evals, settings = evals_from_flags()
  results = evaluate_checkpoint(
    FLAGS.workdir, evals, step=FLAGS.step, backbone=FLAGS.backbone, settings=settings, data_dir=FLAGS.data_dir
  )
  if jax.process_index() == 0:
    width = max(len(k) for k in results)
    print(
      "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in results.items()),
      flush=True,
    )


if __name__ == "__main__":
  _DISTRIBUTED = _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
