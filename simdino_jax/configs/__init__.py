"""Experiment configs, one recipe per file, loadable by name from any directory.

    from simdino_jax import configs
    config = configs.load("simdino", "model=ViT-S/16,data=cifar10")

On the command line the same files are `--config=simdino_jax/configs/<name>.py[:arg]`, or the thin copies
`--config=configs/<name>.py[:arg]` at the repository root. Every value and its official source: docs/recipes.md.
"""

import importlib
import pkgutil

import ml_collections

NOT_RECIPES = ("common",)


def names() -> list[str]:
  """The recipe names: every module of this package except the shared `common`."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in NOT_RECIPES)


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the recipe `name` (e.g. "dino", "simdinov2"); unknown names list the valid ones."""
  if name not in names():
    raise ValueError(f"Unknown config {name!r}; valid: {', '.join(names())}.")
  return importlib.import_module(f"{__name__}.{name}").get_config(arg)
