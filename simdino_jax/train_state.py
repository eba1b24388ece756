"""The train state: student, EMA teacher, optimizer and objective state, built shape-first and sharded."""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from simdino_jax import parallel

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. Parameters are plain nested dicts (`nnx.to_pure_dict`)."""

  step: jax.Array
  student: PyTree
  teacher: PyTree
  opt_state: PyTree
  objective_state: PyTree
  rng: jax.Array
  skipped: jax.Array  # Steps skipped so far because of a non-finite loss or gradient.
  consecutive_skipped: jax.Array


def ema(teacher: PyTree, student: PyTree, momentum) -> PyTree:
  """`θ_t ← m·θ_t + (1 − m)·θ_s` on every parameter (weight-norm direction and gain separately)."""
  return jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * s, teacher, student)


def all_finite(tree: PyTree) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite (a scalar bool array; no host sync)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def create(
  model_fn: Callable[[nnx.Rngs], nnx.Module],
  tx,
  objective,
  seed: int,
  mesh,
  *,
  fsdp: bool,
  fsdp_min_size: int = 2**18,
  abstract: bool = False,
) -> tuple[TrainState, Any, PyTree]:
  """Builds the state directly with its shardings: `eval_shape`, then a jitted init with `out_shardings`.

  The objective state is sized by the model's head (`model.head.out_dim`). Returns (state, graphdef,
  state_shardings). The teacher starts as an exact copy of the student. `abstract`: the state as sharded
  ShapeDtypeStructs, nothing allocated (to compile for devices this process does not have, e.g. a TPU slice).
  """

  graphdefs = []  # The model's structure, caught while eval_shape traces init (it holds no arrays).

  def init(rng):
    model_rng, state_rng = jax.random.split(rng)
    model = model_fn(nnx.Rngs(params=model_rng))
    graphdefs.append(nnx.graphdef(model))
    params = nnx.to_pure_dict(nnx.state(model))
    return TrainState(
      step=jnp.zeros([], jnp.int32),
      student=params,
      teacher=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params),
      objective_state=objective.init_state(
        model.head.out_dim, None if model.ibot_head is None else model.ibot_head.out_dim
      ),
      rng=state_rng,
      skipped=jnp.zeros([], jnp.int32),
      consecutive_skipped=jnp.zeros([], jnp.int32),
    )

  rng = jax.ShapeDtypeStruct((2,), jnp.uint32) if abstract else jax.random.PRNGKey(seed)  # raw key: a plain array
  shapes = jax.eval_shape(init, rng)
  shardings = parallel.state_shardings(shapes, mesh, fsdp=fsdp, fsdp_min_size=fsdp_min_size)
  if abstract:
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
  else:
    state = jax.jit(init, out_shardings=shardings)(rng)
  return state, graphdefs[0], shardings
