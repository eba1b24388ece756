"""launch/tpu_pod.sh builds a remote script that keeps every argument as given and runs each worker under
launch/restarts.sh (gcloud replaced by a recorder); restarts.sh runs a failed command again up to MAX_RESTARTS times.
launch/local.sh's restart of a job with a killed process: test_distributed.py."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_GCLOUD = """#!/usr/bin/env bash
echo "$@" >> "$RECORD.calls"
while [[ $# -gt 0 ]]; do
  if [[ "$1" == --command ]]; then printf '%s' "$2" > "$RECORD.remote"; fi
  shift
done
"""


def test_tpu_pod_launch_keeps_quoting_runs_detached_and_logs_per_worker(tmp_path):
  (tmp_path / "gcloud").write_text(FAKE_GCLOUD)
  (tmp_path / "gcloud").chmod(0o755)
  record = tmp_path / "record"
  env = {
    **os.environ,
    "PATH": f"{tmp_path}:{os.environ['PATH']}",
    "RECORD": str(record),
    "TPU_NAME": "pod",
    "ZONE": "us-central2-b",
    "RUN_NAME": "run1",
    "MAX_RESTARTS": "3",
  }
  args = [
    "configs/dino.py:model=ViT-B/16",
    "gs://bucket/run",
    "--config.data.data_dir=gs://bucket/my data",
    "--config.note=it's $HOME",
  ]
  subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), *args], env=env, check=True, timeout=60)
  calls = (tmp_path / "record.calls").read_text().splitlines()
  assert calls[0].startswith("compute tpus tpu-vm scp") and "--worker=all" in calls[0]
  assert calls[1].startswith("compute tpus tpu-vm ssh pod") and "--worker=all" in calls[1]
  remote = (tmp_path / "record.remote").read_text()
  assert "uv venv --python 3.11 .venv" in remote and "-r requirements.txt 'jax[tpu]'" in remote
  assert "requirements-tf.txt" not in remote  # TensorFlow only with WITH_TF=1.
  launch = next(line for line in remote.splitlines() if line.strip().startswith("setsid nohup "))
  assert '> "$log" 2>&1 < /dev/null &' in launch and "log=logs/run1.worker$worker.log" in remote
  assert "MAX_RESTARTS=3 RESTART_DELAY_S=45 \\\n  setsid nohup launch/restarts.sh " in remote
  # The shell on the worker sees exactly the arguments given here.
  words = launch.strip().removeprefix("setsid nohup launch/restarts.sh .venv/bin/python -m simdino_jax.main ")
  words = words.split(" > ")[0]
  echoed = subprocess.run(["bash", "-c", f"printf '%s\\n' {words}"], capture_output=True, text=True, check=True)
  assert echoed.stdout.splitlines() == [f"--config={args[0]}", f"--workdir={args[1]}", *args[2:]]
  subprocess.run(["bash", "-n", "-c", remote], check=True)


def test_tpu_pod_launch_refuses_a_restart_count_that_is_not_a_number(tmp_path):
  env = {
    **os.environ,
    "PATH": f"{tmp_path}:{os.environ['PATH']}",
    "TPU_NAME": "pod",
    "ZONE": "z",
    "MAX_RESTARTS": "3; rm -rf ~",
  }
  result = subprocess.run(
    ["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), "configs/dino.py", "gs://b/run"],
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert result.returncode == 2
  assert result.stderr == "MAX_RESTARTS and RESTART_DELAY_S take whole numbers, not '3; rm -rf ~'.\n"


# A worker's command that fails (exit status 3) until it has run FAILURES times, counting its runs in COUNT.
FLAKY = (
  'n=$(( $(cat "$COUNT" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$COUNT"; echo "run $n"; ((n > FAILURES)) || exit 3'
)


def _restarts(tmp_path, max_restarts: int, failures: int) -> subprocess.CompletedProcess:
  env = {
    **os.environ,
    "MAX_RESTARTS": str(max_restarts),
    "RESTART_DELAY_S": "0",
    "COUNT": str(tmp_path / "count"),
    "FAILURES": str(failures),
  }
  return subprocess.run(
    [os.path.join(ROOT, "launch", "restarts.sh"), "bash", "-c", FLAKY],
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )


def test_restarts_runs_a_failed_command_again_until_it_succeeds(tmp_path):
  result = _restarts(tmp_path, max_restarts=2, failures=1)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == ["run 1", "run 2"]
  assert result.stderr.splitlines() == [
    "launch/restarts.sh: the command failed (exit status 3); restart 1 of 2 in 0 s, from the latest checkpoint."
  ]


def test_restarts_gives_up_after_max_restarts_with_the_command_s_status(tmp_path):
  result = _restarts(tmp_path, max_restarts=1, failures=5)
  assert result.returncode == 3
  assert result.stdout.splitlines() == ["run 1", "run 2"]
  assert result.stderr.splitlines()[-1] == (
    "launch/restarts.sh: the command failed (exit status 3) after 1 restart(s) of 1."
  )
  (tmp_path / "once").mkdir()
  no_restart = _restarts(tmp_path / "once", max_restarts=0, failures=5)  # The default: one attempt.
  assert no_restart.returncode == 3 and no_restart.stdout.splitlines() == ["run 1"]
