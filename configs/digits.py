"""Thin copy of simdino_jax/configs/digits.py: `--config=configs/digits.py` from the repository root."""

from simdino_jax.configs.digits import get_config  # noqa: F401  pylint: disable=unused-import
