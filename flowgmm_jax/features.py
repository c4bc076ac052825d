"""What kind of numbers each column of a table holds: continuous, or on a lattice (binary,
integer codes, counts), and one-hot groups; and categorical columns (``TableEncoder``: a
DataFrame's or array's columns to numbers and level codes; ``CategoricalRows``: each
categorical column dequantised on its simplex cell, in log-ratio coordinates; the maths is
above ``simplex_cell_noise``). Pure NumPy (pandas only when given a DataFrame); nothing here
trains.

A flow is a density on R^D. On a column that takes a few values the maximum-likelihood
density is a sum of spikes, whose log-likelihood grows without bound as they sharpen, so
a flow fitted to raw 0/1 or integer-coded columns spends its capacity (and its held-out
NLL, which early stopping watches) on that. The usual remedy (Uria et al. 2013; Theis et
al. 2016; Ho et al. 2019) is dequantisation: model ``x + u`` with ``u`` uniform over the
value's own cell, so that the density of the discrete value is the mass of its cell:

    P(x = v) = integral over [v - r/2, v + r/2) of p(t) dt  >=  exp(E_u log p(v + u)) r,

a lower bound (Jensen) that a continuous density can maximise without spikes. The cell
width ``r`` is the column's resolution: the step of the lattice its values lie on (1 for
integer codes and for 0/1 columns; 0.5 for values in {0, 0.5, 1.5}).

Definitions (column ``c`` of ``x: [N, D]``, ``v_1 < ... < v_m`` its distinct values):

    gaps        g_i = v_{i+1} - v_i                     (m - 1 of them)
    resolution  r = min_i g_i                           (0 when m < 2)
    lattice     every g_i / r is an integer (relative tolerance ``tol``): the values are
                v_1 + r * n for integers n
    levels      (v_m - v_1) / r + 1: the lattice points spanned (m of them are used)
    kind        "constant" (m < 2); "binary" (m == 2); "lattice" (a lattice with at most
                ``max_levels`` levels); otherwise "continuous"

A one-hot group is a run of adjacent 0/1 columns in which every row has exactly one 1
(the layout ``sklearn.preprocessing.OneHotEncoder`` writes): one categorical variable, of
which the group's columns are the indicator coding.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

KINDS = ("constant", "binary", "lattice", "continuous")
# Lattice columns with more levels than this are treated as continuous: their resolution
# is small next to their spread (letter's 16 and digits' 17 levels count as discrete,
# Shuttle's and Musk's hundreds of integer values do not).
DEFAULT_MAX_LEVELS = 64


@dataclasses.dataclass(frozen=True)
class ColumnKind:
  """One column's summary (see the module docstring for the definitions)."""
  kind: str             # one of KINDS
  num_values: int       # m, distinct values
  resolution: float     # r (0.0 for a constant column)
  lattice: bool         # values on v_1 + r * integers
  levels: int           # lattice points spanned, (v_m - v_1) / r + 1 (m if not a lattice)
  minimum: float        # v_1
  maximum: float        # v_m

  @property
  def discrete(self) -> bool:
    """True for "binary" and "lattice" columns (the ones to dequantise)."""
    return self.kind in ("binary", "lattice")


def describe_column(values, *, max_levels: int = DEFAULT_MAX_LEVELS,
                    tol: float = 1e-6) -> ColumnKind:
  """The ``ColumnKind`` of one column ``values: [N]`` (finite numbers).

  ``tol``: relative tolerance of "g_i / r is an integer" (float codes such as 0.1, 0.2, 0.3
  are not exact multiples in binary floating point).
  """
  v = np.unique(np.asarray(values, np.float64).ravel())
  if v.size and not np.all(np.isfinite(v)):
    raise ValueError("describe_column needs finite values; impute or drop NaN/inf first.")
  if v.size < 2:
    value = float(v[0]) if v.size else 0.0
    return ColumnKind("constant", int(v.size), 0.0, False, int(v.size), value, value)
  gaps = np.diff(v)
  r = float(gaps.min())
  ratio = gaps / r
  lattice = bool(np.all(np.abs(ratio - np.round(ratio)) <= tol * np.maximum(1.0, ratio)))
  levels = int(round((v[-1] - v[0]) / r)) + 1 if lattice else int(v.size)
  if v.size == 2:
    kind = "binary"
  elif lattice and levels <= max_levels:
    kind = "lattice"
  else:
    kind = "continuous"
  return ColumnKind(kind, int(v.size), r, lattice, levels, float(v[0]), float(v[-1]))


