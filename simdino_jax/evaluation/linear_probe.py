"""Linear probe on frozen, precomputed features (DINO `eval_linear.py`, DINOv2 `eval/linear.py`)."""

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simdino_jax.numerics import HIGHEST


def probe_features(backbone_out: dict, *, n_last_blocks: int, avgpool: bool) -> jax.Array:
  """Probe input: concat(CLS of the last n blocks, oldest first[, mean patch token of the last block]).

  DINO uses n_last_blocks=4, avgpool=False for ViT-S and n_last_blocks=1, avgpool=True for ViT-B. DINO interleaves
  the CLS and pooled features; plain concatenation (DINOv2) is a fixed permutation of the same inputs, which a linear
  classifier with i.i.d. initialization treats identically.

  Args:
    backbone_out: {"cls": [B, D], "patch": [B, N, D], "last_cls": [n, B, D]} from `model.backbone(..., n_last=n)`.
    n_last_blocks: how many of the last blocks' CLS tokens to use (at most n).
    avgpool: append the mean over the N patch tokens.

  Returns:
    float32 [B, (n_last_blocks + avgpool) · D].
  """
  last_cls = backbone_out["last_cls"]
  if not 1 <= n_last_blocks <= last_cls.shape[0]:
    raise ValueError(f"n_last_blocks={n_last_blocks} needs 1..{last_cls.shape[0]} CLS outputs in 'last_cls'.")
  parts = [last_cls[i] for i in range(last_cls.shape[0] - n_last_blocks, last_cls.shape[0])]
  if avgpool:
    parts.append(jnp.mean(backbone_out["patch"], axis=1))
  return jnp.concatenate(parts, axis=-1).astype(jnp.float32)


def linear_probe_optimizer(
  learning_rate: float | jax.Array, total_steps: int, momentum: float = 0.9
) -> optax.GradientTransformation:
  """SGD with momentum, no weight decay, lr_t = lr · ½(1 + cos(π t / total_steps)) (cosine to 0)."""
  return optax.sgd(optax.cosine_decay_schedule(learning_rate, total_steps), momentum=momentum)


@dataclasses.dataclass(frozen=True)
class LinearProbeResult:
  """Validation accuracies (fractions) of a grid of linear heads trained on the same mini-batches.

  `val_acc[e, l]` is head l's accuracy after epoch e (0-based). The best is the first maximum over (epoch, lr);
  `final_val_acc` is the best head after the last epoch. `best_params` are the weights of the best (epoch, lr)
  head ({"kernel": [F, C], "bias": [C]}); `final_params` are all heads after the last epoch ([L, F, C], [L, C]).
  """

  val_acc: np.ndarray
  learning_rates: np.ndarray
  best_val_acc: float
  best_epoch: int
  best_lr: float
  final_val_acc: float
  best_params: dict
  final_params: dict

  def metrics(self) -> dict[str, float]:
    """The scalars to log."""
    return {
      "linear_top1_best": self.best_val_acc,
      "linear_top1_final": self.final_val_acc,
      "linear_best_lr": self.best_lr,
      "linear_best_epoch": float(self.best_epoch),
    }


