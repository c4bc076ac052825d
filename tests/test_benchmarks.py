"""The step-speed benchmark (benchmarks/bench_steps.py) and its PyTorch side
(benchmarks/parity/original_step.py).

The original-side tests need PyTorch (the 'bench' extra) and a clone of
github.com/izmailovpavel/flowgmm named by the environment variable FLOWGMM_ORIGINAL; they
are skipped without either. The rest run everywhere, without PyTorch.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import missing_shared_data

REPO = pathlib.Path(__file__).resolve().parents[1]
ORIGINAL = os.environ.get("FLOWGMM_ORIGINAL", "")


def test_library_never_imports_torch():
  """PyTorch is a benchmark extra, never a dependency of the library."""
  pattern = re.compile(r"^\s*(import torch|from torch\b)", re.M)
  offenders = [str(p.relative_to(REPO)) for p in (REPO / "flowgmm_jax").rglob("*.py")
               if pattern.search(p.read_text())]
  assert not offenders, offenders


def test_parity_machine_record_runs_without_torch():
  """The parity run's machine record: the part of it that runs without torch, so a broken
  import there fails CI, not the first hour-long parity run."""
  from benchmarks.parity import parity_original
  m = parity_original.machine()
  assert m["cpu"]
  assert m["cores"] >= 1
  assert 1 <= m.get("cores_used", m["cores"]) <= m["cores"]


@pytest.mark.slow
def test_bench_steps_toy_runs_without_torch(tmp_path):
  """The CLI on the toy workload, one repeat: a time, a FLOP count > 0, and (without
  --original) PyTorch never imported."""
  out = tmp_path / "bench.json"
  code = ("import runpy, sys\n"
          f"sys.argv = ['bench_steps', '--only=toy', '--repeats=1', '--json={out}']\n"
          "runpy.run_module('benchmarks.bench_steps', run_name='__main__')\n"
          "assert 'torch' not in sys.modules, 'bench_steps imported torch'\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| toy |" in proc.stdout
  assert "original" not in proc.stdout
  report = json.loads(out.read_text())
  assert report["header"]["cores"] >= 1
  assert "torch" not in report["header"]
  (row,) = report["rows"]
  assert row["workload"] == "toy"
  assert row["median_s"] > 0
  assert row["flops"] > 0
  assert row["gflops_per_s"] > 0
  assert row["params"] == 1_323_550  # the compact conditioners (models/tabular.py)
  assert row["xla_compile_s"] > 0
  assert row["hlo_fusions"] > 0
  assert row["hlo_dots"] > 0
  assert row["hlo_convolutions"] == 0


def _original():
  pytest.importorskip("torch")
  if not ORIGINAL or not os.path.isdir(os.path.join(ORIGINAL, "flow_ssl")):
    pytest.skip("set FLOWGMM_ORIGINAL to a clone of github.com/izmailovpavel/flowgmm")
  from benchmarks.parity import original_step
  return original_step.load_original(ORIGINAL)


def test_original_toy_step_matches_ours():
  """The original's toy model has exactly the parameters of ours in the original's layout,
  its step runs and trains, and XLA's FLOP count of our step in that layout covers torch's
  matmul count (the excess is the optimiser's elementwise work on 1.3 M parameters)."""
  orig = _original()
  from benchmarks import bench_steps
  from benchmarks.parity import original_step
  _, x, y, _, k = bench_steps.workload("toy")
  step = original_step.build_step(orig, "toy", x, y, k)
  ours = bench_steps.original_layout_counts("toy")
  assert step.num_params == ours["params"] == 1_331_240
  before = [p.detach().clone() for p in step.model.parameters()]
  flops = original_step.count_flops(step.step)
  loss = float(step.step())
  assert np.isfinite(loss)
  assert any(not (p == q).all() for p, q in zip(step.model.parameters(), before, strict=False))
  assert 1.0 <= ours["flops"] / flops < 1.5, (ours["flops"], flops)


def test_original_prior_built_once_changes_no_number():
  """The one change of the 'prior built once' variant: same losses step by step."""
  orig = _original()
  from benchmarks import bench_steps
  from benchmarks.parity import original_step
  _, x, y, _, k = bench_steps.workload("toy")
  shipped = original_step.build_step(orig, "toy", x, y, k, prior="shipped", seed=3)
  once = original_step.build_step(orig, "toy", x, y, k, prior="once", seed=3)
  for _ in range(3):
    assert float(shipped.step()) == pytest.approx(float(once.step()), rel=1e-6)


def test_crop_flip_is_a_padded_crop_and_a_mirror():
  torch = pytest.importorskip("torch")
  from benchmarks.parity.original_step import crop_flip
  x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
  out = crop_flip(x, torch.Generator().manual_seed(0), padding=2)
  assert out.shape == x.shape
  padded = torch.nn.functional.pad(x, (2,) * 4)
  for b in range(2):
    windows = [padded[b, :, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
    assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1)) for w in windows)


