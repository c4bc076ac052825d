"""Time to the first step and peak memory of each host, with the memory and grain loaders.

    python -m benchmarks.bench_loader --dir=/tmp/flowgmm_records_1m \
        --json benchmarks/results/bench_loader.json

Writes (once; reused when present) a folder of ``--num-train`` (default 1,000,000) random
32x32x3 images in the records format of ``flowgmm_jax/data/records.py`` (3 GB for 1M),
then, for each loader, starts a localhost job of 2 processes with 1 CPU device each that
loads the set (``config.data.name="records"``), splits it, and trains one step of a tiny
flow. Each process reports: the seconds from its launch to the end of its first step, the
seconds spent loading the data, its peak resident memory (``ru_maxrss``) and the training
rows it read. A warm-up job on a small set of the same shape first fills a compilation cache
that both measured jobs load from, so that the first step times the data, not the compiler.
``--worker`` is the per-process entry point (not for direct use).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_set(folder: Path, num_train: int, num_test: int, chunk: int = 20_000) -> float:
  """The records folder (10 classes, random pixels); returns the seconds it took."""
  import numpy as np
  from array_record.python.array_record_module import ArrayRecordWriter

  from flowgmm_jax.data.records import _save_npy_atomic, encode_record
  start = time.perf_counter()
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for split, n in (("train", num_train), ("test", num_test)):
    labels = (np.arange(n) % 10).astype(np.int32)
    writer = ArrayRecordWriter(str(folder / f"{split}.array_record"), "group_size:1")
    for lo in range(0, n, chunk):
      images = rng.integers(0, 256, (min(chunk, n - lo), 32, 32, 3), dtype=np.uint8)
      for i, image in enumerate(images):
        writer.write(encode_record(image, labels[lo + i]))
    writer.close()
    _save_npy_atomic(folder / f"{split}_labels.npy", labels)
  (folder / "info.json").write_text(json.dumps(
      {"shape": [32, 32, 3], "num_classes": 10, "num_train": num_train, "num_test": num_test}))
  return time.perf_counter() - start


def worker(a) -> None:
  import jax
  jax.distributed.initialize(f"127.0.0.1:{a.port}", a.num_processes, a.process_id)
  from flowgmm_jax import data as data_lib
  from flowgmm_jax.data.rows import split_rows
  from flowgmm_jax.training import base_config, fit
  from flowgmm_jax.training.config import model_config
  c = base_config()
  c.data.kind, c.data.name, c.data.path, c.data.loader = "image", "records", a.dir, a.loader
  c.data.max_test_examples = 1000
  c.data.labeled_batch_size, c.data.unlabeled_batch_size = 32, 32
  c.model = model_config("realnvp", num_scales=1, num_blocks=1, mid_channels=4)
  c.num_train_steps, c.log_every_steps, c.eval_every_steps = 1, 1, 1
  c.early_stopping.holdout_fraction = 0.0
  c.progress_bar, c.plots = False, False
  t = time.perf_counter()
  ds = data_lib.load_dataset(c)
  load_s = time.perf_counter() - t
  split = split_rows(c, ds)
  first = {}
  def log_fn(step, metrics):
    if "train/loss" in metrics and "s" not in first:
      first["s"] = time.time() - a.t0
  fit(c, ds, split, log_fn=log_fn)
  rows = ds.x_train.rows_read if isinstance(ds.x_train, data_lib.RecordImages) else len(ds.x_train)
  out = {"process": a.process_id, "loader": a.loader, "first_step_s": round(first["s"], 2),
         "load_s": round(load_s, 2), "rows_read": int(rows), "num_train": len(ds.x_train),
         "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
  print("RESULT " + json.dumps(out), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_job(folder: Path, loader: str, num_processes: int, timeout: int, cache: Path) -> list:
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
         "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                       + " --xla_force_host_platform_device_count=1").strip()}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "benchmarks.bench_loader", "--worker", f"--dir={folder}",
       f"--loader={loader}", f"--num_processes={num_processes}", f"--process_id={i}",
       f"--port={port}", f"--t0={time.time()}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(num_processes)]
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      if p.returncode:
        raise RuntimeError(f"{loader} worker failed:\n{err[-3000:]}")
      results += [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return sorted(results, key=lambda r: r["process"])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dir", default="/tmp/flowgmm_records_1m")
  p.add_argument("--num-train", type=int, default=1_000_000)
  p.add_argument("--num-test", type=int, default=10_000)
  p.add_argument("--loaders", default="grain,memory")
  p.add_argument("--num_processes", type=int, default=2)
  p.add_argument("--timeout", type=int, default=3600)
  p.add_argument("--json", default="")
  p.add_argument("--worker", action="store_true")
  p.add_argument("--loader", default="grain")
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--t0", type=float, default=0.0)
  a = p.parse_args(argv)
  if a.worker:
    return worker(a)
  folder = Path(a.dir)
  info = folder / "info.json"
  write_s = None
  if not (info.is_file() and json.loads(info.read_text()).get("num_train") == a.num_train):
    write_s = round(write_set(folder, a.num_train, a.num_test), 1)
    print(f"wrote {a.num_train} records to {folder} in {write_s} s", flush=True)
  from benchmarks.provenance import provenance
  report = {"provenance": provenance(argv), "num_train": a.num_train, "num_test": a.num_test,
            "image_shape": [32, 32, 3], "num_processes": a.num_processes,
            "write_s": write_s, "results": {}}
  # A warm-up job on a small set of the same image shape fills a compilation cache that both
  # measured jobs then load from: their first step times the data, not the compiler.
  cache = Path(str(folder) + "_xla_cache")
  warm = Path(str(folder) + "_warmup")
  if not (warm / "info.json").is_file():
    write_set(warm, 2000, 1000)
  start = time.perf_counter()
  run_job(warm, "grain", a.num_processes, a.timeout, cache)
  report["warmup_s"] = round(time.perf_counter() - start, 1)
  for loader in a.loaders.split(","):
    report["results"][loader] = run_job(folder, loader, a.num_processes, a.timeout, cache)
    print(loader, json.dumps(report["results"][loader]), flush=True)
  if a.json:
    Path(a.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
