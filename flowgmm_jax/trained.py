"""A trained FlowGMM, back from its workdir: ``load(workdir, step=None) -> TrainedFlowGMM``.

    model = flowgmm_jax.load("/tmp/toy")          # the latest checkpoint
    probs = model.predict_proba(x_raw)             # [N, K], calibrated if the run was
    z = model.encode(x_raw); x_back = model.decode(z)
    x_new = model.sample(16, y=3, temperature=0.7)

The model is rebuilt from the checkpoint's own metadata (model, prior, data kind, input
shape, number of classes), so no config file is needed; only the variables are read (the
optimiser state is left on disk, and nothing in the workdir is written).

Inputs are raw rows of the run's data kind: 8-bit images ``[N, H, W, C]`` (uint8 or floats
in 0..255), or feature rows ``[N, D_raw]`` in the units of the original file. Tabular and
text runs drop constant columns and standardise with the training statistics; those are
stored with the run (``data_transform.npz``) and applied here. Pass ``preprocessed=True`` to
give rows that are already transformed (e.g. ``Dataset.x_test``).

Every method is jitted and runs in fixed-size chunks (the last one padded), so a
10,000-row call needs one compiled program and the memory of one chunk.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowgmm_jax import evaluation
from flowgmm_jax.flowgmm import FlowGMM
from flowgmm_jax.training.checkpoint import IncompatibleCheckpointError

DATA_TRANSFORM_FILE = "data_transform.npz"
CALIBRATION_FILE = "calibration.json"
_META_KEYS = ("model", "prior", "data", "input_shape", "num_classes")


class RunNotFoundError(FileNotFoundError):
  """The workdir has no checkpoint, or not the requested step."""


# ----------------------------------------------------------------------------- run files

def save_data_transform(workdir: str, info: dict) -> None:
  """Writes the feature transform of a tabular/text run (from ``Dataset.info``): the kept
  columns and the standardisation statistics, so raw rows can be mapped like the training
  rows. Nothing is written for runs without one (images, toy data)."""
  arrays = {k: np.asarray(info[k]) for k in ("kept_feature_columns", "feature_mean",
                                             "feature_std") if k in info}
  if not arrays:
    return
  if "kept_feature_columns" in arrays:
    arrays["num_raw_features"] = np.asarray(
        len(arrays["kept_feature_columns"]) + len(info.get("dropped_feature_columns", ())))
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, DATA_TRANSFORM_FILE + ".tmp.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, os.path.join(workdir, DATA_TRANSFORM_FILE))


def save_calibration(workdir: str, record: dict) -> None:
  """Writes ``calibration.json`` ({'step', 'temperature', ...}) atomically."""
  tmp = os.path.join(workdir, CALIBRATION_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(workdir, CALIBRATION_FILE))


def _read_checkpoint(workdir: str, step: Optional[int]):
  import orbax.checkpoint as ocp
  from absl import logging as absl_logging

  ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(ckpt_dir) or not any(n.isdigit() for n in os.listdir(ckpt_dir)):
    raise RunNotFoundError(f"no checkpoint in {ckpt_dir}; train first with python -m "
                           f"experiments.main --config=... --workdir={workdir}.")
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about read-only mode
  try:
    manager = ocp.CheckpointManager(
        ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=("state", "meta"))
    steps = sorted(manager.all_steps())
    if not steps:
      raise RunNotFoundError(f"no complete checkpoint in {ckpt_dir}.")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise RunNotFoundError(f"no checkpoint for step {step} in {ckpt_dir}; available "
                             f"steps: {steps}.")
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - any failure here means "not our format"
      raise IncompatibleCheckpointError(
          f"checkpoint {ckpt_dir}/{step} has no readable metadata ({type(e).__name__}); it "
          "was written by an incompatible version of flowgmm_jax.") from e
    missing = [k for k in _META_KEYS if not meta or k not in meta]
    if missing:
      raise IncompatibleCheckpointError(
          f"checkpoint {ckpt_dir}/{step} lacks {missing} in its metadata; it was written by "
          "an incompatible version of flowgmm_jax.")
    # Restore onto this machine's first device whatever the saving run used (a run trained
    # on 8 GPUs can be inspected on a laptop): shapes and dtypes come from the checkpoint.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    try:
      tree = ocp.StandardCheckpointer().metadata(os.path.join(ckpt_dir, str(step), "state"))
      tree = getattr(getattr(tree, "item_metadata", tree), "tree", tree)
      abstract = jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), tree)
    except Exception:  # noqa: BLE001 - fall back to the saved sharding
      abstract = None
    try:
      state = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # noqa: BLE001 - unreadable state: not our format
      raise IncompatibleCheckpointError(
          f"checkpoint {ckpt_dir}/{step} could not be read ({type(e).__name__}); it was "
          "written by an incompatible version of flowgmm_jax.") from e
    manager.close()
  finally:
    absl_logging.set_verbosity(verbosity)
  return step, meta, state


# ----------------------------------------------------------------------------- the model

class TrainedFlowGMM:
  """A trained FlowGMM with numpy in, numpy out methods. Build it with ``load``.

  Attributes:
    model: the ``FlowGMM`` Linen module (eval mode); ``variables`` its variables.
    step: the checkpoint's training step.
    kind: the data kind ("image" | "tabular" | "text" | "toy"); ``input_shape`` (no batch)
      the shape of the model's input rows; ``num_classes`` K; ``num_dims`` D.
    temperature: the calibration temperature T (1.0 = uncalibrated); ``predict_proba``
      returns softmax(logits / T).
  """

  def __init__(self, model, variables: dict, *, meta: dict, step: int,
               data_transform: Optional[dict] = None, temperature: float = 1.0,
               batch_size: Optional[int] = None, workdir: Optional[str] = None):
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

    def forward(variables, x):
      return model.apply(variables, x)           # z [B, D], log_det [B], logits [B, K]

    def inverse(variables, z):
      return model.apply(variables, z, method=model.inverse)

    def latent_logits(variables, z):
      return model.apply(variables, z, method=lambda m, v: m.prior.class_logits(v))

    self._forward = jax.jit(forward)
    self._inverse = jax.jit(inverse)
    self._latent_logits = jax.jit(latent_logits)

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

  def _chunks(self, fn, x: np.ndarray):
    """Applies ``fn(variables, chunk)`` over fixed-size chunks; concatenates outputs."""
    n = len(x)
    if n == 0:
      raise ValueError("got 0 rows; pass at least one example.")
    # Chunk sizes are powers of two (at most batch_size), so calls of many different sizes
    # share a handful of compiled programs.
    size = min(self.batch_size, 1 << max(3, (n - 1).bit_length()))
    return evaluation.map_in_chunks(
        lambda chunk: jax.device_get(fn(self.variables, jnp.asarray(chunk))), x, size)

  def _outputs(self, x, preprocessed: bool):
    x = np.asarray(x) if preprocessed else self.preprocess(x)
    return self._chunks(self._forward, self._check_rows(x.astype(np.float32)))

  def outputs(self, x, preprocessed: bool = False) -> dict:
    """One pass over ``x``: {'z' [N, D], 'log_det' [N], 'logits' [N, K] (uncalibrated)}."""
    z, log_det, logits = self._outputs(x, preprocessed)
    return {"z": z, "log_det": log_det, "logits": logits}

  # -- predictions -------------------------------------------------------------------

  def logits(self, x, preprocessed: bool = False) -> np.ndarray:
    """Uncalibrated class logits log pi_k + log N(f(x); mu_k, Sigma_k), ``[N, K]``."""
    return self._outputs(x, preprocessed)[2]

  def predict_proba(self, x, preprocessed: bool = False,
                    temperature: Optional[float] = None) -> np.ndarray:
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
    _, log_det, logits = self._outputs(x, preprocessed)
    return np.asarray(jax.nn.logsumexp(logits, axis=-1)) + log_det

  def bits_per_dim(self, x, preprocessed: bool = False) -> np.ndarray:
    """-log p(x) / (D log 2), ``[N]``."""
    return -self.log_prob(x, preprocessed) / (self.num_dims * math.log(2.0))

  # -- latent space ------------------------------------------------------------------

  def encode(self, x, preprocessed: bool = False) -> np.ndarray:
    """Data -> latent z = f(x), ``[N, D]``."""
    return self._outputs(x, preprocessed)[0]

  def decode(self, z, raw: bool = True) -> np.ndarray:
    """Latent -> data, ``[N, D] -> [N, *input_shape]``; ``raw`` maps back to the raw units
    (see ``postprocess``), otherwise the model's input space."""
    z = np.asarray(z, np.float32)
    if z.ndim == 1:
      z = z[None]
    if z.shape[1:] != (self.num_dims,):
      raise ValueError(f"z must have shape [N, {self.num_dims}], got {z.shape}.")
    x = self._chunks(self._inverse, z)
    return self.postprocess(x) if raw else x

  def latent_logits(self, z) -> np.ndarray:
    """Uncalibrated class logits of latents, ``[N, D] -> [N, K]`` (p(y|x) depends on x only
    through z = f(x))."""
    z = np.asarray(z, np.float32)
    return self._chunks(self._latent_logits, z.reshape(-1, self.num_dims))

  def means(self) -> np.ndarray:
    """The class means mu_k in latent space, ``[K, D]``."""
    return np.asarray(self.variables_prior("means"))

  def scales(self) -> np.ndarray:
    """The per-class standard deviations sigma_kd, ``[K, D]``."""
    return np.asarray(self.variables_prior("scales"))

  def log_weights(self) -> np.ndarray:
    return np.asarray(self.variables_prior("log_weights"))

  def variables_prior(self, name: str):
    return self.model.apply(self.variables, method=lambda m: getattr(m.prior, name)())

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


