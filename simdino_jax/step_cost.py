"""What the compiled train step costs each device: FLOPs, memory and the collectives it runs.

`compile_train_step(config, mesh)` lowers the exact training step on abstract inputs (nothing is allocated or run)
and compiles it for the mesh's devices, which may be the devices of a TPU slice described on a machine without one
(`tpu_devices("v5e:4x4")`, through libtpu). `StepCost` reads what XLA reports per device: FLOPs
(`cost_analysis`), arguments / outputs / temporaries (`memory_analysis`), and every collective of the optimized HLO
with the bytes it moves. The data-parallel test (tests/test_data_parallel.py) and the pod table of
docs/benchmarks.md (`python -m simdino_jax.tools.benchmark --compile_only --topology=...`) are built on it.
"""

import dataclasses
import re
import time

import jax
import numpy as np

from simdino_jax import parallel

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "bf16": 2,
  "f16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
}
_COLLECTIVE_LINE = re.compile(r"= (.*?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str  # one of COLLECTIVES
  shapes: tuple  # the result arrays, e.g. ("f32[64]", "bf16[384,1152]")
  bytes: int  # bytes of the result arrays (a combined all-reduce: all of them)
  in_loop: bool  # inside a while loop's body (runs once per iteration, e.g. per micro-batch)


@dataclasses.dataclass(frozen=True)
class StepCost:
  """Per device."""

  flops: float
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  collectives: tuple
  compile_seconds: float

  @property
  def total_bytes(self) -> int:
    """Arguments + outputs + temporaries − donated (aliased) buffers: the step's HBM footprint."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

  def collective_bytes(self) -> dict[str, int]:
    """Bytes of the results of each kind of collective, summed (a loop's body counted once)."""
    totals = {kind: 0 for kind in COLLECTIVES}
    for c in self.collectives:
      totals[c.kind] += c.bytes
    return totals


def collectives(hlo_text: str) -> tuple[Collective, ...]:
  """The collectives of an optimized HLO module's text, with their result shapes and bytes."""
  found = []
  in_loop = False
  for line in hlo_text.splitlines():
    if line and not line.startswith(" "):  # a computation's header: a while body's name holds "body"
      in_loop = "body" in line.split("(")[0] or "while" in line.split("(")[0]
    match = _COLLECTIVE_LINE.search(line)
    if not match:
      continue
    arrays = _ARRAY.findall(match.group(1))
    shapes = tuple(f"{dtype}[{dims}]" for dtype, dims in arrays)
    size = sum(
      _DTYPE_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d] or [1])) for dtype, dims in arrays
    )
    found.append(Collective(match.group(2), shapes, size, in_loop))
  return tuple(found)


def abstract_images(config, mesh, *, host_crops: bool = False):
  """The step's image input as ShapeDtypeStructs sharded on the batch: uint8 images [B, S, S, 3], or the host
  crops {"global": [B, 2, G, G, 3], "local": [B, L, l, l, 3]}."""
  sharding = parallel.batch_sharding(mesh)
  batch, aug = config.batch_size, config.aug
  if not host_crops:
    size = config.data.image_size
    return jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8, sharding=sharding)
  crops = {"global": jax.ShapeDtypeStruct((batch, 2, aug.global_size, aug.global_size, 3), np.uint8, sharding=sharding)}
  if aug.n_local:
    crops["local"] = jax.ShapeDtypeStruct(
      (batch, aug.n_local, aug.local_size, aug.local_size, 3), np.uint8, sharding=sharding
    )
  return crops


def compile_train_step(config, mesh, *, host_crops: bool = False, resident_examples: int = 0):
  """(setup, compiled step, compile seconds) of `config`'s train step on `mesh` (nothing runs).

  host_crops: the step that takes crops cut on the host; resident_examples > 0: the step over a split of that many
  images held on every device (config.data.on_device), fed row indices.
  """
  from simdino_jax import train  # pylint: disable=import-outside-toplevel

  setup = train.build(config, num_examples=max(config.batch_size * 1000, resident_examples), mesh=mesh, abstract=True)
  abstract_state = setup.state
  schedules = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=parallel.replicated(mesh)),
    setup.schedules,
  )
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    if resident_examples:
      size = config.data.image_size
      dataset = jax.ShapeDtypeStruct((resident_examples, size, size, 3), np.uint8, sharding=parallel.replicated(mesh))
      rows = jax.ShapeDtypeStruct((config.batch_size,), np.int32, sharding=parallel.batch_sharding(mesh))
      lowered = setup.indexed_step_fn.lower(abstract_state, dataset, rows, schedules)
    else:
      lowered = setup.step_fn.lower(abstract_state, abstract_images(config, mesh, host_crops=host_crops), schedules)
    compiled = lowered.compile()
  return setup, compiled, time.perf_counter() - start


def step_cost(compiled, compile_seconds: float = 0.0) -> StepCost:
  """The per-device cost of a compiled (SPMD) step."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  return StepCost(
    flops=float(cost.get("flops", 0.0)),
    argument_bytes=memory.argument_size_in_bytes,
    output_bytes=memory.output_size_in_bytes,
    temp_bytes=memory.temp_size_in_bytes,
    alias_bytes=memory.alias_size_in_bytes,
    collectives=collectives(compiled.as_text()),
    compile_seconds=compile_seconds,
  )
