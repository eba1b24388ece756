"""SimDINO (v1) and SimDINOv2: cosine alignment across views plus a coding-rate expansion term.

comp = (1/(2V−2)) Σ_{i∈{0,1}} Σ_{v≠i} mean_b cos(z_t^i, z_s^v);  Z_i = (z_s^i + sg(z_t^i))/2 (expa_type 1) or
z_s^i (expa_type 0);  expa = γ·½(R(Z_0) + R(Z_1)) with R(Z) = ½ logdet(I_p + p/(n·eps) ZᵀZ), n = B (global batch),
γ = (p + n)/(p·n) ("default") or sqrt(eps·n)/p ("sqrt");  L = −coeff·comp − expa.

Covariance groups (`group_size` g > 0, the published runs: g = 64 images per GPU): ZᵀZ is taken over each group of
g consecutive rows, still scaled with the global n, and R is averaged over the n/g groups, whatever the devices are.
"""

import jax
import jax.numpy as jnp

from simdino_jax.objectives.coding_rate import half_logdet_identity_plus_gram
from simdino_jax.numerics import l2_normalize
from simdino_jax.objectives.common import as_float32, check_views, cross_view_mean, masked_image_mean
from simdino_jax.objectives.distributed import mean_over_data_shards

EXPA_TYPES = (0, 1)
GAMMAS = ("default", "sqrt")
COVARIANCES = ("global", "local")


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """cos(a, b) = â·b̂ along the last axis (numerics.l2_normalize)."""
  return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def grouped_coding_rate(z: jax.Array, alpha, group_size: int) -> jax.Array:
  """(g/n) Σ_groups ½ logdet(I_p + α Z_kᵀZ_k) over the n/g groups Z_k of g consecutive rows of z [n, p].

  Row-local: when g divides each device's shard, every device factors its own groups; only the mean crosses devices.
  """
  n, p = z.shape
  if n % group_size:
    raise ValueError(
      f"covariance_group_size={group_size} must divide the batch of {n} rows; use a divisor of {n} "
      "(the published runs: 64 images per group)."
    )
  groups = z.reshape(n // group_size, group_size, p)
  return jnp.mean(jax.vmap(half_logdet_identity_plus_gram, in_axes=(0, None))(groups, alpha))


def mean_coding_rate(
  views: jax.Array, eps, covariance: str = "global", group_size: int = 0, n: int | None = None
) -> jax.Array:
  """(1/V) Σ_i R_eps(Z_i) for views [V, rows, p], α = p/(n·eps) with n the global batch (default: the rows).

  covariance "global": ZᵀZ over the whole batch (mesh-wide under jit). "local": each device's ZᵀZ from its own
  shard, still scaled with the global n, and R averaged over devices (the official SimDINO default, reduce_cov=0).
  group_size > 0: ZᵀZ over groups of that many rows, R averaged over groups (the same, device-independent).
  """
  views = as_float32(views)
  _, rows, p = views.shape
  alpha = p / ((n or rows) * jnp.asarray(eps, jnp.float32))
  if group_size:
    rates = [grouped_coding_rate(view, alpha, group_size) for view in views]
  elif covariance == "global":
    rates = [half_logdet_identity_plus_gram(view, alpha) for view in views]
  else:
    rates = [mean_over_data_shards(lambda shard: half_logdet_identity_plus_gram(shard, alpha), view) for view in views]
  return sum(rates) / len(rates)


def expansion(
  student_z: jax.Array,
  teacher_z: jax.Array,
  *,
  eps=0.05,
  expa_type: int = 1,
  gamma: str = "default",
  covariance: str = "global",
  group_size: int = 0,
  n: int | None = None,
) -> jax.Array:
  """expa = γ·½(R(Z_0) + R(Z_1)) over the two global views (see the module docstring).

  n: the global batch that α and γ refer to (default: the rows given; a gradient-accumulation micro-batch passes
  the accumulated batch).
  """
  global_student = as_float32(student_z)[:2]
  if expa_type == 1:
    codes = (global_student + jax.lax.stop_gradient(as_float32(teacher_z))) / 2.0
  else:
    codes = global_student
  _, rows, p = codes.shape
  n = n or rows
  gamma_value = (p + n) / (p * n) if gamma == "default" else jnp.sqrt(eps * n) / p
  return gamma_value * mean_coding_rate(codes, eps, covariance, group_size, n)


def simdino_loss(
  student_z: jax.Array,
  teacher_z: jax.Array,
  *,
  eps=0.05,
  coeff=1.0,
  expa_type: int = 1,
  gamma: str = "default",
  covariance: str = "global",
  group_size: int = 0,
  n: int | None = None,
) -> tuple[jax.Array, dict]:
  """SimDINO loss −coeff·comp − expa for student [V, B, p] and teacher [2, B, p] (l2-normalized embeddings).

  Returns (loss, {"comp": comp, "expa": expa}).
  """
  check_views(student_z, teacher_z, "simdino_loss")
  student_z = as_float32(student_z)
  teacher_z = jax.lax.stop_gradient(as_float32(teacher_z))
  pair_cosines = jnp.mean(cosine(teacher_z[:, None], student_z[None, :]), axis=-1)
  comp = cross_view_mean(pair_cosines)
  expa = expansion(
    student_z, teacher_z, eps=eps, expa_type=expa_type, gamma=gamma, covariance=covariance, group_size=group_size, n=n
  )
  return -coeff * comp - expa, {"comp": comp, "expa": expa}


def simdino_patch_loss(student_patch_z: jax.Array, teacher_patch_z: jax.Array, masks: jax.Array) -> jax.Array:
  """SimDINOv2 patch term −(1/(2B)) Σ_i (1/M_i) Σ_{masked j} cos(z_t,ij, z_s,ij).

  Embeddings [2, B, N, p] (or [2B, N, p]); masks [2, B, N] (or [2B, N]) bool; unmasked images count in 2B.
  """
  if student_patch_z.shape != teacher_patch_z.shape or student_patch_z.shape[:-1] != masks.shape:
    raise ValueError(
      f"simdino_patch_loss: expected student and teacher [..., N, p] and masks [..., N], got "
      f"{student_patch_z.shape}, {teacher_patch_z.shape} and {masks.shape}."
    )
  token_cosines = cosine(jax.lax.stop_gradient(as_float32(teacher_patch_z)), as_float32(student_patch_z))
  return -masked_image_mean(token_cosines, masks)


def simdinov2_loss(
  student_z: jax.Array,
  teacher_z: jax.Array,
  student_patch_z: jax.Array,
  teacher_patch_z: jax.Array,
  masks: jax.Array,
  *,
  eps=0.05,
  coeff=1.0,
  expa_type: int = 1,
  gamma: str = "default",
  covariance: str = "global",
  group_size: int = 0,
  n: int | None = None,
) -> tuple[jax.Array, dict]:
  """SimDINOv2: L = simdino_loss(CLS embeddings) + simdino_patch_loss(masked patch embeddings).

  Returns (loss, {"comp", "expa", "patch"}) where "patch" is the patch term (a negative mean cosine).
  """
  cls_loss, metrics = simdino_loss(
    student_z,
    teacher_z,
    eps=eps,
    coeff=coeff,
    expa_type=expa_type,
    gamma=gamma,
    covariance=covariance,
    group_size=group_size,
    n=n,
  )
  patch_loss = simdino_patch_loss(student_patch_z, teacher_patch_z, masks)
  return cls_loss + patch_loss, {**metrics, "patch": patch_loss}
