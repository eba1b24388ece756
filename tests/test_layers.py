"""The package's imports run one way (docs/architecture.md, "Layers"): programs → trainer → evaluation → parts →
infrastructure. Every import statement of every module counts, the ones inside functions too."""

import ast
import collections
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "simdino_jax"

# Top to bottom; a module's layer is that of its longest matching prefix. A module imports its own layer or lower.
LAYERS = {
  "programs": ("simdino_jax.main", "simdino_jax.evaluate", "simdino_jax.convert.__main__", "simdino_jax.tools"),
  "trainer": (
    "simdino_jax.train",
    "simdino_jax.step_cost",
    "simdino_jax.checkpointing",
    "simdino_jax.validation",
    "simdino_jax.convert",
    "simdino_jax.configs",
  ),
  "evaluation": ("simdino_jax.evaluation",),
  "parts": (
    "simdino_jax.objectives",
    "simdino_jax.models",
    "simdino_jax.data",
    "simdino_jax.optim",
    "simdino_jax.collapse",
    "simdino_jax.train_state",
  ),
  "infrastructure": (
    "simdino_jax",
    "simdino_jax.storage",
    "simdino_jax.parallel",
    "simdino_jax.numerics",
    "simdino_jax.registry",
    "simdino_jax.cluster",
    "simdino_jax.metrics",
    "simdino_jax.cli",
    "simdino_jax.worker_imports",
    "simdino_jax.interpolation",
  ),
}
ORDER = list(LAYERS)


def _modules() -> dict[str, str]:
  """Dotted module name → file path, for every module of the package."""
  found = {}
  for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        found[dotted.removesuffix(".__init__")] = path
  return found


def _imports(modules: dict[str, str]) -> dict[str, set[str]]:
  """Module → the package's modules it imports (`from pkg import name` counts name when it is a module)."""

  def known(name):
    while name not in modules:
      name = name.rpartition(".")[0]
    return name

  graph = collections.defaultdict(set)
  for module, path in modules.items():
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        graph[module].update(known(a.name) for a in node.names if a.name.split(".")[0] == PACKAGE)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
        if base.split(".")[0] == PACKAGE:
          graph[module].update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base) for a in node.names)
    graph[module].discard(module)
  return graph


def layer(module: str) -> str:
  prefixes = [(len(p), name) for name, ps in LAYERS.items() for p in ps if module == p or module.startswith(p + ".")]
  assert prefixes, f"{module} has no layer: add it to LAYERS and to docs/architecture.md"
  return max(prefixes)[1]


def test_every_import_goes_to_the_same_layer_or_below():
  modules = _modules()
  upward = [
    f"{m} ({layer(m)}) imports {d} ({layer(d)})"
    for m, deps in sorted(_imports(modules).items())
    for d in sorted(deps)
    if ORDER.index(layer(d)) < ORDER.index(layer(m))
  ]
  assert not upward, "\n".join(upward)


def test_no_import_cycle():
  graph = _imports(_modules())
  state, cycles = {}, []

  def visit(module, trail):
    state[module] = "open"
    for dep in sorted(graph[module]):
      if state.get(dep) == "open":
        cycles.append(" → ".join(trail[trail.index(dep) :] + [dep]))
      elif dep not in state:
        visit(dep, trail + [dep])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, "\n".join(cycles)


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
  """The walk itself: a library module importing a program and two modules importing each other are found."""
  package = tmp_path / PACKAGE
  (package / "tools").mkdir(parents=True)
  for name, text in {
    "__init__.py": "",
    "storage.py": "from simdino_jax import parallel\n",
    "parallel.py": "def f():\n  from simdino_jax import storage\n",
    "train.py": "from simdino_jax.tools import sweep\n",
    "tools/__init__.py": "",
    "tools/sweep.py": "from simdino_jax import train\n",
  }.items():
    (package / name).write_text(text)
  monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
  graph = _imports(_modules())
  assert graph["simdino_jax.parallel"] == {"simdino_jax.storage"}
  assert graph["simdino_jax.train"] == {"simdino_jax.tools.sweep"}
  assert layer("simdino_jax.tools.sweep") == "programs" and layer("simdino_jax.train") == "trainer"
  with pytest.raises(AssertionError, match="simdino_jax.parallel → simdino_jax.storage → simdino_jax.parallel"):
    test_no_import_cycle()
  with pytest.raises(AssertionError, match=r"train \(trainer\) imports simdino_jax.tools.sweep"):
    test_every_import_goes_to_the_same_layer_or_below()
