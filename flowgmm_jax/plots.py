"""Figures of a trained FlowGMM (matplotlib, Agg backend; nothing here trains).

Every figure function takes arrays or a ``TrainedFlowGMM`` (see ``trained.py``) and writes
one PNG; ``write_run_plots`` writes the set that fits the run's data kind into
``workdir/plots/`` (and ``experiments/plot.py`` calls it for any saved run):

  all kinds      reliability.png (before / after calibration), confusion.png,
                 training_curves.png (from metrics.jsonl)
  2-D toy data   data_plane.png (decision regions; labelled points marked, unlabelled faint),
                 latent_plane.png (test points mapped by f; components as 1 and 2 sigma
                 circles), class_samples.png
  images         samples.png (one row per class, two temperatures), class_means.png,
                 interpolations.png, feature_vis.png (the paper's optimisation-free feature
                 visualisation: move one latent coordinate of f(x), decode each)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from flowgmm_jax import evaluation, run_files  # noqa: E402

_DPI = 100
_CLASS_COLORS = plt.get_cmap("tab10")


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=_DPI, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)
  return path


def _class_names(num_classes: int, names: Sequence[str] | None):
  return list(names) if names is not None and len(names) == num_classes else [
      str(k) for k in range(num_classes)]


# ----------------------------------------------------------------------------- any data

def reliability_diagram(probs_by_name: dict[str, np.ndarray], labels: np.ndarray, path: str,
                        num_bins: int = 15) -> str:
  """One panel per entry of ``probs_by_name`` ({'before': [N, K], 'after': [N, K]}): accuracy
  per confidence bin against the diagonal, bin counts as bar shading, ECE in the title."""
  names = list(probs_by_name)
  fig, axes = plt.subplots(1, len(names), figsize=(4.0 * len(names), 3.6), squeeze=False)
  for ax, name in zip(axes[0], names, strict=False):
    probs = np.asarray(probs_by_name[name])
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    bins = evaluation.calibration_bins(conf, correct, num_bins)
    ece = evaluation.ece_from_confidences(conf, correct, num_bins)
    centers = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    width = 1.0 / num_bins
    shade = bins["count"] / max(bins["count"].max(), 1)
    ax.bar(centers, bins["accuracy"], width=width, edgecolor="k", linewidth=0.5,
           color=plt.get_cmap("Blues")(0.3 + 0.7 * shade), label="accuracy")
    ax.bar(centers, bins["confidence"] - bins["accuracy"], bottom=bins["accuracy"],
           width=width, color="tab:red", alpha=0.3, label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title=f"{name}: ECE {ece:.3f}")
    ax.set_aspect("equal")
  axes[0, 0].legend(loc="upper left", fontsize=8)
  return _save(fig, path)


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int, path: str,
                     class_names: Sequence[str] | None = None) -> str:
  """Row-normalised confusion matrix (rows: true class, columns: predicted), with counts."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (np.asarray(labels), np.asarray(predicted)), 1)
  rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  names = _class_names(num_classes, class_names)
  size = min(7.5, max(3.5, 0.3 * num_classes + 1.5))
  fig, ax = plt.subplots(figsize=(size + 0.8, size))
  im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  if num_classes <= 12:
    for i in range(num_classes):
      for j in range(num_classes):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black")
  ticks = np.arange(num_classes)
  fontsize = 8 if num_classes <= 12 else 7
  ax.set_xticks(ticks, names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right"
                if max(map(len, names)) > 2 else "center", fontsize=fontsize)
  ax.set_yticks(ticks, names, fontsize=fontsize)
  ax.set(xlabel="predicted", ylabel="true",
         title=f"confusion (accuracy {np.trace(counts) / max(counts.sum(), 1):.3f})")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
  return _save(fig, path)


def read_metrics(metrics_path: str) -> list:
  with open(metrics_path) as f:
    return [json.loads(line) for line in f if line.strip()]


def training_curves(records: list, path: str, evaluated_on: str = "test") -> str:
  """Train loss, evaluation accuracy and NLL (bits/dim) against the step; ``evaluated_on``
  names the evaluation split in the titles ("test", or the validation rows)."""
  def series(key):
    pts = [(r["step"], r[key]) for r in records if key in r]
    return np.array(pts).T if pts else None

  split = "test" if evaluated_on == "test" else "validation"
  panels = [("train/loss", "train loss"), ("eval/accuracy", f"{split} accuracy"),
            ("eval/bpd", f"{split} bits/dim")]
  fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
  for ax, (key, title) in zip(axes, panels, strict=False):
    s = series(key)
    if s is None:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    else:
      ax.plot(s[0], s[1], marker="o" if s.shape[1] < 20 else None, markersize=3,
              label=key.split("/")[1])
    extra = {"train/loss": "train/nll_labeled", "eval/bpd": "eval/bpd_given_label"}.get(key)
    se = series(extra) if extra else None
    if se is not None:
      ax.plot(se[0], se[1], linestyle="--", label=extra.split("/")[1])
    if s is not None:
      ax.legend(fontsize=8)
    ax.set(title=title, xlabel="step")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)


