"""DINOv2's composition: L = L_DINO(CLS) + L_iBOT(masked patches) + w_koleo·(KoLeo(g1) + KoLeo(g2))."""

import jax

from simdino_jax.objectives.dino import cross_view_cross_entropy
from simdino_jax.objectives.ibot import ibot_patch_loss
from simdino_jax.objectives.koleo import koleo_on_global_crops


def dinov2_loss(student_logits: jax.Array, teacher_probabilities: jax.Array, student_patch_logits: jax.Array,
                teacher_patch_probabilities: jax.Array, masks: jax.Array, student_cls: jax.Array, *,
                student_temp=0.1, koleo_weight=0.1, koleo_scope: str = "device") -> tuple[jax.Array, dict]:
  """DINOv2 loss from teacher probabilities (centered softmax or Sinkhorn-Knopp, chosen by the caller).

  student_logits [V, B, K], teacher_probabilities [2, B, K]; patch logits / probabilities [2, B, N, K], masks
  [2, B, N] bool; student_cls [V, B, D] (backbone CLS, KoLeo input). Returns (loss, {"dino", "ibot"[, "koleo"]})
  with unweighted components; KoLeo is skipped when koleo_weight == 0.
  """
  dino = cross_view_cross_entropy(student_logits, teacher_probabilities, student_temp=student_temp)
  ibot = ibot_patch_loss(student_patch_logits, teacher_patch_probabilities, masks, student_temp=student_temp)
  components = {"dino": dino, "ibot": ibot}
  loss = dino + ibot
  if koleo_weight:
    components["koleo"] = koleo_on_global_crops(student_cls, koleo_scope)
    loss = loss + koleo_weight * components["koleo"]
  return loss, components
