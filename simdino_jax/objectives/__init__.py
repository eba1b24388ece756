"""Objectives: DINO, iBOT, KoLeo, KoLeo-proto, the coding rate, SimDINO, SimDINOv2 and DINOv2, and their registry.

get_objective(config.objective) returns an Objective (see methods.py, docs/objectives.md and
docs/architecture.md).
"""

from simdino_jax.objectives.coding_rate import coding_rate
from simdino_jax.objectives.dino import (
  cross_view_cross_entropy,
  sinkhorn_knopp,
  teacher_probs,
  update_center,
)
from simdino_jax.objectives.ibot import ibot_patch_loss, ibot_sinkhorn_knopp, update_patch_center
from simdino_jax.objectives.koleo import koleo_loss, koleo_on_global_crops, koleo_proto_loss, unique_prototypes
from simdino_jax.objectives.methods import (
  OBJECTIVES,
  BatchInputs,
  Objective,
  StepContext,
  default_config,
  get_objective,
)
from simdino_jax.objectives.simdino import mean_coding_rate, simdino_loss, simdino_patch_loss, simdinov2_loss

__all__ = [
  "OBJECTIVES",
  "BatchInputs",
  "Objective",
  "StepContext",
  "coding_rate",
  "cross_view_cross_entropy",
  "default_config",
  "get_objective",
  "ibot_patch_loss",
  "ibot_sinkhorn_knopp",
  "koleo_loss",
  "koleo_on_global_crops",
  "koleo_proto_loss",
  "mean_coding_rate",
  "simdino_loss",
  "simdino_patch_loss",
  "simdinov2_loss",
  "sinkhorn_knopp",
  "teacher_probs",
  "unique_prototypes",
  "update_center",
  "update_patch_center",
]
