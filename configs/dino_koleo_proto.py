"""Thin copy of simdino_jax/configs/dino_koleo_proto.py: `--config=configs/dino_koleo_proto.py`."""

from simdino_jax.configs.dino_koleo_proto import get_config  # noqa: F401  pylint: disable=unused-import