_SCREEN_ROWS = 4096


def dequantization_widths(x, scale=None, *, max_levels: int = DEFAULT_MAX_LEVELS,
                          tol: float = 1e-6) -> np.ndarray:
  """Per-column dequantisation width ``[D]``: the resolution r of each discrete column
  (``ColumnKind.discrete``), 0 for the others, divided by ``scale [D]`` when given (the
  standardisation's per-feature scale, so the widths are in standardised units).

  ``x: [N, D]``. Columns with more than ``max_levels`` distinct values among
  ``_SCREEN_ROWS`` evenly spaced rows are continuous without a look at the rest, so a wide
  table of continuous features costs one sort of a ``[4096, D]`` sample; the remaining
  columns are described on all N rows. ``tol``: see ``describe_column`` (pass about 1e-4 for
  float32 data that was standardised, whose lattice gaps carry float32 rounding)."""
  if not isinstance(x, StandardizedRows):
    x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"dequantization_widths expects a table [N, D], got shape {x.shape}.")
  n, d = x.shape
  screen = x if n <= _SCREEN_ROWS else x[np.linspace(0, n - 1, _SCREEN_ROWS).astype(np.int64)]
  screen = np.sort(np.asarray(screen, np.float64), axis=0)
  distinct = 1 + np.count_nonzero(np.diff(screen, axis=0) != 0, axis=0) if n else np.zeros(d)
  widths = np.zeros(d, np.float64)
  for j in np.flatnonzero(distinct <= max_levels):
    kind = describe_column(x[:, j], max_levels=max_levels, tol=tol)
    widths[j] = kind.resolution if kind.discrete else 0.0
  if scale is not None:
    scale = np.asarray(scale, np.float64)
    if scale.shape != widths.shape:
      raise ValueError(f"scale has shape {scale.shape}; expected ({widths.size},).")
    widths = widths / scale
  return widths


class StandardizedRows:
  """The table ``(x - mean) / scale`` as float32 ``[N, D]``, computed only for the rows it
  is indexed with (``rows[idx]``, ``rows[a:b]``, ``rows[:, j]``), so that training and
  prediction gather standardised batches from ``x`` itself and no standardised ``[N, D]``
  copy is ever made. Read-only; ``x`` is not copied and must not change while in use.

  Args:
    x: ``[N, D]`` finite float64 or float32 features (checked in row chunks here unless
      ``check_finite=False``, for arrays the caller has checked already).
    mean, scale: ``[D]`` each, ``scale > 0``; the arithmetic is in float64.
  """

  ndim = 2
  dtype = np.dtype(np.float32)

  def __init__(self, x: np.ndarray, mean, scale, *, check_finite: bool = True,
               chunk_rows: int = 65536):
    if not isinstance(x, np.ndarray) or x.ndim != 2:
      raise ValueError(f"StandardizedRows needs a NumPy array [N, D], got "
                       f"{type(x).__name__} of shape {getattr(x, 'shape', None)}.")
    self.x = x
    self.mean = np.asarray(mean, np.float64).reshape(-1)
    self.scale = np.asarray(scale, np.float64).reshape(-1)
    if self.mean.shape != (x.shape[1],) or self.scale.shape != (x.shape[1],):
      raise ValueError(f"mean and scale must have shape ({x.shape[1]},), got "
                       f"{self.mean.shape} and {self.scale.shape}.")
    if not (np.all(np.isfinite(self.scale)) and np.all(self.scale > 0)):
      raise ValueError("scale must be finite and positive in every column.")
    for start in range(0, x.shape[0] if check_finite else 0, chunk_rows):
      if not np.isfinite(x[start:start + chunk_rows]).all():
        raise ValueError("x contains NaN or inf; drop or impute those rows first.")

  @property
  def shape(self) -> tuple[int, int]:
    return self.x.shape

  def __len__(self) -> int:
    return self.x.shape[0]

  def __getitem__(self, key) -> np.ndarray:
    columns = key[1] if isinstance(key, tuple) and len(key) > 1 else slice(None)
    block = np.asarray(self.x[key], np.float64)
    return ((block - self.mean[columns]) / self.scale[columns]).astype(np.float32)

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    """The whole standardised table (the copy this class exists to avoid; for small x)."""
    out = self[:]
    return out if dtype is None else out.astype(dtype)

  def __repr__(self) -> str:
    return f"StandardizedRows(shape={self.shape}, x dtype={self.x.dtype})"


