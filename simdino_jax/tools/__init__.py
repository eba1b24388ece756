"""Programs beside the three entry points (main, evaluate, convert): the one-command reproduction and its sweeps,
dataset preparation, benchmarks and the accelerator check. Each is `python -m simdino_jax.tools.NAME`; no library
module imports them (docs/architecture.md, "Layers")."""
