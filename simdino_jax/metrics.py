"""Metrics: the per-log-point average, the writers (JSONL always; TensorBoard event files, written without
TensorFlow) and the console lines.

`metrics.jsonl` is strict JSON, one object per line: `{"step": s, name: value, ...}` where a non-finite value is
written as the string "NaN", "Infinity" or "-Infinity" (`read_metrics` turns them back into floats). On resume from
the checkpoint of step s, the records of later steps (written after that checkpoint, then replayed) are dropped.
Each log point's record also says where the attempt's wall time went (`goodput/...`, see `Goodput`).
"""

import contextlib
import importlib.util
import io
import json
import math
import os
import socket
import time

import jax
import numpy as np

from simdino_jax import storage

# Objective terms shown on the progress line after the total loss, when the objective logs them.
LOSS_TERMS = ("dino", "ibot", "koleo", "koleo_proto", "coding_rate", "comp", "expa")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _scalar(value) -> float:
  return float(np.asarray(value))


def encode(value: float) -> float | str:
  """A float for strict JSON: finite values as they are, NaN / ±inf as "NaN" / "Infinity" / "-Infinity"."""
  if math.isfinite(value):
    return value
  return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def read_metrics(path: str) -> list[dict]:
  """The records of a `metrics.jsonl`, with the encoded non-finite values back as floats."""
  with storage.path(path).open() as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [{k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in r.items()} for r in records]


GOODPUT_PREFIX = "goodput/"
GOODPUT_PHASES = ("setup", "restore", "compile", "data", "eval", "save")


def without_goodput(record: dict) -> dict:
  """A record without its wall-time fields (`goodput/...`): what two runs of the same trajectory share."""
  return {k: v for k, v in record.items() if not k.startswith(GOODPUT_PREFIX)}


class Goodput:
  """Where one attempt's wall time went, as pod tooling reports goodput: seconds building the trainer (`setup`),
  restoring or initializing the state (`restore`), compiling (the first step, compile included), waiting for the
  host's next batch (`data`), evaluating (`eval`) and blocked in checkpoint saves (`save`); `train` is the rest
  (steps, logging), and `fraction` = train / total. `steps_retrained`: steps trained again after restarts, over all
  attempts: the furthest step an earlier attempt logged minus the step it resumed from (a lower bound: the steps
  after an attempt's last log point are not seen)."""

  def __init__(self, steps_retrained: int = 0):
    self.started = time.perf_counter()
    self.seconds = dict.fromkeys(GOODPUT_PHASES, 0.0)
    self.steps_retrained = steps_retrained

  @contextlib.contextmanager
  def timed(self, phase: str):
    started = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[phase] += time.perf_counter() - started

  def scalars(self) -> dict:
    total = time.perf_counter() - self.started
    train = max(total - sum(self.seconds.values()), 0.0)
    return {
      **{f"{GOODPUT_PREFIX}{k}_s": v for k, v in self.seconds.items()},
      f"{GOODPUT_PREFIX}train_s": train,
      f"{GOODPUT_PREFIX}total_s": total,
      f"{GOODPUT_PREFIX}fraction": train / max(total, 1e-9),
      f"{GOODPUT_PREFIX}steps_retrained": self.steps_retrained,
    }

  def summary(self) -> str:
    """`goodput 71% of 2.3 min (train 98 s, setup 4 s, ...); steps retrained after restarts: 0`."""
    s = self.scalars()
    phases = ", ".join(f"{k} {s[f'{GOODPUT_PREFIX}{k}_s']:.0f} s" for k in ("train", *GOODPUT_PHASES))
    return (
      f"goodput {100 * s[f'{GOODPUT_PREFIX}fraction']:.0f}% of {s[f'{GOODPUT_PREFIX}total_s'] / 60:.1f} min "
      f"({phases}); steps retrained after restarts: {self.steps_retrained}"
    )


def steps_retrained(records: list[dict], resume_step: int) -> int:
  """Steps retrained by an attempt resuming at `resume_step`, given metrics.jsonl's records before it drops the later
  ones: the earlier attempts' count (on the last record it keeps) plus the steps logged beyond `resume_step`."""
  kept = [r for r in records if r["step"] <= resume_step]
  before = next(
    (r[f"{GOODPUT_PREFIX}steps_retrained"] for r in reversed(kept) if f"{GOODPUT_PREFIX}steps_retrained" in r), 0
  )
  furthest = max((r["step"] for r in records), default=resume_step)
  return int(before) + max(furthest - resume_step, 0)


class MetricsWindow:
  """Averages the step metrics between two log points.

  `add` only keeps the step's device arrays (no host sync, no extra device work in the loop); `flush` fetches them
  once per log point and aggregates.
  """

  def __init__(self):
    self._pending: list[dict] = []

  def add(self, metrics: dict) -> None:
    self._pending.append(metrics)

  def flush(self) -> dict:
    fetched = jax.device_get(self._pending)
    self._pending = []
    if not fetched:
      return {}
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


