"""gs:// paths against a real GCS JSON API (gcp-storage-emulator on localhost, one per module): files through gcsfs
(whether or not TensorFlow is installed), Orbax arrays through tensorstore, the digits job end to end on a bucket,
and the one-line errors of unusable cloud storage."""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
import torch
from etils.epath import backend as backend_lib

from simdino_jax import checkpointing
from simdino_jax import evaluate
from simdino_jax import metrics
from simdino_jax import storage
from simdino_jax import train
from simdino_jax.convert import torch_checkpoints
from simdino_jax.data import sources
from simdino_jax.tools import reproduce
from tests import train_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def emulator():
  """The environment that points gcsfs, tensorstore and google-cloud-storage at a fresh emulator with buckets
  `bucket` and `denied-bucket` (every request to the latter answers 403)."""
  server, environment = train_utils.start_emulator(("bucket", "denied-bucket"))
  try:
    yield environment
  finally:
    server.kill()
    server.wait()


@pytest.fixture
def bucket(emulator, tmp_path, monkeypatch):
  """This process talks to the emulator (gcsfs' cached file systems are dropped); the working directory is an empty
  tmp_path/cwd, so a test can check that nothing was written to a local folder named "gs:"."""
  for key, value in emulator.items():
    monkeypatch.setenv(key, value)
  backend_lib.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  storage.check_access.cache_clear()
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  yield emulator
  backend_lib.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def _read(location: str) -> bytes:
  return storage.path(location).read_bytes()


