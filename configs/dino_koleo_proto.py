"""Thin copy of simdino_jax/configs/dino_koleo_proto.py, so `--config=configs/dino_koleo_proto.py` works from the repository root."""

from simdino_jax.configs.dino_koleo_proto import get_config  # noqa: F401  pylint: disable=unused-import
