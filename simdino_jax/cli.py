"""What the command-line entry points share: absl flag parsing that turns bad input into one line, a quiet console
(third-party logging and warnings off unless `--verbosity=0` or higher asks for it: the storage libraries' notices
on a bucket, Orbax's save timings and the reads of a damaged checkpoint it gives up; the project prints its own
messages, and every failure that matters reaches it as an exception, said in one line), and the installed console
scripts.

Every entry point is also a module: `simdino-train` runs exactly `python -m simdino_jax.main`, and so on.
"""

import os
import runpy
import sys
import warnings

# TensorFlow's C++ start-up notices (oneDNN, absl::InitializeLog) before any import of it; --verbosity does not
# reach them, the environment variable does.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top


def fail(message: str, status: int = 2) -> None:
  """Prints `error: message` as one line on stderr and exits."""
  print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
  sys.exit(status)


def flags_only(argv: list[str]) -> None:
  """For entry points that take flags only: words left after the flags are a usage error, not silently ignored."""
  from absl import app  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")


def _load_config(value: str):
  """The ConfigDict of a `--config=path[:arg]` value, loaded as ml_collections does."""
  path, _, arg = value.partition(":")
  get_config = runpy.run_path(path)["get_config"]
  return get_config(arg) if arg else get_config()


def _unknown_field(argv: list[str]) -> str | None:
  """The message for the first `--config.a.b=v` override whose path is not a field of the config, if any."""
  values = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  if not values:
    return None
  try:
    config = _load_config(values[-1])
  except Exception:  # The config itself is broken: let its own error speak.
    return None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    node, walked = config, "config"
    for key in arg[len("--") :].split("=", 1)[0].split(".")[1:]:
      fields = list(node.keys()) if hasattr(node, "keys") else []
      if key not in fields:
        return (
          f"unknown config field {walked}.{key} (from {arg.split('=', 1)[0]}); {walked} has: "
          f"{', '.join(sorted(fields)) or 'no fields'}."
        )
      node, walked = node[key], f"{walked}.{key}"
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors: a flag error, an unknown config field, a missing config file."""
  try:
    remaining = flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:  # ml_collections raises the latter for unknown fields.
    lines = str(e).strip().splitlines()  # A config file that raised: its flag, then the error's last line.
    fail(_unknown_field(argv) or (f"{lines[0]} {lines[-1]}" if "Traceback" in str(e) else str(e)))
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].partition(":")[0]
      if not os.path.isfile(path):
        fail(
          f"--config: no config file {path!r} (from {os.getcwd()}); the experiment configs are in configs/, "
          "e.g. --config=configs/digits.py."
        )
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.FATAL)
    # Python warnings of other packages too. An abandoned read of a damaged checkpoint on a bucket leaves an
    # un-awaited coroutine, which Python reports from whatever frame runs when it is collected, ours included.
    warnings.filterwarnings("ignore", module=r"(?!simdino_jax)")
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
  return remaining


def _module(name: str):
  def run() -> None:
    runpy.run_module(name, run_name="__main__", alter_sys=True)

  run.__doc__ = f"The console script of `python -m {name}`."
  return run


train = _module("simdino_jax.main")
evaluate = _module("simdino_jax.evaluate")
reproduce = _module("simdino_jax.tools.reproduce")
prepare = _module("simdino_jax.tools.prepare")
