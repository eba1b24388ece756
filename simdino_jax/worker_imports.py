"""grain's data worker processes without JAX.

The workers decode and crop with numpy and the image libraries only (`data.host_crops`), but grain imports JAX and
Orbax in every process that imports it (`jax.profiler`, `jax.tree_util`, `orbax.checkpoint`), which costs each
worker about 150 MiB and a second of start-up. Each of those imports of grain's is optional: without them grain uses
no-op profiler annotations, pure-Python tree functions and no Orbax handler. In a spawned child process (grain
spawns its workers) they are refused. The parent's main module, one of this package's entry points, is imported
first in the child, while multiprocessing marks it `_inheriting` (the flag its own
`spawn._check_not_importing_main` reads). See docs/data.md.
"""

import logging
import sys

_REFUSED = ("jax", "jaxlib", "orbax")


def _importer() -> str:
  """The name of the module whose `import` statement is running (the first frame outside importlib)."""
  frame = sys._getframe(2)  # pylint: disable=protected-access
  while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
    frame = frame.f_back
  return "" if frame is None else frame.f_globals.get("__name__", "")


class GrainWithoutJax:
  """An import finder: grain's modules do not find JAX or Orbax; every other module does."""

  def find_spec(self, name, path=None, target=None):  # pylint: disable=unused-argument
    if name.split(".")[0] in _REFUSED and _importer().startswith("grain."):
      raise ModuleNotFoundError(
        f"No module named {name!r} for grain in a data worker process (simdino_jax/worker_imports.py)"
      )
    return None


class _DropGrainsProfilerWarning(logging.Filter):
  """grain logs the refused `jax.profiler` import as a warning in each worker."""

  def filter(self, record):
    return not str(record.msg).startswith("Failed to load jax profiler")


def in_spawned_child() -> bool:
  """Whether this process is a multiprocessing child still unpickling what its parent sent."""
  process = sys.modules.get("multiprocessing.process")
  return process is not None and getattr(process.current_process(), "_inheriting", False)


def keep_jax_out_of_data_workers() -> None:
  if in_spawned_child() and not any(isinstance(f, GrainWithoutJax) for f in sys.meta_path):
    sys.meta_path.insert(0, GrainWithoutJax())
    logging.getLogger("absl").addFilter(_DropGrainsProfilerWarning())