def _mnist_model_pair(orig, seed: int):
  """The original's small MNIST RealNVP FlowGMM (seed ``seed``) and our ``:cpu`` model with
  its random init (zero_init_last=False), initialised (our variables from key 0)."""
  import jax
  import jax.numpy as jnp
  import torch

  from benchmarks.parity import original_step
  from configs import mnist
  from flowgmm_jax.flowgmm import FlowGMM
  torch.manual_seed(seed)
  theirs = original_step.build_image_flowgmm(
      orig, orig.SSLGaussMixture, image_shape=(1, 28, 28), num_classes=10, lr=0.0,
      **mnist.CPU_MODEL)
  c = mnist.get_config("cpu")
  c.model.zero_init_last = False
  ours = FlowGMM.from_config(c, (28, 28, 1), 10, image=True)
  variables = jax.jit(lambda k: ours.init(k, jnp.zeros((2, 28, 28, 1))))(jax.random.PRNGKey(0))
  return theirs, ours, variables


def test_original_realnvp_with_its_weights_is_our_function():
  """Our ``:cpu`` RealNVP FlowGMM given the original's tensors (original_step.to_our_variables)
  computes the original's function: the same latent (up to the NCHW/NHWC order), log-det,
  BatchNorm running statistics, eval-mode outputs, the FlowGMM-cons loss terms and the
  gradient of the loss; so the architecture, the objective and backward agree and only the
  random draws differ between the sides."""
  orig = _original()
  import jax
  import jax.numpy as jnp
  import torch

  from benchmarks.parity import original_step
  from flowgmm_jax import losses
  from flowgmm_jax.models.multiscale import multiscale_latent_shapes
  from flowgmm_jax.models.realnvp import realnvp_plan
  theirs, ours, v0 = _mnist_model_pair(orig, seed=1)
  pieces = multiscale_latent_shapes(realnvp_plan(2), (28, 28, 1))
  variables = original_step.to_our_variables(v0, theirs.net, theirs.prior.means, pieces)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (8, 28, 28, 1)).astype(np.uint8)
  y = np.array([3, 1, -1, 7, -1, 0, -1, -1])
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.
  d_log_256 = 28 * 28 * np.log(256.0)

  # One train step of the original at lr 0 (so the tensors stay as given) leaves the
  # gradients in .grad; both views are the same images, both at the bin midpoint.
  with original_step.midpoint_dequantization():
    out = original_step.image_train_step(orig, theirs, xt, xt, torch.from_numpy(y),
                                         label_weight=3.0, consistency_weight=0.5,
                                         max_grad_norm=float("inf"))
    theirs.net.train()
    with torch.no_grad():
      z_t = theirs.net(xt).reshape(8, -1).numpy()
      log_det_t = theirs.net.logdet().numpy() - d_log_256

  def loss_fn(params):
    (z, log_det, clj), updates = ours.apply({**variables, "params": params},
                                            jnp.asarray(x, jnp.float32), None, train=True,
                                            mutable=["batch_stats"])
    loss, terms = losses.flowgmm_objective(
        clj, log_det, jnp.asarray(y), objective="marginal_and_cross_entropy", label_weight=3.0,
        consistency_weight=0.5, class_log_joint_teacher=clj,
        log_weights=jnp.full((10,), -np.log(10.0)))
    return loss, (terms, z, log_det, updates["batch_stats"])

  (loss, (terms, z, log_det, stats)), grads = jax.jit(
      jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  z_ours = np.asarray(z)
  np.testing.assert_allclose(z_ours, original_step.latent_nchw_to_ours(z_t, pieces),
                             atol=1e-5 * np.abs(z_t).max())
  np.testing.assert_allclose(np.asarray(log_det), log_det_t, rtol=1e-5)
  assert float(loss) == pytest.approx(float(out["loss"]), rel=1e-5)
  assert float(terms["cross_entropy"]) == pytest.approx(float(out["cross_entropy"]), rel=1e-4)
  assert float(terms["nll_all"]) == pytest.approx(float(out["nll"]), rel=1e-5)
  assert float(terms["consistency"]) == pytest.approx(float(out["consistency"]), rel=1e-5)
  # Gradients: the global relative error (parameters right before a BatchNorm have a zero
  # gradient, which both sides compute only to round-off).
  num = den = 0.0
  for path, tensor, to_ours in original_step.realnvp_correspondence(theirs.net):
    if path[0] != "params":
      continue
    node = grads
    for key in path[1:]:
      node = node[key]
    g_t = to_ours(tensor.grad).numpy()
    num += float(np.sum((np.asarray(node) - g_t) ** 2))
    den += float(np.sum(g_t ** 2))
  assert den > 0
  assert (num / den) ** 0.5 < 1e-3
  # Running statistics after the forward passes: torch updated them three times (two views
  # in the step, one forward above), ours once; compare ours after one update with the
  # update rule applied to the same batch moments, via a fresh original and one forward.
  fresh, _, _ = _mnist_model_pair(orig, seed=1)
  fresh.net.train()
  with original_step.midpoint_dequantization(), torch.no_grad():
    fresh.net(xt)
  expected = original_step.to_our_variables(v0, fresh.net)["batch_stats"]
  # torch keeps the UNBIASED batch variance in its running average, Flax the biased one:
  # a relative difference below 1 / (B H W - 1) = 1/1567 (the 14 x 14 couplings) here.
  for a, b in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(expected), strict=False):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-3, atol=1e-5)
  # Eval mode with those statistics.
  fresh.net.eval()
  with original_step.midpoint_dequantization(), torch.no_grad():
    z_e = fresh.net(xt).reshape(8, -1).numpy()
    log_det_e = fresh.net.logdet().numpy() - d_log_256
  eval_vars = original_step.to_our_variables(v0, fresh.net, fresh.prior.means, pieces)
  z2, log_det2, _ = jax.jit(lambda v, xx: ours.apply(v, xx, None, train=False))(
      eval_vars, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(z2), original_step.latent_nchw_to_ours(z_e, pieces),
                             atol=1e-5 * np.abs(z_e).max())
  np.testing.assert_allclose(np.asarray(log_det2), log_det_e, rtol=1e-5)


