"""What this machine's XLA can do: the kernels the three step workloads are made of, timed alone.

    python -m benchmarks.bench_kernels                       # full sizes (about 2 minutes)
    python -m benchmarks.bench_kernels --json out.json
    python -m benchmarks.bench_kernels --scale=0.125         # a quick look (batch dims x 1/8)
    python -m benchmarks.bench_kernels --groups=conv3x3,conv1x1   # the convolutions only

``bench_steps`` says how fast a whole step is; this says how fast it could be. Each row is
one jitted kernel on random float32 data (median of ``--repeats`` calls, 20x as many for
kernels under 10 ms, each ended by ``block_until_ready``), with its FLOP rate, so a step's
time can be read against:
  * ``stream``: ``2 * x + 1`` over 64 MiB and over the toy's 1.32M parameters (5.3 MB,
    cache-resident), the memory bandwidth (GB/s, bytes read + written); and one Adam
    update of 1.32M parameters, the part of the toy step no model change removes.
  * ``dispatch``: 500 dependent tiny kernels, the fixed cost each kernel of a step pays.
    The toy step (0.19 GFLOP) is bound by this and the Adam update: ``bench_steps``
    counts ~500 kernels in it, the optimiser's update a set of them per parameter array.
  * ``matmul``: a 4096^3 product, float32 and bfloat16: the best dense rate XLA reaches here.
  * ``text dots``: the text step's three dense shapes (5200 rows), the forward product and
    the two backward ones (``dX = dY W^T``, ``dW = X^T dY``), and its dropout masks.
  * ``conv3x3``: the CIFAR conditioners' 3x3 convolution at 64 channels (32x32 and 16x16,
    batch 64) and at 128 channels: forward, input gradient and filter gradient (JAX's own
    transpose rules), two other ways to compute the filter gradient, and the forward in
    NCHW and in bfloat16.
  * ``conv1x1``: the conditioners' 1x1 convolution as XLA's convolution and as the matrix
    product ``WNConv`` now uses, forward and filter gradient.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

NHWC = ("NHWC", "HWIO", "NHWC")
TOY_PARAMS = 1_323_550  # bench_steps' toy workload
GROUPS = ("stream", "dispatch", "matmul", "text dots", "conv3x3", "conv1x1")


def _median_seconds(fn, *args, repeats: int) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))  # compile + warm up
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  if time.perf_counter() - start < 0.01:
    repeats *= 20  # short kernels are noisy here: a longer median
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _conv(x, w, dn=NHWC):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)


def _filter_grad_taps(x, dy):
  """The 3x3 filter gradient ``[3, 3, C, O]`` as one product per tap: sum over rows of
  shifted(x)^T dy (``x: [N, H, W, C]``, ``dy: [N, H, W, O]``)."""
  h, w = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.stack([jnp.einsum("nhwc,nhwo->co", xp[:, i:i + h, j:j + w], dy)
                    for i in range(3) for j in range(3)]).reshape(3, 3, x.shape[-1], -1)


def _filter_grad_batch_conv(x, dy):
  """The 3x3 filter gradient as a forward convolution in the canonical layout, the batch
  axis taking the place of the input channels: x as [C, H, W, N], dy as an [H, W, N, O]
  kernel."""
  out = jax.lax.conv_general_dilated(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3),
                                     (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
  return out.transpose(1, 2, 0, 3)


def _normal(shape, seed, dtype=jnp.float32):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32).astype(dtype)


def rows(scale: float = 1.0):
  """``(group, name, fn, args, flops, bytes)`` for every kernel; batch-like dims x scale."""
  def s(n):
    return max(1, int(round(n * scale)))
  out = []
  for n, label in [(s(16 * 2**20), f"{s(16 * 2**20) * 4 / 2**20:.0f} MiB"),
                   (TOY_PARAMS, "the toy's 1.32M parameters")]:
    x = _normal((n,), 0)
    out.append(("stream", f"2x+1 over {label}", lambda x: 2.0 * x + 1.0, (x,), 2 * n, 8 * n))
  # One Adam update of the toy's parameter count, as one leaf (bytes: read p, g, m, v;
  # write p, m, v), the part of the toy step no model change can remove.
  tx = optax.adam(1e-3)
  p, g = _normal((TOY_PARAMS,), 12), _normal((TOY_PARAMS,), 13)
  def adam(p, g, state):
    updates, state = tx.update(g, state, p)
    return optax.apply_updates(p, updates), state
  out.append(("stream", "Adam update of 1.32M parameters", adam, (p, g, tx.init(p)),
              0, 7 * 4 * TOY_PARAMS))
  # The fixed cost of one kernel: 500 dependent tiny ones (512 floats each), kept apart by
  # optimisation barriers so XLA cannot fuse them. The toy step runs ~500 such kernels.
  def chain(x):
    for _ in range(500):
      x = jax.lax.optimization_barrier(jnp.sin(x) + 1.0)
    return x
  out.append(("dispatch", "500 dependent tiny kernels (per kernel: ms / 500)", chain,
              (_normal((512,), 14),), 0, 0))
  m = max(256, int(round(4096 * scale ** (1 / 3))))
  for dtype in (jnp.float32, jnp.bfloat16):
    a, b = _normal((m, m), 1, dtype), _normal((m, m), 2, dtype)
    out.append(("matmul", f"{m}^3 {jnp.dtype(dtype).name}", lambda a, b: a @ b, (a, b),
                2 * m ** 3, 0))
  rows_text = s(5200)
  for i, o in [(384, 1024), (1024, 1024), (1024, 768)]:
    x, w, dy = _normal((rows_text, i), 3), _normal((i, o), 4), _normal((rows_text, o), 5)
    f = 2 * rows_text * i * o
    shape = f"[{rows_text},{i}]x[{i},{o}]"
    out.append(("text dots", f"{shape} forward X W", lambda x, w: x @ w, (x, w), f, 0))
    out.append(("text dots", f"{shape} dX = dY W^T", lambda dy, w: dy @ w.T, (dy, w), f, 0))
    out.append(("text dots", f"{shape} dW = X^T dY", lambda x, dy: x.T @ dy, (x, dy), f, 0))
  # The text step's dropout masks (rate 0.5 after the first layer of each of 7 couplings):
  # one 32-bit random word per element.
  def masks(key):
    return [jax.random.bernoulli(jax.random.fold_in(key, i), 0.5, (rows_text, 1024))
            for i in range(7)]
  out.append(("text dots", f"dropout masks 7 x [{rows_text},1024]", masks,
              (jax.random.PRNGKey(0),), 0, 0))
  for batch, hw, c in [(64, 32, 64), (64, 16, 64), (64, 16, 128)]:
    batch = s(batch)
    x, w, dy = _normal((batch, hw, hw, c), 6), _normal((3, 3, c, c), 7) * 0.05, \
        _normal((batch, hw, hw, c), 8)
    f = 2 * batch * hw * hw * 9 * c * c
    name = f"N{batch} {hw}x{hw} {c}->{c}"
    out.append(("conv3x3", f"{name} forward", _conv, (x, w), f, 0))
    out.append(("conv3x3", f"{name} input grad",
                lambda dy, x, w: jax.vjp(_conv, x, w)[1](dy)[0], (dy, x, w), f, 0))
    out.append(("conv3x3", f"{name} filter grad",
                lambda dy, x, w: jax.vjp(_conv, x, w)[1](dy)[1], (dy, x, w), f, 0))
    if hw == 32:
      out.append(("conv3x3", f"{name} filter grad as 9 shifted GEMMs", _filter_grad_taps,
                  (x, dy), f, 0))
      out.append(("conv3x3", f"{name} filter grad as a convolution over the batch axis",
                  _filter_grad_batch_conv, (x, dy), f, 0))
      out.append(("conv3x3", f"{name} forward NCHW",
                  lambda x, w: _conv(x, w, ("NCHW", "OIHW", "NCHW")),
                  (x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)), f, 0))
      out.append(("conv3x3", f"{name} forward bf16 (f32 accumulation)",
                  lambda x, w: jax.lax.conv_general_dilated(
                      x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                      preferred_element_type=jnp.float32),
                  (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)), f, 0))
  batch = s(64)
  x, w, dy = _normal((batch, 32, 32, 64), 9), _normal((1, 1, 64, 64), 10), \
      _normal((batch, 32, 32, 64), 11)
  f = 2 * batch * 32 * 32 * 64 * 64
  name = f"N{batch} 32x32 64->64"
  def dot(x, w):
    return jnp.einsum("bhwc,co->bhwo", x, w[0, 0])
  for label, fn in [("lax conv", _conv), ("matrix product", dot)]:
    out.append(("conv1x1", f"{name} {label} forward", fn, (x, w), f, 0))
    out.append(("conv1x1", f"{name} {label} filter grad",
                lambda dy, x, w, fn=fn: jax.vjp(fn, x, w)[1](dy)[1], (dy, x, w), f, 0))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--scale", type=float, default=1.0,
                      help="multiplies the batch-like dimensions (1 = the workloads' sizes)")
  parser.add_argument("--groups", default="",
                      help="comma-separated groups to time (default: all): " + ", ".join(GROUPS))
  parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
  args = parser.parse_args(argv)
  if not 0 < args.scale <= 1:
    parser.error("--scale must be in (0, 1]")
  groups = [g for g in args.groups.split(",") if g] or list(GROUPS)
  unknown = sorted(set(groups) - set(GROUPS))
  if unknown:
    parser.error(f"--groups: unknown {unknown}; choose from {', '.join(GROUPS)}")
  header = (f"{datetime.datetime.now().isoformat(timespec='seconds')}, jax {jax.__version__}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{jax.devices()[0].platform}")
  print(header)
  print("| group | kernel | ms | GFLOP/s | GB/s |")
  print("|---|---|---|---|---|")
  results = []
  for group, name, fn, fn_args, flops, nbytes in rows(args.scale):
    if group not in groups:
      continue
    seconds = _median_seconds(fn, *fn_args, repeats=args.repeats)
    row = {"group": group, "kernel": name, "seconds": seconds,
           "gflops_per_s": flops / seconds / 1e9 if flops else None,
           "gb_per_s": nbytes / seconds / 1e9 if nbytes else None}
    results.append(row)
    gbs = f"{row['gb_per_s']:.1f}" if nbytes else ""
    gfs = f"{row['gflops_per_s']:.0f}" if flops else ""
    print(f"| {group} | {name} | {seconds * 1e3:.2f} | {gfs} | {gbs} |",
          flush=True)
  if args.json:
    with open(args.json, "w") as f:
      from benchmarks.provenance import provenance
      json.dump({"provenance": provenance(argv), "header": header,
                 "xla_flags": os.environ.get("XLA_FLAGS", ""), "scale": args.scale,
                 "repeats": args.repeats,
                 "rows": results}, f, indent=1)
  return results


if __name__ == "__main__":
  main()
