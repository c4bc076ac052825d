"""A trained FlowGMM, back from its workdir: ``load(workdir, step=None) -> TrainedFlowGMM``.

    model = flowgmm_jax.load("/tmp/toy")          # the latest checkpoint
    probs = model.predict_proba(x_raw)             # [N, K], calibrated if the run was
    z = model.encode(x_raw); x_back = model.decode(z)
    x_new = model.sample(16, y=3, temperature=0.7)

The model is rebuilt from the checkpoint's own metadata (model, prior, data kind, input
shape, number of classes; ``checkpoint.make_meta``), so no config file is needed; only the
variables are read (the optimiser state is left on disk, and nothing in the workdir is
written).

Inputs are raw rows of the run's data kind: 8-bit images ``[N, H, W, C]`` (uint8 or floats
in 0..255), or feature rows ``[N, D_raw]`` in the units of the original file. Tabular and
text runs drop constant columns and standardise with the training statistics; those are
stored with the run (``data_transform.npz``) and applied here. Pass ``preprocessed=True`` to
give rows that are already transformed (e.g. ``Dataset.x_test``).

This is the one inference path: the training loop's evaluation and early stopping,
``--mode=eval``, ``load`` and ``FlowGMMClassifier`` all predict through a
``TrainedFlowGMM``. Every method runs a jitted program, data-parallel over the ``data`` mesh
(``flowgmm_jax.mesh``; by default this process's devices), in chunks of at most
``batch_size`` rows padded by ``mesh.padded_rows``, so a 10,000-row call needs the memory of
one chunk and calls of many sizes share a handful of compiled programs (one per padded size,
cached per model and mesh).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flowgmm_jax import checkpoint as ckpt
from flowgmm_jax import mesh as mesh_lib
from flowgmm_jax import novelty, run_files
from flowgmm_jax.checkpoint import IncompatibleCheckpointError, RunNotFoundError  # noqa: F401
from flowgmm_jax.features import StandardizedRows
from flowgmm_jax.flowgmm import FlowGMM, bits_per_dim, log_px
from flowgmm_jax.models import PARAM_LAYOUT_VERSION, LayoutVersionError, check_layout_version

# Chunks are padded to at least 1/MIN_CHUNK_FRACTION of the chunk size: each padded size is
# a compile of its own, while padding rows cost only their share of one forward pass.
MIN_CHUNK_FRACTION = 8


@functools.lru_cache(maxsize=64)
def _programs(model: FlowGMM, mesh) -> tuple:
  """The jitted, data-parallel programs of ``model`` on ``mesh``: (forward, inverse,
  latent_logits), each ``fn(variables, rows [B, ...])`` with the variables replicated and
  the rows split over ``data``. Cached, so every TrainedFlowGMM of an equal model on the
  same mesh (the loop's evaluations, refitted estimators) reuses their compilations."""
  def sharded(fn):
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(mesh_lib.DATA_AXIS)),
                                 out_specs=P(mesh_lib.DATA_AXIS), check_vma=False))

  def forward(variables, x):  # z [B, D], log_det [B], logits [B, K]
    return model.apply(variables, x.astype(jnp.float32))

  def inverse(variables, z):
    return model.apply(variables, z, method=model.inverse)

  def latent_logits(variables, z):
    return model.apply(variables, z, method=lambda m, v: m.prior.class_logits(v))

  return sharded(forward), sharded(inverse), sharded(latent_logits)


@functools.lru_cache(maxsize=64)
def _prior_program(model: FlowGMM):
  """jit(variables -> {'means' [K, D], 'scales' [K, D], 'log_weights' [K]})."""
  def parameters(m):
    return {"means": m.prior.means(), "scales": m.prior.scales(),
            "log_weights": m.prior.log_weights()}
  return jax.jit(lambda variables: model.apply(variables, method=parameters))


