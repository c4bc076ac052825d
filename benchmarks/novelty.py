"""What only a density can do, measured: unfamiliar rows (``heldout``: a held-out class per
table; ``images``: MNIST against Fashion-MNIST) and the rows to label next (``query``,
``figure``). Commands and protocols: benchmarks/README.md; results: docs/novelty.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import ssl_suite
from benchmarks.provenance import REPO, int_list, name_list, provenance, write_json
from benchmarks.report import md_table

RESULTS = REPO / "benchmarks" / "results"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MIN_TEST_ROWS = 5
REJECT_RATE = 0.05
LABELS_PER_ROUND = 10


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
  from sklearn.metrics import roc_auc_score
  return float(roc_auc_score(positive.astype(int), scores))


def baseline_scores(x_train: np.ndarray, x_eval: np.ndarray, seed: int) -> dict:
  """IsolationForest and LocalOutlierFactor outlier scores (higher = more unusual)."""
  from sklearn.ensemble import IsolationForest
  from sklearn.neighbors import LocalOutlierFactor
  from sklearn.preprocessing import StandardScaler
  scaler = StandardScaler().fit(x_train)
  a, b = scaler.transform(x_train), scaler.transform(x_eval)
  forest = IsolationForest(random_state=seed, n_jobs=1).fit(a)
  lof = LocalOutlierFactor(novelty=True).fit(a)
  return {"isolation_forest": -forest.score_samples(b), "local_outlier_factor":
          -lof.score_samples(b)}


def heldout(args) -> dict:
  from flowgmm_jax import FlowGMMClassifier, novelty
  results = {}
  for table in args.tables:
    x, y = ssl_suite.load_table(table)
    if np.unique(y).size < 3:
      results[table] = {"skipped": "binary: one class would be left"}
      continue
    runs = []
    for seed in args.seeds:
      x_tr, _, y_tr, x_te, y_te = ssl_suite.make_split(x, y, seed, ssl_suite.LABELS_PER_CLASS,
                                                       validation=args.validation)
      eligible = [c for c in np.unique(y_tr) if (y_te == c).sum() >= MIN_TEST_ROWS]
      gen = np.random.default_rng((seed, 34))
      for c in gen.permutation(eligible)[:args.classes_per_seed]:
        keep, novel = y_tr != c, y_te == c
        y_semi = ssl_suite.semi_supervised_labels(y_tr[keep], seed, ssl_suite.LABELS_PER_CLASS)
        start = time.perf_counter()
        clf = FlowGMMClassifier(random_state=seed).fit(x_tr[keep], y_semi)
        run = {"seed": seed, "held_out_class": int(c), "novel_rows": int(novel.sum()),
               "fit_seconds": time.perf_counter() - start}
        for kind in novelty.OUTLIER_SCORES:
          run[kind] = auroc(clf.outlier_score(x_te, kind), novel)
        for name, s in baseline_scores(x_tr[keep], x_te, seed).items():
          run[name] = auroc(s, novel)
        rejected = clf.predict(x_te, reject_rate=REJECT_RATE) == -1
        run["rejected_novel"] = float(rejected[novel].mean())
        run["rejected_known"] = float(rejected[~novel].mean())
        run["accuracy_known"] = float((clf.predict(x_te[~novel]) == y_te[~novel]).mean())
        runs.append(run)
        print(table, json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                 for k, v in run.items()}), flush=True)
    results[table] = {"runs": runs}
  return results


def images(args) -> dict:
  import flowgmm_jax
  from flowgmm_jax import novelty
  from flowgmm_jax.data.dataset import default_data_dir
  from flowgmm_jax.data.images import load_mnist
  if not Path(FASHION_DIR).is_dir():
    raise SystemExit(f"no Fashion-MNIST at {FASHION_DIR}: apt-get install dataset-fashion-mnist")
  model = flowgmm_jax.load(args.workdir, step=args.step)
  mnist = load_mnist(str(Path(default_data_dir()) / "mnist"))
  if args.validation:  # neither the reported rows nor the reported reference
    fashion = load_mnist(FASHION_DIR).x_train[:10000]
    reference, known, known_y = (mnist.x_test[2500:5000], mnist.x_test[:2500],
                                 mnist.y_test[:2500])
  else:
    fashion = load_mnist(FASHION_DIR).x_test
    reference, known, known_y = mnist.x_test[:5000], mnist.x_test[5000:], mnist.y_test[5000:]
  x = np.concatenate([known, fashion])
  novel = np.r_[np.zeros(len(known), bool), np.ones(len(fashion), bool)]
  out = {"workdir": args.workdir, "step": model.step, "known_rows": len(known),
         "novel_rows": len(fashion),
         "accuracy_known": float((model.predict(known) == known_y).mean())}
  for kind in novelty.OUTLIER_SCORES:
    scores = model.outlier_score(x, kind, reference=reference)
    out[kind] = auroc(scores, novel)
    if kind == "neg_log_px":  # bits/dim of each set, to say which way log p(x) errs
      bpd = scores / (model.num_dims * np.log(2))
      out["bits_per_dim_known"] = float(np.mean(bpd[~novel]))
      out["bits_per_dim_novel"] = float(np.mean(bpd[novel]))
  # Where -log p(x) fails: images simpler than the training data. An all-black image; 1,000
  # images of one grey level each (uniform in 1..255); 1,000 known images under a 5x5 box
  # blur.
  gen = np.random.default_rng(0)
  black = np.zeros((1, *known.shape[1:]))
  flat_grey = np.broadcast_to(gen.integers(1, 256, (1000, 1, 1, 1)), (1000, *known.shape[1:]))
  padded = np.pad(known[:1000].astype(np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)), "edge")
  blurred = np.mean([padded[:, i:i + 28, j:j + 28] for i in range(5) for j in range(5)], axis=0)
  for name, simple in (("black", black), ("grey", flat_grey), ("blurred", np.round(blurred))):
    xs = np.concatenate([known, simple.astype(known.dtype)])
    is_new = np.r_[np.zeros(len(known), bool), np.ones(len(simple), bool)]
    out[f"simple_{name}"] = {kind: auroc(model.outlier_score(xs, kind, reference=reference),
                                         is_new) for kind in novelty.OUTLIER_SCORES}
  flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
  from sklearn.ensemble import IsolationForest
  forest = IsolationForest(random_state=0, n_jobs=1).fit(flat(mnist.x_train[:20000]))
  out["isolation_forest"] = auroc(-forest.score_samples(flat(x)), novel)
  print(json.dumps(out, indent=1))
  return out


def fit_flowgmm(x, y_semi, seed):
  from flowgmm_jax import FlowGMMClassifier
  return FlowGMMClassifier(random_state=seed).fit(x, y_semi)


def self_training(x, y_semi, seed):
  """The suite's ``selftraining`` baseline on standardised rows."""
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  model = ssl_suite.baseline("selftraining", seed)[0]
  return make_pipeline(StandardScaler(), model).fit(x, y_semi)


