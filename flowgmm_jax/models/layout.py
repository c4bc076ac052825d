"""Versions of the flows' parameter layout, and the conversion between them.

    layout 1  unrolled: one module per layer (``conditioners_3/block5_in_conv/v``)
    layout 2  scanned (``PARAM_LAYOUT_VERSION``, the models' default ``scan=True``): identical
              layers stacked on leading axes (``checkerboards_1/conditioner/blocks/in_conv/v``
              with the coupling, then the block, as its first two axes)

Both layouts compute the same function of the same numbers; only where the numbers are
stored differs. Each flow states where with ``layout_map()``: a list of entries
``(scanned path, unrolled)``, a path being a tuple of module names, where ``unrolled`` is a
path (the same module, moved) or a list, one item per index of a new leading axis, of
paths or of such lists (nested stacking: couplings, then the blocks of each). Converting
moves whole module subtrees (every leaf of ``in_conv``: ``v``, ``g``, ``bias``), so one map
serves every variable collection (``params``, ``batch_stats``) and any tree shaped like one
(the optimiser's moments).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import jax
import numpy as np

PARAM_LAYOUT_VERSION = 2
LAYOUT_NAMES = {1: "unrolled flows", 2: "scanned flows"}

Path = Tuple[str, ...]
Unrolled = Union[Path, List[Any]]
LayoutMap = List[Tuple[Path, Unrolled]]

_MISSING = object()


class LayoutVersionError(ValueError):
  """Variables in a parameter layout this code cannot use (the message says what to do)."""


def check_layout_version(version: Any, *, where: str = "these variables",
                         convert: bool = True) -> None:
  """Returns if variables of layout ``version`` can be used: ``PARAM_LAYOUT_VERSION``, or,
  with ``convert``, a layout ``convert_variables`` converts. Otherwise raises
  ``LayoutVersionError`` with one line saying what ``where`` holds and how to use it."""
  if version == PARAM_LAYOUT_VERSION or (convert and version in LAYOUT_NAMES):
    return
  if version in LAYOUT_NAMES:
    raise LayoutVersionError(
        f"{where} stores parameter layout {version} ({LAYOUT_NAMES[version]}) but this "
        f"flowgmm_jax uses layout {PARAM_LAYOUT_VERSION} ({LAYOUT_NAMES[PARAM_LAYOUT_VERSION]})"
        f": convert the variables with flowgmm_jax.models.convert_variables(variables, "
        f"config.model, input_shape, from_version={version}).")
  if isinstance(version, int) and not isinstance(version, bool) and \
      version > PARAM_LAYOUT_VERSION:
    raise LayoutVersionError(
        f"{where} stores parameter layout {version}, newer than this flowgmm_jax knows "
        f"(up to {PARAM_LAYOUT_VERSION}): upgrade flowgmm_jax to load it.")
  known = ", ".join(f"{v} ({name})" for v, name in LAYOUT_NAMES.items())
  raise LayoutVersionError(
      f"{where} stores an unknown parameter layout {version!r} (known: {known}); it was not "
      f"written by flowgmm_jax, or is damaged: retrain, or re-save it with flowgmm_jax.")


# ------------------------------------------------------------------ building layout maps


def nest(scanned_prefix: Path, unrolled_prefix: Path, entries: LayoutMap) -> LayoutMap:
  """``entries`` of a submodule, with both sides' paths prefixed by where it sits."""
  def prefixed(unrolled):
    if isinstance(unrolled, tuple):
      return unrolled_prefix + unrolled
    return [prefixed(u) for u in unrolled]
  return [(scanned_prefix + s, prefixed(u)) for s, u in entries]


def stack(scanned_prefix: Path, layers: Sequence[LayoutMap]) -> LayoutMap:
  """The map of a scanned stack at ``scanned_prefix`` whose layer ``i`` (a new leading axis)
  is described by ``layers[i]``; every layer must list the same scanned paths."""
  paths = [s for s, _ in layers[0]]
  for layer in layers:
    if [s for s, _ in layer] != paths:
      raise ValueError("stack: the layers of one scanned stack must have the same modules.")
  return [(scanned_prefix + path, [layer[j][1] for layer in layers])
          for j, path in enumerate(paths)]


# ------------------------------------------------------------------ converting


def _get(tree: Mapping, path: Path) -> Any:
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return _MISSING
    tree = tree[key]
  return tree


