"""Checkpoints that fail loudly and once: a save that cannot be written stops the run at the
next step in one line and keeps what the run wrote; hosts that disagree about a checkpoint
stop together in one line, or restore one step together (docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler
from orbax.checkpoint._src.serialization import serialization
from tiny import toy_cli_config

from flowgmm_jax import checkpoint as ckpt_lib
from flowgmm_jax import run_files
from flowgmm_jax.training import train_and_evaluate

REPO = Path(__file__).resolve().parents[1]


def _logged_steps(workdir):
  lines = (Path(workdir) / run_files.METRICS_FILE).read_text().splitlines()
  return [json.loads(row)["step"] for row in lines if "train/loss" in row]


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(Path(workdir) / "checkpoints") if n.isdigit())


def _disk_full_at(monkeypatch, *steps):
  """Every background write of orbax for the checkpoints of ``steps`` (the arrays and the
  metadata item) fails with ENOSPC, as on a full disk."""
  write_json = json_checkpoint_handler.JsonCheckpointHandler._save_fn
  write_arrays = serialization.async_serialize_from_host

  def full(where):
    step = re.search(r"checkpoints/(\d+)", where)
    if step and int(step.group(1)) in steps:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)

  async def failing_json(self, x, directory):
    full(str(directory))
    return await write_json(self, x, directory)

  async def failing_arrays(*args, **kwargs):
    full(str(args) + str(kwargs))
    return await write_arrays(*args, **kwargs)
  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", failing_json)
  monkeypatch.setattr(serialization, "async_serialize_from_host", failing_arrays)


def test_a_failed_save_stops_the_run_at_once_in_one_line_and_keeps_its_files(
    tmp_path, monkeypatch, capfd):
  workdir = tmp_path / "run"
  # The first save (step 10) fails: the run stops at the first step after orbax's background
  # write reported it (how many steps that is depends on the machine's load), not at 40.
  _disk_full_at(monkeypatch, 10)
  checks = {"calls": 0}
  check, record = ckpt_lib.Checkpointer.check, ckpt_lib.Checkpointer._record_failure

  def counted_check(self, step=None):
    checks["calls"] += 1
    if self._failure is not None:
      checks.setdefault("raised_at", checks["calls"])
    return check(self, step)

  def noted_failure(self, step, e):  # runs on orbax's thread, beside the loop's checks
    checks.setdefault("steps_before", checks["calls"])
    out = record(self, step, e)
    checks.setdefault("steps_after", checks["calls"])
    return out
  monkeypatch.setattr(ckpt_lib.Checkpointer, "check", counted_check)
  monkeypatch.setattr(ckpt_lib.Checkpointer, "_record_failure", noted_failure)
  with pytest.raises(ckpt_lib.CheckpointSaveError) as e:
    train_and_evaluate(toy_cli_config(40, checkpoint_every=10), str(workdir))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"could not write the checkpoint of step 10 to {workdir}/checkpoints "
                            "(No space left on device)"), message
  assert "no checkpoint of this run was written" in message
  log = workdir / run_files.CHECKPOINT_ERRORS_FILE
  assert str(log) in message
  assert "No space left on device" in log.read_text()
  # The loop checked after each of the first 10 steps, and the first check that began
  # after the failure was recorded raised it (a check may run while it is being recorded).
  assert checks["steps_before"] >= 10
  assert checks["steps_before"] + 1 <= checks["raised_at"] <= checks["steps_after"] + 1
  stopped = max(_logged_steps(workdir))
  assert 10 <= stopped <= 20, stopped  # at the latest, the next save raises it
  assert (workdir / run_files.CONFIG_FILE).exists()
  assert _steps(workdir) == []  # (orbax's partial STEP.orbax-checkpoint-tmp is not one)
  err = capfd.readouterr().err
  # orbax's reports go to the log, not the terminal
  assert "Traceback" not in err, err[-3000:]
  assert "Error" not in err, err[-3000:]

  # A later save (step 20) fails: the good step 10 is kept and named.
  monkeypatch.undo()
  _disk_full_at(monkeypatch, 20)
  with pytest.raises(ckpt_lib.CheckpointSaveError) as e:
    train_and_evaluate(toy_cli_config(40, checkpoint_every=10), str(workdir))
  message = str(e.value)
  assert "step 20" in message
  assert "(No space left on device)" in message
  assert "the last good checkpoint is step 10" in message
  assert "resume from step 10" in message
  assert _steps(workdir) == [10]
  assert "Traceback" not in capfd.readouterr().err

  # Space freed: the same command resumes from step 10 and finishes; each step logged once.
  monkeypatch.undo()
  results = train_and_evaluate(toy_cli_config(40, checkpoint_every=10), str(workdir))
  assert results["step"] == 40
  assert _logged_steps(workdir) == list(range(1, 41))
  assert _steps(workdir) == [30, 40]  # config.keep_checkpoints = 2


# ----------------------------------------------------------------------------- two hosts

# Process 1 of the rerun cannot read the newest step (the copy it sees is damaged), while
# process 0 reads it fine: the split view of a stale network filesystem.
_SPLIT_VIEW = """
import sys
import jax
from absl import app
from flowgmm_jax import checkpoint as ckpt_lib
from experiments import main