def pick(rule: str, model, x_pool: np.ndarray, n: int, seed: int) -> np.ndarray:
  """Indices into ``x_pool`` of the next ``n`` rows to label."""
  if rule == "random":
    return np.random.default_rng(seed).permutation(len(x_pool))[:n]
  if rule == "least_confident":  # the baseline's uncertainty sampling
    return np.argsort(model.predict_proba(x_pool).max(axis=1), kind="stable")[:n]
  return model.query(x_pool, n, rule=rule, random_state=seed)


def query(args) -> dict:
  results = {}
  for table in args.tables:
    x, y = ssl_suite.load_table(table)
    curves = []
    for seed in args.seeds:
      x_tr, y_semi0, y_tr, x_ev, y_ev = ssl_suite.make_split(
          x, y, seed, ssl_suite.LABELS_PER_CLASS, validation=args.validation)
      num_classes = np.unique(y_tr).size
      for method, rules in (("flowgmm", args.rules), ("selftraining", args.baseline_rules)):
        fit = fit_flowgmm if method == "flowgmm" else self_training
        model0 = fit(x_tr, y_semi0, seed)
        first = float((model0.predict(x_ev) == y_ev).mean())
        for rule in rules:
          y_semi, model, acc = y_semi0.copy(), model0, [first]
          for r in range(args.rounds):
            pool = np.flatnonzero(y_semi < 0)
            if pool.size == 0:  # every training row is labelled: the model stays as it is
              acc.append(acc[-1])
              continue
            n = min(LABELS_PER_ROUND * num_classes, len(pool))
            chosen = pool[pick(rule, model, x_tr[pool], n, seed * 100 + r)]
            y_semi[chosen] = y_tr[chosen]
            model = fit(x_tr, y_semi, seed)
            acc.append(float((model.predict(x_ev) == y_ev).mean()))
          curves.append({"seed": seed, "method": method, "rule": rule, "accuracy": acc})
          print(table, seed, method, rule, np.round(acc, 3).tolist(), flush=True)
    results[table] = {"curves": curves}
  return results


