"""Paths of everything a run reads or writes, through `etils.epath`: local folders and `gs://` alike.

`path("gs://bucket/run")` keeps its scheme (epath reads and writes it through its cloud backend); a local path
becomes absolute (Orbax wants absolute paths). Shared files are written by process 0 only (`write_shared`).
"""

import os

import jax
from etils import epath


def is_remote(location: str | os.PathLike) -> bool:
  """Whether `location` names a cloud path (`scheme://...`)."""
  return "://" in os.fspath(location)


def path(location: str | os.PathLike) -> epath.Path:
  """An `epath.Path` of `location`: remote paths (`scheme://...`) unchanged, local ones made absolute."""
  p = epath.Path(location)
  return p if is_remote(location) else p.expanduser().resolve()


def write_shared(location: str | os.PathLike, content: str | bytes) -> None:
  """Writes a shared file (text or bytes) from process 0 only; every process holds the same content."""
  if jax.process_index() == 0:
    target = path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
      target.write_bytes(content)
    else:
      target.write_text(content)
