"""Evaluation (weighted kNN, linear probe) and collapse diagnostics, as functions of arrays and callables."""

from simdino_jax.evaluation.diagnostics import (effective_rank, feature_diagnostics, feature_std,
                                                mean_probability_entropy, mean_sample_entropy,
                                                normalized_coding_rate, prototype_diagnostics, teacher_center_kl,
                                                teacher_probabilities)
from simdino_jax.evaluation.knn import extract_features, knn_accuracy, knn_classify, knn_predict, l2_normalize
from simdino_jax.evaluation.linear_probe import (DINOV2_LR_GRID, LinearProbeResult, linear_probe_optimizer,
                                                 make_probe_feature_fn, probe_features, train_linear_probe)

__all__ = [
    "DINOV2_LR_GRID", "LinearProbeResult", "effective_rank", "extract_features", "feature_diagnostics",
    "feature_std", "knn_accuracy", "knn_classify", "knn_predict", "l2_normalize", "linear_probe_optimizer",
    "make_probe_feature_fn", "mean_probability_entropy", "mean_sample_entropy", "normalized_coding_rate",
    "probe_features", "prototype_diagnostics", "teacher_center_kl", "teacher_probabilities", "train_linear_probe",
]
