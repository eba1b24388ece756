"""Thin copy of simdino_jax/configs/simdino.py: `--config=configs/simdino.py` from the repository root."""

from simdino_jax.configs.simdino import get_config  # noqa: F401  pylint: disable=unused-import
