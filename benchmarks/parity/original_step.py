"""The ORIGINAL PyTorch FlowGMM (github.com/izmailovpavel/flowgmm), imported from a clone:
one train step per workload for ``bench_steps``, the image script's pieces for the parity
study, and the map of its tensors into our variables. What differs from running its scripts,
and why: README.md here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
import types
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.provenance import git_commit

_INVERTIBLE_MODULES = ("activations", "coupling_layers", "downsample", "normalizations",
                       "parts")


def _bare_package(name: str, path: str) -> types.ModuleType:
  """A package module with ``__path__`` but without running its ``__init__.py``."""
  module = types.ModuleType(name)
  module.__path__ = [path]
  module.__package__ = name
  sys.modules[name] = module
  return module


def _load_file(name: str, path: str) -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_original(path: str) -> types.SimpleNamespace:
  """The original's RealNVP, RealNVPTabular, SSLGaussMixture, FlowLoss, get_param_groups and
  clip_grad_norm from a clone at ``path``, with its ``path`` and ``commit``."""
  root = os.path.abspath(os.path.expanduser(path))
  pkg = os.path.join(root, "flow_ssl")
  utils_dir = os.path.join(root, "experiments", "train_flows", "utils")
  for needed in (os.path.join(pkg, "realnvp", "realnvp.py"),
                 os.path.join(utils_dir, "optim_util.py")):
    if not os.path.isfile(needed):
      raise FileNotFoundError(
          f"--original={path!r}: {needed} is missing; give the root of a clone of "
          "https://github.com/izmailovpavel/flowgmm")
  # Known deprecations of the 2019 code, once per layer otherwise; they change no number.
  warnings.filterwarnings("ignore", message=r".*weight_norm.* is deprecated",
                          category=FutureWarning)
  warnings.filterwarnings("ignore", message="Implicit dimension choice for softmax",
                          category=UserWarning)
  loaded = sys.modules.get("flow_ssl")
  if loaded is not None and list(getattr(loaded, "__path__", [])) != [pkg]:
    raise RuntimeError(f"another flow_ssl is already imported ({loaded.__path__}); "
                       f"cannot also load {pkg}")
  if loaded is None:
    _bare_package("flow_ssl", pkg)
    invertible = _bare_package("flow_ssl.invertible", os.path.join(pkg, "invertible"))
    invertible.__all__ = []
    if importlib.util.find_spec("torchcontrib") is None:
      for name in ("torchcontrib", "torchcontrib.nn", "torchcontrib.nn.functional"):
        sys.modules.setdefault(name, types.ModuleType(name))
    # What flow_ssl/invertible/__init__.py does, restricted to what RealNVP imports.
    for sub in _INVERTIBLE_MODULES:
      module = importlib.import_module("flow_ssl.invertible." + sub)
      for k in getattr(module, "__all__", []):
        setattr(invertible, k, getattr(module, k))
        invertible.__all__.append(k)
    coupling = importlib.import_module("flow_ssl.realnvp.coupling_layer")
    if "init_zeros" not in inspect.signature(coupling.ResNet).parameters:
      coupling.ResNet = _drop_init_zeros(coupling.ResNet)
  from flow_ssl.distributions import SSLGaussMixture
  from flow_ssl.flow_loss import FlowLoss
  from flow_ssl.realnvp.realnvp import RealNVP, RealNVPTabular
  norm_util = _load_file("_flowgmm_original_norm_util", os.path.join(utils_dir, "norm_util.py"))
  optim_util = _load_file("_flowgmm_original_optim_util",
                          os.path.join(utils_dir, "optim_util.py"))
  return types.SimpleNamespace(
      RealNVP=RealNVP, RealNVPTabular=RealNVPTabular, SSLGaussMixture=SSLGaussMixture,
      FlowLoss=FlowLoss, get_param_groups=norm_util.get_param_groups,
      clip_grad_norm=optim_util.clip_grad_norm, path=root, commit=git_commit(root))


def _drop_init_zeros(resnet_cls):
  """ResNet that accepts (and ignores) the ``init_zeros=False`` CouplingLayer passes."""
  def build(*args, init_zeros=False, **kwargs):
    if init_zeros:
      raise NotImplementedError("the original ResNet has no zero initialisation")
    return resnet_cls(*args, **kwargs)
  return build


def prior_built_once(orig) -> type:
  """SSLGaussMixture whose ``gaussians`` are built on the first call and then reused."""
  class PriorBuiltOnce(orig.SSLGaussMixture):
    _cached = None

    @property
    def gaussians(self):
      if self._cached is None:
        self._cached = orig.SSLGaussMixture.gaussians.fget(self)
      return self._cached

  return PriorBuiltOnce


def crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int = 4,
              flip: bool = True) -> torch.Tensor:
  """torchvision's RandomCrop(H, padding) (+ RandomHorizontalFlip() if ``flip``) per image of
  ``x: [B, C, H, W]`` -> ``[B, C, H, W]``. The flip is drawn either way, so ``flip`` changes
  no crop offset."""
  b, _, h, w = x.shape
  xp = F.pad(x, (padding,) * 4)
  oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
  ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
  mirror = torch.rand(b, generator=gen) < 0.5
  if not flip:
    mirror = torch.zeros_like(mirror)
  rows = oy[:, None] + torch.arange(h)
  cols = ox[:, None] + torch.arange(w)
  cols = torch.where(mirror[:, None], cols.flip(1), cols)
  # Advanced indices around a slice put the channel axis last: [B, H, W, C].
  out = xp[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
  return out.permute(0, 3, 1, 2).contiguous()


@dataclasses.dataclass
class ImageFlowGMM:
  """The objects train_semisup_cons.py builds: the flow, its GMM prior, the loss and the
  two optimisers (``opt_gmm`` over the prior's tensors, as the script has it)."""
  net: torch.nn.Module
  prior: object
  loss_fn: torch.nn.Module
  optimizer: torch.optim.Optimizer
  opt_gmm: torch.optim.Optimizer


def build_image_flowgmm(orig, Prior, *, image_shape, num_classes: int, lr: float,
                        weight_decay: float = 5e-5, lr_gmm: float = 1e-2,
                        means_r: float = 1.0, **realnvp_kwargs) -> ImageFlowGMM:
  """The script's set-up at its defaults (README.md); ``image_shape``: (C, H, W);
  ``realnvp_kwargs``: RealNVP's num_scales, mid_channels, num_blocks."""
  net = orig.RealNVP(in_channels=image_shape[0], **realnvp_kwargs)
  d = int(np.prod(image_shape))
  means = means_r * torch.randn(num_classes, d)  # get_means('random', r=means_r)
  prior = Prior(means, device="cpu")
  prior.weights.requires_grad = False      # args.weights_trainable
  prior.inv_cov_stds.requires_grad = False  # args.covs_trainable
  loss_fn = orig.FlowLoss(prior)
  param_groups = orig.get_param_groups(net, weight_decay, norm_suffix="weight_g")
  optimizer = torch.optim.Adam(param_groups, lr=lr)
  opt_gmm = torch.optim.Adam([prior.means, prior.weights, prior.inv_cov_stds], lr=lr_gmm,
                             weight_decay=0.)
  return ImageFlowGMM(net, prior, loss_fn, optimizer, opt_gmm)


def image_train_step(orig, m: ImageFlowGMM, x1: torch.Tensor, x2: torch.Tensor,
                     y: torch.Tensor, *, label_weight: float, consistency_weight: float,
                     max_grad_norm: float = 100.0) -> dict:
  """One iteration of train_semisup_cons.py's ``train`` loop (``use_unlab=True``) on the views
  ``x1``, ``x2: [B, C, H, W]`` in [0, 1] and ``y: int64 [B]`` (-1 = unlabelled): detached
  'loss', 'cross_entropy', 'nll' (nats per image), 'consistency', 'labeled_accuracy',
  'log_det'."""
  net, loss_fn = m.net, m.loss_fn
  net.train()
  labeled_mask = (y != -1)
  m.optimizer.zero_grad()
  m.opt_gmm.zero_grad()
  with torch.no_grad():
    z2 = net(x2).detach()
    pred2 = loss_fn.prior.classify(z2.reshape((len(z2), -1)))
  z1 = net(x1)
  sldj = net.logdet()  # the script: net.module.logdet() (DataParallel on CUDA)
  z_all = z1.reshape((len(z1), -1))
  y_labeled = y[labeled_mask]
  logits_all = loss_fn.prior.class_logits(z_all)
  logits_labeled = logits_all[labeled_mask]
  loss_nll = F.cross_entropy(logits_labeled, y_labeled)
  loss_unsup = loss_fn(z1, sldj=sldj)
  loss_consistency = loss_fn(z1, sldj=sldj, y=pred2)
  loss = loss_nll * label_weight + loss_unsup + loss_consistency * consistency_weight
  loss.backward()
  orig.clip_grad_norm(m.optimizer, max_grad_norm)
  m.optimizer.step()
  m.opt_gmm.step()
  preds = torch.argmax(logits_all, dim=1)[labeled_mask]
  return {"loss": loss.detach(), "cross_entropy": loss_nll.detach(),
          "nll": loss_unsup.detach(), "consistency": loss_consistency.detach(),
          "labeled_accuracy": (preds == y_labeled).float().mean(),
          "log_det": sldj.detach().mean()}


@contextlib.contextmanager
def midpoint_dequantization():
  """Within the block the original's ``iLogits`` dequantises at the bin midpoint, as ours:
  ``torch.rand_like``, the only draw of a RealNVP forward, returns 0.5."""
  rand_like = torch.rand_like
  torch.rand_like = lambda t, *args, **kwargs: torch.full_like(t, 0.5)
  try:
    yield
  finally:
    torch.rand_like = rand_like


def evaluate_image(m: ImageFlowGMM, x: np.ndarray, y: np.ndarray, *, batch_size: int = 64,
                   dequantization: str = "noise") -> dict:
  """The script's test loop on ``x: uint8 [N, H, W, C]``, ``y: int [N]``, dequantised with
  fresh ``"noise"`` (the script's) or at the ``"midpoint"`` (ours): 'accuracy',
  'nll_given_label', 'nll' (nats per image), 'bpd_given_label', 'bpd'."""
  if dequantization not in ("noise", "midpoint"):
    raise ValueError(f"dequantization must be 'noise' or 'midpoint', got {dequantization!r}")
  net, loss_fn = m.net, m.loss_fn
  net.eval()
  d = int(np.prod(x.shape[1:]))
  sums = {"correct": 0.0, "nll_given_label": 0.0, "nll": 0.0}
  midpoint = (midpoint_dequantization() if dequantization == "midpoint"
              else contextlib.nullcontext())
  with midpoint, torch.no_grad():
    for start in range(0, len(x), batch_size):
      xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).permute(
          0, 3, 1, 2).float() / 255.
      yb = torch.from_numpy(np.asarray(y[start:start + batch_size], np.int64))
      z = net(xb)
      sldj = net.logdet()
      sums["nll_given_label"] += float(loss_fn(z, y=yb, sldj=sldj)) * len(yb)
      sums["nll"] += float(loss_fn(z, sldj=sldj)) * len(yb)
      sums["correct"] += float((loss_fn.prior.classify(z.reshape((len(z), -1))) == yb).sum())
  out = {"accuracy": sums["correct"] / len(x), "nll_given_label": sums["nll_given_label"] / len(x),
         "nll": sums["nll"] / len(x)}
  out["bpd_given_label"] = out["nll_given_label"] / (d * np.log(2.0))
  out["bpd"] = out["nll"] / (d * np.log(2.0))
  return out