# ----------------------------------------------------------------------------- categorical

# A categorical variable with K levels, as the flow sees it (``categorical_encoding=
# "simplex"`` of the estimator). Its one-hot vector is a vertex of the probability simplex
# Delta = {p in R^K: p >= 0, sum p = 1}. The simplex splits into K cells by the arg max,
# R_k = {p in Delta: p_k >= p_j for all j}, one per level, of equal volume. Dequantising
# level k draws p uniformly from R_k (Hoogeboom et al. 2021, "Argmax flows and multinomial
# diffusion", do the same with a learned noise; here it is uniform, so its log-volume is
# exact): the cells tile the simplex without gaps or overlap, so no mass is spent between
# levels, and arg max p recovers k. The flow does not see p itself (a bounded set, whose
# sharp edges a flow models badly, and K coordinates with one linear constraint) but its
# additive log-ratio
#
#     a = alr(p) = (log p_1 - log p_K, ..., log p_{K-1} - log p_K)      in R^{K-1},
#     p = softmax([a, 0]),            log|det dp_{1:K-1} / da| = sum_{j=1..K} log p_j,
#
# so the cells become K cones that tile R^{K-1}. In the coordinates (p_1..p_{K-1}) the
# simplex has volume 1/(K-1)! and each cell 1/K!, so for a flow density q(a)
#
#     P(level k) = integral over R_k of q(alr(p)) |det d alr / dp| dp
#               >= exp(E_{p ~ U(R_k)}[log q(alr(p)) - sum_j log p_j]) / K!      (Jensen),
#
# the same bound as the uniform dequantisation of a lattice column (module docstring).
# Prediction uses one point per level, the centroid of its cell (``simplex_cell_centroid``).


def simplex_cell_noise(codes, num_levels: int,
                       rng: np.random.Generator | None = None) -> np.ndarray:
  """Points drawn uniformly from the arg-max cell ``R_k`` of each row's level ``k``.

  ``codes: [N]`` integers in ``[0, num_levels)``. A uniform point of the simplex is
  Dirichlet(1, ..., 1) (normalised exponentials); swapping its largest coordinate into
  place ``k`` maps the simplex onto ``R_k`` K-to-1 with unit Jacobian (a permutation of
  coordinates), so the result is uniform on ``R_k``. Returns float64 ``[N, K]``, rows on the
  simplex with ``argmax == codes`` (tested).
  """
  codes = np.asarray(codes, np.int64).reshape(-1)
  if codes.size and (codes.min() < 0 or codes.max() >= num_levels):
    raise ValueError(f"codes must lie in [0, {num_levels}), got {codes.min()}..{codes.max()}.")
  rng = np.random.default_rng() if rng is None else rng
  e = rng.standard_exponential((codes.size, num_levels))
  p = e / e.sum(axis=1, keepdims=True)
  rows = np.arange(codes.size)
  top = p.argmax(axis=1)
  p_top, p_code = p[rows, top], p[rows, codes]
  p[rows, top] = p_code
  p[rows, codes] = p_top
  return p