def _set(tree: Dict, path: Path, value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _leaf_paths(tree: Any, prefix: Path = ()) -> List[Path]:
  if isinstance(tree, Mapping):
    return [p for k, v in tree.items() for p in _leaf_paths(v, prefix + (k,))]
  return [prefix]


def _stack_leaves(items: Sequence[Any], where: str) -> Any:
  def stack_leaf(*leaves):
    shapes = {tuple(np.shape(leaf)) for leaf in leaves}
    if len(shapes) != 1:
      raise ValueError(f"convert_variables: the layers stacked into {where} have different "
                       f"shapes {sorted(shapes)}: the variables do not match the model config.")
    if isinstance(leaves[0], jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct((len(leaves),) + leaves[0].shape, leaves[0].dtype)
    return np.stack([np.asarray(leaf) for leaf in leaves])
  try:
    return jax.tree.map(stack_leaf, *items)
  except ValueError as e:
    if "convert_variables" in str(e):
      raise
    raise ValueError(f"convert_variables: the layers stacked into {where} hold different "
                     f"variables: the variables do not match the model config.") from None


def _index_leaves(tree: Any, index: int, size: int, where: str) -> Any:
  def take(leaf):
    if not np.shape(leaf) or np.shape(leaf)[0] != size:
      raise ValueError(f"convert_variables: {where} should have {size} stacked layers on its "
                       f"leading axis, got shape {tuple(np.shape(leaf))}: the variables do "
                       f"not match the model config.")
    if isinstance(leaf, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return np.asarray(leaf)[index]
  return jax.tree.map(take, tree)


def _unrolled_paths(unrolled: Unrolled) -> List[Path]:
  if isinstance(unrolled, tuple):
    return [unrolled]
  return [p for u in unrolled for p in _unrolled_paths(u)]


def _to_scanned(tree: Mapping, layout: LayoutMap) -> Dict:
  def gather(unrolled: Unrolled, where: str):
    if isinstance(unrolled, tuple):
      return _get(tree, unrolled)
    items = [gather(u, where) for u in unrolled]
    present = [item is not _MISSING for item in items]
    if not any(present):
      return _MISSING
    if not all(present):
      missing = "/".join(_unrolled_paths(unrolled)[present.index(False)])
      raise ValueError(f"convert_variables: {missing} is missing (it belongs in {where}): "
                       f"the variables do not match the model config.")
    return _stack_leaves(items, where)

  out: Dict = {}
  for scanned, unrolled in layout:
    value = gather(unrolled, "/".join(scanned))
    if value is not _MISSING:
      _set(out, scanned, value)
  _check_all_used(tree, [p for _, u in layout for p in _unrolled_paths(u)], "unrolled")
  return out


def _to_unrolled(tree: Mapping, layout: LayoutMap) -> Dict:
  out: Dict = {}

  def scatter(unrolled: Unrolled, value: Any, where: str):
    if isinstance(unrolled, tuple):
      _set(out, unrolled, value)
      return
    for i, u in enumerate(unrolled):
      scatter(u, _index_leaves(value, i, len(unrolled), where), where)

  for scanned, unrolled in layout:
    value = _get(tree, scanned)
    if value is not _MISSING:
      scatter(unrolled, value, "/".join(scanned))
  _check_all_used(tree, [s for s, _ in layout], "scanned")
  return out


def _check_all_used(tree: Mapping, used: Sequence[Path], layout_name: str) -> None:
  used = set(used)
  for path in _leaf_paths(tree):
    if not any(path[:n] in used for n in range(1, len(path) + 1)):
      raise ValueError(f"convert_variables: {'/'.join(path)} is not part of this model's "
                       f"{layout_name} layout: the variables do not match the model config "
                       f"(or are already in the other layout).")


def convert_flow_variables(tree: Any, flow, *, from_version: int,
                           to_version: int = PARAM_LAYOUT_VERSION,
                           flow_name: str = "flow") -> Any:
  """``tree`` with every flow subtree moved from layout ``from_version`` to ``to_version``.

  A flow subtree is the value under ``flow_name`` of any mapping in ``tree`` that has that
  key (``FlowGMM`` holds its flow as ``flow``), so ``tree`` may be a variables dict
  (``{'params': {'flow': ..., 'prior': ...}, 'batch_stats': {'flow': ...}}``), one
  collection, or a train state whose optimiser moments are shaped like ``params``. Other
  entries come back as they are; moved leaves come back as numpy arrays (or, for
  ``jax.ShapeDtypeStruct`` leaves, as structs of the new shapes). ``flow`` is the flow
  module (any layout) whose ``layout_map()`` says where each layer goes.
  """
  for version in (from_version, to_version):
    check_layout_version(version, where=f"convert_variables: layout {version!r}")
  if from_version == to_version:
    return tree
  layout = flow.layout_map()
  move = _to_scanned if to_version == 2 else _to_unrolled

  def is_holder(node) -> bool:
    return isinstance(node, Mapping) and isinstance(node.get(flow_name), Mapping)

  def convert(node):
    if not is_holder(node):
      return node
    return {**node, flow_name: move(node[flow_name], layout)}

  return jax.tree.map(convert, tree, is_leaf=is_holder)
