"""Test setup, before JAX initializes.

- Eight CPU devices are simulated, but a test uses one unless it is about sharding: `parallel.create_mesh()`
  (what training and evaluation build by default) spans the first device only. A test of sharded behaviour is marked
  `@pytest.mark.sharded` and gets the 8-device mesh; tests that build their own mesh over `jax.devices()` are about
  sharding by construction. Subprocesses started by tests get
  one device (`train_utils.subprocess_env()`) unless they ask for more.
- One persistent compilation cache for the whole session, shared with the subprocesses the tests start: a train step
  compiled once (in-process or by a CLI run) is not compiled again.
- Compiles are made fast, since tests check values, not speed: XLA's optimizations are off, and the CPU backend
  uses its older emitters without LLVM's optimization passes (a train step compiles about 2x faster).
- Property tests draw the same examples on every run (a suite that passes once passes again);
  `HYPOTHESIS_PROFILE=explore` draws new ones each run, to search for failing inputs.
"""

import os
import tempfile

FAST_COMPILE_XLA_FLAGS = (
  "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
# Set once: pytest-xdist's workers inherit the controller's environment (and so share its compilation cache).
_flags = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(
  _flags + [f for f in FAST_COMPILE_XLA_FLAGS.split() + ["--xla_force_host_platform_device_count=8"] if f not in _flags]
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="simdino_jax_test_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")

import hypothesis
import jax  # after the environment: the flags are read when the backend starts
import pytest

from simdino_jax import parallel

jax.config.update("jax_disable_most_optimizations", True)

hypothesis.settings.register_profile("repeatable", derandomize=True, database=None)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

_create_mesh = parallel.create_mesh


# The longest files first: pytest-xdist hands whole files to its 2 workers in collection order, so no long file starts
# last and runs alone while the other worker waits.
LONGEST_FIRST = (
  "test_distributed.py",
  "test_convert.py",
  "test_data_parallel.py",
  "test_train.py",
  "test_storage.py",
  "test_preemption.py",
  "test_models.py",
  "test_gpu_check.py",
  "test_sweep.py",
  "test_eval_protocols.py",
  "test_masked_patch_head.py",
  "test_reproduce.py",
  "test_imagenet_prepare.py",
  "test_benchmark.py",
  "test_data_augment.py",
  "test_evaluate.py",
  "test_guards.py",
  "test_operations.py",
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: the rest keep their order.


def pytest_configure(config):
  config.addinivalue_line("markers", "sharded: the test is about sharding; its default mesh spans all 8 devices")


def _one_device_mesh(devices=None):
  return _create_mesh(jax.devices()[:1] if devices is None else devices)


@pytest.fixture(scope="session", autouse=True)
def one_device_by_default():
  """`parallel.create_mesh()` spans one device for every test and fixture (session-wide, so module fixtures too)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(parallel, "create_mesh", _one_device_mesh)
    yield


@pytest.fixture(autouse=True)
def all_devices_when_sharded(request, monkeypatch):
  """Tests marked `sharded` get the mesh over all 8 simulated devices."""
  if request.node.get_closest_marker("sharded") is not None:
    monkeypatch.setattr(parallel, "create_mesh", _create_mesh)
