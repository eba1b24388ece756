"""The objective registry: DINO, DINOv2, SimDINO and SimDINOv2, plus add-on regularizers, behind one contract.

Objective.loss(student_out, teacher_out, state, sched, batch) -> (loss, new_state, metrics) with
loss = L_method + w_koleo·(KoLeo(g1) + KoLeo(g2)) + w_proto·KoLeo-proto(prototypes) − w_rate·mean_i R(head(g_i)).
Metrics hold every component unweighted ("dino", "ibot", "koleo", "koleo_proto", "comp", "expa", "patch",
"coding_rate"), the total "loss", and cheap diagnostics.
"""

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from simdino_jax.objectives.common import check_positive
from simdino_jax.objectives.dino import (cross_view_cross_entropy, marginal_entropy, mean_entropy, sinkhorn_knopp,
                                         teacher_probs, update_center)
from simdino_jax.objectives.dinov2 import dinov2_loss
from simdino_jax.objectives.ibot import ibot_sinkhorn_knopp, update_patch_center
from simdino_jax.objectives.koleo import KOLEO_SCOPES, koleo_on_global_crops, koleo_proto_loss
from simdino_jax.objectives.simdino import check_options, mean_coding_rate, simdino_loss, simdinov2_loss
from simdino_jax.registry import Registry

CENTERINGS = ("center", "sinkhorn_knopp")
HEADS = ("dino", "simdino")
METHOD_DEFAULT = -1.0  # koleo_weight value meaning "the method's default"
DEFAULT_KOLEO_WEIGHTS = {"dinov2": 0.1}  # the other methods: 0

LossFn = Callable[[dict, dict, dict, dict, dict], tuple[jax.Array, dict, dict]]


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective: which head it needs, whether the student sees masks, its state and its loss."""
  name: str
  head: str
  needs_masks: bool
  init_state: Callable[[int], dict]
  loss: LossFn


@dataclasses.dataclass(frozen=True)
class _Method:
  """A method's own loss before the add-on regularizers; applies_koleo: its loss already includes KoLeo."""
  head: str
  needs_masks: bool
  applies_koleo: bool
  init_state: Callable[[int], dict]
  loss: LossFn


OBJECTIVES: Registry[Callable[[ml_collections.ConfigDict], _Method]] = Registry("objective")


def default_config() -> ml_collections.ConfigDict:
  """config.objective: method name, add-on regularizer weights and options (SPEC §1)."""
  return ml_collections.ConfigDict(dict(
      name="dino",                # dino | dinov2 | simdino | simdinov2
      koleo_weight=METHOD_DEFAULT,  # KoLeo on the student backbone CLS of each global crop; -1: 0.1 dinov2, else 0
      koleo_proto_weight=0.0,     # KoLeo-proto λ on the prototypes (dino heads only); 0 = off. The paper's λ is
                                  # unverified: 0.1 (by analogy with DINOv2's KoLeo) is the suggested value
      coding_rate_weight=0.0,     # −w·mean R_eps over the student head outputs of the global crops; 0 = off
      centering="center",         # center | sinkhorn_knopp (DINO / DINOv2 teachers)
      student_temp=0.1,
      center_momentum=0.9,        # EMA momentum of the CLS and patch centers
      eps=0.05,                   # coding-rate eps (the paper's ε²)
      coeff=1.0,                  # SimDINO weight of the cosine alignment term
      expa_type=1,                # 1: Z = (z_s + sg z_t)/2; 0: Z = z_s
      gamma="default",            # default: (p + n)/(p·n); sqrt: sqrt(eps·n)/p
      covariance="global",        # global: mesh-wide ZᵀZ; local: per-device ZᵀZ with the global n
      covariance_group_size=0,    # > 0: ZᵀZ per group of this many rows, global n (published SimDINO: 64)
      koleo_scope="device",       # device: per-device batch (DINOv2); global: whole batch
      proto_chunk_size=4096,      # rows per block in KoLeo-proto's nearest-neighbour search
  ))