def _model_from_meta(meta: dict) -> FlowGMM:
  """The eval-mode model a checkpoint's metadata describes (its config's model and prior)."""
  config = ml_collections.ConfigDict({"model": meta["model"], "prior": meta["prior"]})
  return FlowGMM.from_config(config, tuple(meta["input_shape"]), int(meta["num_classes"]),
                             image=meta["data"]["kind"] == "image")


def from_variables(meta: dict, variables: dict, *, step: int = 0, **kwargs) -> TrainedFlowGMM:
  """A ``TrainedFlowGMM`` from a checkpoint-style ``meta`` and ``model.apply`` variables
  (e.g. right after ``fit``, before anything is written)."""
  return TrainedFlowGMM(_model_from_meta(meta), variables, meta=meta, step=step, **kwargs)


def load(workdir: str, step: Optional[int] = None, *, calibrated: bool = True,
         batch_size: Optional[int] = None) -> TrainedFlowGMM:
  """The model of the run in ``workdir`` at ``step`` (default: the latest checkpoint).

  ``calibrated``: apply the temperature fitted for this step (``calibration.json``) in
  ``predict_proba``; without one, T = 1.

  Raises ``RunNotFoundError`` (no checkpoint / no such step) or
  ``IncompatibleCheckpointError`` (written by an incompatible version), each one line.
  """
  if not os.path.isdir(workdir):
    raise RunNotFoundError(f"workdir {workdir!r} does not exist.")
  step, meta, state = _read_checkpoint(workdir, step)
  model = _model_from_meta(meta)
  variables = {"params": state["params"], **(state.get("fixed") or {})}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  # The stored variables must be exactly those this code builds for the same config.
  x0 = jnp.zeros((2,) + tuple(meta["input_shape"]), jnp.float32)
  expected = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0),
                                                "dropout": jax.random.PRNGKey(0)}, x0))
  shape_of = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)
  if shape_of(dict(expected)) != shape_of(variables):
    raise IncompatibleCheckpointError(
        f"checkpoint {workdir}/checkpoints/{step} holds variables that this version of "
        f"flowgmm_jax does not build for model {meta['model'].get('name')!r}; it was written "
        "by an incompatible version.")
  variables = jax.tree.map(jnp.asarray, variables)
  transform = {}
  path = os.path.join(workdir, DATA_TRANSFORM_FILE)
  if os.path.isfile(path):
    with np.load(path) as f:
      transform = {k: f[k] for k in f.files}
  temperature = 1.0
  cal_path = os.path.join(workdir, CALIBRATION_FILE)
  if calibrated and os.path.isfile(cal_path):
    with open(cal_path) as f:
      cal = json.load(f)
    if int(cal.get("step", -1)) == step:
      temperature = float(cal["temperature"])
  return TrainedFlowGMM(model, variables, meta=meta, step=step, data_transform=transform,
                        temperature=temperature, batch_size=batch_size, workdir=workdir)
