"""Tiny configs and helpers shared by the training-system tests."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from simdino_jax.configs import digits


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(method: str = "simdino", **overrides):
  """The embedded-digits config shrunk to a 1-block, 32-wide ViT (vit_nano) and a few steps."""
  c = digits.get_config(f"method={method}")
  c.model.name = "vit_nano"
  c.model.patch_size = 4
  # Each method compiles one train step for the whole suite (the compilation cache serves every other test): DINO's
  # without drop path (the accumulation test needs it off), SimDINO's with it (a real step through stochastic depth).
  c.model.drop_path_rate = 0.0 if method == "dino" else 0.1
  c.model.dtype = "float32"
  c.model.head.hidden_dim, c.model.head.bottleneck_dim, c.model.head.out_dim = 32, 16, 64
  c.aug.n_local = 2
  c.batch_size = 16
  c.total_steps = 4
  c.optim.warmup_epochs, c.optim.freeze_last_layer_epochs = 0.0, 0.0
  c.eval_every_epochs = 0.0
  c.log_every_steps = 2
  c.checkpoint_every_steps = 0
  c.tensorboard = False
  c.async_checkpointing = False
  return set_fields(c, overrides)


def set_fields(config, fields: dict):
  """`config` with each dotted field of `fields` ("objective.name": "dino") set; returns it."""
  for key, value in fields.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def start_emulator(buckets=("bucket",)) -> tuple[subprocess.Popen, dict]:
  """The GCS emulator of tests/gcs_emulator.py on a free port with `buckets`: (server, the environment that points
  gcsfs, tensorstore and google-cloud-storage at it). Kill the server when done."""
  import urllib.request  # pylint: disable=import-outside-toplevel

  url = f"http://localhost:{free_port()}"
  server = subprocess.Popen(
    [sys.executable, "-m", "tests.gcs_emulator", url.rsplit(":", 1)[1]],
    cwd=_ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 60
  while True:
    try:
      urllib.request.urlopen(url, timeout=1).close()
      break
    except OSError:
      if server.poll() is not None or time.time() > deadline:
        server.kill()
        raise RuntimeError("the GCS emulator did not start") from None
      time.sleep(0.1)
  for name in buckets:
    request = urllib.request.Request(
      f"{url}/storage/v1/b?project=test",
      data=json.dumps({"name": name}).encode(),
      headers={"Content-Type": "application/json"},
      method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
      assert json.load(response)["name"] == name
  return server, {
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


def run_steps(config, steps: int, mesh=None, seed: int = 0):
  """Runs `steps` steps on one fixed batch; returns (setup, state before the last step, final state, metrics)."""
  from simdino_jax import parallel, train  # pylint: disable=import-outside-toplevel

  setup = train.build(config, num_examples=64, mesh=mesh)
  images = random_images(config.batch_size, config.data.image_size, seed)
  metrics = []
  with jax.set_mesh(setup.mesh):
    batch = parallel.global_batch({"image": images}, setup.mesh)["image"]
    state = setup.state
    for _ in range(steps):
      before = jax.device_get(state)
      state, step_metrics = setup.step_fn(state, batch, setup.schedules)
      metrics.append(jax.device_get(step_metrics))
  return setup, before, jax.device_get(state), metrics


def assert_steps_update_the_state(setup, before, after, metrics, *, objective_state: bool) -> None:
  """What every train step must do (run_steps' outputs): finite losses, no skip, the teacher the EMA of the student
  (θ_t ← m θ_t + (1 − m) θ_s with the last step's scheduled m) yet apart from it, and the objective's state (DINO /
  iBOT centers), when it has one, moved."""
  steps = len(metrics)
  assert all(np.isfinite(m["loss"]) and m["finite"] == 1.0 for m in metrics)
  assert int(after.step) == steps and int(after.skipped) == 0
  m = float(setup.schedules(steps - 1).momentum)
  expected = jax.tree.map(lambda t, s: m * t + (1 - m) * s, before.teacher, after.student)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), after.teacher, expected)
  diffs = jax.tree.leaves(jax.tree.map(lambda t, s: float(np.max(np.abs(t - s))), after.teacher, after.student))
  assert max(diffs) > 0, "the teacher must differ from the student after training steps"
  assert bool(before.objective_state) == objective_state
  for key, value in before.objective_state.items():
    assert np.max(np.abs(np.asarray(after.objective_state[key]) - np.asarray(value))) > 0, key


def random_images(batch_size: int, size: int, seed: int = 0) -> np.ndarray:
  """Images with a random colour per image plus pixel noise.

  Pure uniform noise would make every image's mean patch the same, so an untrained ViT maps all of them to nearly
  one CLS feature; KoLeo's −log(distance) on such near-duplicates has gradients ~1/distance and turns float32
  reduction-order noise into different trajectories. Distinct colours keep the test inputs well conditioned.
  """
  rng = np.random.default_rng(seed)
  colours = rng.uniform(0, 255, size=(batch_size, 1, 1, 3))
  noise = rng.normal(0, 40, size=(batch_size, size, size, 3))
  return np.clip(colours + noise, 0, 255).astype(np.uint8)


PARITY_STEPS = 3


def parity_config():
  """The config of the 1 vs 8 devices vs 2 processes parity tests (no drop path, KoLeo over the global batch).

  LayerScale is off: with DINOv2's 1e-5 init an untrained ViT maps every image to nearly the same CLS, and KoLeo's
  −log(distance) between such near-duplicates (gradients ~1/distance ~1e6) amplifies float32 reduction-order noise
  into visibly different trajectories; the parity tests compare the sharding, not that conditioning.
  """
  c = tiny_config("dinov2", **{"objective.koleo_scope": "global"})
  c.masking.group_size = 2  # The same iBOT masks on 1, 4 and 8 devices (groups within every shard's batch).
  c.model.drop_path_rate = 0.0
  c.model.layerscale = 0.0
  return c


def assert_same_parameters(actual: dict, expected_tree, *, lr: float, steps: int) -> None:
  """`actual` (keystr → array) equals the parameter tree `expected_tree` to float32 tolerance.

  One exception, by the mathematics: softmax attention is invariant to the key bias, so its true gradient is zero
  and what the backward pass returns is rounding noise whose sign depends on the reduction order. Adam normalizes
  that noise to steps of up to ~lr, so those entries are only required to agree within 2·lr per step.
  """
  for path, expected in jax.tree_util.tree_flatten_with_path(expected_tree)[0]:
    key = jax.tree_util.keystr(path)
    value, expected = np.asarray(actual[key]), np.asarray(expected)
    if key.endswith("['attn']['qkv']['bias']"):
      dim = expected.shape[-1] // 3
      key_bias = slice(dim, 2 * dim)
      assert np.max(np.abs(value[key_bias] - expected[key_bias])) <= 2 * lr * steps, key
      value, expected = np.delete(value, np.r_[key_bias], -1), np.delete(expected, np.r_[key_bias], -1)
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-6, err_msg=key)


def next_batches_after_resume(make_iterator, advance: int, count: int) -> tuple[dict, list, list]:
  """(state, expected, resumed): the state after `advance` batches of one iterator, the `count` batches it yields
  next, and those of a fresh iterator given that state.

  `make_iterator()` builds a new iterator; the state goes through JSON, as a checkpoint stores it.
  """
  it = make_iterator()
  for _ in range(advance):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(count)]
  fresh = make_iterator()
  fresh.set_state(state)
  return state, expected, [next(fresh) for _ in range(count)]


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
  return out


def main_command(workdir, config) -> list[str]:
  """`python -m simdino_jax.main` on configs/digits.py with the `--config.x=y` overrides that make it `config`."""
  method = config.objective.name
  base, want = _flat(digits.get_config(f"method={method}").to_dict()), _flat(config.to_dict())
  assert set(base) == set(want)
  overrides = [f"--config.{k}={want[k]}" for k in sorted(want) if want[k] != base[k]]
  return [
    sys.executable,
    "-m",
    "simdino_jax.main",
    f"--config=configs/digits.py:method={method}",
    f"--workdir={workdir}",
    *overrides,
  ]


def checkpoint_steps(workdir) -> list[int]:
  """The steps of the checkpoints in `workdir`, ascending."""
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _refuse_constant(constant):
  raise ValueError(f"metrics.jsonl holds the non-JSON constant {constant}")


def strict_metrics(workdir) -> list[dict]:
  """The records of `workdir`'s metrics.jsonl, read by a strict JSON parser (no bare NaN / Infinity), without their
  wall-time fields (`goodput/...`, which no two runs share)."""
  from simdino_jax import metrics  # pylint: disable=import-outside-toplevel

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [metrics.without_goodput(json.loads(line, parse_constant=_refuse_constant)) for line in f]


def free_port() -> int:
  """A free localhost TCP port for a jax.distributed coordinator."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def eval_features_of_a_small_split(mesh) -> tuple[np.ndarray, np.ndarray]:
  """(features, labels) streamed from a 37-image split, 8 images per global batch, sorted by label."""
  from simdino_jax.data.sources import ArraySplit  # pylint: disable=import-outside-toplevel
  from simdino_jax.evaluation import features as features_lib  # pylint: disable=import-outside-toplevel

  split = ArraySplit(random_images(37, 8, seed=3), np.arange(37))
  feature_fn = lambda params, images: images.astype(jax.numpy.float32).mean(axis=(1, 2)) * params
  features, labels = features_lib.split_features(feature_fn, np.float32(0.5), split, batch_size=8, mesh=mesh)
  order = np.argsort(labels)
  return features[order], labels[order]


def subprocess_env(devices: int = 1) -> dict:
  """A test subprocess's environment: CPU, `devices` simulated devices, the session's XLA flags and compilation
  cache (conftest), unbuffered output."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
  return {
    **os.environ,
    "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
    "JAX_PLATFORMS": "cpu",
    "PYTHONUNBUFFERED": "1",
  }


# Makes the named top-level packages unimportable (e.g. tensorflow, grain: as on the GPU machine).
_BLOCK_IMPORTS = """
import importlib.util, sys
_BLOCKED = {blocked!r}
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split('.')[0] in _BLOCKED else _find_spec(name, package))
class _Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in _BLOCKED:
      raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, _Block())
"""


def run_python(code: str, blocked=(), args=(), timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python -c code args...` from the repository root (subprocess_env) with the `blocked` packages
  unimportable; returns the completed process (output captured as text)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run(
    [sys.executable, "-c", _BLOCK_IMPORTS.format(blocked=tuple(blocked)) + code, *args],
    cwd=root,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def shared_data(*parts: str) -> str:
  """A path under the data folder that sits beside the repository (`../shared/data`); fails clearly if missing."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", *parts)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{os.path.normpath(path)} is missing: these tests read the real data sets of the "
      "shared data folder, which must sit beside the repository (../shared/data)."
    )
  return path