def test_original_and_our_random_init_draw_from_one_distribution():
  """With zero_init_last=False every parameter and statistic of our ``:cpu`` model starts
  from the original's distribution: the same constants (BatchNorm 1/0, running 0/1,
  Rescale 1), uniform kernels and biases with the original's bound 1/sqrt(fan_in) (the
  largest |value| of each large tensor within 3% of it, the RMS within 10% of the
  original's), weight-norm gains g = ||v|| (their RMS within 10%), N(0, 1) prior means."""
  orig = _original()
  from benchmarks.parity import original_step
  theirs, _, variables = _mnist_model_pair(orig, seed=0)
  checked = 0
  for path, tensor, to_ours in original_step.realnvp_correspondence(theirs.net):
    node = variables
    for key in path:
      node = node[key]
    a, b = np.asarray(node).ravel(), to_ours(tensor.detach()).numpy().ravel()
    assert a.shape == b.shape, path
    if np.all(b == b[0]):  # a constant in the original: the same constant
      np.testing.assert_array_equal(a, b, err_msg="/".join(map(str, path)))
      continue
    if a.size < 100:
      continue
    rms_a, rms_b = np.sqrt(np.mean(a ** 2)), np.sqrt(np.mean(b ** 2))
    assert 0.9 < rms_a / rms_b < 1.1, (path, rms_a, rms_b)
    if path[-2] in ("v", "bias"):  # path ends with the slice index
      assert 0.97 < np.abs(a).max() / np.abs(b).max() < 1.03, path
    checked += 1
  assert checked >= 40
  means = np.asarray(variables["prior"]["prior"]["means"])
  assert abs(means.std() - 1.0) < 0.02
  assert abs(theirs.prior.means.numpy().std() - 1.0) < 0.02


