"""The official linear probes, trained on augmented images through the frozen backbone (DINO `eval_linear.py`,
DINOv2 `dinov2/eval/linear.py`; docs/objectives.md, "Evaluation protocols").

Every step draws a batch of training images, cuts each one `RandomResizedCrop(crop)` (scale (0.08, 1), ratio
(3/4, 4/3)) with a horizontal flip at p = 0.5, runs the frozen backbone once, and updates every head of the grid
from that one forward: a head per (n last blocks, avgpool, learning rate), all seeing the same batches. The batch is
sharded over the mesh (each device crops and encodes its own images, `shard_map`); the heads are replicated and
their gradients averaged over the global batch. Validation streams the evaluation views through the backbone at
each evaluation (host memory O(batch)) and counts every head's correct predictions on the device.

Each head: y = x W + b, W ~ N(0, 0.01²), b = 0; mean softmax cross-entropy; SGD momentum 0.9, no weight decay,
lr = base_lr · B / 256 · ½(1 + cos(π t / T)), t counted in epochs (DINO's CosineAnnealingLR stepped per epoch) or in
iterations (DINOv2's, per iteration).
"""

import dataclasses
import itertools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from simdino_jax import parallel
from simdino_jax.data import augment
from simdino_jax.data import sources
from simdino_jax.data.host_crops import CROP_TRIES
from simdino_jax.evaluation import features as features_lib
from simdino_jax.evaluation import linear_probe
from simdino_jax.numerics import HIGHEST

PROBE_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop's default scale (and ratio 3/4..4/3, augment.CROP_RATIO)


@dataclasses.dataclass(frozen=True)
class ProbeGrid:
  """The heads trained together: every (n_last_blocks, avgpool) feature × every base learning rate."""

  blocks: tuple[int, ...]
  avgpools: tuple[bool, ...]
  learning_rates: tuple[float, ...]

  @property
  def features(self) -> list[tuple[int, bool]]:
    return list(itertools.product(self.blocks, self.avgpools))

  def head_names(self) -> list[str]:
    return [f"blocks{n}_avgpool{int(a)}_lr{lr:g}" for n, a in self.features for lr in self.learning_rates]


def probe_view(u: jax.Array, image: jax.Array, size: int, method: str) -> jax.Array:
  """RandomResizedCrop(size) + horizontal flip (p = 0.5) of one float image [H, W, 3] in [0, 1], from its uniforms
  u [4 · CROP_TRIES + 1]."""
  box = augment.crop_box(u[: 4 * CROP_TRIES].reshape(4, CROP_TRIES), image.shape[0], image.shape[1], PROBE_SCALE)
  x = augment.resized_crop(image, box, size, method)
  return jnp.where(u[-1] < 0.5, x[:, ::-1], x)


def _grid_features(backbone, inputs, grid: ProbeGrid) -> list[jax.Array]:
  """The probe features of each (n, avgpool) of the grid, from one forward of the backbone."""
  out = backbone(inputs, n_last=max(grid.blocks))
  return [linear_probe.probe_features(out, n_last_blocks=n, avgpool=a) for n, a in grid.features]


def _logits(heads: list[dict], feats: list[jax.Array]) -> jax.Array:
  """[heads, B, C] of every head (grouped by feature, lrs within) on the features."""
  return jnp.concatenate(
    [jnp.einsum("bf,lfc->lbc", x, h["kernel"], precision=HIGHEST) + h["bias"][:, None] for h, x in zip(heads, feats)]
  )


def lr_factor(step: jax.Array, *, total: int, steps_per_epoch: int, per_epoch: bool) -> jax.Array:
  """½(1 + cos(π t / T)): t, T in epochs (DINO's CosineAnnealingLR, stepped once an epoch) or in steps (DINOv2's)."""
  if per_epoch:
    t, horizon = step // steps_per_epoch, total // steps_per_epoch
  else:
    t, horizon = step, total
  return 0.5 * (1.0 + jnp.cos(jnp.pi * t / horizon))