def simplex_cell_centroid(num_levels: int) -> np.ndarray:
  """``[K, K]``: row k is the centroid of the cell ``R_k``: ``p_k = H_K / K`` (H_K the K-th
  harmonic number, the mean of the largest of K uniform spacings) and ``(1 - H_K / K) /
  (K - 1)`` elsewhere (symmetry)."""
  k = int(num_levels)
  top = np.sum(1.0 / np.arange(1, k + 1)) / k
  c = np.full((k, k), (1.0 - top) / max(k - 1, 1))
  np.fill_diagonal(c, top)
  return c


def additive_log_ratio(p) -> np.ndarray:
  """``alr(p) = log p[:, :-1] - log p[:, -1:]``: ``[N, K]`` points of the open simplex to
  ``[N, K - 1]``."""
  p = np.asarray(p, np.float64)
  return np.log(p[:, :-1]) - np.log(p[:, -1:])


def inverse_additive_log_ratio(a) -> np.ndarray:
  """``softmax([a, 0])``: ``[N, K - 1]`` to ``[N, K]`` on the simplex."""
  a = np.asarray(a, np.float64)
  full = np.concatenate([a, np.zeros((a.shape[0], 1))], axis=1)
  full -= full.max(axis=1, keepdims=True)
  e = np.exp(full)
  return e / e.sum(axis=1, keepdims=True)


def additive_log_ratio_log_det(p) -> np.ndarray:
  """``log|det d p_{1:K-1} / d a|`` at ``a = alr(p)``, ``= sum_j log p_j``; ``p: [N, K]``,
  returns ``[N]``. (The Jacobian is ``diag(q) - q q^T`` with ``q = p_{1:K-1}``, whose
  determinant is ``prod(q) (1 - sum q)``.)"""
  return np.sum(np.log(np.asarray(p, np.float64)), axis=1)


def simplex_cell_log_volume(num_levels: int) -> float:
  """``log vol(R_k) = -log K!`` in the coordinates ``p_1..p_{K-1}``."""
  return -float(np.sum(np.log(np.arange(1, int(num_levels) + 1))))


