"""Collapse warnings from the logged training metrics, whichever objective logs them.

The objectives report their collapse signatures already normalized (objectives/methods.py), and the monitor
checks each one only when it is logged:
- "dino_over_log_k", the DINO cross-entropy over log K (dino / dinov2): it stays near 1 when the teacher has
  collapsed to the uniform distribution over the K prototypes.
- "teacher_feature_std", the per-dimension std of the l2-normalized teacher embeddings (simdino / simdinov2;
  ≈ 1/sqrt(p) when spread over p dimensions): it stays near 0 when every image maps to the same point.
"""

import math


class CollapseMonitor:
  """`update(step, metrics)` returns a warning once a signature has held for `patience` consecutive updates."""

  def __init__(self, patience: int, *, dino_rel_tol: float = 0.02, min_feature_std: float = 1e-3):
    if patience < 1:
      raise ValueError(f"CollapseMonitor patience must be >= 1, got {patience}.")
    self.patience = patience
    self.dino_rel_tol = dino_rel_tol
    self.min_feature_std = min_feature_std
    self.dino_streak = 0
    self.std_streak = 0

  def update(self, step: int, metrics: dict) -> str | None:
    """Feeds one log step's metrics; returns a warning while a signature has held `patience` times in a row."""
    ratio = metrics.get("dino_over_log_k")
    near_uniform = ratio is not None and abs(float(ratio) - 1.0) <= self.dino_rel_tol
    self.dino_streak = self.dino_streak + 1 if near_uniform else 0
    std = metrics.get("teacher_feature_std")
    std_collapsed = std is not None and math.isfinite(float(std)) and float(std) < self.min_feature_std
    self.std_streak = self.std_streak + 1 if std_collapsed else 0

    reasons = []
    if self.dino_streak >= self.patience:
      reasons.append(
        f"the DINO loss has stayed within {self.dino_rel_tol:.0%} of log K (a uniform teacher; "
        f"loss / log K = {float(ratio):.4f}) for {self.dino_streak} log steps"
      )
    if self.std_streak >= self.patience:
      reasons.append(
        f"the teacher feature std {float(std):.2e} has stayed below {self.min_feature_std:g} "
        f"(all images map to one point) for {self.std_streak} log steps"
      )
    if not reasons:
      return None
    return (
      f"Possible collapse at step {step}: {'; '.join(reasons)}. Check the teacher temperature, the "
      "centering / coding-rate settings and the learning rate."
    )
