"""The methods behind one contract: DINO, DINOv2, SimDINO and SimDINOv2, with add-on regularizers (OBJECTIVES).

Objective.batch_inputs(key, mask plan) -> BatchInputs: what the objective adds to a batch of crops (DINOv2's and
SimDINOv2's iBOT masks and the masked tokens the heads score, ibot.masked_tokens); the trainer forwards it unread.
Objective.loss(student_out, teacher_out, state, context, masks) -> (loss, new_state, metrics) with
loss = L_method + w_koleo·(KoLeo(g1) + KoLeo(g2)) + w_proto·KoLeo-proto(prototypes) − w_rate·mean_i R(head(g_i))
(docs/objectives.md). Metrics hold every component unweighted ("dino", "ibot", "koleo", "koleo_proto", "comp",
"expa", "patch", "coding_rate"), the total "loss", and diagnostics already normalized for the collapse monitor
("dino_over_log_k": 1 for a uniform teacher; "teacher_feature_std": 0 when every image maps to one point).
Options are validated once, where the config is read (simdino_jax/validation.py).
"""

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from simdino_jax.numerics import marginal_entropy, mean_entropy
from simdino_jax.objectives.dino import cross_view_cross_entropy, sinkhorn_knopp, teacher_probs, update_center
from simdino_jax.objectives.common import BatchInputs
from simdino_jax.objectives.ibot import (
  MaskPlan,
  ibot_patch_loss,
  ibot_sinkhorn_knopp,
  masked_tokens,
  update_patch_center,
)
from simdino_jax.objectives.koleo import koleo_on_global_crops, koleo_proto_loss
from simdino_jax.objectives.simdino import mean_coding_rate, simdino_loss, simdinov2_loss
from simdino_jax.registry import Registry

CENTERINGS = ("center", "sinkhorn_knopp")
METHOD_DEFAULT = -1.0  # koleo_weight value meaning "the method's default"
DEFAULT_KOLEO_WEIGHTS = {"dinov2": 0.1}  # the other methods: 0


class StepContext(NamedTuple):
  """What a loss reads about its step besides the network outputs."""

  teacher_temp: jax.Array | float  # the scheduled teacher temperature τ_t
  global_batch_size: int | None = None  # B of the whole step (SimDINO's α and γ); None: the outputs' own B


LossFn = Callable[[dict, dict, dict, StepContext, jax.Array | None], tuple[jax.Array, dict, dict]]
BatchInputsFn = Callable[[jax.Array, MaskPlan | None], BatchInputs]


def no_batch_inputs(key: jax.Array, plan: MaskPlan | None) -> BatchInputs:
  """Objectives that read only the crops."""
  del key, plan
  return BatchInputs()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Objective:
  """A training objective: the head kind it needs, its state, its loss and what it adds to a batch.

  head_kind: "dino" (prototype logits [.., K]) or "simdino" (l2-normalized embeddings [.., p]);
  init_state(head output size, patch head output size=None) -> state pytree; loss(student_out, teacher_out, state,
  context, masks);
  batch_inputs(key, mask plan) -> BatchInputs (the plan: ibot.MaskPlan, built by the trainer when needs_masks).
  """

  name: str
  head_kind: str
  init_state: Callable[..., dict]
  loss: LossFn
  batch_inputs: BatchInputsFn = no_batch_inputs

  @property
  def needs_masks(self) -> bool:
    """Whether the student sees iBOT-masked global crops (and returns "patch_head")."""
    return self.batch_inputs is masked_tokens


OBJECTIVES: Registry[Callable[[ml_collections.ConfigDict], Objective]] = Registry("objective")