class JsonlWriter:
  """Writes `{"step": s, **scalars}` lines to `workdir/metrics.jsonl` (process 0 only).

  `resume_step`: the step the run restarts from; records of later steps are dropped (all of them when 0). Cloud
  objects (gs://) cannot be appended to: there the file is rewritten whole at each write.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = storage.path(workdir) / "metrics.jsonl"
    self._remote = storage.is_remote(self.path)
    self._file, self._lines = None, []
    self.steps_retrained = 0
    if jax.process_index() != 0:
      return
    if self.path.exists():  # An earlier attempt's log: keep what the resumed state has done, count the rest.
      lines = [line for line in self.path.read_text().splitlines(keepends=True) if line.strip()]
      records = [json.loads(line) for line in lines]
      self.steps_retrained = steps_retrained(records, resume_step)
      self._lines = [line for line, r in zip(lines, records) if 0 < r["step"] <= resume_step]
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if self._remote:
      self.path.write_text("".join(self._lines))
    else:
      self._file = self.path.open("w")
      self._file.writelines(self._lines)
      self._file.flush()

  def write_scalars(self, step: int, scalars: dict) -> None:
    if jax.process_index() != 0:
      return
    record = {"step": int(step), **{k: encode(_scalar(v)) for k, v in scalars.items()}}
    line = json.dumps(record, allow_nan=False) + "\n"
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    else:
      self._lines.append(line)
      self.path.write_text("".join(self._lines))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


class TensorBoardWriter:
  """TensorBoard scalars (process 0) without TensorFlow: `Event` records (TensorBoard's own protos) framed as
  TFRecords in `workdir/tensorboard/events.out.tfevents.*`, written through `storage` paths, so a gs:// workdir
  takes the same client as every other file (gcsfs).

  A cloud object is written whole, so records are buffered and each flush (at most every `flush_every_s` seconds,
  and at close) writes them as the next event file; TensorBoard reads a folder's event files in name order.
  """

  def __init__(self, workdir: str, flush_every_s: float = 60.0):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=import-outside-toplevel
    from tensorboard.summary.writer import record_writer  # pylint: disable=import-outside-toplevel

    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self._buffer = io.BytesIO()
    self._records = record_writer.RecordWriter(self._buffer)  # TFRecord framing, into the buffer.
    self._folder = storage.path(workdir) / "tensorboard"
    self._stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    self._flush_every_s, self._last_flush, self._files = flush_every_s, time.monotonic(), 0
    if jax.process_index() == 0:
      self._folder.mkdir(parents=True, exist_ok=True)
      self._records.write(self._event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

  def write_scalars(self, step: int, scalars: dict) -> None:
    if jax.process_index() != 0:
      return
    values = [self._summary.Value(tag=name, simple_value=_scalar(value)) for name, value in scalars.items()]
    self._records.write(
      self._event(wall_time=time.time(), step=int(step), summary=self._summary(value=values)).SerializeToString()
    )
    if time.monotonic() - self._last_flush >= self._flush_every_s:
      self.flush()

  def flush(self) -> None:
    if self._buffer.tell():
      (self._folder / f"{self._stem}.{self._files:06d}").write_bytes(self._buffer.getvalue())
      self._buffer.seek(0)
      self._buffer.truncate()
      self._files += 1
    self._last_flush = time.monotonic()

  def close(self) -> None:
    self.flush()


class MultiWriter:
  """Writes to every backend: JSONL always, TensorBoard when asked (and the tensorboard package is installed)."""

  def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int = 0):
    self.jsonl = JsonlWriter(workdir, resume_step)
    self.writers = [self.jsonl]
    if tensorboard and importlib.util.find_spec("tensorboard"):
      self.writers.append(TensorBoardWriter(workdir))

  def write_scalars(self, step: int, scalars: dict) -> None:
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


def _duration(seconds: float) -> str:
  seconds = max(int(round(seconds)), 0)
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
  """The console line of a log point: step, main losses, images/s and ETA.

  Throughput is measured between log points; `restart()` excludes what happened since the last one (compilation,
  an evaluation) from the next window.
  """

  def __init__(self, total_steps: int, batch_size: int, start_step: int = 0):
    self.total_steps, self.batch_size = total_steps, batch_size
    self._last_time, self._last_step = time.perf_counter(), start_step
    self.images_per_second = math.nan

  def restart(self, step: int) -> None:
    self._last_time, self._last_step = time.perf_counter(), step

  def line(self, step: int, scalars: dict) -> str:
    now = time.perf_counter()
    if step > self._last_step:
      self.images_per_second = self.batch_size * (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    terms = "  ".join(f"{k} {_scalar(scalars[k]):.4f}" for k in LOSS_TERMS if k in scalars)
    line = f"step {step}/{self.total_steps}  loss {_scalar(scalars.get('loss', math.nan)):.4f}"
    line += f"  ({terms})" if terms else ""
    if math.isfinite(self.images_per_second):  # Not yet measured right after compilation.
      eta = self.batch_size * (self.total_steps - step) / self.images_per_second
      line += f"  {self.images_per_second:.1f} img/s  ETA {_duration(eta)}"
    return line
