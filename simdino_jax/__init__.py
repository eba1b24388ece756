"""simdino_jax: self-supervised ViT pretraining with the DINO family of objectives in JAX/Flax."""

import os

from simdino_jax import worker_imports

# gs:// goes through one client whether or not TensorFlow is installed: gcsfs, through etils.epath's fsspec backend
# (epath would pick TensorFlow's GCS client when TensorFlow is importable). Set before any path is opened: epath
# reads it once. Orbax writes array data through tensorstore's own GCS driver. See docs/operations.md.
os.environ["EPATH_USE_TF"] = "false"

# grain's data worker processes import neither JAX nor Orbax (simdino_jax/worker_imports.py).
worker_imports.keep_jax_out_of_data_workers()

__version__ = "0.1.0"
