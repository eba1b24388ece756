"""Checkpoint conversion between the official PyTorch DINO / DINOv2 / SimDINO code and this codebase.

    python -m simdino_jax.convert from-torch --checkpoint=FILE --config=CONFIG --workdir=DIR
    python -m simdino_jax.convert to-torch --workdir=DIR --out=FILE [--format=pth|safetensors] [--head]

`torch_layout` maps the official tensor names and shapes to ours, `torch_checkpoints` reads and writes the files
(PyTorch is imported only there). A training run starts from a converted workdir through `config.init_from`
(`simdino_jax.checkpointing.initialize_from`).
"""