class AugmentedProbe:
  """One protocol's probe compiled for one mesh: `train_step` (augment, encode, update every head) and
  `val_correct` (every head's correct predictions on a batch of evaluation views)."""

  def __init__(
    self,
    config,
    mesh,
    grid: ProbeGrid,
    *,
    interpolation: str,
    batch_size: int,
    total_steps: int,
    steps_per_epoch: int,
    per_epoch_schedule: bool,
  ):
    graphdef = features_lib.feature_backbone_graph(config)
    size, aug, seed = config.aug.global_size, config.aug, int(config.seed)
    rows, n_features = P(parallel.DATA_AXIS), len(grid.features)
    n_uniform = 4 * CROP_TRIES + 1

    def encode_train(params, images, u):
      backbone = nnx.merge(graphdef, params)
      x = jax.vmap(lambda ui, im: probe_view(ui, im, size, interpolation))(u, images.astype(jnp.float32) / 255.0)
      return _grid_features(backbone, augment.normalize(x, aug.mean, aug.std), grid)

    def encode_eval(params, images):
      return _grid_features(nnx.merge(graphdef, params), features_lib.evaluation_inputs(config, images), grid)

    encode_train = jax.shard_map(encode_train, mesh=mesh, in_specs=(P(), rows, rows), out_specs=[rows] * n_features)
    encode_eval = jax.shard_map(encode_eval, mesh=mesh, in_specs=(P(), rows), out_specs=[rows] * n_features)
    lrs = jnp.asarray(grid.learning_rates, jnp.float32) * batch_size / 256
    momentum = optax.trace(decay=0.9)

    def train_step(heads, velocity, backbone_params, images, labels, step):
      # One global draw, the same on any mesh (partitionable threefry): [B, 4 · tries + 1] uniforms.
      u = jax.random.uniform(jax.random.fold_in(jax.random.key(seed), step), (images.shape[0], n_uniform))
      u = jax.lax.with_sharding_constraint(u, parallel.batch_sharding(mesh))
      feats = encode_train(backbone_params, images, u)

      def loss_fn(heads):
        losses = optax.softmax_cross_entropy_with_integer_labels(_logits(heads, feats), labels[None])
        return jnp.sum(jnp.mean(losses, axis=1))  # Σ over heads of each one's mean: independent gradients.

      loss, grads = jax.value_and_grad(loss_fn)(heads)
      velocity_updates, velocity = momentum.update(grads, velocity)  # v = 0.9 v + g (torch's SGD buffer)
      scale = -lrs * lr_factor(step, total=total_steps, steps_per_epoch=steps_per_epoch, per_epoch=per_epoch_schedule)
      heads = jax.tree.map(lambda p, v: p + scale.reshape((-1,) + (1,) * (v.ndim - 1)) * v, heads, velocity_updates)
      return heads, velocity, loss / (lrs.shape[0] * n_features)

    def val_correct(heads, backbone_params, images, labels, valid):
      logits = _logits(heads, encode_eval(backbone_params, images))
      return jnp.sum((jnp.argmax(logits, axis=-1) == labels[None]) & valid[None], axis=1)

    self.momentum = momentum
    self.train_step = jax.jit(train_step, donate_argnums=(0, 1))
    self.val_correct = jax.jit(val_correct)


@dataclasses.dataclass(frozen=True)
class AugmentedProbeResult:
  """`val_acc[e, h]`: head h's validation accuracy after evaluation e (heads named by `names`). `reported`: the
  protocol's figure: the best over evaluations of the best head ("best": DINO reports its best epoch) or the
  best head at the last evaluation ("final": DINOv2 picks its classifier after training)."""

  val_acc: np.ndarray
  names: list[str]
  report: str

  @property
  def reported_index(self) -> tuple[int, int]:
    if self.report == "best":
      return tuple(int(i) for i in np.unravel_index(np.argmax(self.val_acc), self.val_acc.shape))
    return self.val_acc.shape[0] - 1, int(np.argmax(self.val_acc[-1]))

  def metrics(self) -> dict:
    evaluation, head = self.reported_index
    n, avgpool, lr = _parse_head(self.names[head])
    return {
      "linear_top1": float(self.val_acc[evaluation, head]),
      "linear_top1_final": float(self.val_acc[-1].max()),
      "linear_head_blocks": float(n),
      "linear_head_avgpool": float(avgpool),
      "linear_head_lr": lr,
      "linear_head_evaluation": float(evaluation + 1),
    }


def _parse_head(name: str) -> tuple[int, bool, float]:
  blocks, avgpool, lr = name.split("_")
  return int(blocks[len("blocks") :]), bool(int(avgpool[len("avgpool") :])), float(lr[len("lr") :])


def _init_heads(key, grid: ProbeGrid, width: int, num_classes: int) -> list[dict]:
  """Per (n, avgpool) feature of F = (n + avgpool) · width: {"kernel": [L, F, C] ~ N(0, 0.01²), "bias": [L, C] = 0},
  one head per lr, the lrs' heads equal at the start."""
  heads = []
  for (n, avgpool), k in zip(grid.features, jax.random.split(key, len(grid.features))):
    kernel = 0.01 * jax.random.normal(k, ((n + int(avgpool)) * width, num_classes), jnp.float32)
    heads.append(
      {
        "kernel": jnp.tile(kernel[None], (len(grid.learning_rates), 1, 1)),
        "bias": jnp.zeros((len(grid.learning_rates), num_classes), jnp.float32),
      }
    )
  return heads


