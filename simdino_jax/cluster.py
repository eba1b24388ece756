"""Multi-process start-up shared by the entry points: `--distributed=auto|on|off` and explicit coordinator flags.

auto (the default) initializes `jax.distributed` where JAX's own cluster detection finds a cluster of several
processes (a Cloud TPU VM pod slice through its metadata server, GKE TPU, SLURM with several tasks, Open MPI);
on (required) initializes it through the same detection and fails when none is found; off never does. Explicit
`--coordinator_address/--num_processes/--process_id` always win. It must run before JAX touches a device.

Under jax.distributed a watch thread notices a dead peer within PEER_TIMEOUT_S and stops this process with one line
(`PeerWatch`): JAX's own heartbeat timeout would abort it later with a C++ stack dump. The coordinator's death is
different: JAX's client aborts the process the moment its connection to the coordinator breaks; a SIGABRT handler
(`_stop_on_runtime_abort`) then says the same line before the process exits.
"""

import atexit
import ctypes
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable

from absl import flags

MODES = ("auto", "on", "off")
# A process that sends no heartbeat for this long is dead to JAX, which then aborts the others (JAX's default: 100 s):
# the backstop of PeerWatch, which stops them first, with one line.
HEARTBEAT_TIMEOUT_S = 30
# A peer whose PeerWatch counter has not moved for this long is lost (its thread bumps it every PEER_BEAT_S).
PEER_TIMEOUT_S = 10
PEER_BEAT_S = 1.0
_KEY = "simdino_jax/peer_watch/"
_EXITED = "exited"
_COORDINATOR_LOST = "the coordinator: it stopped answering; killed, crashed or its host is down"


def define_flags() -> dict:
  """Defines the flags on absl's global registry; returns their holders for `initialize_from_flags`."""
  return {
    "mode": flags.DEFINE_enum(
      "distributed",
      "auto",
      MODES,
      "auto: start jax.distributed when JAX detects a cluster of several processes (TPU "
      "pod slice, SLURM with several tasks); on: require it; off: one process.",
    ),
    "coordinator_address": flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0 (explicit multi-host)."
    ),
    "num_processes": flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-host)."),
    "process_id": flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-host)."),
  }


def initialize_from_flags(holders: dict) -> bool:
  """`initialize` with the values of the flags made by `define_flags`."""
  return initialize(
    holders["mode"].value,
    coordinator_address=holders["coordinator_address"].value,
    num_processes=holders["num_processes"].value,
    process_id=holders["process_id"].value,
  )


def detected_process_count() -> int:
  """Processes of the cluster JAX's own detection finds (the one `jax.distributed.initialize()` uses); 0: none."""
  from jax._src import clusters  # pylint: disable=import-outside-toplevel

  env = next(
    (
      e
      for e in clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
      if not e.opt_in_only_method and e.is_env_present()
    ),
    None,
  )
  return 0 if env is None else int(env.get_process_count())


