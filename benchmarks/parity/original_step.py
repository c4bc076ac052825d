"""The original PyTorch FlowGMM (github.com/izmailovpavel/flowgmm), imported from a clone: a
train step per workload for ``bench_steps``, the image script's pieces for the parity study and
the map of its tensors into our variables. How this differs from its scripts: README.md here."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import os
import sys
import types
import warnings
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.provenance import git_commit


def load_original(path: str) -> types.SimpleNamespace:
  """The original's RealNVP, RealNVPTabular, SSLGaussMixture, FlowLoss, get_param_groups and
  clip_grad_norm from a clone at ``path``, with its ``path`` and ``commit``."""
  root = os.path.abspath(os.path.expanduser(path))
  pkg = os.path.join(root, "flow_ssl")
  utils_dir = os.path.join(root, "experiments", "train_flows", "utils")
  for needed in (f"{pkg}/realnvp/realnvp.py", f"{utils_dir}/optim_util.py"):
    if not os.path.isfile(needed):
      raise FileNotFoundError(f"--original={path!r}: {needed} is missing; give the root of a "
                              "clone of https://github.com/izmailovpavel/flowgmm")
  # Known deprecations of the 2019 code, once per layer otherwise; they change no number.
  warnings.filterwarnings("ignore", r".*weight_norm.* is deprecated|Implicit dimension choice")
  loaded = sys.modules.get("flow_ssl")
  if loaded is not None and list(getattr(loaded, "__path__", [])) != [pkg]:
    raise RuntimeError(f"another flow_ssl is already imported ({loaded.__path__}); "
                       f"cannot also load {pkg}")
  if loaded is None:
    for name, where in (("flow_ssl", pkg), ("flow_ssl.invertible", f"{pkg}/invertible")):
      module = sys.modules[name] = types.ModuleType(name)  # its __init__.py is not run
      module.__path__, module.__package__, module.__all__ = [where], name, []
    invertible = module
    if importlib.util.find_spec("torchcontrib") is None:
      for name in ("torchcontrib", "torchcontrib.nn", "torchcontrib.nn.functional"):
        sys.modules.setdefault(name, types.ModuleType(name))
    # What flow_ssl/invertible/__init__.py does, restricted to what RealNVP imports.
    for sub in ("activations", "coupling_layers", "downsample", "normalizations", "parts"):
      module = importlib.import_module("flow_ssl.invertible." + sub)
      for k in getattr(module, "__all__", []):
        setattr(invertible, k, getattr(module, k))
        invertible.__all__.append(k)
    coupling = importlib.import_module("flow_ssl.realnvp.coupling_layer")
    if "init_zeros" not in inspect.signature(coupling.ResNet).parameters:
      resnet = coupling.ResNet  # CouplingLayer passes it (always False there); ResNet lacks it
      coupling.ResNet = lambda *args, init_zeros=False, **kwargs: resnet(*args, **kwargs)
  from flow_ssl.distributions import SSLGaussMixture
  from flow_ssl.flow_loss import FlowLoss
  from flow_ssl.realnvp.realnvp import RealNVP, RealNVPTabular
  utils = {}
  for name in ("norm_util", "optim_util"):  # file by file: the package __init__ needs more
    spec = importlib.util.spec_from_file_location(f"_flowgmm_original_{name}",
                                                  os.path.join(utils_dir, name + ".py"))
    utils[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils[name])
  return types.SimpleNamespace(
      RealNVP=RealNVP, RealNVPTabular=RealNVPTabular, SSLGaussMixture=SSLGaussMixture,
      FlowLoss=FlowLoss, get_param_groups=utils["norm_util"].get_param_groups,
      clip_grad_norm=utils["optim_util"].clip_grad_norm, path=root, commit=git_commit(root))


def prior_built_once(orig) -> type:
  """SSLGaussMixture whose ``gaussians`` are built on the first call and then reused."""
  built_once = functools.cached_property(orig.SSLGaussMixture.gaussians.fget)
  return type("PriorBuiltOnce", (orig.SSLGaussMixture,), {"gaussians": built_once})


def crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int = 4,
              flip: bool = True) -> torch.Tensor:
  """torchvision's RandomCrop(H, padding) (+ RandomHorizontalFlip() if ``flip``) per image of
  ``x: [B, C, H, W]``; the flip is drawn either way, so ``flip`` changes no crop offset."""
  b, _, h, w = x.shape
  oy, ox = (torch.randint(0, 2 * padding + 1, (b,), generator=gen) for _ in range(2))
  mirror = (torch.rand(b, generator=gen) < 0.5) & flip
  rows, cols = oy[:, None] + torch.arange(h), ox[:, None] + torch.arange(w)
  cols = torch.where(mirror[:, None], cols.flip(1), cols)
  # Advanced indices around a slice put the channel axis last: [B, H, W, C].
  out = F.pad(x, (padding,) * 4)[torch.arange(b)[:, None, None], :, rows[:, :, None],
                                 cols[:, None, :]]
  return out.permute(0, 3, 1, 2).contiguous()


def build_image_flowgmm(orig, Prior, *, image_shape, num_classes: int, lr: float,
                        weight_decay: float = 5e-5, lr_gmm: float = 1e-2,
                        means_r: float = 1.0, **realnvp_kwargs) -> types.SimpleNamespace:
  """What train_semisup_cons.py builds at its defaults (README.md): net, prior, loss_fn, optimizer
  and opt_gmm; ``image_shape``: (C, H, W); ``realnvp_kwargs``: num_scales, mid_channels etc."""
  net = orig.RealNVP(in_channels=image_shape[0], **realnvp_kwargs)
  means = means_r * torch.randn(num_classes, int(np.prod(image_shape)))  # get_means('random')
  prior = Prior(means, device="cpu")
  prior.weights.requires_grad = False      # args.weights_trainable
  prior.inv_cov_stds.requires_grad = False  # args.covs_trainable
  optimizer = torch.optim.Adam(orig.get_param_groups(net, weight_decay, norm_suffix="weight_g"),
                               lr=lr)
  opt_gmm = torch.optim.Adam([prior.means, prior.weights, prior.inv_cov_stds], lr=lr_gmm,
                             weight_decay=0.)
  return types.SimpleNamespace(net=net, prior=prior, loss_fn=orig.FlowLoss(prior),
                               optimizer=optimizer, opt_gmm=opt_gmm)


def image_train_step(orig, m, x1: torch.Tensor, x2: torch.Tensor,
                     y: torch.Tensor, *, label_weight: float, consistency_weight: float,
                     max_grad_norm: float = 100.0) -> dict:
  """One iteration of train_semisup_cons.py's ``train`` loop on the views ``x1``, ``x2: [B, C,
  H, W]`` in [0, 1] and ``y: int64 [B]`` (-1 = unlabelled): detached 'loss', 'cross_entropy',
  'nll' (nats per image), 'consistency', 'labeled_accuracy', 'log_det'."""
  net, loss_fn = m.net, m.loss_fn
  net.train()
  labeled = y != -1
  m.optimizer.zero_grad()
  m.opt_gmm.zero_grad()
  with torch.no_grad():
    z2 = net(x2).detach()
    pred2 = loss_fn.prior.classify(z2.reshape((len(z2), -1)))
  z1 = net(x1)
  sldj = net.logdet()  # the script: net.module.logdet() (DataParallel on CUDA)
  logits_all = loss_fn.prior.class_logits(z1.reshape((len(z1), -1)))
  loss_nll = F.cross_entropy(logits_all[labeled], y[labeled])
  loss_unsup = loss_fn(z1, sldj=sldj)
  loss_consistency = loss_fn(z1, sldj=sldj, y=pred2)
  loss = loss_nll * label_weight + loss_unsup + loss_consistency * consistency_weight
  loss.backward()
  orig.clip_grad_norm(m.optimizer, max_grad_norm)
  m.optimizer.step()
  m.opt_gmm.step()
  preds = torch.argmax(logits_all, dim=1)[labeled]
  return {"loss": loss.detach(), "cross_entropy": loss_nll.detach(),
          "nll": loss_unsup.detach(), "consistency": loss_consistency.detach(),
          "labeled_accuracy": (preds == y[labeled]).float().mean(),
          "log_det": sldj.detach().mean()}


def midpoint_dequantization():
  """A context in which the original's ``iLogits`` dequantises at the bin midpoint, as ours:
  ``torch.rand_like``, the only draw of a RealNVP forward, returns 0.5."""
  return mock.patch.object(torch, "rand_like", lambda t, *args, **kw: torch.full_like(t, 0.5))


def evaluate_image(m, x: np.ndarray, y: np.ndarray, *, midpoint: bool = False,
                   batch_size: int = 64) -> dict:
  """The script's test loop on ``x: uint8 [N, H, W, C]``, ``y: int [N]``, with fresh noise or at
  the ``midpoint``: 'accuracy', 'bpd_given_label' (its test loss, -log p(x | y)), 'bpd'."""
  m.net.eval()
  correct = nll_given_label = nll = 0.0
  with midpoint_dequantization() if midpoint else contextlib.nullcontext(), torch.no_grad():
    for start in range(0, len(x), batch_size):
      xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).permute(
          0, 3, 1, 2).float() / 255.
      yb = torch.from_numpy(np.asarray(y[start:start + batch_size], np.int64))
      z, sldj = m.net(xb), m.net.logdet()
      nll_given_label += float(m.loss_fn(z, y=yb, sldj=sldj)) * len(yb)
      nll += float(m.loss_fn(z, sldj=sldj)) * len(yb)
      correct += float((m.loss_fn.prior.classify(z.reshape((len(z), -1))) == yb).sum())
  bits = int(np.prod(x.shape[1:])) * np.log(2.0)
  return {"accuracy": correct / len(x), "bpd_given_label": nll_given_label / len(x) / bits,
          "bpd": nll / len(x) / bits}


def build_step(orig, name: str, x: np.ndarray, y: np.ndarray, num_classes: int, *,
               prior: str = "shipped", seed: int = 0) -> types.SimpleNamespace:
  """The original's train step of workload ``name`` ("cifar": x uint8 [B, 32, 32, 3]; "text":
  [B, 768]; "toy": [B, 2]) on ``y: int [B]`` (-1 = unlabelled), its prior "shipped" or built
  "once": ``step()`` (one step on that batch; returns the loss), ``model``, ``num_params``."""
  if prior not in ("shipped", "once") or name not in ("cifar", "text", "toy"):
    raise ValueError(f"workload {name!r}, prior {prior!r}: choose cifar, text or toy, and "
                     "shipped or once")
  torch.manual_seed(seed)
  Prior = orig.SSLGaussMixture if prior == "shipped" else prior_built_once(orig)
  labeled, y = y >= 0, torch.from_numpy(y.astype(np.int64))
  if name == "cifar":  # the script: model_cfg(in_channels=img_shape[0]), RealNVP's defaults
    m = build_image_flowgmm(orig, Prior, image_shape=(3, 32, 32), num_classes=num_classes,
                            lr=1e-4)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.  # ToTensor
    gen = torch.Generator().manual_seed(seed)

    def step():
      with torch.autograd.set_detect_anomaly(True):  # as the script
        x1, x2 = crop_flip(images, gen), crop_flip(images, gen)  # TransformTwice
        out = image_train_step(orig, m, x1, x2, y, label_weight=3.0, consistency_weight=1.0)
        return out["loss"].item()

    model = m.net
  # The original's num_layers=1 (k -> k layers after the first) is our hidden_layers=2.
  elif name == "text":  # RealNVPTabularWPrior(num_classes, dim_in, coupling_layers=7, k=1024)
    d = x.shape[1]
    model = orig.RealNVPTabular(num_coupling_layers=7, in_dim=d, hidden_dim=1024,
                                num_layers=1, dropout=True)
    means = 0.8 * .7 * torch.randn(num_classes, d)  # get_means('random', r=means_r * .7)
    model.prior = Prior(means, torch.ones((num_classes,)) / 1.0, device="cpu")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-5)
    x_lab, y_lab, x_unlab = torch.from_numpy(x[labeled]), y[labeled], torch.from_numpy(x[~labeled])

    def loss_of_batch():  # SemiFlow.step with --trainer_config "{'unlab_weight':.6}"
      return model.nll(x_lab, y_lab).mean() + 0.6 * model.nll(x_unlab).mean()
  else:  # the two-moons notebook
    loss_fn = orig.FlowLoss(Prior(means=torch.tensor([[-3.5, -3.5], [3.5, 3.5]])))
    model = orig.RealNVPTabular(num_coupling_layers=5, in_dim=2, num_layers=1, hidden_dim=512)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                 weight_decay=1e-2)
    batch_x, batch_y = torch.from_numpy(x), y.double()  # the notebook's labels are float

    def loss_of_batch():
      return loss_fn(model(batch_x), model.logdet(), batch_y)

  if name != "cifar":
    def step():
      optimizer.zero_grad()
      loss = loss_of_batch()
      loss.backward()
      if name == "text":
        orig.clip_grad_norm(optimizer, 100)
      optimizer.step()
      return loss.detach()

  return types.SimpleNamespace(step=step, model=model,
                               num_params=sum(p.numel() for p in model.parameters()))


def count_flops(step) -> int:
  """FLOPs of one call of ``step()`` by torch's FlopCounterMode: matmuls and convolutions,
  forward and backward, 2 per multiply-add (not elementwise work, Cholesky or solves)."""
  from torch.utils.flop_counter import FlopCounterMode
  with FlopCounterMode(display=False) as counter:
    step()
  return int(counter.get_total_flops())


def _same(t):
  return t


_BATCH_NORM = (("params", "scale", "weight"), ("params", "bias", "bias"),
               ("batch_stats", "mean", "running_mean"), ("batch_stats", "var", "running_var"))


def _tensors(path: tuple, index: tuple, module) -> list:
  """(our path, tensor, to_ours) of a BatchNorm2d or a WNConv2d (v [out, in, kh, kw] -> HWIO,
  g -> [out])."""
  if isinstance(module, torch.nn.BatchNorm2d):
    return [((collection, *path, ours, index), getattr(module, theirs), _same)
            for collection, ours, theirs in _BATCH_NORM]
  conv = module.conv
  rows = [(("params", *path, "v", index), conv.weight_v, lambda t: t.permute(2, 3, 1, 0)),
          (("params", *path, "g", index), conv.weight_g, lambda t: t.reshape(-1))]
  return rows + ([(("params", *path, "bias", index), conv.bias, _same)]
                 if conv.bias is not None else [])


def realnvp_correspondence(net) -> list:
  """Every tensor of the original image ``RealNVP`` as ``(path, tensor, to_ours)``: our keys,
  then the slice of the stacked array (``(..., 'blocks', 'in_conv', 'v', (2, 5))``: coupling 2
  of that stack, block 5), and the layout change. Its couplings register in forward order."""
  from flowgmm_jax.models.realnvp import realnvp_scanned_plan
  coupling_cls = sys.modules["flow_ssl.realnvp.coupling_layer"].CouplingLayer
  layers = [m for m in net.modules() if isinstance(m, coupling_cls)]
  num_scales = (len(layers) - 4) // 6 + 1  # 6 couplings per scale but the last's 4
  places = {group.first_index + j: (group.module_name, j)
            for group in realnvp_scanned_plan(num_scales)
            for j in range(len(getattr(group, "parities", ())))}
  rows = []
  for k, layer in enumerate(layers):
    stack, j = places[k]
    base, st = ("flow", stack, "conditioner"), layer.st_net
    for name in ("in_norm", "in_conv", "in_skip", "out_norm", "out_conv"):
      rows += _tensors((*base, name), (j,), getattr(st, name))
    for i, (block, skip) in enumerate(zip(st.blocks, st.skips, strict=True)):
      rows += _tensors((*base, "blocks", "skip"), (j, i), skip)
      for name in ("in_norm", "in_conv", "out_norm", "out_conv"):
        rows += _tensors((*base, "blocks", name), (j, i), getattr(block, name))
    rows += [(("params", "flow", stack, "rescale", g, (j,)), getattr(layer.rescale, tensor),
              lambda t: t.reshape(-1)) for g, tensor in (("g", "weight_g"), ("v", "weight_v"))]
  return rows


def latent_nchw_to_ours(z: np.ndarray, piece_shapes) -> np.ndarray:
  """The original's flat latent ``z: [N, D]`` (each multi-scale piece in C, H, W order) in
  ours (H, W, C); ``piece_shapes``: our pieces' (h, w, c) (``multiscale_latent_shapes``)."""
  pieces = np.split(z, np.cumsum([h * w * c for h, w, c in piece_shapes])[:-1], axis=1)
  return np.concatenate([p.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(len(z), -1)
                         for p, (h, w, c) in zip(pieces, piece_shapes, strict=True)], axis=1)


def to_our_variables(variables: dict, net, means=None, piece_shapes=None) -> dict:
  """A copy of our ``variables`` holding every tensor of the original ``net`` and, given, its
  prior ``means [K, D]`` in our latent order (``piece_shapes``). Shapes must match exactly."""
  import jax
  out = jax.tree_util.tree_map(np.array, variables)  # a copy (Flax's variables are dicts)
  for (*keys, index), tensor, to_ours in realnvp_correspondence(net):
    node = functools.reduce(lambda tree, key: tree[key], keys, out)
    value = to_ours(tensor.detach()).numpy()
    if tuple(node[index].shape) != value.shape:
      raise ValueError(f"{'/'.join(keys)}{list(index)}: ours {tuple(node[index].shape)}, "
                       f"original {value.shape}")
    node[index] = value.astype(np.float32)
  if means is not None:
    out["prior"]["prior"]["means"] = latent_nchw_to_ours(means.detach().numpy(),
                                                         piece_shapes).astype(np.float32)
  return out