read = ckpt_lib._read_state
def read_on_this_host(reader, directory, step, *args, **kwargs):
  if jax.process_index() == 1 and step == {step}:
    raise ValueError("this host's copy of the step is damaged")
  return read(reader, directory, step, *args, **kwargs)
ckpt_lib._read_state = read_on_this_host
sys.argv[0] = main.__file__
app.run(main.main, flags_parser=main._parse_flags)
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(script, workdir, steps, timeout=120):
  """Runs ``script`` (a file that behaves as experiments.main; None: experiments.main) as 2
  processes of one job,
  one CPU device each; returns ([(returncode, stderr)], seconds) once both ended."""
  common = ["--config=configs/toy.py:smoke", f"--workdir={workdir}",
            f"--config.num_train_steps={steps}", "--config.checkpoint_every_steps=10",
            "--config.optim.lr_schedule=constant", "--config.plots=False",
            "--config.eval_every_steps=100000", "--config.log_every_steps=1"]
  port = _free_port()
  flags = os.environ.get("XLA_FLAGS", "")  # keeps the suite's compile settings (conftest)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
         "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=1"}
  start = time.time()
  program = [str(script)] if script else ["-m", "experiments.main"]
  procs = [subprocess.Popen([sys.executable, *program, *common,
                             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                             f"--process_id={i}"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for i in range(2)]
  try:
    out = []
    for p in procs:
      _, err = p.communicate(timeout=max(1.0, timeout - (time.time() - start)))
      out.append((p.returncode, err))
    return out, time.time() - start
  finally:
    for p in procs:  # a process whose partner failed would wait for it
      if p.poll() is None:
        p.kill()
        p.wait()


@pytest.mark.slow
def test_hosts_that_disagree_about_a_checkpoint_stop_together_or_restore_one_step(tmp_path):
  workdir = tmp_path / "run"
  train_and_evaluate(toy_cli_config(20, checkpoint_every=10), str(workdir))  # checkpoints 10, 20
  assert _steps(workdir) == [10, 20]

  # Process 1 cannot read step 20, which process 0 chose: both stop with the same one line
  # naming process 1, its host and the step; nothing is moved aside.
  script = tmp_path / "split_view.py"
  script.write_text(_SPLIT_VIEW.format(step=20))
  out, seconds = _two_processes(script, workdir, 40)
  assert seconds < 120
  lines = [err.strip().splitlines()[-1] for _, err in out]
  for returncode, err in out:
    assert returncode == 1, err[-3000:]
  assert lines[0] == lines[1], lines
  assert lines[0].startswith(f"error: checkpoint step 20 in {workdir}/checkpoints, chosen by "
                             "process 0, is not readable on every host: process 1 (host "
                             f"{socket.gethostname()}) cannot read it"), lines[0]
  assert "Traceback" not in out[0][1] + out[1][1]
  assert _steps(workdir) == [10, 20]
  assert not (workdir / "checkpoints_damaged").exists()

  # Step 20 damaged for every host: process 0 moves it aside, and both restore step 10 and
  # finish (a different step on each host would mismatch the collectives and hang).
  for f in (workdir / "checkpoints" / "20" / "state").glob("**/d/*"):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  out, seconds = _two_processes(None, workdir, 12)
  assert seconds < 120
  for returncode, err in out:
    assert returncode == 0, err[-3000:]
  damage = [[row for row in err.splitlines() if "is damaged" in row] for _, err in out]
  assert len(damage[0]) == 1, damage  # one line, from process 0
  assert damage[1] == [], damage
  assert "step 20" in damage[0][0]
  assert "resuming from step 10" in damage[0][0]
  assert "Traceback" not in out[0][1] + out[1][1]
  assert os.listdir(workdir / "checkpoints_damaged") == ["20"]
  assert json.loads((workdir / "results.json").read_text())["step"] == 12
  assert _logged_steps(workdir) == list(range(1, 13))
