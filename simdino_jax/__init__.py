"""simdino_jax: self-supervised ViT pretraining with the DINO family of objectives in JAX/Flax."""

__version__ = "0.1.0"
