"""Collapse warnings from the logged training metrics.

Two signatures, each checked only when its metric is logged:
- DINO (dino / dinov2 heads): the cross-entropy "dino" stays near log K, the value of a uniform teacher over the
  K prototypes (the teacher has collapsed to uniform outputs).
- SimDINO (simdino / simdinov2): "teacher_feature_std", the per-dimension std of the l2-normalized teacher
  features (≈ 1/sqrt(p) when spread over p dimensions), stays near 0 (every image maps to the same point).
"""

import math


class CollapseMonitor:
  """`update(step, metrics)` returns a warning once a signature has held for `patience` consecutive updates."""

  def __init__(self, log_k: float | None, patience: int, *, dino_rel_tol: float = 0.02,
               min_feature_std: float = 1e-3):
    if patience < 1:
      raise ValueError(f"CollapseMonitor patience must be >= 1, got {patience}.")
    if log_k is not None and not log_k > 0:
      raise ValueError(f"CollapseMonitor log_k must be positive (log of the prototype count), got {log_k}.")
    self.log_k = log_k
    self.patience = patience
    self.dino_rel_tol = dino_rel_tol
    self.min_feature_std = min_feature_std
    self.dino_streak = 0
    self.std_streak = 0

  def update(self, step: int, metrics: dict) -> str | None:
    """Feeds one log step's metrics; returns a warning while a signature has held `patience` times in a row."""
    dino = metrics.get("dino") if self.log_k is not None else None
    near_uniform = dino is not None and abs(float(dino) - self.log_k) <= self.dino_rel_tol * self.log_k
    self.dino_streak = self.dino_streak + 1 if near_uniform else 0
    std = metrics.get("teacher_feature_std")
    std_collapsed = std is not None and math.isfinite(float(std)) and float(std) < self.min_feature_std
    self.std_streak = self.std_streak + 1 if std_collapsed else 0

    reasons = []
    if self.dino_streak >= self.patience:
      reasons.append(f"the DINO loss {float(dino):.4f} has stayed within {self.dino_rel_tol:.0%} of "
                     f"log K = {self.log_k:.4f} (a uniform teacher) for {self.dino_streak} log steps")
    if self.std_streak >= self.patience:
      reasons.append(f"the teacher feature std {float(std):.2e} has stayed below {self.min_feature_std:g} "
                     f"(all images map to one point) for {self.std_streak} log steps")
    if not reasons:
      return None
    return (f"Possible collapse at step {step}: {'; '.join(reasons)}. Check the teacher temperature, the "
            "centering / coding-rate settings and the learning rate.")