def _cross_entropy(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of the linear head x W + b."""
  logits = jnp.matmul(x, params["kernel"], precision=HIGHEST) + params["bias"]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


@functools.partial(jax.jit, static_argnames=("batch_size", "total_steps", "momentum"))
def _train_epoch(params, opt_state, learning_rates, features, labels, key, *, batch_size, total_steps, momentum):
  """One epoch of SGD over a seeded permutation (the incomplete last batch is dropped), for all heads at once."""
  steps = features.shape[0] // batch_size
  order = jax.random.permutation(key, features.shape[0])[: steps * batch_size].reshape(steps, batch_size)

  def head_step(head_params, head_state, lr, x, y):
    loss, grads = jax.value_and_grad(_cross_entropy)(head_params, x, y)
    updates, head_state = linear_probe_optimizer(lr, total_steps, momentum).update(grads, head_state, head_params)
    return optax.apply_updates(head_params, updates), head_state, loss

  def step(carry, index):
    new_params, new_state, loss = jax.vmap(head_step, in_axes=(0, 0, 0, None, None))(
      *carry, learning_rates, features[index], labels[index]
    )
    return (new_params, new_state), loss

  (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
  return params, opt_state, jnp.mean(losses, axis=0)


@jax.jit
def _val_correct(params, features, labels, valid):
  """Correct predictions per head over chunked, padded validation data [chunks, c, F]."""

  def chunk_correct(args):
    x, y, mask = args
    logits = jnp.einsum("bf,lfc->lbc", x, params["kernel"], precision=HIGHEST) + params["bias"][:, None]
    return jnp.sum((jnp.argmax(logits, axis=-1) == y) & mask, axis=1)

  return jnp.sum(jax.lax.map(chunk_correct, (features, labels, valid)), axis=0)


def _keep_improved(improved: jax.Array, best: jax.Array, new: jax.Array) -> jax.Array:
  """`new` for the heads (leading axis) whose validation accuracy improved, `best` for the others."""
  return jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, best)


def _chunked(x: np.ndarray, chunk: int) -> np.ndarray:
  """[n, ...] -> [ceil(n / chunk), chunk, ...], zero-padded."""
  rows = -(-x.shape[0] // chunk) * chunk
  x = np.concatenate([x, np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)])
  return x.reshape((-1, chunk) + x.shape[1:])


def train_linear_probe(
  train_features: np.ndarray,
  train_labels: np.ndarray,
  val_features: np.ndarray,
  val_labels: np.ndarray,
  *,
  num_classes: int,
  epochs: int = 100,
  batch_size: int = 1024,
  learning_rates: Sequence[float] = (1e-3,),
  momentum: float = 0.9,
  seed: int = 0,
  eval_chunk: int = 4096,
) -> LinearProbeResult:
  """Trains linear heads y = x W + b on frozen features and tracks the validation accuracy every epoch.

  W ~ N(0, 0.01²), b = 0 (the same initialization for every head); loss = mean softmax cross-entropy; SGD momentum
  0.9, no weight decay; lr_t = lr · (B / 256) · ½(1 + cos(π t / T)) over T = epochs · ⌊n / B⌋ steps; mini-batches
  from a permutation seeded by (seed, epoch), the incomplete last batch dropped. All lrs of the grid are trained at
  once (vmap) on the same batches, as DINOv2 does; DINO's protocol is the single lr 1e-3.

  Args:
    train_features, val_features: [n, F] host arrays (e.g. `evaluation.features.split_features`).
    train_labels, val_labels: [n] int labels in [0, num_classes).
    num_classes: C.
    epochs: training epochs.
    batch_size: B (clamped to the number of train samples).
    learning_rates: base lrs, each scaled by B / 256 (DINOv2 trains a grid of 13, 1e-5 to 0.1).
    momentum: SGD momentum.
    seed: initialization and shuffling seed.
    eval_chunk: validation rows per chunk.

  Returns:
    LinearProbeResult.
  """
  n, dim = train_features.shape
  batch_size = min(batch_size, n)
  total_steps = epochs * (n // batch_size)
  lrs = np.asarray(learning_rates, np.float32) * batch_size / 256
  key_init, key_shuffle = jax.random.split(jax.random.key(seed))
  kernel = 0.01 * jax.random.normal(key_init, (dim, num_classes), jnp.float32)
  params = {"kernel": jnp.tile(kernel[None], (len(lrs), 1, 1)), "bias": jnp.zeros((len(lrs), num_classes))}
  opt_state = jax.vmap(lambda p, lr: linear_probe_optimizer(lr, total_steps, momentum).init(p))(params, lrs)

  features, labels = jnp.asarray(train_features, jnp.float32), jnp.asarray(train_labels, jnp.int32)
  eval_chunk = min(eval_chunk, val_features.shape[0])
  val_x = jnp.asarray(_chunked(np.asarray(val_features, np.float32), eval_chunk))
  val_y = jnp.asarray(_chunked(np.asarray(val_labels, np.int32), eval_chunk))
  val_valid = jnp.asarray(_chunked(np.ones(val_features.shape[0], bool), eval_chunk))

  history = np.zeros((epochs, len(lrs)))
  best_params = jax.tree.map(jnp.copy, params)
  for epoch in range(epochs):
    params, opt_state, _ = _train_epoch(
      params,
      opt_state,
      jnp.asarray(lrs),
      features,
      labels,
      jax.random.fold_in(key_shuffle, epoch),
      batch_size=batch_size,
      total_steps=total_steps,
      momentum=momentum,
    )
    history[epoch] = np.asarray(_val_correct(params, val_x, val_y, val_valid)) / val_features.shape[0]
    improved = history[epoch] > (history[:epoch].max(axis=0) if epoch else -1.0)
    if improved.any():
      best_params = jax.tree.map(functools.partial(_keep_improved, jnp.asarray(improved)), best_params, params)

  best_epoch, best_head = np.unravel_index(np.argmax(history), history.shape)
  return LinearProbeResult(
    val_acc=history,
    learning_rates=lrs,
    best_val_acc=float(history[best_epoch, best_head]),
    best_epoch=int(best_epoch),
    best_lr=float(lrs[best_head]),
    final_val_acc=float(history[-1].max()),
    best_params=jax.tree.map(lambda p: np.asarray(p[best_head]), best_params),
    final_params=jax.tree.map(np.asarray, params),
  )
