"""Thin copy of simdino_jax/configs/dinov2.py: `--config=configs/dinov2.py` from the repository root."""

from simdino_jax.configs.dinov2 import get_config  # noqa: F401  pylint: disable=unused-import