def test_parity_label_split_is_the_original_label_file():
  """The labelled images of the parity run are the original's own split files
  (data/labels/mnist/1000_balanced_labels/<seed>.npz), recomputed from our MNIST."""
  if not ORIGINAL or not os.path.isdir(os.path.join(ORIGINAL, "flow_ssl")):
    pytest.skip("set FLOWGMM_ORIGINAL to a clone of github.com/izmailovpavel/flowgmm")
  from benchmarks.parity.parity_original import original_label_split
  from flowgmm_jax.data import DataNotFoundError, load_mnist
  try:
    y = load_mnist(source="files").y_train
  except DataNotFoundError as e:
    missing_shared_data(f"MNIST IDX files not found: {e}")
  for seed in (0, 1):
    path = os.path.join(ORIGINAL, "data", "labels", "mnist", "1000_balanced_labels",
                        f"{seed}.npz")
    if not os.path.isfile(path):
      pytest.skip(f"{path} is not in the clone")
    shipped = np.load(path)
    labeled, unlabeled = original_label_split(y, 1000, seed)
    np.testing.assert_array_equal(labeled, np.sort(shipped["labeled_indices"]))
    np.testing.assert_array_equal(unlabeled, np.sort(shipped["unlabeled_indices"]))
    assert np.all(np.bincount(y[labeled], minlength=10) == 100)


def test_parity_recipes_schedule_only_the_shipped_cpu_recipe():
  """Only ``cpu_schedule`` uses the :cpu config's warm-up and cosine decay, on both sides
  (the original's Adam gets the same ``make_schedule``); every other recipe trains at a
  constant rate, as the original's script does, although our side starts from the :cpu
  config, whose schedule is cosine."""
  from benchmarks.parity import parity_original as po
  from configs import mnist
  cpu = mnist.get_config("cpu")
  assert cpu.optim.lr_schedule == "cosine"  # what our side would otherwise inherit
  for name in po.RECIPES:
    r = po.recipe(name)
    c = po.our_config(r, seed=0, steps=1000, num_labels=1000, eval_every=250, num_test=100)
    expected = ((cpu.optim.lr_schedule, cpu.optim.warmup_steps) if name == "cpu_schedule"
                else ("constant", 0))
    assert (r["lr_schedule"], r["warmup_steps"]) == expected, name
    assert (c.optim.lr_schedule, c.optim.warmup_steps) == expected, name
  from flowgmm_jax.training.optim import make_schedule
  r = po.recipe("cpu_schedule")
  lr = make_schedule(r["lr_schedule"], r["learning_rate"], 6000, r["warmup_steps"])
  assert float(lr(0)) == 0.0
  assert abs(float(lr(200)) - r["learning_rate"]) < 1e-9
  assert float(lr(3100)) == pytest.approx(r["learning_rate"] / 2, rel=1e-3)


def test_parity_original_20_steps(tmp_path):
  """The parity benchmark at 20 steps, one seed, the README recipe: both sides run their own
  loops on real MNIST, have 172,856 parameters, report finite terms, and start from the same
  distribution: first-step mixture NLLs within a factor 3 of each other (random inits; over
  seeds 0-7 each side's spread is about 2-5x) and first-step log-dets within 25% (one random
  draw per side: over 60 inits per side the 10%-90% range of the log-det is -2394..-1917
  for ours and -2520..-1947 for the original, so two draws differ by up to ~25%; seed 0
  gives 11.5% with torch 2.14; a log-det without the -D log 256 of the 8-bit scaling would
  change sign)."""
  orig = _original()
  from benchmarks.parity import parity_original
  from flowgmm_jax.data import DataNotFoundError, load_mnist
  try:
    load_mnist(source="files", max_examples=10)
  except DataNotFoundError as e:
    missing_shared_data(f"MNIST IDX files not found: {e}")
  out = tmp_path / "parity.json"
  results = parity_original.main([f"--original={orig.path}", "--steps=20", "--seeds=0",
                                  "--eval-every=20", "--test-examples=100",
                                  "--recipes=original", f"--json={out}", "--figure="])
  runs = {r["side"]: r for r in json.loads(out.read_text())["runs"].values()}
  assert set(runs) == {"ours", "original"}
  assert results["runs"]
  assert runs["ours"]["num_params"] == runs["original"]["num_params"] == 172_856
  for side, run in runs.items():
    (e,) = run["evals"]
    assert e["step"] == 20
    values = [*run["first_step"].values(), *e["train"].values(), *e["test"].values()]
    assert all(np.isfinite(values)), (side, run)
    assert 0.0 <= e["test"]["accuracy"] <= 1.0
  first = {s: r["first_step"] for s, r in runs.items()}
  assert 1 / 3 < first["ours"]["nll"] / first["original"]["nll"] < 3, first
  assert abs(first["ours"]["log_det"] / first["original"]["log_det"] - 1) < 0.25, first
  assert runs["original"]["prior_changed"] is False