def initialize(
  mode: str = "auto",
  *,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Initializes `jax.distributed` as `mode` says; returns whether it did."""
  import jax  # pylint: disable=import-outside-toplevel

  if mode not in MODES:
    raise ValueError(f"Unknown --distributed={mode!r}; valid: {', '.join(MODES)}.")
  # CPU processes exchange collectives through gloo (GPU and TPU use their own); harmless elsewhere.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    if mode == "off":
      raise ValueError("--distributed=off contradicts --coordinator_address; drop one of them.")
    jax.distributed.initialize(
      coordinator_address, num_processes, process_id, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S
    )
    _start_peer_watch()
    return True
  if mode == "off":
    return False
  processes = detected_process_count()
  if mode == "on" and not processes:
    raise RuntimeError(
      "--distributed=on: JAX detected no cluster (TPU pod slice, SLURM, Open MPI). Start one "
      "process per host under such a launcher, or pass --coordinator_address=host:port "
      "--num_processes=N --process_id=i."
    )
  if processes > 1 or (mode == "on" and processes):
    jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
    _start_peer_watch()
    return True
  return False


class PeerWatch(threading.Thread):
  """Notices a dead peer (SIGKILL, OOM kill, crash, host down) and stops this process with one line.

  Every PEER_BEAT_S this daemon thread bumps its process's counter in the coordinator's key-value store and reads
  the others'. A peer whose counter stays still for PEER_TIMEOUT_S (or a coordinator that stops answering) is lost:
  the thread prints one line naming it and `describe()` (the training loop sets it to the last finished checkpoint),
  then exits the process with status 1 at once: no save is started or finished after a peer's death, and JAX's
  heartbeat abort (HEARTBEAT_TIMEOUT_S, a C++ stack dump) never comes. A process leaving through Python's exit
  (a finished run, an exception) marks its counter `exited` and is not reported.
  """

  def __init__(self, client, process_id: int, num_processes: int):
    super().__init__(name="simdino_jax.PeerWatch", daemon=True)
    self.client, self.process_id, self.num_processes = client, process_id, num_processes
    self.describe: Callable[[], str] = lambda: "Nothing is saved after the loss"
    self.lost = threading.Event()
    self._stopped = threading.Event()
    self._stopping = threading.Lock()  # Taken once, never released: the first to stop the process says why.

  def run(self) -> None:
    seen = {}  # peer -> (counter, time.monotonic() when it last moved)
    beat = 0
    while not self._stopped.is_set():
      beat += 1
      try:
        self.client.key_value_set(f"{_KEY}{self.process_id}", str(beat), allow_overwrite=True)
        counters = dict(self.client.key_value_dir_get(_KEY))
      except Exception:  # pylint: disable=broad-except  # The coordinator's RPC errors have several types.
        if not self._stopped.is_set():
          self._stop_process(0, _COORDINATOR_LOST)
        return
      now = time.monotonic()
      for peer in range(self.num_processes):
        counter = counters.get(f"{_KEY}{peer}")
        if peer == self.process_id or counter is None or counter == _EXITED:
          continue
        if seen.get(peer, (None,))[0] != counter:
          seen[peer] = (counter, now)
        elif now - seen[peer][1] > PEER_TIMEOUT_S:
          self._stop_process(peer, f"no heartbeat for {PEER_TIMEOUT_S} s: killed, crashed or its host is down")
      self._stopped.wait(PEER_BEAT_S)

  def _stop_process(self, peer: int, why: str) -> None:
    self._stopping.acquire()  # A second caller (the abort handler and this thread at once) waits for the exit.
    self.lost.set()
    sys.stdout.flush()
    print(
      f"error: lost process {peer} of {self.num_processes} ({why}); process {self.process_id} stops too. "
      f"{self.describe()}. Restart every process to resume (MAX_RESTARTS of launch/local.sh and "
      "launch/tpu_pod.sh does it; docs/operations.md, \"Dead workers and restarts\").",
      file=sys.stderr,
      flush=True,
    )
    os._exit(1)  # pylint: disable=protected-access  # Now: no cleanup that would wait on the lost peer.

  def mark_exited(self) -> None:
    """Stops the thread and tells the peers this process leaves on purpose (before jax.distributed shuts down)."""
    self._stopped.set()
    try:
      self.client.key_value_set(f"{_KEY}{self.process_id}", _EXITED, allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  # The coordinator is gone already: nothing to tell.
      pass


_watch: PeerWatch | None = None


def _start_peer_watch() -> None:
  global _watch
  import jax  # pylint: disable=import-outside-toplevel
  from jax._src import distributed  # pylint: disable=import-outside-toplevel

  _watch = PeerWatch(distributed.global_state.client, jax.process_index(), jax.process_count())
  atexit.register(_watch.mark_exited)  # Registered after JAX's shutdown hook, so it runs before it.
  _watch.start()
  if jax.process_index() != 0:
    _stop_on_runtime_abort(_watch, distributed.global_state.coordinator_address)


_ABORT_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int)
_abort_handler = None  # Referenced here for the life of the process: libc holds only its address.


def _stop_on_runtime_abort(watch: PeerWatch, coordinator_address: str) -> None:
  """When process 0 dies, JAX's client in every other process calls abort() from a C++ thread within a second
  (its error poll to the coordinator fails; no Python hook exists: a Python `missed_heartbeat_callback` cannot take
  the C++ status and aborts too). Python's own signal handlers run too late, after abort() has ended the process, so
  this installs a C-level SIGABRT handler through libc: when the coordinator's port no longer accepts a connection,
  it says PeerWatch's one line (process 0, the last finished checkpoint) and exits with status 1. Any other abort
  goes on as before."""
  global _abort_handler
  host, port = coordinator_address.rsplit(":", 1)

  def on_abort(signum: int) -> None:
    del signum
    try:
      socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
      watch._stop_process(0, _COORDINATOR_LOST)  # pylint: disable=protected-access
    # The coordinator answers: not its death. Returning lets abort() go on (default action: exit status 134).

  libc = ctypes.CDLL(None)
  libc.signal.restype, libc.signal.argtypes = ctypes.c_void_p, [ctypes.c_int, _ABORT_HANDLER]
  _abort_handler = _ABORT_HANDLER(on_abort)
  libc.signal(signal.SIGABRT, _abort_handler)


def describe_progress(describe: Callable[[], str]) -> None:
  """Under jax.distributed: `describe()` (a sentence) is said when a lost peer stops this process."""
  if _watch is not None:
    _watch.describe = describe


def stop_if_a_peer_is_lost() -> None:
  """Under jax.distributed, after an error from JAX (a failed collective or barrier): gives PeerWatch the time to
  find a lost peer, in which case this process stops there with its one line; returns otherwise."""
  if _watch is not None and _watch.lost.wait(PEER_TIMEOUT_S + 3 * PEER_BEAT_S):
    _watch.join()  # It is printing its line and exiting the process.
