"""Thin copy of simdino_jax/configs/dino.py: `--config=configs/dino.py` from the repository root."""

from simdino_jax.configs.dino import get_config  # noqa: F401  pylint: disable=unused-import
