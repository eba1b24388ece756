"""Thin copy of simdino_jax/configs/dinov2_meta.py: `--config=configs/dinov2_meta.py` from the repository root."""

from simdino_jax.configs.dinov2_meta import get_config  # noqa: F401  pylint: disable=unused-import
