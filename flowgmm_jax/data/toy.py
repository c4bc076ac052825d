"""2-D toy datasets for semi-supervised classification (pure NumPy, seeded).

As in the paper's toy experiments, each training set has 1,000 points of which only
a handful are labelled: `PAPER_NUM_LABELED` gives the label counts of the original
FlowGMM data (moons 10, circles 11, 8 Gaussians 19, pinwheel 13). The generators
return fully labelled data; choose the labelled few with
`splits.labeled_unlabeled_split(ds.y_train, num_labeled=ds.info["paper_num_labeled"])`
(class-balanced, as the original labels were). The test split is a fresh sample from
the same distribution.

Distributions (all `float32 [N, 2]`):

* moons: two interleaved half circles (outer: (cos t, sin t); inner:
  (1 - cos t, 1/2 - sin t), t ~ U[0, pi]) plus N(0, noise^2) noise; 2 classes.
* circles: two concentric circles of radius 1 (class 0) and `factor` (class 1) plus
  noise.
* 8 Gaussians: 8 isotropic Gaussians (std `std`) centred at radius `radius`, angles
  k * 45 degrees, k = 0..7 (the FFJORD construction). With 3 classes (the original
  data) the clusters are grouped as {180, 225} -> 0, {270, 315, 0} -> 1,
  {45, 90, 135} -> 2 degrees; with 8 classes each cluster is a class.
* pinwheel: 5 spiral arms (Johnson et al. 2016, as in FFJORD): radial N(1, 0.3^2),
  tangential N(0, 0.1^2), each arm rotated by its base angle plus
  `rate * exp(radial)`, scaled by 2; each arm is a class.
"""

from __future__ import annotations

import numpy as np

from flowgmm_jax.data.dataset import Dataset

PAPER_NUM_LABELED = {"moons": 10, "circles": 11, "8gaussians": 19, "pinwheel": 13}
# Cluster k sits at angle k * 45 degrees; its class in the original 3-class data.
EIGHT_GAUSSIANS_PAPER_CLASSES = (1, 2, 2, 2, 0, 0, 1, 1)


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
  """n labels with counts differing by at most one, in random order."""
  return rng.permutation(np.arange(n) % k)


def _moons(rng, n, noise):
  y = _balanced_labels(rng, n, 2)
  t = rng.uniform(0.0, np.pi, n)
  outer = np.stack([np.cos(t), np.sin(t)], axis=1)
  inner = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
  x = np.where(y[:, None] == 0, outer, inner) + noise * rng.standard_normal((n, 2))
  return x, y


def _circles(rng, n, noise, factor):
  y = _balanced_labels(rng, n, 2)
  t = rng.uniform(0.0, 2 * np.pi, n)
  radius = np.where(y == 0, 1.0, factor)
  x = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
  return x + noise * rng.standard_normal((n, 2)), y


def _eight_gaussians(rng, n, radius, std, num_classes):
  cluster = rng.integers(0, 8, n)
  angle = cluster * (np.pi / 4)
  centers = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
  x = centers + std * rng.standard_normal((n, 2))
  y = cluster if num_classes == 8 else np.asarray(EIGHT_GAUSSIANS_PAPER_CLASSES)[cluster]
  return x, y


def _pinwheel(rng, n, num_classes, radial_std, tangential_std, rate):
  y = _balanced_labels(rng, n, num_classes)
  features = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
  features[:, 0] += 1.0
  angle = 2 * np.pi * y / num_classes + rate * np.exp(features[:, 0])
  cos, sin = np.cos(angle), np.sin(angle)
  # Rotate (r, t) by angle: x = r cos - t sin, y = r sin + t cos.
  x = np.stack([features[:, 0] * cos - features[:, 1] * sin,
                features[:, 0] * sin + features[:, 1] * cos], axis=1)
  return 2.0 * x, y


def _make(name, sampler, num_classes, num_train, num_test, seed, params):
  if num_train < 1 or num_test < 0:
    raise ValueError(f"num_train must be >= 1 and num_test >= 0, got {num_train}, {num_test}.")
  rng = np.random.default_rng(seed)
  x_train, y_train = sampler(rng, num_train)
  x_test, y_test = sampler(rng, num_test)
  return Dataset(name=name, kind="toy", x_train=x_train.astype(np.float32), y_train=y_train,
                 x_test=x_test.astype(np.float32), y_test=y_test, num_classes=num_classes,
                 info={"paper_num_labeled": PAPER_NUM_LABELED[name], "seed": seed, **params})


def make_moons(num_train: int = 1000, num_test: int = 1000, noise: float = 0.05,
               seed: int = 0) -> Dataset:
  """Two moons, 2 classes (half of the points each). See the module docstring."""
  return _make("moons", lambda rng, n: _moons(rng, n, noise), 2, num_train, num_test, seed,
               {"noise": noise})


def make_circles(num_train: int = 1000, num_test: int = 1000, noise: float = 0.05,
                 factor: float = 0.4, seed: int = 0) -> Dataset:
  """Two concentric circles (radius 1: class 0, radius `factor`: class 1)."""
  if not 0.0 < factor < 1.0:
    raise ValueError(f"factor must be in (0, 1), got {factor}.")
  return _make("circles", lambda rng, n: _circles(rng, n, noise, factor), 2, num_train,
               num_test, seed, {"noise": noise, "factor": factor})


def make_8gaussians(num_train: int = 1000, num_test: int = 1000, num_classes: int = 3,
                    radius: float = 2 * np.sqrt(2), std: float = 0.5 / np.sqrt(2),
                    seed: int = 0) -> Dataset:
  """Eight Gaussians on a circle; 3 classes (the original grouping) or 8."""
  if num_classes not in (3, 8):
    raise ValueError(f"num_classes must be 3 (the original grouping) or 8, got {num_classes}.")
  return _make("8gaussians", lambda rng, n: _eight_gaussians(rng, n, radius, std, num_classes),
               num_classes, num_train, num_test, seed, {"radius": radius, "std": std})


def make_pinwheel(num_train: int = 1000, num_test: int = 1000, num_classes: int = 5,
                  radial_std: float = 0.3, tangential_std: float = 0.1, rate: float = 0.25,
                  seed: int = 0) -> Dataset:
  """Pinwheel with `num_classes` arms (default 5), one class per arm."""
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
  return _make("pinwheel",
               lambda rng, n: _pinwheel(rng, n, num_classes, radial_std, tangential_std, rate),
               num_classes, num_train, num_test, seed,
               {"radial_std": radial_std, "tangential_std": tangential_std, "rate": rate})


TOY_DATASETS = {"moons": make_moons, "circles": make_circles, "8gaussians": make_8gaussians,
                "pinwheel": make_pinwheel}


def load_toy(name: str, **kwargs) -> Dataset:
  """One of `TOY_DATASETS` by name, with its keyword arguments."""
  if name not in TOY_DATASETS:
    raise ValueError(f"unknown toy dataset {name!r}; choose one of {sorted(TOY_DATASETS)}.")
  return TOY_DATASETS[name](**kwargs)