def summary_heldout(results: dict) -> dict:
  from flowgmm_jax import novelty
  kinds = (*novelty.OUTLIER_SCORES, "isolation_forest", "local_outlier_factor",
           "rejected_novel", "rejected_known")
  table_means = {}
  for table, r in results.items():
    if "runs" in r and r["runs"]:
      table_means[table] = {k: [float(np.mean([run[k] for run in r["runs"]])),
                                float(np.std([run[k] for run in r["runs"]]))] for k in kinds}
  return {"per_table": table_means, "mean_over_tables": {
      k: float(np.mean([m[k][0] for m in table_means.values()])) for k in kinds}}


def summary_query(results: dict) -> dict:
  """Mean accuracy per (method, rule, round) over seeds, per table and over tables; and, per
  table, the labels per class at which each rule first matches random's accuracy at the
  last round."""
  per_table, matches = {}, {}
  for table, r in results.items():
    groups = {}
    for c in r["curves"]:
      groups.setdefault(f"{c['method']}/{c['rule']}", []).append(c["accuracy"])
    means = {k: np.mean(v, axis=0).tolist() for k, v in groups.items()}
    per_table[table] = means
    target = means.get("flowgmm/random", [None])[-1]
    if target is not None:
      for k, curve in means.items():
        if k.startswith("flowgmm/"):
          hit = [i for i, a in enumerate(curve) if a >= target - 1e-9]
          matches.setdefault(k, {})[table] = LABELS_PER_ROUND * (1 + hit[0]) if hit else None
  keys = sorted({k for m in per_table.values() for k in m})
  mean = {k: np.mean([m[k] for m in per_table.values() if k in m], axis=0).tolist()
          for k in keys}
  return {"per_table": per_table, "mean_over_tables": mean,
          "labels_per_class_to_match_random_at_last_round": matches}


SCORE_NAMES = {"neg_log_px": "-log p(x)", "typicality": "typicality",
               "mahalanobis": "Mahalanobis", "max_prob": "1 - max p(y\\|x)",
               "isolation_forest": "IsolationForest", "local_outlier_factor": "LOF"}


