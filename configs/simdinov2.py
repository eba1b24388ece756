"""Thin copy of simdino_jax/configs/simdinov2.py: `--config=configs/simdinov2.py` from the repository root."""

from simdino_jax.configs.simdinov2 import get_config  # noqa: F401  pylint: disable=unused-import
