"""Thin copy of simdino_jax/configs/dinov2_meta_vitg14.py: `--config=configs/dinov2_meta_vitg14.py`."""

from simdino_jax.configs.dinov2_meta_vitg14 import get_config  # noqa: F401  pylint: disable=unused-import