def _check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"objective.{name} must be one of {choices}, got {value!r}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for an unknown name or option, or an out-of-range value."""
  OBJECTIVES.get(config.name)
  _check_choice("centering", config.centering, CENTERINGS)
  _check_choice("koleo_scope", config.koleo_scope, KOLEO_SCOPES)
  check_positive("objective.student_temp", config.student_temp)
  check_positive("objective.proto_chunk_size", config.proto_chunk_size)
  check_options(eps=config.eps, expa_type=config.expa_type, gamma=config.gamma, covariance=config.covariance,
                group_size=config.covariance_group_size)
  if not 0.0 <= config.center_momentum <= 1.0:
    raise ValueError(f"objective.center_momentum must be in [0, 1], got {config.center_momentum}.")
  if not math.isfinite(config.coeff):
    raise ValueError(f"objective.coeff must be finite, got {config.coeff}.")
  if config.koleo_weight != METHOD_DEFAULT and not config.koleo_weight >= 0:
    raise ValueError(f"objective.koleo_weight must be >= 0, or -1 for the method's default; got "
                     f"{config.koleo_weight}.")
  for name in ("koleo_proto_weight", "coding_rate_weight"):
    if not config[name] >= 0:
      raise ValueError(f"objective.{name} must be >= 0 (0 = off), got {config[name]}.")


def resolve_koleo_weight(config: ml_collections.ConfigDict) -> float:
  """config.koleo_weight, with -1 replaced by the method's default (0.1 for dinov2, 0 otherwise)."""
  if config.koleo_weight == METHOD_DEFAULT:
    return DEFAULT_KOLEO_WEIGHTS.get(config.name, 0.0)
  return float(config.koleo_weight)


def _required(outputs: dict, key: str, what: str) -> jax.Array:
  if key not in outputs:
    raise KeyError(f"The {what} has no {key!r} entry (has {sorted(outputs)}).")
  return outputs[key]


def _dino_teacher(teacher_logits, state, sched, config):
  """(teacher probabilities, new state entries) for the CLS teacher: centered softmax or Sinkhorn-Knopp."""
  temperature = _required(sched, "teacher_temp", "schedule dict")
  if config.centering == "sinkhorn_knopp":
    flat = sinkhorn_knopp(teacher_logits.reshape(-1, teacher_logits.shape[-1]), temperature)
    return flat.reshape(teacher_logits.shape), {}
  probabilities = teacher_probs(teacher_logits, state["center"], temperature)
  return probabilities, {"center": update_center(state["center"], teacher_logits, config.center_momentum)}


def _center_state(keys):
  def init_state(out_dim: int) -> dict:
    return {key: jnp.zeros((out_dim,), jnp.float32) for key in keys}
  return init_state


@OBJECTIVES.register("dino")
def _dino(config) -> _Method:
  def loss(student_out, teacher_out, state, sched, batch):
    del batch
    teacher_logits = _required(teacher_out, "head", "teacher output")
    probabilities, new_state = _dino_teacher(teacher_logits, state, sched, config)
    dino = cross_view_cross_entropy(_required(student_out, "head", "student output"), probabilities,
                                    student_temp=config.student_temp)
    metrics = {"dino": dino, "teacher_entropy": mean_entropy(probabilities),
               "teacher_marginal_entropy": marginal_entropy(probabilities)}
    return dino, {**state, **new_state}, metrics

  keys = ("center",) if config.centering == "center" else ()
  return _Method("dino", False, False, _center_state(keys), loss)


@OBJECTIVES.register("dinov2")
def _dinov2(config) -> _Method:
  koleo_weight = resolve_koleo_weight(config)

  def loss(student_out, teacher_out, state, sched, batch):
    masks = _required(batch, "masks", "batch")
    teacher_logits = _required(teacher_out, "head", "teacher output")
    teacher_patch_logits = _required(teacher_out, "patch_head", "teacher output")
    probabilities, new_state = _dino_teacher(teacher_logits, state, sched, config)
    if config.centering == "sinkhorn_knopp":
      patch_probabilities = ibot_sinkhorn_knopp(teacher_patch_logits, masks, sched["teacher_temp"])
    else:
      patch_probabilities = teacher_probs(teacher_patch_logits, state["patch_center"], sched["teacher_temp"])
      new_state["patch_center"] = update_patch_center(state["patch_center"], teacher_patch_logits, masks,
                                                      config.center_momentum)
    total, metrics = dinov2_loss(
        _required(student_out, "head", "student output"), probabilities,
        _required(student_out, "patch_head", "student output"), patch_probabilities, masks,
        _required(student_out, "cls", "student output"), student_temp=config.student_temp,
        koleo_weight=koleo_weight, koleo_scope=config.koleo_scope)
    metrics.update(teacher_entropy=mean_entropy(probabilities),
                   teacher_marginal_entropy=marginal_entropy(probabilities),
                   masked_fraction=jnp.mean(masks.astype(jnp.float32)))
    return total, {**state, **new_state}, metrics

  keys = ("center", "patch_center") if config.centering == "center" else ()
  return _Method("dino", True, True, _center_state(keys), loss)