class TrainedFlowGMM:
  """A trained FlowGMM with numpy in, numpy out methods. Build it with ``load``.

  Attributes:
    model: the ``FlowGMM`` Linen module (eval mode); ``variables`` its variables.
    meta: the checkpoint metadata that describes the model (``checkpoint.make_meta``).
    mesh: the 1-D ``data`` mesh the programs run on (default: this process's devices).
    step: the checkpoint's training step.
    kind: the data kind ("image" | "tabular" | "text" | "toy"); ``input_shape`` (no batch)
      the shape of the model's input rows; ``num_classes`` K; ``num_dims`` D.
    temperature: the calibration temperature T (1.0 = uncalibrated); ``predict_proba``
      returns softmax(logits / T).
  """

  def __init__(self, model, variables: dict, *, meta: dict, step: int,
               data_transform: dict | None = None, temperature: float = 1.0,
               batch_size: int | None = None, workdir: str | None = None, mesh=None):
    self.model = model
    self.variables = variables
    self.meta = meta
    self.step = int(step)
    self.workdir = workdir
    self.kind = meta["data"]["kind"]
    self.input_shape = tuple(int(s) for s in meta["input_shape"])
    self.num_classes = int(meta["num_classes"])
    self.num_dims = int(np.prod(self.input_shape))
    self.data_transform = data_transform or {}
    self.temperature = float(temperature)
    if batch_size is None:  # keep one chunk's activations small: ~0.5 GB for 32x32x3
      batch_size = 256 if self.kind == "image" else 2048
    self.batch_size = int(batch_size)
    self._mesh = mesh
    self._placed = None  # (variables, the same replicated on the mesh)
    self._prior = None  # (variables, their prior's parameters as NumPy arrays)

  @property
  def mesh(self):
    if self._mesh is None:
      self._mesh = mesh_lib.make_mesh(jax.local_devices())
    return self._mesh

  def __getstate__(self):
    # A pickle holds the variables on the host and the metadata; the mesh, the module and
    # the device copies are rebuilt where it is loaded.
    state = dict(vars(self))
    state["variables"] = jax.tree.map(np.asarray, jax.device_get(self.variables))
    state.update(_mesh=None, _placed=None, _prior=None, model=None)
    return state

  def __setstate__(self, state):
    vars(self).update({"_prior": None, **state})
    # A pickle of an older version: its metadata upgraded, a layout it cannot read refused.
    self.meta = ckpt.upgrade_meta(self.meta)
    check_layout(self.meta)
    if self.model is None:
      self.model = model_from_meta(self.meta)

  def _device_variables(self):
    """The variables replicated on the mesh (a copy is made once, unless they are already)."""
    if mesh_lib.is_replicated_on(self.variables, self.mesh):
      return self.variables
    if self._placed is None or self._placed[0] is not self.variables:
      self._placed = (self.variables, mesh_lib.replicate(self.mesh, self.variables))
    return self._placed[1]

  # -- inputs ------------------------------------------------------------------------

  @property
  def image(self) -> bool:
    return self.kind == "image"

  @property
  def num_raw_features(self) -> int:
    """Columns of a raw feature row (before constant columns were dropped)."""
    if "num_raw_features" in self.data_transform:
      return int(self.data_transform["num_raw_features"])
    return self.num_dims

  def preprocess(self, x: Any) -> np.ndarray:
    """Raw rows -> model input rows (kept columns, standardised), ``float32``."""
    x = np.asarray(x)
    if self.image:
      return x.astype(np.float32)
    x = x.astype(np.float64)
    t = self.data_transform
    if "kept_feature_columns" in t and x.shape[-1] != len(t["kept_feature_columns"]):
      x = x[..., t["kept_feature_columns"]]
    if "feature_mean" in t:
      x = (x - t["feature_mean"]) / t["feature_std"]
    return x.astype(np.float32)

  def postprocess(self, x: np.ndarray) -> np.ndarray:
    """Model-space rows -> raw units (images: pixel values in [0, 255]; features: the kept
    columns, un-standardised)."""
    if self.image:
      # FlowGMM.inverse returns x + u with the evaluation's midpoint u = 0.5.
      return np.clip(x - 0.5, 0.0, 255.0)
    t = self.data_transform
    if "feature_mean" in t:
      x = x * t["feature_std"] + t["feature_mean"]
    return x.astype(np.float32)

  def _check_rows(self, x: np.ndarray) -> np.ndarray:
    if x.ndim == len(self.input_shape):  # a single example
      x = x[None]
    if tuple(x.shape[1:]) != self.input_shape:
      raise ValueError(f"inputs must have shape [N, {', '.join(map(str, self.input_shape))}] "
                       f"after preprocessing, got {x.shape}.")
    return x

  def _chunks(self, program: int, x: np.ndarray, keep: tuple | None = None):
    """Runs program ``program`` (0 forward, 1 inverse, 2 latent logits) over the rows of
    ``x``: chunks of at most ``batch_size`` rows (rounded up to the device count), each
    padded to ``mesh.padded_rows`` by repeating its last row; the padding's outputs are
    dropped and the chunks' outputs concatenated. ``keep``: the positions of the program's
    output tuple to collect (the others become None and are never held for all N rows:
    ``predict`` on a large table keeps no ``[N, D]`` latent)."""
    if len(x) == 0:
      raise ValueError("got 0 rows; pass at least one example.")
    fn = _programs(self.model, self.mesh)[program]
    variables = self._device_variables()
    devices = mesh_lib.num_devices(self.mesh)
    cap = mesh_lib.round_up(self.batch_size, devices)
    outputs = []
    for start in range(0, len(x), cap):
      chunk = np.asarray(x[start:start + cap], np.float32)
      n = len(chunk)
      # At least cap // MIN_CHUNK_FRACTION rows: a fit's small calls (the labelled rows'
      # centroids, the early-stopping rows) then share one compiled program.
      size = mesh_lib.padded_rows(max(n, cap // MIN_CHUNK_FRACTION), cap, devices)
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
      out = fn(variables, mesh_lib.shard_batch(self.mesh, chunk))
      if keep is not None:
        out = tuple(part if i in keep else None for i, part in enumerate(out))
      outputs.append(jax.tree.map(lambda a, n=n: mesh_lib.to_host(a)[:n], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)

  def _outputs(self, x, preprocessed: bool, keep: tuple = (0, 1, 2)):
    """(z [N, D], log_det [N], logits [N, K]), None where not in ``keep``."""
    if isinstance(x, StandardizedRows) and preprocessed:
      return self._chunks(0, self._check_rows(x), keep)  # chunks standardised as gathered
    x = np.asarray(x) if preprocessed else self.preprocess(x)
    return self._chunks(0, self._check_rows(x.astype(np.float32)), keep)

  def outputs(self, x, preprocessed: bool = False,
              keys: tuple = ("z", "log_det", "logits")) -> dict:
    """One pass over ``x``: {'z' [N, D], 'log_det' [N], 'logits' [N, K] (uncalibrated)},
    only the ``keys`` asked for (the others are not kept for all N rows)."""
    names = ("z", "log_det", "logits")
    unknown = set(keys) - set(names)
    if unknown:
      raise ValueError(f"unknown output(s) {sorted(unknown)}; choose from {names}.")
    parts = self._outputs(x, preprocessed, keep=tuple(names.index(k) for k in keys))
    return {k: parts[names.index(k)] for k in keys}

  # -- predictions -------------------------------------------------------------------

  def logits(self, x, preprocessed: bool = False) -> np.ndarray:
    """Uncalibrated class logits log pi_k + log N(f(x); mu_k, Sigma_k), ``[N, K]``."""
    return self._outputs(x, preprocessed, keep=(2,))[2]

  def predict_proba(self, x, preprocessed: bool = False,
                    temperature: float | None = None) -> np.ndarray:
    """p(y | x) = softmax(logits / T), ``[N, K]``; T = ``self.temperature`` by default."""
    t = self.temperature if temperature is None else float(temperature)
    return np.asarray(jax.nn.softmax(self.logits(x, preprocessed) / t, axis=-1))

  def predict(self, x, preprocessed: bool = False) -> np.ndarray:
    """Most probable class, ``[N]`` int (the temperature does not change it)."""
    return np.argmax(self.logits(x, preprocessed), axis=-1)

  def log_prob(self, x, preprocessed: bool = False) -> np.ndarray:
    """log p(x) in nats, ``[N]``: the mixture density times the flow's Jacobian, in the
    model's input space (images: of the 8-bit data, midpoint-dequantised; features: of the
    standardised rows)."""
    _, log_det, logits = self._outputs(x, preprocessed, keep=(1, 2))
    return log_px(logits, log_det)

  def bits_per_dim(self, x, preprocessed: bool = False) -> np.ndarray:
    """-log p(x) / (D log 2), ``[N]``."""
    return bits_per_dim(-self.log_prob(x, preprocessed), self.num_dims)

  def outlier_score(self, x, kind: str | None = None, reference=None,
                    preprocessed: bool = False) -> np.ndarray:
    """How unlike the training data each row of ``x`` is, ``[N]``, higher = more unusual:
    ``kind`` "neg_log_px" (-log p(x)), "typicality" (|log p(x) - m| / s, m and
    s over ``reference``: rows of the training distribution the run did not train on,
    required for this kind), "mahalanobis" (latent distance to the nearest class mean) or
    "max_prob" (1 - max_k p(y | x)); default ``novelty.DEFAULT_OUTLIER_SCORE``.
    ``flowgmm_jax/novelty.py`` gives the maths, docs/novelty.md the measurements (MNIST
    against Fashion-MNIST) and when not to trust them."""
    kind = novelty.check_choice(kind or novelty.DEFAULT_OUTLIER_SCORE, novelty.OUTLIER_SCORES,
                                "kind")
    reference_log_px = None
    if kind == "typicality":
      if reference is None:
        raise ValueError("kind='typicality' compares log p(x) with that of reference rows: "
                         "pass reference= rows of the training distribution (e.g. a "
                         "validation split).")
      reference_log_px = self.log_prob(reference, preprocessed)
    z, log_det, logits = self._outputs(
        x, preprocessed, keep=(0, 1, 2) if kind in novelty.NEEDS_LATENT else (1, 2))
    return novelty.outlier_scores(
        kind, log_px=log_px(logits, log_det), logits=logits, z=z, means=self.means(),
        scales=self.scales(), temperature=self.temperature, reference_log_px=reference_log_px)

  # -- latent space ------------------------------------------------------------------

  def encode(self, x, preprocessed: bool = False) -> np.ndarray:
    """Data -> latent z = f(x), ``[N, D]``."""
    return self._outputs(x, preprocessed, keep=(0,))[0]

  def decode(self, z, raw: bool = True) -> np.ndarray:
    """Latent -> data, ``[N, D] -> [N, *input_shape]``; ``raw`` maps back to the raw units
    (see ``postprocess``), otherwise the model's input space."""
    z = np.asarray(z, np.float32)
    if z.ndim == 1:
      z = z[None]
    if z.shape[1:] != (self.num_dims,):
      raise ValueError(f"z must have shape [N, {self.num_dims}], got {z.shape}.")
    x = self._chunks(1, z)
    return self.postprocess(x) if raw else x

  def latent_logits(self, z) -> np.ndarray:
    """Uncalibrated class logits of latents, ``[N, D] -> [N, K]`` (p(y|x) depends on x only
    through z = f(x))."""
    z = np.asarray(z, np.float32)
    return self._chunks(2, z.reshape(-1, self.num_dims))

  def means(self) -> np.ndarray:
    """The class means mu_k in latent space, ``[K, D]``."""
    return self._prior_parameters()["means"]

  def scales(self) -> np.ndarray:
    """The per-class standard deviations sigma_kd, ``[K, D]``."""
    return self._prior_parameters()["scales"]

  def log_weights(self) -> np.ndarray:
    """log pi_k, ``[K]``."""
    return self._prior_parameters()["log_weights"]

  def _prior_parameters(self) -> dict:
    # One jitted program for all three (op-by-op they compile one program per operation),
    # computed once per set of variables.
    if self._prior is None or self._prior[0] is not self.variables:
      values = _prior_program(self.model)(self.variables)
      self._prior = (self.variables, {k: np.asarray(v) for k, v in values.items()})
    return self._prior[1]

  def sample(self, n: int, y=None, temperature: float = 1.0, seed: int = 0,
             raw: bool = True) -> np.ndarray:
    """``n`` samples x = f^-1(mu_y + temperature * sigma_y * eps), ``[n, *input_shape]``.

    ``y``: None (classes drawn from the mixture weights), an int (every sample of that
    class) or ``[n]`` ints. ``temperature`` 0 decodes the class means.
    """
    rng = np.random.default_rng(seed)
    if y is None:
      y = rng.choice(self.num_classes, size=n, p=np.exp(self.log_weights()))
    y = np.broadcast_to(np.asarray(y, np.int64), (n,))
    if y.size and (y.min() < 0 or y.max() >= self.num_classes):
      raise ValueError(f"y must be in 0..{self.num_classes - 1}, got {np.unique(y)}.")
    eps = rng.standard_normal((n, self.num_dims)).astype(np.float32)
    z = self.means()[y] + temperature * self.scales()[y] * eps
    return self.decode(z, raw=raw)

  def __repr__(self):
    return (f"TrainedFlowGMM({self.meta['model']['name']}, data={self.meta['data']['name']}, "
            f"input_shape={self.input_shape}, classes={self.num_classes}, step={self.step}, "
            f"temperature={self.temperature:.3g})")


def model_from_meta(meta: dict) -> FlowGMM:
  """The eval-mode model a checkpoint's metadata describes (its config's model and prior)."""
  config = ml_collections.ConfigDict({"model": meta["model"], "prior": meta["prior"]})
  return FlowGMM.from_config(config, tuple(meta["input_shape"]), int(meta["num_classes"]),
                             image=meta["data"]["kind"] == "image")


def check_layout(meta: dict) -> None:
  """``models.LayoutVersionError`` (one line) unless the variables ``meta`` describes are in
  the one parameter layout this version reads (``models.PARAM_LAYOUT_VERSION``)."""
  check_layout_version(meta.get("param_layout", PARAM_LAYOUT_VERSION), where="this model")


def from_variables(meta: dict, variables: dict, *, step: int = 0, **kwargs) -> TrainedFlowGMM:
  """A ``TrainedFlowGMM`` from ``checkpoint.make_meta``-style metadata and ``model.apply``
  variables (e.g. during or right after training, before anything is written)."""
  meta = ckpt.upgrade_meta(meta)
  check_layout(meta)
  return TrainedFlowGMM(model_from_meta(meta), variables, meta=meta, step=step, **kwargs)


def load(workdir: str, step: int | None = None, *, calibrated: bool = True,
         batch_size: int | None = None, mesh=None) -> TrainedFlowGMM:
  """The model of the run in ``workdir`` at ``step`` (default: the latest checkpoint).

  ``calibrated``: apply the temperature fitted for this step (``calibration.json``) in
  ``predict_proba``; without one, T = 1. ``mesh``: where to run (default: this process's
  devices); the variables are read onto it, whatever devices the run was trained on.

  Raises ``RunNotFoundError`` (no checkpoint / no such step) or
  ``IncompatibleCheckpointError`` (written by an incompatible version), each one line.
  """
  import os
  if not os.path.isdir(workdir):
    raise RunNotFoundError(f"workdir {workdir!r} does not exist.")
  mesh = mesh_lib.make_mesh(jax.local_devices()) if mesh is None else mesh
  step, meta, state = ckpt.read_checkpoint(workdir, step,
                                           sharding=NamedSharding(mesh, P()))
  try:
    check_layout(meta)
  except LayoutVersionError as e:
    raise IncompatibleCheckpointError(f"{workdir}: {e}") from None
  model = model_from_meta(meta)
  variables = {"params": state["params"], **(state.get("fixed") or {})}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  # The stored variables must be exactly those this code builds for the same config.
  x0 = jnp.zeros((2,) + tuple(meta["input_shape"]), jnp.float32)
  expected = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0),
                                                "dropout": jax.random.PRNGKey(0)}, x0))
  def shape_of(t):
    return jax.tree.map(lambda a: tuple(a.shape), t)
  if shape_of(dict(expected)) != shape_of(variables):
    raise IncompatibleCheckpointError(
        f"checkpoint {workdir}/checkpoints/{step} holds variables that this version of "
        f"flowgmm_jax does not build for model {meta['model'].get('name')!r}; it was written "
        "by an incompatible version.")
  temperature = 1.0
  cal = run_files.read_calibration(workdir) if calibrated else None
  if cal and int(cal.get("step", -1)) == step:
    temperature = float(cal["temperature"])
  return TrainedFlowGMM(model, variables, meta=meta, step=step,
                        data_transform=run_files.read_data_transform(workdir),
                        temperature=temperature, batch_size=batch_size, workdir=workdir,
                        mesh=mesh)
