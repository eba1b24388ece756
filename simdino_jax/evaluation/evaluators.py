"""Evaluators, big_vision's `config.evals` convention: each entry of `config.evals` is an evaluator of EVALUATORS
(its `type`, default the entry's name) with its options, `every_epochs` included (-1: `config.eval_every_epochs`;
0: off). The training loop runs them at their periods and `python -m simdino_jax.evaluate` once, through the same
`run(params) -> metrics`.

An evaluator is a factory `(options, inputs: EvalInputs) -> run`, registered in one line,
`EVALUATORS.add("name", factory)`: the built-in ones (knn, linear_probe, diagnostics) are the factories below, each
over its own module (knn.py, linear_probe.py and augmented_probe.py, diagnostics.py); a new one can live anywhere.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from simdino_jax import models
from simdino_jax.data import sources
from simdino_jax.evaluation import augmented_probe
from simdino_jax.evaluation import diagnostics
from simdino_jax.evaluation import features as features_lib
from simdino_jax.evaluation import knn
from simdino_jax.evaluation import linear_probe
from simdino_jax.registry import Registry

Run = Callable[[dict], dict]  # params {"backbone": ..., optionally "head": ...} -> {metric name: float}


class EvalInputs(NamedTuple):
  """What every evaluator reads besides its options."""

  config: (
    ml_collections.ConfigDict
  )  # the run's config: model, data, crop size and `config.eval_settings` (what the evaluators share)
  mesh: Any
  train_source: Any  # the labelled training split (data.sources: len() and read(rows))
  test_source: Any  # the labelled test split
  graphdef: Any = None  # the whole model's graph (prototype diagnostics); None: a backbone alone
  cls_feature_fn: Callable | None = None  # features_lib.make_feature_fn(config), shared by the evaluators
  train_images: Any = None  # the training split's uncropped images when the run holds them (resident)


EVALUATORS: Registry[Callable[[ml_collections.ConfigDict, EvalInputs], Run]] = Registry("evaluator")


def open_inputs(config, mesh, graphdef=None, resident: tuple[np.ndarray, np.ndarray] | None = None) -> EvalInputs:
  """The run's labelled splits, streamed from the data source at each evaluation (host memory O(batch)); `resident`
  (images, labels) is a training split the run already holds whole (`config.data.on_device`)."""
  from simdino_jax import data as data_lib  # pylint: disable=import-outside-toplevel

  crop = config.aug.global_size  # The evaluation view: Resize(data.image_size) + CenterCrop(global_size).
  train_source = (
    sources.ArraySplit(*resident, crop_size=crop)
    if resident is not None
    else data_lib.open_split(config.data, config.data.train_split, crop_size=crop)
  )
  return EvalInputs(
    config=config,
    mesh=mesh,
    train_source=train_source,
    test_source=data_lib.open_split(config.data, config.data.eval_split, crop_size=crop),
    graphdef=graphdef,
    train_images=None if resident is None else sources.ArraySplit(*resident),
    cls_feature_fn=features_lib.make_feature_fn(config),
  )


def labelled_features(
  inputs: EvalInputs, feature_fn: Callable, backbone: dict, *, train: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
  """(train features, train labels, test features, test labels, classes) of the splits capped at
  `config.eval_settings.max_train_examples` / `max_test_examples`; `train=False` leaves the training split out
  (empty)."""
  settings = inputs.config.eval_settings

  def extract(source, max_examples):
    return features_lib.split_features(
      feature_fn,
      backbone,
      source,
      batch_size=settings.batch_size,
      mesh=inputs.mesh,
      max_examples=max_examples,
      workers=int(inputs.config.data.workers),
    )

  test_features, test_labels = extract(inputs.test_source, settings.max_test_examples)
  train_features, train_labels = (
    extract(inputs.train_source, settings.max_train_examples) if train else (test_features[:0], test_labels[:0])
  )
  if (train_labels < 0).any() or (test_labels < 0).any():
    raise ValueError(
      f"Dataset {inputs.config.data.name!r} has unlabeled examples; kNN and the linear probe need labels."
    )
  num_classes = int(max(train_labels.max(initial=0), test_labels.max())) + 1
  return train_features, train_labels, test_features, test_labels, num_classes


def knn_evaluator(options, inputs: EvalInputs) -> Run:
  """Weighted kNN top-1 (and top-5) of the backbone CLS: k = options.k (default config.eval_settings.knn_k), T =
  options.temperature (default config.eval_settings.knn_temperature)."""
  k = tuple(int(v) for v in options.get("k", inputs.config.eval_settings.knn_k))
  temperature = float(options.get("temperature", inputs.config.eval_settings.knn_temperature))

  def run(params: dict) -> dict:
    *features, num_classes = labelled_features(inputs, inputs.cls_feature_fn, params["backbone"])
    return knn.knn_classify(*features, num_classes=num_classes, k=k, temperature=temperature, mesh=inputs.mesh)

  return run


def diagnostics_evaluator(options, inputs: EvalInputs) -> Run:
  """Collapse diagnostics ("diag_*"): effective rank, coding rate and spread of the test CLS features (at most
  options.max_examples, default 10,000: a full SVD), and the unique prototypes of a DINO head (threshold
  config.eval_settings.prototype_threshold) when the parameters hold one."""
  max_examples = int(options.get("max_examples", 10_000))

  def run(params: dict) -> dict:
    _, _, test_features, _, _ = labelled_features(inputs, inputs.cls_feature_fn, params["backbone"], train=False)
    results = diagnostics.feature_diagnostics(test_features[:max_examples])
    prototypes = (
      models.prototypes(inputs.graphdef, params) if inputs.graphdef is not None and "head" in params else None
    )
    if prototypes is not None:
      results.update(
        diagnostics.prototype_diagnostics(jnp.asarray(prototypes), inputs.config.eval_settings.prototype_threshold)
      )
    return {f"diag_{k}": v for k, v in results.items()}

  return run


def linear_probe_evaluator(options, inputs: EvalInputs) -> Run:
  """A linear probe on the frozen backbone. `augment=True`: the official probes (evaluation/augmented_probe.py:
  augmented images through the backbone at every step, a grid of heads; options interpolation, epochs,
  steps_per_epoch, batch_size, learning_rates, blocks, avgpools, per_epoch_schedule, report; protocols.py holds
  the published ones). Else the quick probe on one precomputed evaluation view per image (linear_probe.py): options
  epochs, learning_rates, batch_size, n_last_blocks and avgpool."""
  if options.get("augment", False):
    return _augmented_probe_evaluator(options, inputs)
  feature_fn = features_lib.make_feature_fn(
    inputs.config, n_last_blocks=int(options.get("n_last_blocks", 4)), avgpool=bool(options.get("avgpool", False))
  )

  def run(params: dict) -> dict:
    *features, num_classes = labelled_features(inputs, feature_fn, params["backbone"])
    probe = linear_probe.train_linear_probe(
      *features,
      num_classes=num_classes,
      epochs=int(options.get("epochs", 100)),
      batch_size=int(options.get("batch_size", 1024)),
      learning_rates=tuple(float(lr) for lr in options.get("learning_rates", (1e-3,))),
      seed=int(inputs.config.seed),
    )
    return probe.metrics()

  return run


def _augmented_probe_evaluator(options, inputs: EvalInputs) -> Run:
  from simdino_jax import data as data_lib  # pylint: disable=import-outside-toplevel

  grid = augmented_probe.ProbeGrid(
    blocks=tuple(int(n) for n in options.blocks),
    avgpools=tuple(bool(a) for a in options.avgpools),
    learning_rates=tuple(float(lr) for lr in options.learning_rates),
  )
  config = inputs.config
  # Training images as the data pipeline decodes them (data.image_size squares), cropped anew at every step.
  train_images = (
    data_lib.open_split(config.data, config.data.train_split) if inputs.train_images is None else inputs.train_images
  )

  def run(params: dict) -> dict:
    result = augmented_probe.train_augmented_probe(
      config,
      inputs.mesh,
      params["backbone"],
      train_images,
      inputs.test_source,
      num_classes=max(train_images.num_classes, inputs.test_source.num_classes),
      grid=grid,
      interpolation=options.interpolation,
      epochs=int(options.epochs),
      steps_per_epoch=int(options.steps_per_epoch),
      batch_size=int(options.batch_size),
      per_epoch_schedule=bool(options.per_epoch_schedule),
      report=options.report,
      eval_batch_size=int(config.eval_settings.batch_size),
      max_train_examples=int(config.eval_settings.max_train_examples),
      max_test_examples=int(config.eval_settings.max_test_examples),
      workers=int(config.data.workers),
      log=_say_on_process_0,
    )
    return result.metrics()

  return run


def _say_on_process_0(line: str) -> None:
  if jax.process_index() == 0:
    print(line, flush=True)


EVALUATORS.add("knn", knn_evaluator)
EVALUATORS.add("diagnostics", diagnostics_evaluator)
EVALUATORS.add("linear_probe", linear_probe_evaluator)


def build(name: str, options, inputs: EvalInputs) -> Run:
  """The evaluator `options.type` (default: the entry's name) of EVALUATORS, built on `inputs`."""
  return EVALUATORS.get(options.get("type", name))(options, inputs)


class ScheduledEvaluator(NamedTuple):
  """An evaluator of `config.evals` with its period in steps."""

  name: str
  every_steps: int
  run: Run


def period_in_steps(options, config, steps_per_epoch: int) -> int:
  """Steps between two runs of an evaluator: its `every_epochs` (-1: config.eval_every_epochs) as steps; 0: off."""
  epochs = options.get("every_epochs", -1.0)
  epochs = config.eval_every_epochs if epochs < 0 else epochs
  return max(round(epochs * steps_per_epoch), 1) if epochs else 0


def scheduled(config, inputs: Callable[[], EvalInputs], steps_per_epoch: int) -> list[ScheduledEvaluator]:
  """The evaluators of `config.evals` that run in training (period > 0); `inputs` opens the data only if one does."""
  periods = {name: period_in_steps(options, config, steps_per_epoch) for name, options in config.evals.items()}
  active = [name for name, every in periods.items() if every]
  if not active:
    return []
  shared = inputs()
  return [ScheduledEvaluator(name, periods[name], build(name, config.evals[name], shared)) for name in active]


def run_all(evaluators, params: dict) -> dict:
  """The merged metrics of `evaluators` (anything with a `run`) on `params`."""
  results = {}
  for evaluator in evaluators:
    results.update(evaluator.run(params))
  return results
