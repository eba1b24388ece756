"""Metric writers: JSONL always, TensorBoard through clu when TensorFlow is importable, and a progress line.

clu 0.0.12 imports TensorFlow in `clu.metric_writers`, so it is imported only when TensorFlow is present; the
aggregation over steps uses `clu.metrics` (TensorFlow-free) in the train loop.
"""

import importlib.util
import json
import os
import time

import jax
import numpy as np

from simdino_jax import storage


def _scalar(value) -> float:
  return float(np.asarray(value))


class JsonlWriter:
  """Appends `{"step": s, **scalars}` lines to `workdir/metrics.jsonl` (process 0 only).

  Cloud objects (gs://) cannot be appended to: there the file is rewritten whole at each write.
  """

  def __init__(self, workdir: str):
    self.path = storage.path(workdir) / "metrics.jsonl"
    self._remote = storage.is_remote(self.path)
    self._file, self._lines = None, []
    if jax.process_index() == 0:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if not self._remote:
        self._file = self.path.open("a")
      elif self.path.exists():
        self._lines = self.path.read_text().splitlines(keepends=True)

  def write_scalars(self, step: int, scalars: dict) -> None:
    line = json.dumps({"step": int(step), **{k: _scalar(v) for k, v in scalars.items()}}) + "\n"
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    elif self._remote and jax.process_index() == 0:
      self._lines.append(line)
      self.path.write_text("".join(self._lines))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


class TensorBoardWriter:
  """clu's TensorBoard summary writer; used only when TensorFlow can be imported."""

  def __init__(self, workdir: str):
    from clu import metric_writers  # Imports TensorFlow.
    self._writer = metric_writers.create_default_writer(
        os.fspath(storage.path(workdir) / "tensorboard"), just_logging=jax.process_index() > 0)

  def write_scalars(self, step: int, scalars: dict) -> None:
    self._writer.write_scalars(int(step), {k: _scalar(v) for k, v in scalars.items()})

  def close(self) -> None:
    self._writer.flush()
    self._writer.close()


class MultiWriter:
  """Writes to every backend: JSONL always, TensorBoard when asked and TensorFlow + TensorBoard are installed."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.writers = [JsonlWriter(workdir)]
    if tensorboard and all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorboard")):
      self.writers.append(TensorBoardWriter(workdir))

  def write_scalars(self, step: int, scalars: dict) -> None:
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


class Progress:
  """A one-line progress report: step, images/s, ETA and the loss."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int = 0):
    self.total_steps, self.batch_size = total_steps, batch_size
    self._last_time, self._last_step = time.perf_counter(), start_step

  def line(self, step: int, scalars: dict) -> str:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    seconds_per_step = (now - self._last_time) / steps
    self._last_time, self._last_step = now, step
    eta = seconds_per_step * (self.total_steps - step)
    loss = scalars.get("loss", float("nan"))
    return (f"step {step}/{self.total_steps}  loss {_scalar(loss):.4f}  "
            f"{self.batch_size / seconds_per_step:.1f} img/s  ETA {eta / 60:.1f} min")
