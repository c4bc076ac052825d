"""Benchmarks (benchmarks/README.md). Offline data: ``$FLOWGMM_DATA_DIR``, else
``../shared/data`` next to the repository when that folder exists."""

from pathlib import Path

from flowgmm_jax.data.dataset import use_data_dir_if_unset

use_data_dir_if_unset(Path(__file__).resolve().parents[1].parent / "shared" / "data")
