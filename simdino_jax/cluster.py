"""Multi-process start-up shared by the entry points: `--distributed=auto|on|off` and explicit coordinator flags.

auto (the default) initializes `jax.distributed` where JAX's own cluster detection finds a cluster of several
processes (a Cloud TPU VM pod slice through its metadata server, GKE TPU, SLURM with several tasks, Open MPI);
on (required) initializes it through the same detection and fails when none is found; off never does. Explicit
`--coordinator_address/--num_processes/--process_id` always win. It must run before JAX touches a device.
"""

from absl import flags

MODES = ("auto", "on", "off")
# A process that sends no heartbeat for this long is dead to the others, which then stop (JAX's default: 100 s). On
# CPU (gloo) a collective fails at once when a peer dies; on TPU and GPU the survivors learn it from this timeout.
HEARTBEAT_TIMEOUT_S = 30


def define_flags() -> dict:
  """Defines the flags on absl's global registry; returns their holders for `initialize_from_flags`."""
  return {
      "mode": flags.DEFINE_enum("distributed", "auto", MODES,
                                "auto: start jax.distributed when JAX detects a cluster of several processes (TPU "
                                "pod slice, SLURM with several tasks); on: require it; off: one process."),
      "coordinator_address": flags.DEFINE_string("coordinator_address", None,
                                                 "host:port of process 0 (explicit multi-host)."),
      "num_processes": flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-host)."),
      "process_id": flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-host)."),
  }


def initialize_from_flags(holders: dict) -> bool:
  """`initialize` with the values of the flags made by `define_flags`."""
  return initialize(holders["mode"].value, coordinator_address=holders["coordinator_address"].value,
                    num_processes=holders["num_processes"].value, process_id=holders["process_id"].value)


def detected_process_count() -> int:
  """Processes of the cluster JAX's own detection finds (the one `jax.distributed.initialize()` uses); 0: none."""
  from jax._src import clusters  # pylint: disable=import-outside-toplevel

  env = next((e for e in clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
              if not e.opt_in_only_method and e.is_env_present()), None)
  return 0 if env is None else int(env.get_process_count())


def initialize(mode: str = "auto", *, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Initializes `jax.distributed` as `mode` says; returns whether it did."""
  import jax  # pylint: disable=import-outside-toplevel

  if mode not in MODES:
    raise ValueError(f"Unknown --distributed={mode!r}; valid: {', '.join(MODES)}.")
  # CPU processes exchange collectives through gloo (GPU and TPU use their own); harmless elsewhere.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    if mode == "off":
      raise ValueError("--distributed=off contradicts --coordinator_address; drop one of them.")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
    return True
  if mode == "off":
    return False
  processes = detected_process_count()
  if mode == "on" and not processes:
    raise RuntimeError("--distributed=on: JAX detected no cluster (TPU pod slice, SLURM, Open MPI). Start one "
                       "process per host under such a launcher, or pass --coordinator_address=host:port "
                       "--num_processes=N --process_id=i.")
  if processes > 1 or (mode == "on" and processes):
    jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
    return True
  return False