@dataclasses.dataclass
class OriginalStep:
  """``step()``: one train step of the original on its fixed batch; returns the loss."""
  name: str
  step: Callable[[], object]
  model: torch.nn.Module
  num_params: int


def build_step(orig, name: str, x: np.ndarray, y: np.ndarray, num_classes: int, *,
               prior: str = "shipped", seed: int = 0) -> OriginalStep:
  """The original's train step of workload ``name`` ("cifar": x uint8 [B, 32, 32, 3];
  "text": [B, 768]; "toy": [B, 2]) on ``y: int [B]`` (-1 = unlabelled), its prior "shipped"
  or built "once"."""
  if prior not in ("shipped", "once"):
    raise ValueError(f"prior must be 'shipped' or 'once', got {prior!r}")
  torch.manual_seed(seed)
  Prior = orig.SSLGaussMixture if prior == "shipped" else prior_built_once(orig)
  if name == "cifar":
    return _cifar_step(orig, Prior, x, y, num_classes, seed=seed)
  if name == "text":
    return _text_step(orig, Prior, x, y, num_classes)
  if name == "toy":
    return _toy_step(orig, Prior, x, y)
  raise ValueError(name)


def _count(model: torch.nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def _cifar_step(orig, Prior, x, y, num_classes, *, seed):
  # The script: model_cfg(in_channels=img_shape[0]) with RealNVP's defaults.
  m = build_image_flowgmm(orig, Prior, image_shape=(3, 32, 32), num_classes=num_classes,
                          lr=1e-4)
  images = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.  # ToTensor
  y = torch.from_numpy(y.astype(np.int64))
  gen = torch.Generator().manual_seed(seed)

  def step():
    with torch.autograd.set_detect_anomaly(True):  # as the script
      x1, x2 = crop_flip(images, gen), crop_flip(images, gen)  # TransformTwice
      out = image_train_step(orig, m, x1, x2, y, label_weight=3.0, consistency_weight=1.0,
                             max_grad_norm=100.0)
      return out["loss"].item()

  return OriginalStep("cifar", step, m.net, _count(m.net))


def _text_step(orig, Prior, x, y, num_classes):
  d = x.shape[1]
  # RealNVPTabularWPrior(num_classes, dim_in, coupling_layers=7, k=1024), CPU not cuda.
  # Its num_layers=1 (k -> k layers after the first) is our hidden_layers=2.
  model = orig.RealNVPTabular(num_coupling_layers=7, in_dim=d, hidden_dim=1024,
                              num_layers=1, dropout=True)
  means = 0.8 * .7 * torch.randn(num_classes, d)  # get_means('random', r=means_r * .7)
  model.prior = Prior(means, torch.ones((num_classes,)) / 1.0, device="cpu")
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-5)
  labeled = y >= 0
  x_lab = torch.from_numpy(x[labeled])
  y_lab = torch.from_numpy(y[labeled].astype(np.int64))
  x_unlab = torch.from_numpy(x[~labeled])
  a = 0.6  # --trainer_config "{'unlab_weight':.6}"

  def step():  # SemiFlow.step
    optimizer.zero_grad()
    loss = model.nll(x_lab, y_lab).mean() + a * model.nll(x_unlab).mean()
    loss.backward()
    orig.clip_grad_norm(optimizer, 100)
    optimizer.step()
    return loss.detach()

  return OriginalStep("text", step, model, _count(model))