# ----------------------------------------------------------------------------- 2-D toy data

def _grid(x: np.ndarray, steps: int = 200, margin: float = 0.5):
  lo, hi = x.min(axis=0) - margin, x.max(axis=0) + margin
  g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], steps), np.linspace(lo[1], hi[1], steps))
  return g0, g1, np.stack([g0.ravel(), g1.ravel()], axis=1).astype(np.float32)


def data_plane(model, x_labeled, y_labeled, x_unlabeled, path: str, x_test=None) -> str:
  """The input plane coloured by the predicted class (shade = confidence), unlabelled
  points faint, labelled points as large marked dots."""
  pts = np.concatenate([x_labeled, x_unlabeled] + ([x_test] if x_test is not None else []))
  g0, g1, grid = _grid(pts)
  probs = model.predict_proba(grid)
  k = model.num_classes
  fig, ax = plt.subplots(figsize=(5, 4.5))
  pred = probs.argmax(1).reshape(g0.shape)
  colors = np.array([_CLASS_COLORS(i % 10) for i in range(k)])
  rgb = colors[pred][..., :3]
  conf = probs.max(1).reshape(g0.shape)[..., None]
  alpha = (conf - 1.0 / k) / (1.0 - 1.0 / k)
  image = 1.0 - 0.6 * alpha * (1.0 - rgb)  # white where unsure, tinted where confident
  ax.imshow(image, origin="lower", extent=(g0.min(), g0.max(), g1.min(), g1.max()),
            aspect="auto", interpolation="bilinear")
  if k <= 10:
    ax.contour(g0, g1, pred, levels=np.arange(k) + 0.5, colors="k", linewidths=0.8)
  ax.scatter(x_unlabeled[:, 0], x_unlabeled[:, 1], s=4, c="0.4", alpha=0.25,
             label="unlabelled")
  for c in range(k):
    sel = y_labeled == c
    ax.scatter(x_labeled[sel, 0], x_labeled[sel, 1], s=70, color=colors[c], edgecolor="k",
               linewidth=1.2, marker="*", label=f"labelled, class {c}", zorder=3)
  ax.set(title="data plane: decision regions", xlabel="$x_1$", ylabel="$x_2$")
  ax.legend(fontsize=7, loc="best", framealpha=0.8)
  return _save(fig, path)


def latent_plane(model, x_test, y_test, path: str) -> str:
  """Test points mapped by f, coloured by true class, with every mixture component drawn as
  its 1- and 2-sigma circles (the first two latent coordinates)."""
  z = model.encode(x_test)
  means, scales = model.means(), model.scales()
  fig, ax = plt.subplots(figsize=(4.8, 4.5))
  for c in range(model.num_classes):
    sel = y_test == c
    ax.scatter(z[sel, 0], z[sel, 1], s=5, color=_CLASS_COLORS(c % 10), alpha=0.5,
               label=f"class {c}")
    for n_sigma, style in ((1, "-"), (2, "--")):
      ax.add_patch(matplotlib.patches.Ellipse(
          means[c, :2], 2 * n_sigma * scales[c, 0], 2 * n_sigma * scales[c, 1], fill=False,
          linestyle=style, linewidth=1.5, color=_CLASS_COLORS(c % 10)))
    ax.plot(*means[c, :2], "k+", markersize=10)
  ax.set(title="latent plane: f(x_test), 1 and 2 sigma", xlabel="$z_1$", ylabel="$z_2$")
  ax.set_aspect("equal", adjustable="datalim")
  ax.legend(fontsize=7, loc="best", framealpha=0.8)
  return _save(fig, path)


