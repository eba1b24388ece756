"""simdino_jax: self-supervised ViT pretraining with the DINO family of objectives in JAX/Flax."""

import os

# gs:// goes through one client whether or not TensorFlow is installed: gcsfs, through etils.epath's fsspec backend
# (epath would pick TensorFlow's GCS client when TensorFlow is importable). Set before any path is opened: epath
# reads it once. Orbax writes array data through tensorstore's own GCS driver. See docs/operations.md.
os.environ["EPATH_USE_TF"] = "false"

__version__ = "0.1.0"
