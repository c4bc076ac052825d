"""The parity study: the original PyTorch FlowGMM and ours trained side by side on MNIST, same
small model, recipe and data; each run is merged into ``--json`` under a file lock (so runs can
be separate processes) and the figure redrawn. Everything else: benchmarks/parity/README.md."""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.provenance import git_commit, int_list, machine, name_list, usable_cores, write_json
from benchmarks.report import md_table
from configs import mnist
from flowgmm_jax.data import Dataset, load_mnist, stratified_prefix
from flowgmm_jax.models import count_params
from flowgmm_jax.training.loop import fit
from flowgmm_jax.training.optim import make_schedule

RECIPES = ("original", "original_zero_init", "cpu", "cpu_schedule")
NUM_DIMS = 28 * 28
BPD = 1.0 / (NUM_DIMS * math.log(2.0))  # nats per image -> bits/dim


def recipe(name: str) -> dict:
  """The settings of recipe ``name`` (README.md), read from configs/mnist.py."""
  if name not in RECIPES:
    raise ValueError(f"unknown recipe {name!r}; choose from {RECIPES}")
  full, cpu = mnist.get_config(), mnist.get_config("cpu")
  readme, scheduled = name.startswith("original"), name == "cpu_schedule"
  return dict(
      learning_rate=full.optim.learning_rate if readme else mnist.CPU_LR,
      label_weight=full.loss.label_weight if readme else mnist.CPU_LABEL_WEIGHT,
      consistency_rampup_steps=full.loss.consistency_rampup_steps if readme else mnist.CPU_RAMP,
      lr_schedule=cpu.optim.lr_schedule if scheduled else "constant",
      warmup_steps=cpu.optim.warmup_steps if scheduled else 0,
      consistency_weight=full.loss.consistency_weight, weight_decay=full.optim.weight_decay,
      grad_clip_norm=full.optim.grad_clip_norm, labeled_batch_size=full.data.labeled_batch_size,
      unlabeled_batch_size=full.data.unlabeled_batch_size,
      crop_padding=full.augment.crop_padding, model=dict(mnist.CPU_MODEL),
      zero_init_last=name == "original_zero_init",
      sides=("ours",) if name == "original_zero_init" else ("ours", "original"),
      first_seed_only=name.startswith("cpu"))