def default_config() -> ml_collections.ConfigDict:
  """config.objective: method name, add-on regularizer weights and options (docs/objectives.md)."""
  return ml_collections.ConfigDict(
    dict(
      name="dino",  # dino | dinov2 | simdino | simdinov2
      koleo_weight=METHOD_DEFAULT,  # KoLeo on the student backbone CLS of each global crop; -1: 0.1 dinov2, else 0
      koleo_proto_weight=0.0,  # KoLeo-proto λ on the prototypes (dino heads only); 0 = off. The paper's λ is
      # unverified: 0.1 (by analogy with DINOv2's KoLeo) is the suggested value
      coding_rate_weight=0.0,  # −w·mean R_eps over the student head outputs of the global crops; 0 = off
      centering="center",  # center | sinkhorn_knopp (DINO / DINOv2 teachers)
      student_temp=0.1,
      center_momentum=0.9,  # EMA momentum of the CLS and patch centers
      eps=0.05,  # coding-rate eps (the paper's ε²)
      coeff=1.0,  # SimDINO weight of the cosine alignment term
      expa_type=1,  # 1: Z = (z_s + sg z_t)/2; 0: Z = z_s
      gamma="default",  # default: (p + n)/(p·n); sqrt: sqrt(eps·n)/p
      covariance="global",  # global: mesh-wide ZᵀZ; local: per-device ZᵀZ with the global n
      covariance_group_size=0,  # > 0: ZᵀZ per group of this many rows, global n (published SimDINO: 64)
      koleo_scope="device",  # device: per-device batch; global: whole batch (when koleo_group_size = 0)
      koleo_group_size=0,  # > 0: KoLeo per group of this many images, on any devices (DINOv2: 64 per GPU)
      proto_chunk_size=4096,  # rows per block in KoLeo-proto's nearest-neighbour search
    )
  )


def resolve_koleo_weight(config: ml_collections.ConfigDict) -> float:
  """config.koleo_weight, with -1 replaced by the method's default (0.1 for dinov2, 0 otherwise)."""
  if config.koleo_weight == METHOD_DEFAULT:
    return DEFAULT_KOLEO_WEIGHTS.get(config.name, 0.0)
  return float(config.koleo_weight)


def _required(outputs: dict, key: str, what: str) -> jax.Array:
  if key not in outputs:
    raise KeyError(f"The {what} has no {key!r} entry (has {sorted(outputs)}).")
  return outputs[key]


def _required_masks(masks: jax.Array | None, name: str) -> jax.Array:
  if masks is None:
    raise ValueError(f"Objective {name!r} needs the iBOT masks of the global crops; got masks=None.")
  return masks


def _dino_teacher(teacher_logits, state, context, config):
  """(teacher probabilities, new state entries) for the CLS teacher: centered softmax or Sinkhorn-Knopp."""
  temperature = context.teacher_temp
  if config.centering == "sinkhorn_knopp":
    return sinkhorn_knopp(teacher_logits, temperature), {}
  probabilities = teacher_probs(teacher_logits, state["center"], temperature)
  return probabilities, {"center": update_center(state["center"], teacher_logits, config.center_momentum)}


def _dino_diagnostics(dino, probabilities) -> dict:
  """The DINO loss over log K (1 = a uniform teacher, the collapse signature) and the teacher's entropies."""
  return {
    "dino_over_log_k": dino / math.log(probabilities.shape[-1]),
    "teacher_entropy": mean_entropy(probabilities),
    "teacher_marginal_entropy": marginal_entropy(probabilities),
  }


def _center_state(keys):
  def init_state(out_dim: int, patch_out_dim: int | None = None) -> dict:
    """Zero centers: the CLS center over the head's `out_dim` outputs, the patch center over `patch_out_dim`
    (a separate iBOT head's prototypes; default `out_dim`)."""
    sizes = {"center": out_dim, "patch_center": patch_out_dim or out_dim}
    return {key: jnp.zeros((sizes[key],), jnp.float32) for key in keys}

  return init_state


@OBJECTIVES.register("dino")
def _dino(config) -> Objective:
  def loss(student_out, teacher_out, state, context, masks):
    del masks
    teacher_logits = _required(teacher_out, "head", "teacher output")
    probabilities, new_state = _dino_teacher(teacher_logits, state, context, config)
    dino = cross_view_cross_entropy(
      _required(student_out, "head", "student output"), probabilities, student_temp=config.student_temp
    )
    return dino, {**state, **new_state}, {"dino": dino, **_dino_diagnostics(dino, probabilities)}

  keys = ("center",) if config.centering == "center" else ()
  return Objective(name="dino", head_kind="dino", init_state=_center_state(keys), loss=loss)