def _toy_step(orig, Prior, x, y):
  r = 3.5
  prior = Prior(means=torch.tensor([[-r, -r], [r, r]]))
  # num_layers=1 (k -> k layers after the first) is our hidden_layers=2 (configs/toy.py).
  flow = orig.RealNVPTabular(num_coupling_layers=5, in_dim=2, num_layers=1, hidden_dim=512)
  loss_fn = orig.FlowLoss(prior)
  optimizer = torch.optim.Adam([p for p in flow.parameters() if p.requires_grad], lr=1e-4,
                               weight_decay=1e-2)
  batch_x = torch.from_numpy(x)
  batch_y = torch.from_numpy(y.astype(np.float64))  # the notebook's labels are float

  def step():
    z = flow(batch_x)
    sldj = flow.logdet()
    loss = loss_fn(z, sldj, batch_y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()

  return OriginalStep("toy", step, flow, _count(flow))


def count_flops(step: Callable[[], object]) -> int:
  """FLOPs of one call of ``step`` by torch's FlopCounterMode: matmuls and convolutions,
  forward and backward, 2 per multiply-add; elementwise work, Cholesky factorisations and
  triangular solves are not counted."""
  from torch.utils.flop_counter import FlopCounterMode
  with FlopCounterMode(display=False) as counter:
    step()
  return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- weights

def _wn_conv(prefix: tuple, index: tuple, wn_conv2d, bias: bool = True):
  """(our path, tensor, to_ours) of a WNConv2d: v [out, in, kh, kw] -> HWIO, g -> [out]."""
  conv = wn_conv2d.conv
  rows = [(("params", *prefix, "v", index), conv.weight_v, lambda t: t.permute(2, 3, 1, 0)),
          (("params", *prefix, "g", index), conv.weight_g, lambda t: t.reshape(-1))]
  return rows + ([(("params", *prefix, "bias", index), conv.bias, _same)] if bias else [])


def _same(t):
  return t


def _batch_norm(prefix: tuple, index: tuple, bn):
  return [(("params", *prefix, "scale", index), bn.weight, _same),
          (("params", *prefix, "bias", index), bn.bias, _same),
          (("batch_stats", *prefix, "mean", index), bn.running_mean, _same),
          (("batch_stats", *prefix, "var", index), bn.running_var, _same)]


def realnvp_correspondence(net) -> list:
  """Every tensor of the original image ``RealNVP`` as ``(path, tensor, to_ours)``: ``path``
  is our variables' keys then the slice it fills in the stacked arrays (``(..., 'blocks',
  'in_conv', 'v', (2, 5))``: coupling 2 of that stack, block 5), ``to_ours`` its layout
  change. The original registers its couplings in forward order, as ``realnvp_scanned_plan``
  stacks them."""
  from flowgmm_jax.models.realnvp import realnvp_scanned_plan
  coupling_cls = sys.modules["flow_ssl.realnvp.coupling_layer"].CouplingLayer
  layers = [m for m in net.modules() if isinstance(m, coupling_cls)]
  num_scales = (len(layers) - 4) // 6 + 1  # 6 couplings per scale but the last's 4
  places = {}
  for group in realnvp_scanned_plan(num_scales):
    for j in range(len(getattr(group, "parities", ()))):
      places[group.first_index + j] = (group.module_name, j)
  rows = []
  for k, layer in enumerate(layers):
    stack, j = places[k]
    base = ("flow", stack, "conditioner")
    st = layer.st_net
    rows += _batch_norm(base + ("in_norm",), (j,), st.in_norm)
    rows += _wn_conv(base + ("in_conv",), (j,), st.in_conv)
    rows += _wn_conv(base + ("in_skip",), (j,), st.in_skip)
    for i, (block, skip) in enumerate(zip(st.blocks, st.skips, strict=False)):
      blocks = base + ("blocks",)
      rows += _batch_norm(blocks + ("in_norm",), (j, i), block.in_norm)
      rows += _wn_conv(blocks + ("in_conv",), (j, i), block.in_conv, bias=False)
      rows += _batch_norm(blocks + ("out_norm",), (j, i), block.out_norm)
      rows += _wn_conv(blocks + ("out_conv",), (j, i), block.out_conv)
      rows += _wn_conv(blocks + ("skip",), (j, i), skip)
    rows += _batch_norm(base + ("out_norm",), (j,), st.out_norm)
    rows += _wn_conv(base + ("out_conv",), (j,), st.out_conv)
    rescale = layer.rescale
    rows += [(("params", "flow", stack, "rescale", "g", (j,)), rescale.weight_g,
              lambda t: t.reshape(-1)),
             (("params", "flow", stack, "rescale", "v", (j,)), rescale.weight_v,
              lambda t: t.reshape(-1))]
  return rows


def latent_nchw_to_ours(z: np.ndarray, piece_shapes) -> np.ndarray:
  """The original's flat latent ``z: [N, D]`` (each multi-scale piece in C, H, W order) in
  ours (H, W, C); ``piece_shapes``: our pieces' (h, w, c) (``multiscale_latent_shapes``)."""
  out, start = [], 0
  for h, w, c in piece_shapes:
    size = h * w * c
    piece = z[:, start:start + size].reshape(-1, c, h, w).transpose(0, 2, 3, 1)
    out.append(piece.reshape(len(z), size))
    start += size
  return np.concatenate(out, axis=1)


def to_our_variables(variables: dict, net, means=None, piece_shapes=None) -> dict:
  """Our ``variables`` with every flow parameter and BatchNorm statistic of the original
  ``net`` (``realnvp_correspondence``) and, given, its prior ``means [K, D]`` in our latent
  order. Shapes must match exactly."""
  import copy
  out = copy.deepcopy(jax_tree_to_dict(variables))
  for path, tensor, to_ours in realnvp_correspondence(net):
    *keys, index = path
    node = out
    for key in keys:
      node = node[key]
    value = to_ours(tensor.detach()).numpy()
    if tuple(node[index].shape) != value.shape:
      raise ValueError(f"{'/'.join(keys)}{list(index)}: ours {tuple(node[index].shape)}, "
                       f"original {value.shape}")
    node[index] = value.astype(np.float32)
  if means is not None:
    ours = latent_nchw_to_ours(means.detach().numpy(), piece_shapes)
    out["prior"]["prior"]["means"] = ours.astype(np.float32)
  return out


def jax_tree_to_dict(tree) -> dict:
  """Nested mappings (Flax FrozenDicts included) as plain dicts of numpy arrays."""
  if hasattr(tree, "items"):
    return {k: jax_tree_to_dict(v) for k, v in tree.items()}
  return np.asarray(tree)
