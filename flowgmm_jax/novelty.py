"""What the density adds to a classifier: how unusual a row is, and which rows to label next.

Every function here is NumPy maths on one forward pass of a trained FlowGMM over N rows
(data -> latent): ``log_px [N]`` = log p(x), ``logits [N, K]`` = log pi_k + log N(z; mu_k,
Sigma_k) (uncalibrated), ``z [N, D]`` = f(x), and the prior's ``means [K, D]`` and ``scales
[K, D]`` (sigma_kd). ``FlowGMMClassifier`` and ``TrainedFlowGMM`` call them; nothing here
trains or runs a model.

Outlier scores (higher = more unusual), ``outlier_scores``:

    neg_log_px    -log p(x)
    typicality    |log p(x) - m| / s, with m, s the mean and standard deviation of log p
                  over reference rows held out of training: a row is unusual when its
                  likelihood is atypical in either direction (Nalisnick et al. 2019), which
                  catches inputs a flow finds *too* likely (smooth, low-variance images)
    mahalanobis   min_k sum_d ((z_d - mu_kd) / sigma_kd)^2: the latent distance to the
                  nearest class, without the flow's log-det
    max_prob      1 - max_k p(y = k | x), the classifier's own doubt (temperature T)

A reject option thresholds one score at its ``1 - rate`` quantile over reference rows held
out of training (``reject_threshold``), so that about ``rate`` of new rows from the training
distribution are rejected.

Query rules (the n unlabelled rows whose labels should help most), ``query_indices``:

    entropy           the n rows of highest H(p(y | x))
    density_entropy   H(p(y | x)) times the rank of log p(x) among the candidates (in (0, 1]),
                      so rare outlying rows, whose label teaches little about the rest, give
                      way to ambiguous rows in dense regions (information density, Settles &
                      Craven 2008)
    latent_distance   the n rows farthest from every class mean (min_k Mahalanobis)
    diverse           density_entropy's top 10 n rows clustered into n groups by k-means on
                      z / sigma; the best-scoring row of each group (Zhdanov 2019), so no two
                      picks are near-duplicates

docs/novelty.md gives the measurements that chose the defaults, and when not to trust them.
"""

from __future__ import annotations

import numpy as np
import scipy.special
import scipy.stats

OUTLIER_SCORES = ("neg_log_px", "typicality", "mahalanobis", "max_prob")
QUERY_RULES = ("entropy", "density_entropy", "latent_distance", "diverse")
# The defaults, each the best on validation splits (docs/novelty.md): held-out classes of
# the suite's tables and MNIST against Fashion-MNIST for the score; labels added in rounds
# for the rule.
DEFAULT_OUTLIER_SCORE = "mahalanobis"
DEFAULT_QUERY_RULE = "density_entropy"
# The scores and rules that read the latent z (the others need only log p(x) and logits).
NEEDS_LATENT = frozenset({"mahalanobis", "latent_distance", "diverse"})
# diverse: k-means runs on the top DIVERSE_POOL * n rows by density_entropy.
DIVERSE_POOL = 10


def check_choice(value: str, choices: tuple, name: str) -> str:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}.")
  return value


def mahalanobis(z: np.ndarray, means: np.ndarray, scales: np.ndarray) -> np.ndarray:
  """``[N, K]``: sum_d ((z_nd - mu_kd) / sigma_kd)^2 for every row n and class k."""
  z = np.asarray(z, np.float64)
  out = np.empty((z.shape[0], means.shape[0]))
  for k in range(means.shape[0]):  # a loop over K keeps memory at [N, D], not [N, K, D]
    out[:, k] = np.sum(np.square((z - means[k]) / scales[k]), axis=1)
  return out


def class_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  """p(y | x) = softmax(logits / T), ``[N, K]``."""
  return scipy.special.softmax(np.asarray(logits, np.float64) / temperature, axis=1)


def entropy(probs: np.ndarray) -> np.ndarray:
  """H(p) in nats per row, ``[N, K] -> [N]``."""
  p = np.clip(probs, 1e-300, 1.0)
  return -np.sum(probs * np.log(p), axis=1)


