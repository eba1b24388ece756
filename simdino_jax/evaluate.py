"""Offline evaluation of a training run's checkpoint: weighted kNN and the linear probe (docs/architecture.md).

    python -m simdino_jax.evaluate --workdir=/tmp/digits                         # kNN, k ∈ {10, 20, 100, 200}
    python -m simdino_jax.evaluate --workdir=/tmp/digits --protocol=linear --linear_epochs=100
    python -m simdino_jax.evaluate --workdir=runs/dino --protocol=both --backbone=student --step=10000

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
from simdino_jax import cluster
from simdino_jax import models
from simdino_jax import parallel
from simdino_jax import storage
from simdino_jax.evaluation import features as features_lib
from simdino_jax.evaluation import knn
from simdino_jax.evaluation import linear_probe

PROTOCOLS = ("knn", "linear", "both")
BACKBONES = ("teacher", "student")
FLAGS = flags.FLAGS


def _define_flags() -> dict:
  """Command-line flags, defined only when run as a program (so the module imports anywhere)."""
  flags.DEFINE_string("workdir", None, "The training run's workdir (holds checkpoints/).", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_enum("protocol", "knn", PROTOCOLS, "Which evaluation to run.")
  flags.DEFINE_enum("backbone", "teacher", BACKBONES, "Which network's backbone to evaluate.")
  flags.DEFINE_list("knn_k", ["10", "20", "100", "200"], "Neighbour counts of the weighted kNN.")
  flags.DEFINE_float("knn_temperature", 0.07, "T of the kNN vote weights exp(cos / T).")
  flags.DEFINE_integer("linear_epochs", 100, "Linear-probe epochs.")
  flags.DEFINE_list("linear_lrs", ["1e-3"], "Linear-probe base learning rates (scaled by batch/256), trained "
                    "together; DINO uses 1e-3, DINOv2 a grid.")
  flags.DEFINE_integer("linear_batch", 1024, "Linear-probe batch size.")
  flags.DEFINE_integer("n_last_blocks", 4, "CLS tokens of the last n blocks in the probe features (ViT-B: 1).")
  flags.DEFINE_bool("avgpool", False, "Append the mean patch token to the probe features (ViT-B: True).")
  flags.DEFINE_integer("batch_size", 256, "Images per feature-extraction call (rounded to the device count).")
  flags.DEFINE_integer("max_train_examples", 0, "Use only the first n training images (0: all).")
  flags.DEFINE_integer("max_test_examples", 0, "Use only the first n test images (0: all).")
  flags.DEFINE_string("data_dir", None, "Override the run's data.data_dir (e.g. data prepared elsewhere).")
  return cluster.define_flags()


def read_run_config(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
  """(config, step) stored with the checkpoint `step` (default: the latest) of `workdir`."""
  config, step = checkpointing.read_config(workdir, step)
  return ml_collections.ConfigDict(config), step


def restore_backbone(config, workdir: str, step: int, backbone: str, mesh) -> dict:
  """The teacher's or student's backbone parameters of checkpoint `step` (nothing else is read)."""
  if backbone not in BACKBONES:
    raise ValueError(f"Unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}.")
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: models.create_backbone(config.model, rngs=nnx.Rngs(0)))))
  shardings = parallel.state_shardings(abstract, mesh, fsdp=bool(config.get("fsdp", False)))
  target = {backbone: {"backbone": jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)}}
  return checkpointing.restore_part(workdir, step, target)[backbone]["backbone"]


def evaluate_checkpoint(workdir: str, *, step: int | None = None, protocol: str = "knn", backbone: str = "teacher",
                        knn_k=(10, 20, 100, 200), knn_temperature: float = 0.07, linear_epochs: int = 100,
                        linear_lrs=(1e-3,), linear_batch: int = 1024, n_last_blocks: int = 4,
                        avgpool: bool = False, batch_size: int = 256, max_train_examples: int = 0,
                        max_test_examples: int = 0, data_dir: str | None = None) -> dict:
  """Evaluates one checkpoint of `workdir`; returns the metrics and writes `<workdir>/eval_<step>.json`."""
  from simdino_jax import data as data_lib  # pylint: disable=import-outside-toplevel

  if protocol not in PROTOCOLS:
    raise ValueError(f"Unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}.")
  config, step = read_run_config(workdir, step)
  if data_dir:
    config.data.data_dir = data_dir
  mesh = parallel.create_mesh()
  params = restore_backbone(config, workdir, step, backbone, mesh)
  train_source = data_lib.open_split(config.data, config.data.train_split)
  test_source = data_lib.open_split(config.data, config.data.eval_split)
  results = {"step": step, "backbone": backbone, "dataset": config.data.name, "model": config.model.name,
             "objective": config.objective.name}

  def splits(feature_fn):
    extract = lambda source, cap: features_lib.split_features(feature_fn, params, source, batch_size=batch_size,
                                                              mesh=mesh, max_examples=cap)
    train_features, train_labels = extract(train_source, max_train_examples)
    test_features, test_labels = extract(test_source, max_test_examples)
    if (train_labels < 0).any() or (test_labels < 0).any():
      raise ValueError(f"Dataset {config.data.name!r} has unlabeled examples; kNN and the linear probe need "
                       "labels.")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    return train_features, train_labels, test_features, test_labels, num_classes

  if protocol in ("knn", "both"):
    *features, num_classes = splits(features_lib.make_feature_fn(config))
    results.update(knn.knn_classify(*features, num_classes=num_classes, k=tuple(int(k) for k in knn_k),
                                    temperature=knn_temperature, mesh=mesh))
  if protocol in ("linear", "both"):
    *features, num_classes = splits(features_lib.make_feature_fn(config, n_last_blocks=n_last_blocks,
                                                                 avgpool=avgpool))
    probe = linear_probe.train_linear_probe(
        *features, num_classes=num_classes, epochs=linear_epochs, batch_size=linear_batch,
        learning_rates=tuple(float(lr) for lr in linear_lrs), seed=int(config.seed))
    results.update(probe.metrics())
  storage.write_shared(storage.path(workdir) / f"eval_{step}.json", json.dumps(results, indent=2))
  return results


def main(argv) -> None:
  del argv
  cluster.initialize_from_flags(_DISTRIBUTED)
  results = evaluate_checkpoint(
      FLAGS.workdir, step=FLAGS.step, protocol=FLAGS.protocol, backbone=FLAGS.backbone, knn_k=FLAGS.knn_k,
      knn_temperature=FLAGS.knn_temperature, linear_epochs=FLAGS.linear_epochs, linear_lrs=FLAGS.linear_lrs,
      linear_batch=FLAGS.linear_batch, n_last_blocks=FLAGS.n_last_blocks, avgpool=FLAGS.avgpool,
      batch_size=FLAGS.batch_size, max_train_examples=FLAGS.max_train_examples,
      max_test_examples=FLAGS.max_test_examples, data_dir=FLAGS.data_dir)
  if jax.process_index() == 0:
    width = max(len(k) for k in results)
    print("\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                    for k, v in results.items()), flush=True)


if __name__ == "__main__":
  _DISTRIBUTED = _define_flags()
  app.run(main)