def test_remote_paths_keep_their_scheme_and_local_ones_become_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(storage.path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
  assert os.fspath(storage.path("runs/a")) == os.path.join(os.fspath(tmp_path.resolve()), "runs", "a")
  assert os.fspath(storage.path("~/x")) == os.path.join(os.path.expanduser("~"), "x")


def test_shared_files_and_npz_data_go_through_the_bucket(bucket):
  storage.write_shared("gs://bucket/run/eval_3.json", '{"knn_top1_k20": 0.5}')
  assert _read("gs://bucket/run/eval_3.json") == b'{"knn_top1_k20": 0.5}'
  images = train_utils.random_images(6, 8)
  with storage.path("gs://bucket/data/digits_train.npz").open("wb") as f:
    np.savez(f, image=images, label=np.arange(6))
  config = train_utils.tiny_config("simdino").data
  config.name, config.path, config.image_size = "npz", "gs://bucket/data/digits_{split}.npz", 8
  read, labels = sources.load_split(config, "train")
  np.testing.assert_array_equal(read, images)
  np.testing.assert_array_equal(labels, np.arange(6))
  with pytest.raises(FileNotFoundError, match="gs://bucket/data/digits_test.npz"):
    sources.load_split(config, "test")
  assert os.listdir(".") == []  # Nothing written to a local folder named "gs:".


def _tensorboard_scalars(folder: str, tmp_path, tag: str) -> list[tuple[int, float]]:
  """(step, value) of `tag` as TensorBoard's own reader loads the event files of `folder` (copied here)."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel

  local = tmp_path / "tensorboard_copy"
  local.mkdir()
  for event_file in storage.path(folder).iterdir():
    (local / event_file.name).write_bytes(event_file.read_bytes())
  accumulator = event_accumulator.EventAccumulator(str(local))
  accumulator.Reload()
  return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def test_metrics_and_checkpoint_paths_of_a_gs_workdir(bucket, tmp_path):
  writer = metrics.MultiWriter("gs://bucket/run", tensorboard=True)
  writer.write_scalars(2, {"loss": 1.5})
  writer.writers[1].flush()  # TensorBoard: one event file per flush (a cloud object is written whole).
  writer.write_scalars(4, {"loss": 1.25})
  writer.close()
  assert len(list(storage.path("gs://bucket/run/tensorboard").iterdir())) == 2
  assert _tensorboard_scalars("gs://bucket/run/tensorboard", tmp_path, "loss") == [(2, 1.5), (4, 1.25)]
  resumed = metrics.JsonlWriter("gs://bucket/run", resume_step=4)  # A resume keeps the lines up to its step.
  resumed.write_scalars(6, {"loss": 1.0})
  lines = _read("gs://bucket/run/metrics.jsonl").decode().splitlines()
  assert [json.loads(line) for line in lines] == [
    {"step": 2, "loss": 1.5},
    {"step": 4, "loss": 1.25},
    {"step": 6, "loss": 1.0},
  ]
  checkpoints = checkpointing.Checkpoints("gs://bucket/run", train_utils.tiny_config("simdino"))
  try:
    assert os.fspath(checkpoints.directory) == "gs://bucket/run/checkpoints"
  finally:
    checkpoints.close()
  with pytest.raises(FileNotFoundError, match="No checkpoints in gs://bucket/run/checkpoints"):  # No empty dirs.
    checkpointing.read_config("gs://bucket/run")
  assert os.listdir(".") == []


def test_reproduction_outputs_of_a_gs_workdir(bucket):
  for method in ("dino", "simdino"):
    writer = metrics.JsonlWriter(f"gs://bucket/repro/{method}")
    for step in (0, 10):
      writer.write_scalars(
        step, {"loss": 1.0 - step / 100, "knn_top1_k20": 0.1 + step / 100, "diag_unique_prototypes": 64.0}
      )
  rows = reproduce.collect("gs://bucket/repro", ("dino", "simdino"), {"dino": 10, "simdino": 10})
  assert [(r["method"], r["epoch"]) for r in rows] == [("dino", 0.0), ("dino", 1.0), ("simdino", 0.0), ("simdino", 1.0)]
  reproduce.write_csv(rows, storage.path("gs://bucket/repro") / "curves.csv")
  paths = reproduce.plot(rows, "gs://bucket/repro", ("dino", "simdino"))
  assert paths == [f"gs://bucket/repro/{name}" for name in ("knn.png", "losses.png", "prototypes.png")]
  assert _read("gs://bucket/repro/curves.csv").decode().splitlines()[0].startswith("method,epoch,step")
  for name in ("knn.png", "losses.png", "prototypes.png"):
    assert _read(f"gs://bucket/repro/{name}")[:8] == b"\x89PNG\r\n\x1a\n", name
  assert os.listdir(".") == []


def test_unusable_cloud_storage_fails_in_one_line_naming_the_path_and_the_fix(bucket, monkeypatch, tmp_path):
  with pytest.raises(storage.StorageError) as e:
    storage.check_access("gs://no-such-bucket/run")
  assert str(e.value).startswith("gs://no-such-bucket/run: the bucket gs://no-such-bucket does not exist. Create it")
  with pytest.raises(storage.StorageError) as e:
    storage.check_access("gs://denied-bucket/run")
  assert str(e.value).startswith("gs://denied-bucket/run: permission denied on gs://denied-bucket. Grant")
  storage.check_access("gs://bucket/new_run")  # An existing bucket: a new run's folder need not exist.
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://localhost:{train_utils.free_port()}")
  with pytest.raises(storage.StorageError, match=r"^gs://bucket/run2: cannot reach the GCS API at http://localhost"):
    storage.check_access("gs://bucket/run2")
  # Google's API without credentials: no key file, no gcloud login, no metadata server.
  monkeypatch.delenv("STORAGE_EMULATOR_HOST")
  monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
  monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
  monkeypatch.setenv("GCE_METADATA_HOST", f"localhost:{train_utils.free_port()}")
  monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{train_utils.free_port()}")
  with pytest.raises(storage.StorageError, match=r"^gs://bucket/run3: no Google Cloud credentials on this machine"):
    storage.check_access("gs://bucket/run3")
  assert os.listdir(".") == []


def test_training_on_a_missing_bucket_stops_before_anything_runs(bucket):
  config = train_utils.tiny_config("simdino")
  result = subprocess.run(
    train_utils.main_command("gs://no-such-bucket/run", config),
    cwd=ROOT,
    env={**train_utils.subprocess_env(), **bucket},
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [
    "error: gs://no-such-bucket/run: the bucket gs://no-such-bucket does not exist. Create it "
    "(gcloud storage buckets create gs://no-such-bucket --location=REGION, in the TPU's region) or "
    "fix the path."
  ], result.stderr[-3000:]
  assert "step" not in result.stdout


def test_tfds_data_on_a_bucket_is_refused_with_the_supported_ways(bucket, tmp_path):
  config = train_utils.tiny_config("simdino")
  config.data.name, config.data.data_dir = "imagenet2012", "gs://bucket/tfds"
  with pytest.raises(storage.StorageError) as e:
    train.run(config, str(tmp_path / "work"))
  message = str(e.value)
  assert message.startswith(
    "--config.data.data_dir=gs://bucket/tfds: the TFDS array_record files of 'imagenet2012' "
    "are read by array_record, which opens local files only."
  )
  assert "gcloud storage cp -r gs://bucket/tfds/imagenet2012" in message and "GCSFuse" in message
  assert "\n" not in message and not (tmp_path / "work").exists()
  config.data.name = "digits"  # Built-in data (and npz files, data.path) need no local copy.
  sources.check_data_dir(config.data)


STEPS = 12  # A checkpoint every 2 steps; the job is SIGKILLed after that of step 4 (4 saves before its end).


def _job_config():
  config = train_utils.tiny_config("simdino")  # The tiny step of the other tests: compiled once per session.
  config.total_steps, config.checkpoint_every_steps, config.async_checkpointing = STEPS, 2, True
  config.tensorboard = True
  return config


def _final_state(workdir):
  config = _job_config()
  setup = train.build(config, num_examples=64)
  checkpoints = checkpointing.Checkpoints(str(workdir), config)
  try:
    state, _ = checkpoints.restore(checkpoints.manager.latest_step(), setup.state, setup.state_shardings)
  finally:
    checkpoints.close()
  return state


def test_digits_job_on_a_bucket_survives_sigkill_resumes_bitwise_evaluates_and_exports(bucket, tmp_path):
  """The production path on a bucket: asynchronous Orbax saves through tensorstore, everything else through gcsfs.
  SIGKILL after the checkpoint of step 4; that newest one is then damaged, so the resume moves it aside and
  continues from the one before; the final state is bitwise that of an uninterrupted local run (started with the
  resume: both find the step in the compilation cache), which the bucket's evaluation and export then read."""
  env = {**train_utils.subprocess_env(), **bucket}
  run = "gs://bucket/digits"
  job = subprocess.Popen(
    train_utils.main_command(run, _job_config()), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
  )
  marker = storage.path(f"{run}/checkpoints/4/commit_success.txt")
  deadline = time.time() + 300
  while not marker.exists() and job.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  job.send_signal(signal.SIGKILL)
  output = job.communicate(timeout=60)[0].decode()
  assert job.returncode == -signal.SIGKILL, output[-3000:]  # Killed mid-run, not finished.
  finished = sorted(
    int(p.name)
    for p in storage.path(f"{run}/checkpoints").iterdir()
    if p.name.isdigit() and (p / "commit_success.txt").exists()
  )
  assert finished[-1] < STEPS and len(finished) >= 2, finished
  newest = storage.path(f"{run}/checkpoints/{finished[-1]}")
  (newest / "state" / "manifest.ocdbt").unlink()

  reference = tmp_path / "reference"
  runs = [
    subprocess.Popen(
      train_utils.main_command(workdir, _job_config()),
      cwd=ROOT,
      env=env,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )
    for workdir in (run, reference)
  ]
  (resumed_out, resumed_err), (_, reference_err) = (p.communicate(timeout=300) for p in runs)
  assert runs[1].returncode == 0, reference_err[-3000:]
  assert runs[0].returncode == 0, resumed_err[-3000:]
  assert (
    f"moved {newest} to {run}/unrestorable_checkpoints/{finished[-1]}; resuming from step {finished[-2]}."
    in resumed_out
  ), resumed_out
  assert storage.path(f"{run}/unrestorable_checkpoints/{finished[-1]}/state").is_dir()
  # A quiet bucket: the failed restore's reads in flight, the storage libraries' threads and tensorstore's C++
  # credentials lookup print nothing a local run does not.
  assert resumed_err.splitlines() == reference_err.splitlines(), resumed_err[-3000:]
  final, expected = _final_state(run), _final_state(reference)
  assert int(final.step) == STEPS
  jax.tree.map(np.testing.assert_array_equal, final, expected)
  records = [metrics.without_goodput(json.loads(line)) for line in _read(f"{run}/metrics.jsonl").decode().splitlines()]
  assert records == train_utils.strict_metrics(reference)
  logged = _tensorboard_scalars(f"{run}/tensorboard", tmp_path, "loss")  # The resumed run's, from its checkpoint.
  assert [step for step, _ in logged] == [r["step"] for r in records if r["step"] > finished[-2] and "loss" in r]

  # Evaluation and export read the bucket (the CLIs call these; test_evaluate.py and test_convert.py run the CLIs).
  results = evaluate.evaluate_checkpoint(
    run,
    evaluate.protocol_evals("knn", {"knn": {"k": (5,)}}),
    settings={"max_train_examples": 64, "max_test_examples": 32},
  )
  assert results["step"] == STEPS and 0.0 <= results["knn_top1_k5"] <= 1.0
  assert json.loads(_read(f"{run}/eval_{STEPS}.json")) == results
  out = tmp_path / "teacher.pth"
  torch_checkpoints.to_torch(run, str(out))
  weights = torch.load(out)
  np.testing.assert_array_equal(weights["cls_token"].numpy(), np.asarray(final.teacher["backbone"]["cls_token"]))
  assert os.listdir(".") == []
