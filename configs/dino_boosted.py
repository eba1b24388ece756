"""Thin copy of simdino_jax/configs/dino_boosted.py, so `--config=configs/dino_boosted.py` works from the repository root."""

from simdino_jax.configs.dino_boosted import get_config  # noqa: F401  pylint: disable=unused-import