@OBJECTIVES.register("dinov2")
def _dinov2(config) -> Objective:
  """L = L_DINO(CLS) + L_iBOT(masked patches); its KoLeo is the add-on (koleo_weight's default 0.1)."""

  def loss(student_out, teacher_out, state, context, masks):
    masks = _required_masks(masks, "dinov2")
    teacher_logits = _required(teacher_out, "head", "teacher output")
    teacher_patch_logits = _required(teacher_out, "patch_head", "teacher output")
    probabilities, new_state = _dino_teacher(teacher_logits, state, context, config)
    if config.centering == "sinkhorn_knopp":
      patch_probabilities = ibot_sinkhorn_knopp(teacher_patch_logits, masks, context.teacher_temp)
    else:
      patch_probabilities = teacher_probs(teacher_patch_logits, state["patch_center"], context.teacher_temp)
      new_state["patch_center"] = update_patch_center(
        state["patch_center"], teacher_patch_logits, masks, config.center_momentum
      )
    dino = cross_view_cross_entropy(
      _required(student_out, "head", "student output"), probabilities, student_temp=config.student_temp
    )
    ibot = ibot_patch_loss(
      _required(student_out, "patch_head", "student output"),
      patch_probabilities,
      masks,
      student_temp=config.student_temp,
    )
    metrics = {"dino": dino, "ibot": ibot, **_dino_diagnostics(dino, probabilities)}
    return dino + ibot, {**state, **new_state}, metrics

  keys = ("center", "patch_center") if config.centering == "center" else ()
  return Objective(
    name="dinov2", head_kind="dino", init_state=_center_state(keys), loss=loss, batch_inputs=masked_tokens
  )


def _simdino_options(config, context) -> dict:
  """The loss options; α and γ refer to the step's global batch (context.global_batch_size, when given)."""
  return dict(
    eps=config.eps,
    coeff=config.coeff,
    expa_type=config.expa_type,
    gamma=config.gamma,
    covariance=config.covariance,
    group_size=config.covariance_group_size,
    n=context.global_batch_size,
  )


def _embedding_diagnostics(teacher_z, metrics) -> dict:
  return {
    **metrics,
    "expa_finite": jnp.isfinite(metrics["expa"]).astype(jnp.float32),
    "teacher_feature_std": jnp.mean(jnp.std(teacher_z, axis=1)),
  }


@OBJECTIVES.register("simdino")
def _simdino(config) -> Objective:
  def loss(student_out, teacher_out, state, context, masks):
    del masks
    teacher_z = _required(teacher_out, "head", "teacher output")
    total, metrics = simdino_loss(
      _required(student_out, "head", "student output"), teacher_z, **_simdino_options(config, context)
    )
    return total, state, _embedding_diagnostics(teacher_z, metrics)

  return Objective(name="simdino", head_kind="simdino", init_state=_center_state(()), loss=loss)


@OBJECTIVES.register("simdinov2")
def _simdinov2(config) -> Objective:
  def loss(student_out, teacher_out, state, context, masks):
    teacher_z = _required(teacher_out, "head", "teacher output")
    total, metrics = simdinov2_loss(
      _required(student_out, "head", "student output"),
      teacher_z,
      _required(student_out, "patch_head", "student output"),
      _required(teacher_out, "patch_head", "teacher output"),
      _required_masks(masks, "simdinov2"),
      **_simdino_options(config, context),
    )
    return total, state, _embedding_diagnostics(teacher_z, metrics)

  return Objective(
    name="simdinov2", head_kind="simdino", init_state=_center_state(()), loss=loss, batch_inputs=masked_tokens
  )


def get_objective(config: ml_collections.ConfigDict) -> Objective:
  """The Objective named config.name with the add-on regularizers of config (see default_config).

  The config is assumed valid (validation.validate_objective); an unknown name lists the valid ones.
  """
  config = ml_collections.FrozenConfigDict(config)  # later edits of the caller's config do not leak in
  method = OBJECTIVES.get(config.name)(config)
  koleo_weight = resolve_koleo_weight(config)

  def loss(student_out, teacher_out, state, context, masks):
    teacher_out = jax.tree.map(jax.lax.stop_gradient, teacher_out)
    total, new_state, metrics = method.loss(student_out, teacher_out, state, context, masks)
    if koleo_weight > 0:
      metrics["koleo"] = koleo_on_global_crops(
        _required(student_out, "cls", "student output"), config.koleo_scope, config.koleo_group_size
      )
      total = total + koleo_weight * metrics["koleo"]
    if config.koleo_proto_weight > 0:
      prototypes = _required(student_out, "prototypes", "student output")
      metrics["koleo_proto"] = koleo_proto_loss(prototypes, chunk_size=config.proto_chunk_size)
      total = total + config.koleo_proto_weight * metrics["koleo_proto"]
    if config.coding_rate_weight > 0:
      head = _required(student_out, "head", "student output")
      metrics["coding_rate"] = mean_coding_rate(head[:2], config.eps, config.covariance, config.covariance_group_size)
      total = total - config.coding_rate_weight * metrics["coding_rate"]
    metrics["loss"] = total
    return total, new_state, metrics

  return dataclasses.replace(method, loss=loss)