def outlier_scores(kind: str, *, log_px: np.ndarray, logits: np.ndarray | None = None,
                   z: np.ndarray | None = None, means: np.ndarray | None = None,
                   scales: np.ndarray | None = None, temperature: float = 1.0,
                   reference_log_px: np.ndarray | None = None) -> np.ndarray:
  """The outlier score ``kind`` of N rows, ``[N]`` float64, higher = more unusual (module
  docstring). ``typicality`` needs ``reference_log_px`` (log p of held-out training rows),
  ``mahalanobis`` needs ``z``, ``means`` and ``scales``, ``max_prob`` needs ``logits``."""
  check_choice(kind, OUTLIER_SCORES, "outlier score")
  log_px = np.asarray(log_px, np.float64)
  if kind == "neg_log_px":
    return -log_px
  if kind == "typicality":
    if reference_log_px is None or len(reference_log_px) < 2:
      raise ValueError("the typicality score needs log p(x) of at least 2 reference rows "
                       "held out of training.")
    ref = np.asarray(reference_log_px, np.float64)
    return np.abs(log_px - ref.mean()) / max(float(ref.std()), 1e-12)
  if kind == "mahalanobis":
    return mahalanobis(z, means, scales).min(axis=1)
  return 1.0 - class_probs(logits, temperature).max(axis=1)


def reject_threshold(reference_scores: np.ndarray, rate: float) -> float:
  """The score above which a row is rejected so that a fraction ``rate`` of rows like the
  ``reference_scores`` (held-out training rows) would be: their ``1 - rate`` quantile.
  ``rate`` 0 rejects nothing (the threshold is +inf)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"reject_rate={rate!r} must be in [0, 1).")
  if rate == 0.0:
    return float("inf")
  ref = np.asarray(reference_scores, np.float64)
  if ref.size == 0:
    raise ValueError("no reference rows to fit a reject threshold on.")
  return float(np.quantile(ref, 1.0 - rate, method="higher"))


def query_scores(rule: str, *, log_px: np.ndarray, logits: np.ndarray, z=None, means=None,
                 scales=None, temperature: float = 1.0) -> np.ndarray:
  """Each candidate's worth under ``rule`` (higher = label it sooner), ``[N]``; for
  "diverse", the density_entropy score it preselects and picks by."""
  check_choice(rule, QUERY_RULES, "query rule")
  if rule == "latent_distance":
    return mahalanobis(z, means, scales).min(axis=1)
  h = entropy(class_probs(logits, temperature))
  if rule == "entropy":
    return h
  ranks = scipy.stats.rankdata(np.asarray(log_px, np.float64), method="max") / len(h)
  return h * ranks


def query_indices(rule: str, n: int, *, log_px: np.ndarray, logits: np.ndarray, z=None,
                  means=None, scales=None, temperature: float = 1.0, seed: int = 0
                  ) -> np.ndarray:
  """Indices of the ``n`` candidates to label next under ``rule`` (module docstring),
  ``[n]`` int64, best first (for "diverse", in the order of their scores); ties go to the
  lower index. ``seed`` seeds "diverse"'s k-means."""
  num_rows = len(log_px)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= num_rows:
    raise ValueError(f"n={n!r} must be an integer in [1, {num_rows}], the number of "
                     "candidate rows.")
  scores = query_scores(rule, log_px=log_px, logits=logits, z=z, means=means, scales=scales,
                        temperature=temperature)
  order = np.argsort(-scores, kind="stable")
  if rule != "diverse" or n == num_rows:
    return order[:n].astype(np.int64)
  from sklearn.cluster import KMeans
  pool = order[:min(num_rows, DIVERSE_POOL * n)]
  # Distances in units of the prior's spread, averaged over classes (the latent's scale).
  points = np.asarray(z, np.float64)[pool] / np.mean(scales, axis=0)
  groups = KMeans(n_clusters=n, n_init=1, random_state=seed).fit_predict(
      points, sample_weight=np.maximum(scores[pool], 1e-12))
  picks = []
  for g in range(n):
    members = pool[groups == g]
    if members.size:  # members are in pool order, i.e. best first
      picks.append(members[0])
  chosen = set(picks)
  for row in pool:  # k-means may leave a group empty: top up with the best remaining rows
    if len(picks) == n:
      break
    if row not in chosen:
      picks.append(row)
      chosen.add(row)
  picks = np.asarray(picks, np.int64)
  return picks[np.argsort(-scores[picks], kind="stable")]
