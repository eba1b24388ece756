"""Evaluation (weighted kNN, linear probe) and collapse diagnostics, and the features they read from a backbone."""

from simdino_jax.evaluation.diagnostics import (
  effective_rank,
  feature_diagnostics,
  feature_std,
  normalized_coding_rate,
  prototype_diagnostics,
)
from simdino_jax.evaluation.features import (
  eval_batch_size,
  evaluation_inputs,
  extract_features,
  make_feature_fn,
  split_features,
)
from simdino_jax.evaluation.knn import knn_classify, knn_predict
from simdino_jax.evaluation.linear_probe import (
  LinearProbeResult,
  linear_probe_optimizer,
  probe_features,
  train_linear_probe,
)

__all__ = [
  "LinearProbeResult",
  "effective_rank",
  "eval_batch_size",
  "evaluation_inputs",
  "extract_features",
  "feature_diagnostics",
  "feature_std",
  "knn_classify",
  "knn_predict",
  "linear_probe_optimizer",
  "make_feature_fn",
  "normalized_coding_rate",
  "probe_features",
  "prototype_diagnostics",
  "split_features",
  "train_linear_probe",
]