def test_bench_fit_large_table_reports_time_memory_and_failures(tmp_path):
  """--rows: one child process per method; its fit time, accuracy and memory (peak >= the
  data's resident set), and a method past --timeout reported as stopped, not a crash."""
  from benchmarks import bench_fit
  x, y, x_test, y_test = bench_fit.synthetic_table(3000, 4, classes=3, seed=1)
  assert x.shape == (3000, 4)
  assert x_test.shape == (bench_fit.TEST_ROWS, 4)
  assert np.bincount(y[y >= 0]).tolist() == [10, 10, 10]
  assert set(y_test) == {0, 1, 2}
  out = tmp_path / "big.json"
  bench_fit.main(["--rows=3000", "--features=4", "--methods=selftraining", f"--json={out}"])
  (row,) = json.loads(out.read_text())["rows"]
  assert row["fit_s"] > 0
  assert row["accuracy"] > 0.8
  assert row["peak_mib"] >= row["data_mib"] > 0
  assert row["fit_mib"] == pytest.approx(
      row["peak_mib"] - row["data_mib"])
  (row,) = bench_fit.main(["--rows=3000", "--features=4", "--methods=labelspreading",
                           "--timeout=0.01"])
  assert row["failed"] == "stopped after 0.01 s (--timeout)"


def test_ssl_suite_new_baselines_run_merge_and_name_the_best_single_method(tmp_path,
                                                                          monkeypatch):
  """The reviewer's baselines on the smallest mixed-column table, one seed, no FlowGMM: each
  is scored on the protocol's rows (1-NN recomputed here by hand), a --merge run adds a
  method beside them, and the best single method is the highest mean; FlowGMM's runs,
  once merged in, are set against each table's best."""
  from benchmarks import ssl_suite
  try:
    x, y = ssl_suite.load_table("salaries")
  except FileNotFoundError as e:
    missing_shared_data(str(e))
  monkeypatch.setattr(ssl_suite, "FOREST_TREES", 30)  # the plumbing, not the forest (CI time)
  out = tmp_path / "suite.json"
  new = ["random_forest", "svm_rbf", "nearest_neighbour", "selftraining_rf", "selftraining_hgb"]
  common = ["--panel=mixed", "--tables=salaries", "--seeds=0", f"--output={out}"]
  ssl_suite.main([*common, "--baselines-only", f"--methods=flowgmm,{','.join(new)}"])
  report = ssl_suite.main([*common, "--merge", "--methods=logreg"])
  runs = report["results"]["salaries"]
  assert set(runs) == {"info", "logreg", *new}
  assert set(report["provenance_by_method"]) == {"logreg", *new}
  for m in new:
    (run,) = runs[m]
    assert 0.0 <= run["accuracy"] <= 1.0
    assert 0.0 <= run["ece"] <= 1.0
    assert run["seed"] == 0
  # 1-NN by hand: the labelled rows, standardised with the train rows' scaler.
  x_train, y_semi, _, x_eval, y_eval = ssl_suite.make_split(x, y, 0, 10, validation=False)
  mu, sd = x_train.mean(0), x_train.std(0)
  sd[sd == 0] = 1.0
  lab = y_semi != -1
  d = (((x_eval - mu) / sd)[:, None, :] - ((x_train[lab] - mu) / sd)[None]) ** 2
  assert runs["nearest_neighbour"][0]["accuracy"] == np.mean(
      y_semi[lab][d.sum(-1).argmin(1)] == y_eval)
  best = max(["logreg", *new], key=lambda m: runs[m][0]["accuracy"])
  text, summary = ssl_suite.best_single(report["results"], ["salaries"])
  assert summary["method"] == best
  assert "not been run" in text
  assert summary["mean_accuracy"] == 100 * runs[best][0]["accuracy"]
  # FlowGMM 5 points below the best: a loss beyond the 4-point margin.
  runs["flowgmm"] = [{"accuracy": runs[best][0]["accuracy"] - 0.05, "seed": 0}]
  _, summary = ssl_suite.best_single(report["results"], ["salaries"])
  assert summary["flowgmm_minus_best_single"] == pytest.approx(-5.0)
  assert summary["tables_more_than_margin_below_their_best"] == ["salaries"]
  with pytest.raises(SystemExit):  # another seed cannot be merged into this file
    ssl_suite.main([*common[:2], "--seeds=1", f"--output={out}", "--merge", "--methods=logreg"])
