"""Test setup: 8 simulated CPU devices and cheap compiles, set before JAX initializes."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # after XLA_FLAGS: the flag is read when the backend starts

jax.config.update("jax_disable_most_optimizations", True)
