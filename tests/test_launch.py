"""launch/tpu_pod.sh builds a remote script that keeps every argument as given (gcloud replaced by a recorder)."""

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
  env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "RECORD": str(record), "TPU_NAME": "pod",
         "ZONE": "us-central2-b", "RUN_NAME": "run1"}
  args = ["configs/dino.py:model=ViT-B/16", "gs://bucket/run", "--config.data.data_dir=gs://bucket/my data",
          "--config.note=it's $HOME"]
  subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), *args], env=env, check=True, timeout=60)
  calls = (tmp_path / "record.calls").read_text().splitlines()
  assert calls[0].startswith("compute tpus tpu-vm scp") and "--worker=all" in calls[0]
  assert calls[1].startswith("compute tpus tpu-vm ssh pod") and "--worker=all" in calls[1]
  remote = (tmp_path / "record.remote").read_text()
  assert "uv venv --python 3.11 .venv" in remote and "'jax[tpu]'" in remote and "tensorflow" in remote  # filtered
  assert "tensorflow-cpu tensorboard" not in remote  # Only with WITH_TF=1.
  launch = next(line for line in remote.splitlines() if line.startswith("setsid nohup "))
  assert '> "$log" 2>&1 < /dev/null &' in launch and "log=logs/run1.worker$worker.log" in remote
  # The shell on the worker sees exactly the arguments given here.
  words = launch.removeprefix("setsid nohup .venv/bin/python -m simdino_jax.main ").split(" > ")[0]
  echoed = subprocess.run(["bash", "-c", f"printf '%s\\n' {words}"], capture_output=True, text=True, check=True)
  assert echoed.stdout.splitlines() == [f"--config={args[0]}", f"--workdir={args[1]}", *args[2:]]
  subprocess.run(["bash", "-n", "-c", remote], check=True)