def _pm(values) -> str:
  return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def markdown(report: dict) -> str:
  """The docs' table of one results file (``benchmarks.report``), from its raw runs."""
  what, results = report["what"], report["results"]
  if what == "heldout":
    names, rows, skipped = list(SCORE_NAMES), [], []
    for table, r in results.items():
      if not r.get("runs"):
        skipped.append(table)
        continue
      runs = r["runs"]
      best = max(names, key=lambda k: np.mean([x[k] for x in runs]))
      cells = [(f"**{_pm([x[k] for x in runs])}**" if k == best
                else _pm([x[k] for x in runs])) for k in names]
      rows.append([table, len(runs), *cells,
                   f"{np.mean([x['rejected_novel'] for x in runs]):.2f} / "
                   f"{np.mean([x['rejected_known'] for x in runs]):.2f}"])
    mean = summary_heldout(results)["mean_over_tables"]
    rows.append(["**mean over tables**", "", *(f"**{mean[k]:.3f}**" for k in names),
                 f"**{mean['rejected_novel']:.2f} / {mean['rejected_known']:.2f}**"])
    head = ["table", "runs", *(SCORE_NAMES[k] for k in names), "rejected at 5%: novel / known"]
    lines = [md_table(head, rows), "",
             f"Skipped (two classes: one would be left): {', '.join(skipped)}."]
  elif what == "images":
    lines = [md_table(["score", "AUROC, MNIST (known) against Fashion-MNIST (novel)"],
                      [[SCORE_NAMES[k], f"{results[k]:.3f}"] for k in SCORE_NAMES
                       if k in results])]
    if "simple_grey" in results:
      simple = [[label, *(f"{v:.3f}" for v in results[name].values())]
                for name, label in (("simple_black", "an all-black image"),
                                    ("simple_grey", "1,000 images of one grey level in 1..255"),
                                    ("simple_blurred", "1,000 MNIST test images, 5x5 box blur"))]
      head = ["novel images simpler than MNIST", *(SCORE_NAMES[k] for k in results["simple_grey"])]
      lines += ["", md_table(head, simple)]
    lines += ["", f"Bits/dim: MNIST {results['bits_per_dim_known']:.2f}, Fashion-MNIST "
              f"{results['bits_per_dim_novel']:.2f}; accuracy on the known rows "
              f"{100 * results['accuracy_known']:.1f}% (step {results['step']})."]
  else:
    summary = summary_query(results)
    keys = sorted(summary["mean_over_tables"])
    lpc = [LABELS_PER_ROUND * (1 + i) for i in range(len(summary["mean_over_tables"][keys[0]]))]
    rows = [[table, k.replace("/", ": "), *(f"{100 * a:.1f}" for a in means[k])]
            for table, means in [*summary["per_table"].items(),
                                 ("**mean over tables**", summary["mean_over_tables"])]
            for k in keys if k in means]
    lines = [md_table(["table", "method: rule", *(f"{n} labels/class" for n in lpc)], rows), ""]
    for k, per in summary["labels_per_class_to_match_random_at_last_round"].items():
      hits = [v for v in per.values() if v is not None]
      lines.append(f"- {k.replace('/', ': ')}: labels per class to match random rows at "
                   f"{lpc[-1]}: mean {np.mean(hits) if hits else float('nan'):.1f} over the "
                   f"{len(hits)} of {len(per)} tables where it does ("
                   + ", ".join(f"{t} {'never' if v is None else v}" for t, v in per.items())
                   + ").")
  return "\n".join(lines) + "\n"


def figure(path: Path, output: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  report = json.loads(path.read_text())
  mean = summary_query(report["results"])["mean_over_tables"]
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for key, curve in sorted(mean.items()):
    lpc = LABELS_PER_ROUND * (1 + np.arange(len(curve)))
    ax.plot(lpc, 100 * np.asarray(curve), marker="o", label=key.replace("/", ": "),
            linestyle="-" if key.startswith("flowgmm") else "--")
  ax.set_xlabel("labels per class")
  ax.set_ylabel("accuracy, mean over tables (%)")
  ax.set_title(f"Label efficiency ({len(report['results'])} tables, seeds "
               f"{report['seeds'][0]}-{report['seeds'][-1]})", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  output.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(output, dpi=120)
  print(f"wrote {output}")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("what", choices=("heldout", "images", "query", "figure"))
  parser.add_argument("--tables", type=name_list(ssl_suite.ALL_TABLES), default=None,
                      help="comma-separated; default: both panels")
  parser.add_argument("--seeds", type=int_list, default="0,1,2")
  parser.add_argument("--classes-per-seed", type=int, default=3)
  parser.add_argument("--workdir", default="/tmp/mnist_cpu")
  parser.add_argument("--step", type=int, default=None, help="images: the checkpoint's step")
  parser.add_argument("--rules", type=name_list(), default="density_entropy,random")
  parser.add_argument("--baseline-rules", type=name_list(), default="least_confident,random")
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--validation", action="store_true")
  parser.add_argument("--output", default=None)
  args = parser.parse_args(argv)
  args.tables = args.tables or list(ssl_suite.ALL_TABLES)
  suffix = "_validation" if args.validation else ""
  default = RESULTS / f"novelty_{'query' if args.what == 'figure' else args.what}{suffix}.json"
  output = Path(args.output) if args.output else default
  if args.what == "figure":
    figure(output, REPO / "docs" / "label_efficiency.png")
    return {}
  results = {"heldout": heldout, "images": images, "query": query}[args.what](args)
  report = {"what": args.what, "provenance": provenance(argv), "seeds": args.seeds,
            "results": results}
  if args.what == "heldout":
    report["summary"] = summary_heldout(results)
  elif args.what == "query":
    report["summary"] = summary_query(results)
  write_json(output, report)
  print(json.dumps(report.get("summary", {}), indent=1)[:3000])
  return report


if __name__ == "__main__":
  main()
