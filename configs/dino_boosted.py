"""Thin copy of simdino_jax/configs/dino_boosted.py: `--config=configs/dino_boosted.py` from the repository root."""

from simdino_jax.configs.dino_boosted import get_config  # noqa: F401  pylint: disable=unused-import