class CategoricalRows(StandardizedRows):
  """A table of numeric columns and categorical codes as the flow's standardised input,
  ``[N, D]`` float32 computed for the rows it is indexed with (as ``StandardizedRows``).

  Raw column ``j`` becomes, in raw column order: itself if numeric; if categorical with K
  levels, the K - 1 additive log-ratios of a point of its level's simplex cell (see above):
  a fresh uniform draw from the cell at every indexing when ``noise_seed`` is an int (the
  training rows, so every batch is dequantised anew), the cell's centroid when it is None
  (prediction). A code of -1 (a level unseen in fit, with ``handle_unknown="ignore"``) is
  the simplex's centre ``p = 1/K``, equally far from every level.

  Args:
    numeric: ``[N, D_num]`` finite float64 (checked by the caller).
    codes: ``[N, G]`` int64 level codes (-1 = unseen level).
    num_levels: ``G`` ints K_g >= 1 (a level-1 column contributes no dimension).
    is_categorical: ``[D_num + G]`` bools, the raw column order.
    mean, scale: ``[D]`` standardisation of the encoded columns; None: computed from one
      pass over the rows (with noise when ``noise_seed`` is set), scale 1 where the
      standard deviation is below 1e-12.
  """

  def __init__(self, numeric, codes, num_levels, is_categorical, mean=None, scale=None, *,
               noise_seed: int | None = None, chunk_rows: int = 65536):
    self.numeric = np.asarray(numeric, np.float64)
    self.codes = np.asarray(codes, np.int64)
    self.num_levels = tuple(int(k) for k in num_levels)
    self.is_categorical = np.asarray(is_categorical, bool)
    self.noise_seed = noise_seed
    self._draws = 0
    n = self.numeric.shape[0]
    if (self.codes.shape != (n, len(self.num_levels))
        or self.is_categorical.sum() != len(self.num_levels)
        or self.is_categorical.size != self.numeric.shape[1] + len(self.num_levels)):
      raise ValueError(f"CategoricalRows: numeric {self.numeric.shape}, codes "
                       f"{self.codes.shape}, {len(self.num_levels)} level counts and "
                       f"{self.is_categorical.size} column kinds do not fit together.")
    self._centroids = [additive_log_ratio(simplex_cell_centroid(k)) for k in self.num_levels]
    self._centres = [np.zeros(k - 1) for k in self.num_levels]
    width = self.numeric.shape[1] + sum(k - 1 for k in self.num_levels)
    self.x = np.empty((n, 0))  # the encoded table is never stored
    self._shape = (n, width)
    if mean is None or scale is None:
      # One pass over row chunks (no encoded [N, D] copy): sums of (v - shift) and its
      # square, shifted by the first chunk's mean against cancellation.
      shift = total = squares = None
      for start in range(0, n, chunk_rows):
        block = self.encode(slice(start, start + chunk_rows))
        shift = block.mean(axis=0) if shift is None else shift
        total = (block - shift).sum(axis=0) + (0 if total is None else total)
        squares = np.square(block - shift).sum(axis=0) + (0 if squares is None else squares)
      mean = shift + total / n
      std = np.sqrt(np.maximum(squares / n - np.square(total / n), 0.0))
      scale = np.where(std < 1e-12, 1.0, std)
    self.mean = np.asarray(mean, np.float64).reshape(-1)
    self.scale = np.asarray(scale, np.float64).reshape(-1)
    if self.mean.shape != (width,) or self.scale.shape != (width,):
      raise ValueError(f"mean and scale must have shape ({width},), got {self.mean.shape} "
                       f"and {self.scale.shape}.")

  @property
  def shape(self) -> tuple[int, int]:
    return self._shape

  def __len__(self) -> int:
    return self._shape[0]

  def encode(self, rows) -> np.ndarray:
    """The encoded, unstandardised rows ``[n, D]`` float64 (``rows``: indices or a slice)."""
    numeric, codes = self.numeric[rows], self.codes[rows]
    if numeric.ndim == 1:
      numeric, codes = numeric[None], codes[None]
    rng = None
    if self.noise_seed is not None:
      rng = np.random.default_rng((int(self.noise_seed), self._draws))
      self._draws += 1
    blocks, num_j, cat_j = [], 0, 0
    for categorical in self.is_categorical:
      if not categorical:
        blocks.append(numeric[:, num_j:num_j + 1])
        num_j += 1
        continue
      k, c = self.num_levels[cat_j], codes[:, cat_j]
      known = c >= 0
      if rng is not None:
        a = np.zeros((c.size, k - 1))
        a[known] = additive_log_ratio(simplex_cell_noise(c[known], k, rng))
      else:
        a = self._centroids[cat_j][np.maximum(c, 0)]
        a[~known] = self._centres[cat_j]
      blocks.append(a)
      cat_j += 1
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(numeric), 0))

  def __getitem__(self, key) -> np.ndarray:
    rows, columns = (key[0], key[1]) if isinstance(key, tuple) else (key, slice(None))
    if isinstance(rows, (int, np.integer)):
      return self[[rows], columns][0]
    block = (self.encode(rows) - self.mean) / self.scale
    return block[:, columns].astype(np.float32)

  def decode(self, u) -> tuple[np.ndarray, np.ndarray]:
    """Standardised encoded rows ``u: [N, D]`` back to ``(numeric [N, D_num], codes [N,
    G])``: each categorical block's level is ``argmax softmax([a, 0])``."""
    a = np.asarray(u, np.float64) * self.scale + self.mean
    numeric, codes, col = [], [], 0
    cat_j = 0
    for categorical in self.is_categorical:
      if not categorical:
        numeric.append(a[:, col])
        col += 1
        continue
      k = self.num_levels[cat_j]
      codes.append(inverse_additive_log_ratio(a[:, col:col + k - 1]).argmax(axis=1))
      col += k - 1
      cat_j += 1
    n = a.shape[0]
    return (np.stack(numeric, axis=1) if numeric else np.zeros((n, 0)),
            np.stack(codes, axis=1) if codes else np.zeros((n, 0), np.int64))

  def log_cell_correction(self) -> np.ndarray:
    """``[N]``: added to the flow's log-density of the (unstandardised) encoded row, the log
    of the model's mass of each categorical level's cell at the prediction point:
    ``sum_g [-sum_j log p_j - log K_g!]`` with ``p`` the point of each row (centroid, or
    centre for an unseen level)."""
    out = np.zeros(len(self))
    for g, k in enumerate(self.num_levels):
      c = self.codes[:, g]
      p = simplex_cell_centroid(k)[np.maximum(c, 0)]
      p[c < 0] = 1.0 / k
      out += -additive_log_ratio_log_det(p) + simplex_cell_log_volume(k)
    return out

  def __repr__(self) -> str:
    return (f"CategoricalRows(shape={self.shape}, levels={self.num_levels}, "
            f"noise={'on' if self.noise_seed is not None else 'off'})")


