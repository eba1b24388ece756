"""Thin copy of simdino_jax/configs/dino_vanilla.py, so `--config=configs/dino_vanilla.py` works from the repository root."""

from simdino_jax.configs.dino_vanilla import get_config  # noqa: F401  pylint: disable=unused-import