def _simdino_options(config, sched) -> dict:
  """The loss options; α and γ refer to the step's global batch (sched["global_batch_size"], when given)."""
  return dict(eps=config.eps, coeff=config.coeff, expa_type=config.expa_type, gamma=config.gamma,
              covariance=config.covariance, group_size=config.covariance_group_size,
              n=sched.get("global_batch_size"))


def _embedding_diagnostics(teacher_z, metrics) -> dict:
  return {**metrics, "expa_finite": jnp.isfinite(metrics["expa"]).astype(jnp.float32),
          "teacher_feature_std": jnp.mean(jnp.std(teacher_z, axis=1))}


@OBJECTIVES.register("simdino")
def _simdino(config) -> _Method:
  def loss(student_out, teacher_out, state, sched, batch):
    del batch
    teacher_z = _required(teacher_out, "head", "teacher output")
    total, metrics = simdino_loss(_required(student_out, "head", "student output"), teacher_z,
                                  **_simdino_options(config, sched))
    return total, state, _embedding_diagnostics(teacher_z, metrics)

  return _Method("simdino", False, False, _center_state(()), loss)


@OBJECTIVES.register("simdinov2")
def _simdinov2(config) -> _Method:
  def loss(student_out, teacher_out, state, sched, batch):
    teacher_z = _required(teacher_out, "head", "teacher output")
    total, metrics = simdinov2_loss(
        _required(student_out, "head", "student output"), teacher_z,
        _required(student_out, "patch_head", "student output"),
        _required(teacher_out, "patch_head", "teacher output"), _required(batch, "masks", "batch"),
        **_simdino_options(config, sched))
    return total, state, _embedding_diagnostics(teacher_z, metrics)

  return _Method("simdino", True, False, _center_state(()), loss)


def get_objective(config: ml_collections.ConfigDict) -> Objective:
  """The Objective named config.name with the add-on regularizers of config (see default_config)."""
  config = ml_collections.FrozenConfigDict(config)  # later edits of the caller's config do not leak in
  validate_config(config)
  method = OBJECTIVES.get(config.name)(config)
  koleo_weight = resolve_koleo_weight(config)
  if config.koleo_proto_weight > 0 and method.head != "dino":
    raise ValueError(f"objective.koleo_proto_weight > 0 needs a prototype layer (a 'dino' head); objective "
                     f"{config.name!r} uses a {method.head!r} head. Set koleo_proto_weight = 0.")
  add_koleo = koleo_weight > 0 and not method.applies_koleo

  def loss(student_out, teacher_out, state, sched, batch):
    teacher_out = jax.tree.map(jax.lax.stop_gradient, teacher_out)
    total, new_state, metrics = method.loss(student_out, teacher_out, state, sched, batch)
    if add_koleo:
      metrics["koleo"] = koleo_on_global_crops(_required(student_out, "cls", "student output"), config.koleo_scope)
      total = total + koleo_weight * metrics["koleo"]
    if config.koleo_proto_weight > 0:
      prototypes = _required(student_out, "prototypes", "student output")
      metrics["koleo_proto"] = koleo_proto_loss(prototypes, chunk_size=config.proto_chunk_size)
      total = total + config.koleo_proto_weight * metrics["koleo_proto"]
    if config.coding_rate_weight > 0:
      head = _required(student_out, "head", "student output")
      metrics["coding_rate"] = mean_coding_rate(head[:2], config.eps, config.covariance,
                                                config.covariance_group_size)
      total = total - config.coding_rate_weight * metrics["coding_rate"]
    metrics["loss"] = total
    return total, new_state, metrics

  return Objective(name=config.name, head=method.head, needs_masks=method.needs_masks,
                   init_state=method.init_state, loss=loss)