# ----------------------------------------------------------------------------- raw tables

def is_dataframe(x) -> bool:
  """Whether ``x`` is a pandas DataFrame (without importing pandas for other inputs)."""
  return type(x).__module__.split(".")[0] == "pandas" and hasattr(x, "columns")


def _column_label(encoder: TableEncoder, j: int) -> str:
  return repr(encoder.columns[j]) if encoder.columns is not None else f"{j}"


class TableEncoder:
  """Which raw columns of a table are categorical, and their levels, learned at ``fit``;
  splits a table into numeric columns and categorical level codes.

  Args:
    categorical_features: None: ``"from_dtype"`` for a DataFrame, no categorical column for
      an array; ``"from_dtype"``: the DataFrame columns of pandas ``category``, ``object``
      or ``string`` dtype (bool columns are numeric 0/1); an array of ``[n_features]``
      bools (a mask), of column indices, or of column names (DataFrames).
    handle_unknown: "error": a level not seen in fit is refused naming the column and value;
      "ignore": it gets code -1.

  Attributes after ``fit``: ``columns`` (the DataFrame's column labels, or None),
  ``is_categorical [n_features]``, ``categories`` (one sorted array of levels per
  categorical column, left to right), ``category_dtypes`` (the pandas dtype of each
  categorical column, or None).
  """

  def __init__(self, categorical_features=None, handle_unknown: str = "error"):
    self.categorical_features = categorical_features
    self.handle_unknown = handle_unknown

  def _mask(self, X, n_features: int) -> np.ndarray:
    spec = self.categorical_features
    frame = is_dataframe(X)
    if spec is None:
      spec = "from_dtype" if frame else None
    if spec is None:
      return np.zeros(n_features, bool)
    if isinstance(spec, str):
      if spec != "from_dtype":
        raise ValueError(f"categorical_features={spec!r} must be None, 'from_dtype', or an "
                         "array of bools, column indices or column names.")
      if not frame:  # an array has no dtypes per column: nothing is categorical
        return np.zeros(n_features, bool)
      import pandas as pd
      return np.array([isinstance(t, pd.CategoricalDtype) or pd.api.types.is_object_dtype(t)
                       or pd.api.types.is_string_dtype(t) for t in X.dtypes], bool)
    spec = np.asarray(spec)
    if spec.ndim != 1:
      raise ValueError("categorical_features must be 1-D (a mask, indices or names).")
    if spec.dtype == bool:
      if spec.size != n_features:
        raise ValueError(f"categorical_features is a mask of {spec.size} entries, but X has "
                         f"{n_features} columns; give one bool per column.")
      return spec.copy()
    mask = np.zeros(n_features, bool)
    if spec.size == 0:
      return mask
    if spec.dtype.kind in "iu":
      bad = spec[(spec < -n_features) | (spec >= n_features)]
      if bad.size:
        raise ValueError(f"categorical_features holds column index {bad[0]}, but X has "
                         f"{n_features} columns.")
      mask[spec] = True
      return mask
    if spec.dtype.kind in "UO" and frame:
      names = list(X.columns)
      for name in spec:
        if name not in names:
          raise ValueError(f"categorical_features names column {name!r}, which X does not "
                           f"have; its columns are {names}.")
        mask[names.index(name)] = True
      return mask
    raise ValueError("categorical_features must be None, 'from_dtype', a boolean mask, "
                     "integer column indices, or column names (with a DataFrame).")

  def _columns(self, X) -> list:
    """The raw columns of X as a list of 1-D arrays (object arrays for non-numeric ones)."""
    if is_dataframe(X):
      return [X.iloc[:, j].to_numpy() for j in range(X.shape[1])]
    x = np.asarray(X)
    if x.ndim != 2:
      raise ValueError(f"X must be 2-D [n_samples, n_features], got shape {x.shape}; "
                       "reshape it, e.g. X.reshape(-1, 1) for a single feature.")
    return [x[:, j] for j in range(x.shape[1])]

  def fit(self, X) -> TableEncoder:
    if self.handle_unknown not in ("error", "ignore"):
      raise ValueError(f"handle_unknown={self.handle_unknown!r} must be 'error' or 'ignore'.")
    frame = is_dataframe(X)
    self.columns = list(X.columns) if frame else None
    columns = self._columns(X)
    self.n_features = len(columns)
    self.is_categorical = self._mask(X, self.n_features)
    self.category_dtypes = [X.dtypes.iloc[j] if frame else None
                            for j in np.flatnonzero(self.is_categorical)]
    self.categories = []
    for j in np.flatnonzero(self.is_categorical):
      values = self._checked_levels(columns[j], j)
      self.categories.append(np.array(sorted(set(values.tolist()), key=_level_key),
                                      dtype=object))
    self._index = [{v: i for i, v in enumerate(c.tolist())} for c in self.categories]
    return self

  def _checked_levels(self, column, j) -> np.ndarray:
    values = np.asarray(column, dtype=object)
    missing = np.array([v is None or (isinstance(v, float) and v != v) or
                        type(v).__name__ in ("NAType", "NaTType") for v in values], bool)
    if missing.any():
      raise ValueError(f"categorical column {_column_label(self, j)} has a missing value in "
                       f"row {int(np.flatnonzero(missing)[0])}; impute it or make it a level "
                       "of its own (e.g. 'missing').")
    return values

  def check_columns(self, X) -> None:
    """One-line ValueError unless X has the columns of fit (names and order for a
    DataFrame fitted on a DataFrame; the count otherwise)."""
    frame = is_dataframe(X)
    if frame and self.columns is not None and list(X.columns) != self.columns:
      got = list(X.columns)
      missing = [c for c in self.columns if c not in got]
      extra = [c for c in got if c not in self.columns]
      what = (f"lacks {missing}" if missing else f"has columns fit did not see: {extra}"
              if extra else "has the columns of fit in another order")
      raise ValueError(f"X {what}; pass the columns of fit in the same order: "
                       f"{self.columns}.")
    n = X.shape[1] if hasattr(X, "shape") and len(X.shape) == 2 else None
    if n is not None and n != self.n_features:
      raise ValueError(f"X has {n} features, but FlowGMMClassifier is expecting "
                       f"{self.n_features} features as input; pass the same columns, in the "
                       "same order, as in fit.")

  def split(self, X, handle_unknown: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(numeric float64 [N, D_num], codes int64 [N, G])`` of X; a level unseen in fit is
    an error naming the column and value, or code -1 with ``handle_unknown="ignore"``
    (default: the encoder's own).
    Non-finite or non-numeric entries of a numeric column are refused naming the column."""
    self.check_columns(X)
    columns = self._columns(X)
    n = len(columns[0]) if columns else 0
    numeric, codes, g = [], [], 0
    for j, column in enumerate(columns):
      if self.is_categorical[j]:
        values = self._checked_levels(column, j)
        index = self._index[g]
        c = np.fromiter((index.get(v, -1) for v in values.tolist()), np.int64, count=n)
        if (handle_unknown or self.handle_unknown) == "error" and (c < 0).any():
          row = int(np.flatnonzero(c < 0)[0])
          raise ValueError(
              f"categorical column {_column_label(self, j)} has the value {values[row]!r} "
              f"(row {row}), which fit did not see; fit with it, or pass "
              f"handle_unknown='ignore'. Known: {self.categories[g].tolist()[:10]}.")
        codes.append(c)
        g += 1
        continue
      try:
        v = np.asarray(column, np.float64)
      except (TypeError, ValueError):
        raise ValueError(f"column {_column_label(self, j)} is not numeric (e.g. "
                         f"{np.asarray(column, object)[0]!r}); name it in "
                         "categorical_features or give it a pandas category or string "
                         "dtype.") from None
      if not np.isfinite(v).all():
        row = int(np.flatnonzero(~np.isfinite(v))[0])
        raise ValueError(f"Input X contains NaN or infinity: column {_column_label(self, j)}, "
                         f"row {row}; drop those rows or impute the missing values first.")
      numeric.append(v)
    return (np.stack(numeric, axis=1) if numeric else np.zeros((n, 0)),
            np.stack(codes, axis=1) if codes else np.zeros((n, 0), np.int64))

  def one_hot(self, numeric, codes) -> np.ndarray:
    """``[N, D]`` float64: the raw columns in order, each categorical one as K 0/1 columns
    (OneHotEncoder's layout; an unseen level, code -1, is an all-zero row as with its
    ``handle_unknown="ignore"``)."""
    blocks, num_j, g = [], 0, 0
    for categorical in self.is_categorical:
      if categorical:
        k = len(self.categories[g])
        block = np.zeros((codes.shape[0], k))
        known = codes[:, g] >= 0
        block[np.flatnonzero(known), codes[known, g]] = 1.0
        blocks.append(block)
        g += 1
      else:
        blocks.append(numeric[:, num_j:num_j + 1])
        num_j += 1
    return np.concatenate(blocks, axis=1)

  def from_one_hot(self, x) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``one_hot`` for rows ``x [N, D]`` that need not be exact: each block's
    level is its arg max."""
    numeric, codes, col, g = [], [], 0, 0
    for categorical in self.is_categorical:
      if categorical:
        k = len(self.categories[g])
        codes.append(np.asarray(x[:, col:col + k]).argmax(axis=1))
        col += k
        g += 1
      else:
        numeric.append(x[:, col])
        col += 1
    n = x.shape[0]
    return (np.stack(numeric, axis=1) if numeric else np.zeros((n, 0)),
            np.stack(codes, axis=1) if codes else np.zeros((n, 0), np.int64))

  def rows(self, numeric, codes):
    """The raw table of ``(numeric, codes)``: a DataFrame with the columns of fit (and each
    categorical column's dtype) when fit saw one, else an array (object if a level is not
    a number)."""
    n = numeric.shape[0]
    values, num_j, g = [], 0, 0
    for categorical in self.is_categorical:
      if categorical:
        values.append(self.categories[g][codes[:, g]])
        g += 1
      else:
        values.append(numeric[:, num_j])
        num_j += 1
    if self.columns is not None:
      import pandas as pd
      frame = pd.DataFrame({i: v for i, v in enumerate(values)}, index=range(n))
      frame.columns = self.columns
      for g, j in enumerate(np.flatnonzero(self.is_categorical)):
        dtype = self.category_dtypes[g]
        if dtype is not None and not pd.api.types.is_object_dtype(dtype):
          frame.isetitem(j, frame.iloc[:, j].astype(dtype))
      return frame
    out = np.empty((n, len(values)), object)
    for j, v in enumerate(values):
      out[:, j] = v
    try:
      return out.astype(np.float64)
    except (TypeError, ValueError):
      return out


def _level_key(value):
  """Sort key of category levels: numbers by value, then everything else by its text."""
  if isinstance(value, (bool, np.bool_, numbers.Number)):
    return (0, float(value), "")
  return (1, 0.0, str(value))
