"""The evaluation the training loop runs every `eval_every_epochs`: kNN of the teacher and collapse diagnostics."""

from typing import Callable

import jax.numpy as jnp
import numpy as np

from simdino_jax import data as data_lib
from simdino_jax import models
from simdino_jax.evaluation import diagnostics
from simdino_jax.evaluation import features as features_lib
from simdino_jax.evaluation import knn


def make_periodic_eval(config, mesh, graphdef, resident: tuple[np.ndarray, np.ndarray] | None = None
                       ) -> Callable[[dict], dict]:
  """`evaluate(teacher params) -> metrics`: weighted kNN top-1 (docs/architecture.md) on the labelled splits.

  `graphdef` is the model's (train.TrainSetup.graphdef): the prototypes are whatever its head says they are.

  The splits are streamed from the data source at every evaluation (host memory O(batch)), the training split
  capped at `config.eval.max_train_examples` and the test split at `config.eval.max_test_examples`. `resident`
  (images, labels) is a training split the run already holds whole (`config.data.on_device`): it is read from
  there instead of being loaded again.
  """
  if not config.eval_every_epochs:
    return lambda params: {}
  train_source = (data_lib.sources.ArraySplit(*resident) if resident is not None
                  else data_lib.open_split(config.data, config.data.train_split))
  test_source = data_lib.open_split(config.data, config.data.eval_split)
  feature_fn = features_lib.make_feature_fn(config)

  def evaluate(params: dict) -> dict:
    def extract(source, max_examples):
      return features_lib.split_features(feature_fn, params["backbone"], source, batch_size=config.eval.batch_size,
                                         mesh=mesh, max_examples=max_examples)

    train_features, train_labels = extract(train_source, config.eval.max_train_examples)
    test_features, test_labels = extract(test_source, config.eval.max_test_examples)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    results = knn.knn_classify(train_features, train_labels, test_features, test_labels, num_classes=num_classes,
                               k=tuple(config.eval.knn_k), temperature=config.eval.knn_temperature, mesh=mesh)
    features = diagnostics.feature_diagnostics(test_features[:10_000])  # A full SVD: bounded cost.
    results.update({f"diag_{k}": v for k, v in features.items()})
    prototypes = models.prototypes(graphdef, params)
    if prototypes is not None:
      protos = diagnostics.prototype_diagnostics(jnp.asarray(prototypes), config.eval.prototype_threshold)
      results.update({f"diag_{k}": v for k, v in protos.items()})
    return results

  return evaluate
