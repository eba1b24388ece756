"""Thin copy of simdino_jax/configs/dino.py, so `--config=configs/dino.py` works from the repository root."""

from simdino_jax.configs.dino import get_config  # noqa: F401  pylint: disable=unused-import
