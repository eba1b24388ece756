"""Thin copy of simdino_jax/configs/dino_vanilla.py: `--config=configs/dino_vanilla.py` from the repository root."""

from simdino_jax.configs.dino_vanilla import get_config  # noqa: F401  pylint: disable=unused-import
