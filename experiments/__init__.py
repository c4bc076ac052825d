"""The command line: ``python -m experiments.main`` (train, resume, --mode=eval) and
``python -m experiments.plot``.

The offline data is read from ``$FLOWGMM_DATA_DIR``; when that is unset, the command line
points it at ``../shared/data`` next to the repository, where this project keeps its offline
copies (if that folder exists).
"""

from pathlib import Path

from flowgmm_jax.data.dataset import use_data_dir_if_unset

use_data_dir_if_unset(Path(__file__).resolve().parents[1].parent / "shared" / "data")
