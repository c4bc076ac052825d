"""Benchmarks: speed side by side with the original, and the table suite.

The offline data is read from ``$FLOWGMM_DATA_DIR``; when that is unset, the benchmarks point
it at ``../shared/data`` next to the repository (if that folder exists).
"""

from pathlib import Path

from flowgmm_jax.data.dataset import use_data_dir_if_unset

use_data_dir_if_unset(Path(__file__).resolve().parents[1].parent / "shared" / "data")
