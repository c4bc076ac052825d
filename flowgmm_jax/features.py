"""What kind of numbers each column of a table holds: continuous, or on a lattice (binary,
integer codes, counts), and one-hot groups. Pure NumPy; nothing here trains.

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
from typing import List, Optional, Tuple

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


def describe_columns(x, *, max_levels: int = DEFAULT_MAX_LEVELS,
                     tol: float = 1e-6) -> List[ColumnKind]:
  """``describe_column`` of every column of ``x: [N, D]``; a list of D ``ColumnKind``."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"describe_columns expects a table [N, D], got shape {x.shape}.")
  return [describe_column(x[:, j], max_levels=max_levels, tol=tol) for j in range(x.shape[1])]


# Rows of the quick first pass of dequantization_widths: a column with more than
# ``max_levels`` distinct values among them spans more lattice levels than that, so it is
# continuous whatever the other rows hold; only the others are described on every row.
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


def dequantize(x, widths, rng: Optional[np.random.Generator] = None) -> np.ndarray:
  """``x + (u - 1/2) * widths`` with ``u ~ U[0, 1)`` per entry: each value moves uniformly
  within its own cell ``[v - r/2, v + r/2)``, cells of neighbouring lattice values touch
  without overlapping, and ``round`` to the lattice recovers ``x`` (tested).

  ``x: [N, D]``, ``widths: [D]`` (0 leaves a column unchanged). Returns float64 ``[N, D]``.
  """
  x = np.asarray(x, np.float64)
  widths = np.asarray(widths, np.float64)
  if x.ndim != 2 or widths.shape != (x.shape[1],):
    raise ValueError(f"dequantize expects x [N, D] and widths [D], got {x.shape} and "
                     f"{widths.shape}.")
  rng = np.random.default_rng() if rng is None else rng
  return x + (rng.random(x.shape) - 0.5) * widths


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


def one_hot_groups(x, *, min_size: int = 2) -> List[Tuple[int, int]]:
  """Runs of adjacent 0/1 columns of ``x: [N, D]`` in which every row has exactly one 1.

  Returns half-open column ranges ``[(start, stop), ...]`` (each ``stop - start >=
  min_size``), left to right, not overlapping. A run is grown from its first column while
  no row's sum exceeds 1 and is kept once every row sums to exactly 1; the scan then
  continues after it (so two adjacent groups are found as two).
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"one_hot_groups expects a table [N, D], got shape {x.shape}.")
  is_indicator = np.all((x == 0) | (x == 1), axis=0)
  groups, start, d = [], 0, x.shape[1]
  while start < d:
    if not is_indicator[start]:
      start += 1
      continue
    row_sums = np.zeros(x.shape[0])
    found = None
    for stop in range(start, d):
      if not is_indicator[stop]:
        break
      row_sums = row_sums + x[:, stop]
      if np.any(row_sums > 1):
        break
      if stop + 1 - start >= min_size and np.all(row_sums == 1):
        found = stop + 1
        break
    if found is None:
      start += 1
    else:
      groups.append((start, found))
      start = found
  return groups