def train_rows(
  num_rows: int, *, batch_size: int, steps: int, seed: int, process_index: int = 0, process_count: int = 1
) -> np.ndarray:
  """[steps, batch_size / processes] rows of this process's share of each global batch, drawn without replacement
  from seeded per-pass permutations of `num_rows` rows (an epoch is a pass; DINOv2's epochs of 1,250 iterations run
  across passes like its infinite sampler). Integers only: host memory O(steps · batch), never O(images)."""
  order, passes = [], 0
  while sum(len(o) for o in order) < steps * batch_size:
    order.append(np.random.default_rng([seed, passes]).permutation(num_rows))
    passes += 1
  rows = np.concatenate(order)[: steps * batch_size].reshape(steps, process_count, batch_size // process_count)
  return rows[:, process_index]


def train_augmented_probe(
  config,
  mesh,
  backbone_params: Any,
  train_source,
  val_source,
  *,
  num_classes: int,
  grid: ProbeGrid,
  interpolation: str,
  epochs: int,
  steps_per_epoch: int,
  batch_size: int,
  per_epoch_schedule: bool,
  report: str,
  eval_batch_size: int = 256,
  max_train_examples: int = 0,
  max_test_examples: int = 0,
  workers: int = 0,
  log: Callable[[str], None] = lambda line: None,
) -> AugmentedProbeResult:
  """Trains the grid's heads for `epochs` × `steps_per_epoch` steps (0: one pass over the training split) of
  `batch_size` augmented images and evaluates every head on the validation split after each epoch (each split
  capped at its first max_*_examples rows, 0: all; a TFDS split decoded in `workers` grain workers)."""
  train_total = min(len(train_source), max_train_examples) if max_train_examples else len(train_source)
  val_total = min(len(val_source), max_test_examples) if max_test_examples else len(val_source)
  process_count, process_index = jax.process_count(), jax.process_index()
  devices = mesh.devices.size
  if batch_size % devices or batch_size % process_count:
    raise ValueError(
      f"The linear probe's batch {batch_size} must be divisible by the {devices} devices and the "
      f"{process_count} processes."
    )
  if steps_per_epoch <= 0:
    steps_per_epoch = max(train_total // batch_size, 1)
  total = epochs * steps_per_epoch
  probe = AugmentedProbe(
    config,
    mesh,
    grid,
    interpolation=interpolation,
    batch_size=batch_size,
    total_steps=total,
    steps_per_epoch=steps_per_epoch,
    per_epoch_schedule=per_epoch_schedule,
  )
  dim = int(backbone_params["cls_token"].shape[-1])
  heads = _init_heads(jax.random.key(int(config.seed)), grid, dim, num_classes)
  replicated = parallel.replicated(mesh)
  heads = jax.device_put(heads, replicated)
  velocity = jax.device_put(probe.momentum.init(heads), replicated)
  history = []
  rows = train_rows(
    train_total,
    batch_size=batch_size,
    steps=total,
    seed=int(config.seed),
    process_index=process_index,
    process_count=process_count,
  )
  batches = sources.read_batches(train_source, rows, workers=workers)
  eval_rows = features_lib.eval_batch_size(eval_batch_size, devices)
  with jax.set_mesh(mesh):
    for step, host in enumerate(batches):
      batch = parallel.global_batch({"image": host["image"], "label": host["label"]}, mesh)
      heads, velocity, loss = probe.train_step(
        heads, velocity, backbone_params, batch["image"], batch["label"], jnp.int32(step)
      )
      if (step + 1) % steps_per_epoch == 0:
        correct = np.zeros(len(grid.head_names()), np.int64)
        for val in sources.eval_batches(
          val_source,
          batch_size=eval_rows // process_count,
          process_index=process_index,
          process_count=process_count,
          max_examples=val_total,
          workers=workers,
        ):
          val = parallel.global_batch(val, mesh)
          correct += np.asarray(probe.val_correct(heads, backbone_params, val["image"], val["label"], val["valid"]))
        history.append(correct / val_total)
        log(
          f"linear probe epoch {len(history)}/{epochs}: loss {float(loss):.4f}, best head "
          f"{100 * history[-1].max():.1f}%"
        )
  return AugmentedProbeResult(val_acc=np.stack(history), names=grid.head_names(), report=report)