def original_label_split(y: np.ndarray, num_labels: int, split: int):
  """The original's MNIST label file ``<num_labels>_balanced_labels/<split>.npz``
  (data/bin/unpack_mnist.py): (labeled_idx, unlabeled_idx), both sorted."""
  rs = np.random.RandomState(split)  # np.random.seed(i); np.random.shuffle(indices)
  indices = np.arange(len(y))
  rs.shuffle(indices)
  mask = np.zeros(len(y), bool)
  for j in range(10):
    mask[np.where(y[indices] == j)[0][:num_labels // 10]] = True
  return np.sort(indices[mask]), np.sort(indices[~mask])


def our_config(r: dict, *, seed: int, steps: int, num_labels: int, eval_every: int,
               num_test: int):
  c = mnist.get_config("cpu")
  c.model.update(r["model"])
  for key, value in r.items():  # each setting into the one section that has it
    for section in ("data", "optim", "loss", "augment", "model"):
      if key in c[section]:
        c[section][key] = value
  c.seed, c.data.num_labeled_per_class = seed, num_labels // 10
  c.num_train_steps, c.log_every_steps, c.eval_every_steps = steps, 1, eval_every
  c.checkpoint_every_steps, c.eval_batch_size = steps, min(500, num_test)
  c.progress_bar = c.plots = False
  return c


def run_ours(r: dict, *, seed: int, steps: int, num_labels: int, eval_every: int, data) -> dict:
  """One run of our side through ``flowgmm_jax.training.loop.fit``."""
  c = our_config(r, seed=seed, steps=steps, num_labels=num_labels, eval_every=eval_every,
                 num_test=len(data.x_test))
  per_step, tests, times = {}, {}, []
  names = {k: f"train/{k}" for k in ("loss", "cross_entropy", "consistency", "consistency_weight",
                                     "labeled_accuracy", "log_det")} | {"nll": "train/nll_all"}

  def log_fn(step, metrics):
    if "train/loss" in metrics:
      times.append((step, time.perf_counter()))
      per_step[step] = {k: float(metrics[v]) for k, v in names.items()}
    else:
      tests[step] = {k: float(metrics[f"eval/{k}"]) for k in ("accuracy", "bpd_given_label", "bpd")}
      print(f"[parity] ours step {step}: {tests[step]}", flush=True)

  t0 = time.perf_counter()
  result = fit(c, data, original_label_split(data.y_train, num_labels, seed), log_fn=log_fn)
  wall = time.perf_counter() - t0
  intervals = [b[1] - a[1] for a, b in zip(times, times[1:], strict=False) if a[0] % eval_every]
  return _record(per_step, tests, eval_every, steps,
                 num_params=count_params(result.variables), wall_s=wall,
                 first_step_s=times[0][1] - t0,
                 step_s=float(np.median(intervals)) if intervals else float("nan"),
                 threads=f"XLA CPU, {usable_cores()} core(s)", jax=jax.__version__)


def run_original(orig, r: dict, *, seed: int, steps: int, num_labels: int, eval_every: int,
                 data) -> dict:
  """One run of the original side: its modules in a loop shaped like its script."""
  import torch

  from benchmarks.parity import original_step as os_
  torch.set_num_threads(1)
  labeled, unlabeled = original_label_split(data.y_train, num_labels, seed)
  torch.manual_seed(seed)
  m = os_.build_image_flowgmm(orig, os_.prior_built_once(orig), image_shape=(1, 28, 28),
                              num_classes=10, lr=r["learning_rate"],
                              weight_decay=r["weight_decay"], **r["model"])
  prior = (m.prior.means, m.prior.weights, m.prior.inv_cov_stds)
  prior_before = [t.detach().clone() for t in prior]
  bl, bu = r["labeled_batch_size"], r["unlabeled_batch_size"]
  steps_per_epoch = len(labeled) // bl
  rs = np.random.RandomState(seed)
  rampup_epochs = max(1, round(r["consistency_rampup_steps"] / steps_per_epoch))
  learning_rate = make_schedule(r["lr_schedule"], r["learning_rate"], steps, r["warmup_steps"])
  gen = torch.Generator().manual_seed(seed)
  x_all = torch.from_numpy(data.x_train).permute(0, 3, 1, 2)  # uint8 [N, 1, 28, 28]
  y_all = torch.from_numpy(data.y_train.astype(np.int64))
  per_step, tests, times = {}, {}, []
  t0 = time.perf_counter()
  for step in range(steps):
    ts = time.perf_counter()
    # The script's linear_rampup, per epoch (defined in the script, not importable).
    epoch, i = divmod(step, steps_per_epoch)
    cons_w = min((epoch + 1) / rampup_epochs, 1.0) * r["consistency_weight"]
    for group in m.optimizer.param_groups:  # optax's schedule, evaluated at this step
      group["lr"] = float(learning_rate(step))
    if i == 0:  # LabeledUnlabeledBatchSampler (ssl_data_utils.py), its draws seeded: README.md
      lab_epoch = rs.permutation(labeled)
      unl_epoch = np.concatenate([rs.permutation(unlabeled)
                                  for _ in range(-(-steps_per_epoch * bu // len(unlabeled)))])
    lab, unl = lab_epoch[i * bl:(i + 1) * bl], unl_epoch[i * bu:(i + 1) * bu]
    images = x_all[torch.from_numpy(np.concatenate([lab, unl]))].float() / 255.  # ToTensor
    y = torch.cat([y_all[torch.from_numpy(lab)], torch.full((len(unl),), -1)])
    x1, x2 = (os_.crop_flip(images, gen, r["crop_padding"], flip=False)  # TransformTwice
              for _ in range(2))
    out = os_.image_train_step(orig, m, x1, x2, y, label_weight=r["label_weight"],
                               consistency_weight=cons_w, max_grad_norm=r["grad_clip_norm"])
    # Our log-det convention: of the whole map from 8-bit pixels, -D log 256 included (the
    # original adds that term in FlowLoss instead).
    per_step[step + 1] = {k: float(v) for k, v in out.items()} | {
        "consistency_weight": cons_w,
        "log_det": float(out["log_det"]) - NUM_DIMS * math.log(256.0)}
    times.append(time.perf_counter() - ts)  # [0]: the first step; step_s: the median of the rest
    if (step + 1) % eval_every == 0 or step + 1 == steps:
      tests[step + 1] = {k + suffix: v for midpoint, suffix in ((False, ""), (True, "_midpoint"))
                         for k, v in os_.evaluate_image(m, data.x_test, data.y_test,
                                                        midpoint=midpoint).items()}
      print(f"[parity] original step {step + 1}: {tests[step + 1]}", flush=True)
  return _record(per_step, tests, eval_every, steps,
                 num_params=sum(p.numel() for p in m.net.parameters()),
                 wall_s=time.perf_counter() - t0, first_step_s=times[0] if times else None,
                 step_s=float(np.median(times[1:])) if times[1:] else float("nan"),
                 threads="torch, 1 thread", torch=torch.__version__, original_commit=orig.commit,
                 prior_changed=any(not torch.equal(a, b)
                                   for a, b in zip(prior_before, prior, strict=True)),
                 prior_requires_grad=[bool(t.requires_grad) for t in prior],
                 consistency_rampup_epochs=rampup_epochs, steps_per_epoch=steps_per_epoch)


def _record(per_step: dict, tests: dict, eval_every: int, steps: int, **extra) -> dict:
  """Window means of the per-step training values at each evaluation, and the tests."""
  evals = []
  for s in sorted(tests):
    window = [per_step[t] for t in range(max(1, s - eval_every + 1), s + 1) if t in per_step]
    train = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
    evals.append({"step": int(s), "train": train, "test": tests[s]})
  return {"first_step": per_step.get(1, {}), "evals": evals, "steps": steps, **extra}


def merge(path: str, key: str, run: dict, header: dict, figure: str = "") -> dict:
  """Adds ``run`` under ``runs[key]`` of the JSON at ``path`` (created if missing) and redraws
  ``figure`` from it, under a file lock; returns the whole file's content."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the lock file closes
    results = json.loads(Path(path).read_text()) if os.path.exists(path) else {"runs": {}}
    results.update({k: v for k, v in header.items() if k != "command"})
    if header["command"] not in results.setdefault("commands", []):
      results["commands"].append(header["command"])
    results["runs"][key] = run
    write_json(path, results, sort_keys=True)
    if figure:
      plot(results, figure)
  return results


def curves(results: dict, recipe_name: str, side: str, group: str, key: str):
  """(steps, mean, std, n) over the seeds of (recipe, side) for ``evals[*][group][key]``."""
  runs = [r for r in results["runs"].values()
          if r["recipe"] == recipe_name and r["side"] == side]
  if not runs:
    return None
  steps = sorted({e["step"] for r in runs for e in r["evals"]})
  vals = [[e[group][key] for r in runs for e in r["evals"] if e["step"] == s and key in e[group]]
          for s in steps]
  return (np.asarray(steps), np.asarray([float(np.mean(v)) if v else np.nan for v in vals]),
          np.asarray([float(np.std(v)) if v else np.nan for v in vals]), [len(v) for v in vals])


def parity_table(results: dict, recipe_name: str = "original",
                 ours_recipe: str | None = None) -> str:
  """Markdown: per evaluation, test accuracy and bits/dim of ours and the original's (at the bin
  midpoint, as ours), mean ± sd over seeds, and the parity criterion (README.md)."""
  ours_recipe = ours_recipe or recipe_name
  rows = []
  for key, label, scale, digits in (("accuracy", "test accuracy", 100.0, 1),
                                    ("bpd_given_label", "test bits/dim", 1.0, 3)):
    o = curves(results, ours_recipe, "ours", "test", key)
    t = curves(results, recipe_name, "original", "test", key + "_midpoint")
    theirs = {s: j for j, s in enumerate(t[0]) if t[3][j]} if o is not None and t else {}
    for i, s in enumerate(o[0] if theirs else ()):
      if (j := theirs.get(s)) is None:
        continue
      mo, so, mt, st = o[1][i] * scale, o[2][i] * scale, t[1][j] * scale, t[2][j] * scale
      verdict = ("n/a (one seed)" if min(o[3][i], t[3][j]) < 2
                 else "yes" if abs(mo - mt) <= so + st else "NO")
      rows.append([s, label, f"{mo:.{digits}f} ± {so:.{digits}f} (n={o[3][i]})",
                   f"{mt:.{digits}f} ± {st:.{digits}f} (n={t[3][j]})", verdict])
  head = ["step", "quantity", "ours", "original", "gap within spreads"]
  return (f"ours ({ours_recipe}) vs original ({recipe_name}), mean ± sd over seeds\n"
          + md_table(head, rows))


def markdown(results: dict) -> str:
  """The parity tables docs/results.md shows (``benchmarks.report``), one per recipe run."""
  runs = results.get("runs", {})
  return "\n\n".join(parity_table(results, name, ours) for name, ours in (
      ("original", None), ("original", "original_zero_init"), ("cpu", None),
      ("cpu_schedule", None)) if any(k.startswith(f"{ours or name}/ours/") for k in runs))


PANELS = (("test", "accuracy", "test accuracy (2,000 images)", 100.0, "%"),
          ("test", "bpd_given_label", "test bits/dim, -log p(x | y)", 1.0, "bits/dim"),
          ("train", "labeled_accuracy", "labelled-batch accuracy", 100.0, "%"),
          ("train", "cross_entropy", "cross-entropy (labelled)", 1.0, "nats"),
          ("train", "nll", "mixture NLL (all rows)", BPD, "bits/dim"),
          ("train", "consistency", "consistency NLL", BPD, "bits/dim"))
# (label, colour, line style) of ours; the JSON keeps the retired original_same_init's runs.
OUR_STYLE = {"original_zero_init": ("ours, zero init", "tab:orange", "--"),
             "original_same_init": ("ours from the original's initial tensors", "tab:purple",
                                    "-.")}


def plot(results: dict, path: str) -> None:
  """The figure: a row of six panels (``PANELS``) per recipe group, mean ± sd over seeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = results["runs"]
  same_init_seeds = {v["seed"] for v in runs.values() if v["recipe"] == "original_same_init"}
  groups = [group for group in (
      ("original", ("original", "original_zero_init", "original_same_init"),
       "README MNIST recipe"), ("cpu", ("cpu",), "the :cpu recipe at a constant rate"),
      ("cpu_schedule", ("cpu_schedule",),
       "the shipped :cpu recipe (warm-up 200, then cosine decay)"))
      if any(r["recipe"] in group[1] for r in runs.values())]
  if not groups:
    return
  fig = plt.figure(figsize=(15, 7.5 * len(groups)), layout="constrained")
  for subfig, (group, names, title) in zip(
      fig.subfigures(len(groups), 1, squeeze=False)[:, 0], groups, strict=True):
    r = recipe(group)
    seeds = sorted({run["seed"] for run in runs.values() if run["recipe"] == group})
    subfig.suptitle(
        f"{title}: lr {r['learning_rate']:g}, label weight {r['label_weight']:g}, "
        f"consistency ramp {r['consistency_rampup_steps']} steps; "
        f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}",
        fontsize=12, fontweight="bold")
    for ax, (grp, key, label, scale, unit) in zip(subfig.subplots(2, 3).ravel(), PANELS,
                                                  strict=True):
      for name in names:
        for side, suffix, (lab, color, ls) in (
            ("original", "", ("original (PyTorch)", "k", "-")),
            ("original", "_midpoint", ("original, midpoint dequantisation as ours", "tab:green",
                                       ":")),
            ("ours", "", OUR_STYLE.get(name, ("ours, random init", "tab:blue", "-")))):
          cv = None if suffix and grp != "test" else curves(results, name, side, grp, key + suffix)
          if cv is not None:
            steps, mean, std, n = cv
            ax.plot(steps, mean * scale, ls, color=color, marker="o", ms=3,
                    label=f"{lab} (n={max(n)})")
            if max(n) > 1:
              ax.fill_between(steps, (mean - std) * scale, (mean + std) * scale, color=color,
                              alpha=0.2)
      for seed in sorted(same_init_seeds & set(seeds)) if group == "original" else ():
        # The same-init runs' counterpart: the original's run of the same seed.
        same = {k: v for k, v in runs.items() if k.startswith(f"original/original/seed{seed}/")}
        cv = curves({"runs": same}, "original", "original", grp,
                    key + "_midpoint" if grp == "test" else key)
        if cv is not None:
          ax.plot(cv[0], cv[1] * scale, "--", color="black", lw=0.8, label=(
              f"original seed {seed} (those tensors{', midpoint' if grp == 'test' else ''})"))
      ax.set(title=label, xlabel="training step", ylabel=unit)
      ax.title.set_fontsize(10)
      ax.grid(alpha=0.3)
      if key in ("accuracy", "labeled_accuracy"):
        ax.legend(fontsize=8)
  fig.suptitle("FlowGMM-cons on MNIST, 1,000 labels: the original PyTorch code vs ours, "
               "RealNVP 2 scales x 1 block x 16 channels\nmean ± sd over seeds; training "
               "terms are means over the steps since the previous point", fontsize=11)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--original", default="", help="root of a clone of the original repository")
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--seeds", type=int_list, default="0,1,2")
  p.add_argument("--labels", type=int, default=1000)
  p.add_argument("--side", choices=("both", "ours", "original"), default="both")
  p.add_argument("--recipes", type=name_list(RECIPES), default=",".join(RECIPES))
  p.add_argument("--eval-every", type=int, default=250)
  p.add_argument("--test-examples", type=int, default=2000)
  p.add_argument("--json", default="benchmarks/results/parity_original.json")
  p.add_argument("--figure", default="docs/parity_original.png", help="'' for none")
  p.add_argument("--plot-only", action="store_true",
                 help="redraw the figure and print the tables from --json; run nothing")
  args = p.parse_args(argv)
  if args.plot_only:
    results = json.loads(Path(args.json).read_text())
    if args.figure:
      plot(results, args.figure)
    print(markdown(results))
    return results
  if args.steps < 1 or args.eval_every < 1:
    p.error("--steps and --eval-every must be >= 1")
  if args.labels % 10 or not 32 <= args.labels <= 60000:
    p.error("--labels must be a multiple of 10 between 40 and 60000 (a labelled batch is 32)")
  sides = ("ours", "original") if args.side == "both" else (args.side,)
  orig = None
  if "original" in sides and any("original" in recipe(n)["sides"] for n in args.recipes):
    if not args.original:
      p.error("the original side needs --original=PATH (a clone of "
              "github.com/izmailovpavel/flowgmm), or run --side=ours")
    from benchmarks.parity import original_step
    orig = original_step.load_original(args.original)
  # The two models must be the same (README.md): checked once ours has run.
  theirs = orig and sum(t.numel() for t in orig.RealNVP(
      in_channels=1, **recipe("original")["model"]).parameters())
  ds = load_mnist()
  test = np.sort(stratified_prefix(ds.y_test, args.test_examples))  # fixed, class-balanced
  data = Dataset(name="mnist", kind="image", x_train=ds.x_train, y_train=ds.y_train,
                 x_test=ds.x_test[test], y_test=ds.y_test[test], num_classes=10)
  command = "python -m benchmarks.parity.parity_original " + " ".join(
      a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("--original"))
  commit = git_commit()  # the code that runs (a later edit of the tree is not it)
  header = {"command": command, "labels": args.labels, "test_examples": args.test_examples,
            "eval_every": args.eval_every, "updated_by_commit": commit, "machine": machine(),
            "updated": datetime.datetime.now().isoformat(timespec="seconds")}
  results = {"runs": {}}
  for name in args.recipes:
    r = recipe(name)
    for seed in (args.seeds[:1] if r["first_seed_only"] else args.seeds):
      for side in (s for s in sides if s in r["sides"]):
        kw = dict(seed=seed, steps=args.steps, num_labels=args.labels,
                  eval_every=args.eval_every, data=data)
        print(f"[parity] {name} / {side} / seed {seed}: {args.steps} steps", flush=True)
        run = run_ours(r, **kw) if side == "ours" else run_original(orig, r, **kw)
        run.update(recipe=name, side=side, seed=seed, labels=args.labels,
                   settings={k: v for k, v in r.items() if k != "sides"},
                   date=datetime.datetime.now().isoformat(timespec="seconds"),
                   command=command, git_commit=commit, machine=machine())
        print(f"[parity] {run['num_params']:,} parameters, {run['step_s']:.3f} s/step, wall "
              f"{run['wall_s']:.0f} s; test accuracy " + ", ".join(
                  f"{100 * e['test']['accuracy']:.1f}%" for e in run["evals"]), flush=True)
        if theirs and run["num_params"] != theirs:
          raise SystemExit(f"the two models differ: {side} {run['num_params']:,} parameters, "
                           f"the original's RealNVP {theirs:,}")
        key = f"{name}/{side}/seed{seed}/steps{args.steps}"
        if args.json:
          results = merge(args.json, key, run, header, args.figure)
        else:
          results["runs"][key] = run
  print(markdown(results))
  return results


if __name__ == "__main__":
  main()