def toy_class_samples(model, path: str, n_per_class: int = 300, x_reference=None) -> str:
  """Samples x = f^-1(z), z ~ N(mu_k, Sigma_k), coloured by the class they were drawn for."""
  fig, ax = plt.subplots(figsize=(4.8, 4.5))
  if x_reference is not None:
    ax.scatter(x_reference[:, 0], x_reference[:, 1], s=3, c="0.7", alpha=0.3, label="data")
  for c in range(model.num_classes):
    x = model.sample(n_per_class, y=c, seed=c)
    ax.scatter(x[:, 0], x[:, 1], s=5, color=_CLASS_COLORS(c % 10), alpha=0.6,
               label=f"samples, class {c}")
  ax.set(title="class-conditional samples", xlabel="$x_1$", ylabel="$x_2$")
  ax.legend(fontsize=7, loc="best", framealpha=0.8, markerscale=2)
  return _save(fig, path)


# ----------------------------------------------------------------------------- images

def _show_grid(images: np.ndarray, path: str, *, row_labels=None, col_labels=None,
               title: str = "", panel_titles=None) -> str:
  """``images [P, R, C, H, W, ch]`` (pixel values 0..255): P panels of R x C images."""
  images = np.clip(np.asarray(images, np.float32), 0, 255) / 255.0
  p, r, c, h, w, ch = images.shape
  ncols = c * p + (p - 1)  # one empty spacer column between panels
  cell = max(0.35, min(0.9, 6.0 / max(ncols, 1)))
  fig, axes = plt.subplots(r, ncols, figsize=(cell * ncols + 0.8, cell * r + 0.6),
                           squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.05})
  for ax in axes.ravel():
    ax.axis("off")
  for pi in range(p):
    for ri in range(r):
      for ci in range(c):
        ax = axes[ri, pi * (c + 1) + ci]
        ax.axis("on")
        img = images[pi, ri, ci]
        ax.imshow(img[..., 0] if ch == 1 else img, cmap="gray" if ch == 1 else None,
                  vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        if ci == 0 and pi == 0 and row_labels is not None:
          ax.set_ylabel(row_labels[ri], rotation=0, ha="right", va="center", fontsize=7)
        if ri == 0 and col_labels is not None:
          ax.set_title(col_labels[ci], fontsize=7)
        elif ri == 0 and ci == c // 2 and panel_titles is not None:
          ax.set_title(panel_titles[pi], fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def sample_grid(model, path: str, temperatures=(0.5, 1.0), n_per_class: int = 8,
                class_names=None, seed: int = 0) -> str:
  """One row per class, ``n_per_class`` samples each, one panel per temperature."""
  k = model.num_classes
  y = np.repeat(np.arange(k), n_per_class)
  panels = [model.sample(len(y), y=y, temperature=t, seed=seed).reshape(
      (k, n_per_class) + model.input_shape) for t in temperatures]
  return _show_grid(np.stack(panels), path, row_labels=_class_names(k, class_names),
                    panel_titles=[f"T = {t}" for t in temperatures],
                    title="class-conditional samples (rows: classes)")


def class_means(model, path: str, class_names=None) -> str:
  """The decoded class means f^-1(mu_k), one per class."""
  x = model.decode(model.means())
  k = model.num_classes
  return _show_grid(x.reshape((1, 1, k) + model.input_shape), path,
                    col_labels=_class_names(k, class_names), title="decoded class means")


def pick_pairs(labels: np.ndarray, num_pairs: int, seed: int = 0):
  """``num_pairs`` (i, j) index pairs of test examples with different labels."""
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(100 * num_pairs):
    i, j = rng.choice(len(labels), 2, replace=False)
    if labels[i] != labels[j]:
      pairs.append((int(i), int(j)))
    if len(pairs) == num_pairs:
      break
  return pairs


def interpolations(model, x, labels, path: str, num_pairs: int = 4, steps: int = 8,
                   seed: int = 0) -> str:
  """Rows: pairs of test images of different classes; columns: decode((1-t) z_a + t z_b)."""
  pairs = pick_pairs(np.asarray(labels), num_pairs, seed)
  if not pairs:
    raise ValueError("interpolations need test examples of at least two classes.")
  z = model.encode(np.stack([x[i] for p in pairs for i in p]))
  za, zb = z[0::2], z[1::2]
  t = np.linspace(0.0, 1.0, steps)[None, :, None]
  path_z = (1 - t) * za[:, None] + t * zb[:, None]                 # [P, S, D]
  imgs = model.decode(path_z.reshape(-1, z.shape[1])).reshape(
      (1, len(pairs), steps) + model.input_shape)
  rows = [f"{labels[i]}->{labels[j]}" for i, j in pairs]
  return _show_grid(imgs, path, row_labels=rows,
                    col_labels=[f"t={v:.2f}" for v in t.ravel()],
                    title="latent interpolations between test images")


def feature_effects(model, z: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """For one latent ``z [D]``: the largest change of the log-odds of the predicted class,
  log p(y|z) - log(1 - p(y|z)), over moving coordinate d by each of ``offsets`` (in units of
  that class's sigma), ``[D]``. Log-odds rather than p, so confident (saturated)
  predictions still rank the coordinates.

  Uses the prior only (p(y | x) depends on x through z), so it costs no decoding."""
  d = z.shape[0]
  pred = int(np.argmax(model.latent_logits(z[None])[0]))
  sigma = model.scales()[pred]

  def log_odds(v):
    logits = model.latent_logits(v).astype(np.float64)
    others = np.delete(logits, pred, axis=1)
    m = others.max(axis=1, keepdims=True)
    return logits[:, pred] - (m[:, 0] + np.log(np.exp(others - m).sum(axis=1)))

  base = float(log_odds(z[None])[0])
  effect = np.zeros(d)
  for off in offsets:
    moved = np.repeat(z[None], d, axis=0)
    moved[np.arange(d), np.arange(d)] += off * sigma
    effect = np.maximum(effect, np.abs(log_odds(moved) - base))
  return effect


def feature_visualisation(model, x: np.ndarray, num_top: int = 3, steps: int = 7,
                          max_offset: float = 4.0):
  """The paper's optimisation-free feature visualisation for one image ``x``.

  z = f(x); for a coordinate d, decode z + v e_d for ``steps`` offsets v in
  [-max_offset, max_offset] sigma (the middle one is 0: the input itself). Returns
  (images [R, steps, *input_shape], coordinates [R], effects [R], offsets [steps]) for the
  ``num_top`` coordinates with the largest effect on p(y|x) (as log-odds, see
  ``feature_effects``) and the one with the smallest.
  """
  if steps % 2 == 0:
    raise ValueError("steps must be odd, so the middle column is the unchanged latent.")
  z = model.encode(x[None])[0]
  offsets = np.linspace(-max_offset, max_offset, steps)
  effect = feature_effects(model, z, offsets)
  order = np.argsort(-effect, kind="stable")
  coords = np.concatenate([order[:num_top], order[-1:]])
  pred = int(model.predict(x[None])[0])
  sigma = model.scales()[pred]
  rows = np.repeat(z[None, None], len(coords), axis=0).repeat(steps, axis=1)  # [R, S, D]
  for r, dcoord in enumerate(coords):
    rows[r, :, dcoord] += offsets * sigma[dcoord]
  images = model.decode(rows.reshape(-1, z.shape[0])).reshape(
      (len(coords), steps) + model.input_shape)
  return images, coords, effect[coords], offsets


def feature_vis_figure(model, x_images: np.ndarray, path: str, num_top: int = 3,
                       steps: int = 7) -> str:
  """feature_visualisation for each of a few test images, stacked as panels of rows."""
  blocks, labels = [], []
  for n, x in enumerate(x_images):
    imgs, coords, effects, offsets = feature_visualisation(model, x, num_top, steps)
    blocks.append(imgs)
    kinds = ["top"] * num_top + ["least"]
    labels += [f"img{n} {kind} z[{c}]\n Δlog-odds={e:.2g}" for kind, c, e in
               zip(kinds, coords, effects, strict=False)]
  imgs = np.concatenate(blocks)[None]
  return _show_grid(imgs, path, row_labels=labels,
                    col_labels=[f"{o:+.1f}σ" for o in offsets],
                    title="feature visualisation: one latent coordinate of f(x) moved "
                          "(centre: unchanged)")


# ----------------------------------------------------------------------------- a run

def write_run_plots(model, dataset, workdir: str, *, labeled_idx=None,
                    calibration: dict | None = None, max_points: int = 2000) -> list:
  """Writes the kind-appropriate figures for ``model`` on ``dataset`` into workdir/plots/.

  ``calibration``: {'temperature': T} (a 'before / after' reliability diagram) or None.
  Returns the written paths.
  """
  out = os.path.join(workdir, run_files.PLOTS_DIR)
  written = []
  names = dataset.class_names
  x_test, y_test = dataset.x_test, dataset.y_test
  if len(x_test):  # all test rows, so the figures show the numbers in results.json
    logits = model.logits(x_test, preprocessed=True)
    probs = {"before calibration": _softmax(logits)}
    if calibration and calibration.get("temperature") is not None:
      probs["after (T = {:.3g})".format(calibration["temperature"])] = _softmax(
          logits / calibration["temperature"])
    written.append(reliability_diagram(probs, y_test, os.path.join(out, "reliability.png")))
    written.append(confusion_matrix(logits.argmax(1), y_test, model.num_classes,
                                    os.path.join(out, "confusion.png"), names))
  metrics_path = os.path.join(workdir, run_files.METRICS_FILE)
  if os.path.isfile(metrics_path):
    written.append(training_curves(read_metrics(metrics_path),
                                   os.path.join(out, "training_curves.png"),
                                   dataset.evaluated_on))
  if dataset.kind != "image" and model.num_dims == 2 and model.data_transform == {}:
    train_y = dataset.y_train
    lab = np.asarray(labeled_idx) if labeled_idx is not None else np.nonzero(train_y >= 0)[0]
    unl = np.setdiff1d(np.arange(len(dataset.x_train)), lab)
    written.append(data_plane(model, dataset.x_train[lab], train_y[lab],
                              dataset.x_train[unl], os.path.join(out, "data_plane.png")))
    if len(x_test):
      keep = np.arange(len(x_test))
      if len(keep) > max_points:  # a readable scatter
        keep = np.sort(np.random.default_rng(0).choice(len(keep), max_points, replace=False))
      written.append(latent_plane(model, x_test[keep], y_test[keep],
                                  os.path.join(out, "latent_plane.png")))
    written.append(toy_class_samples(model, os.path.join(out, "class_samples.png"),
                                     x_reference=dataset.x_train))
  if dataset.kind == "image":
    written.append(sample_grid(model, os.path.join(out, "samples.png"), class_names=names))
    written.append(class_means(model, os.path.join(out, "class_means.png"), names))
    if len(x_test) and len(np.unique(y_test)) > 1:
      written.append(interpolations(model, x_test, y_test,
                                    os.path.join(out, "interpolations.png")))
    if len(x_test):
      picks = [i for i, _ in pick_pairs(y_test, 2, seed=1)] or [0]
      written.append(feature_vis_figure(model, x_test[picks],
                                        os.path.join(out, "feature_vis.png")))
  return written


def _softmax(logits: np.ndarray) -> np.ndarray:
  logits = logits - logits.max(axis=1, keepdims=True)
  e = np.exp(logits)
  return e / e.sum(axis=1, keepdims=True)


def add_to_tensorboard(paths: Sequence[str], workdir: str, step: int) -> None:
  """Adds the PNGs to the run's TensorBoard log as images (tag plots/<name>)."""
  try:
    from tensorboardX import SummaryWriter
  except ImportError:  # TensorBoard output is optional
    return
  import matplotlib.image as mpimg
  writer = SummaryWriter(os.path.join(workdir, run_files.TENSORBOARD_DIR))
  try:
    for p in paths:
      img = mpimg.imread(p)[..., :3]
      writer.add_image(f"plots/{os.path.splitext(os.path.basename(p))[0]}", img, step,
                       dataformats="HWC")
  finally:
    writer.close()


def figures_to_tensorboard(meta: dict, variables, dataset, workdir: str, step: int) -> None:
  """The cheap figures of the model at an evaluation step, as TensorBoard images only (toy:
  data and latent planes; images: samples and class means). Never raises."""
  import tempfile

  import jax

  from flowgmm_jax import trained
  if jax.process_index() != 0:
    return
  try:
    model = trained.from_variables(meta, jax.device_get(variables), step=step)
    with tempfile.TemporaryDirectory() as tmp:
      paths = []
      if model.image:
        paths.append(sample_grid(model, os.path.join(tmp, "samples.png"),
                                       class_names=dataset.class_names))
        paths.append(class_means(model, os.path.join(tmp, "class_means.png"),
                                       dataset.class_names))
      elif model.num_dims == 2 and dataset.kind == "toy" and len(dataset.x_test):
        # Decision regions with the test points (faint); the labels are in the final figure.
        paths.append(data_plane(model, dataset.x_test[:0], dataset.y_test[:0],
                                      dataset.x_test, os.path.join(tmp, "data_plane.png")))
        paths.append(latent_plane(model, dataset.x_test, dataset.y_test,
                                        os.path.join(tmp, "latent_plane.png")))
      add_to_tensorboard(paths, workdir, step)
  except Exception as e:  # noqa: BLE001 - a figure must never stop training
    print(f"warning: step {step} figures not written to TensorBoard "
          f"({type(e).__name__}: {e})", file=sys.stderr)
