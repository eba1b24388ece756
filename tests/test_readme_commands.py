"""Every `python -m simdino_jax...` command of README.md and docs/*.md parses as written, and training configs
validate.

Each command runs in-process as `__main__` up to its argument parsing (absl's `app.run` or argparse's `parse_args`
stop there), so paths and overrides are checked by the real flag definitions without doing the work; a
`--config` is then validated as `train.run` would. The flags a module defined are removed afterwards.
"""

import argparse
import importlib
import os
import re
import runpy
import shlex
import sys

import ml_collections
import pytest
from absl import app
from absl import flags

from simdino_jax import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = re.compile(r"(?:\.venv/bin/)?python -m (simdino_jax[\w.]*)((?:[^`\n\\]|\\\n)*)")


DOCUMENTS = ["README.md"] + sorted(
  os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")
)


def readme_commands(documents=DOCUMENTS) -> list[tuple[str, list[str]]]:
  """(module, argv) of each command in the documents, with `~` and `$HOME` expanded as the shell would."""
  commands = []
  for document in documents:
    with open(os.path.join(ROOT, document)) as f:
      text = re.sub(r"`[^`]*`", lambda span: span.group(0).replace("\n", " "), f.read())  # Inline code may wrap.
    for module, rest in COMMAND.findall(text):
      words = shlex.split(rest.replace("\\\n", " "), comments=True)
      if words:  # A module named without arguments is a reference in prose, not a command to run.
        commands.append((module, [os.path.expanduser(os.path.expandvars(w)) for w in words]))
  return commands


class _Parsed(Exception):
  """Raised where the module would start its work."""


@pytest.fixture
def parse_only(monkeypatch):
  """Runs a module as __main__ up to its argument parsing; returns the parsed absl flags or argparse namespace."""

  def stop_after_absl(main, argv=None, **kwargs):
    del main, kwargs
    flags.FLAGS(argv or sys.argv)
    raise _Parsed(None)

  def stop_after_argparse(parser, args=None, namespace=None):
    raise _Parsed(original_parse_args(parser, args, namespace))

  original_parse_args = argparse.ArgumentParser.parse_args
  monkeypatch.setattr(app, "run", stop_after_absl)
  monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after_argparse)
  monkeypatch.chdir(ROOT)

  def run(module: str, argv: list[str]):
    # Flags that the project's modules defined when another test imported them are set aside, so the module
    # defines its own as a fresh process would; they are put back afterwards.
    aside = {
      name: (flags.FLAGS[name], flags.FLAGS.find_module_defining_flag(name))
      for name in list(flags.FLAGS)
      if (flags.FLAGS.find_module_defining_flag(name) or "").startswith("simdino_jax")
    }
    for name in aside:
      delattr(flags.FLAGS, name)
    before = set(flags.FLAGS)
    monkeypatch.setattr(sys, "argv", [module] + argv)
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=False)
    except _Parsed as parsed:
      return parsed.args[0] or {name: flags.FLAGS[name].value for name in set(flags.FLAGS) - before}
    finally:
      for name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, name)
      flags.FLAGS.unparse_flags()
      for name, (flag, defined_in) in aside.items():
        flags.FLAGS[name] = flag
        flags.FLAGS.register_flag_by_module(defined_in, flag)
    raise AssertionError(f"{module} finished without parsing its arguments through absl or argparse.")

  return run


def test_readme_shows_the_entry_points():
  modules = {module for module, _ in readme_commands(["README.md"])}
  assert {
    "simdino_jax.main",
    "simdino_jax.evaluate",
    "simdino_jax.tools.reproduce",
    "simdino_jax.tools.prepare",
  } <= modules, modules


@pytest.mark.parametrize(
  "module,argv", readme_commands(), ids=[f"{i}-{m}" for i, (m, _) in enumerate(readme_commands())]
)
def test_readme_command_parses_and_its_config_validates(parse_only, module, argv):
  parsed = parse_only(module, argv)
  config = parsed.get("config") if isinstance(parsed, dict) else None
  if isinstance(config, ml_collections.ConfigDict):
    validation.validate_config(config)
    overrides = dict(a.removeprefix("--config.").split("=", 1) for a in argv if a.startswith("--config."))
    for key, value in overrides.items():
      node = config
      for part in key.split("."):
        node = node[part]
      if isinstance(node, str):  # Paths and names arrive as written.
        assert node == value, (key, node, value)


CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py") and f != "__init__.py")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_unset_config_field_takes_a_value_from_the_command_line(parse_only, name):
  """A field left at None must be a typed placeholder, else `--config.x=...` fails at flag parsing."""
  config = importlib.import_module(f"configs.{name}").get_config()
  unset = [key for key, value in _flat_items(config) if value is None]
  assert "data.data_dir" in unset and "data.path" in unset
  argv = [f"--config=configs/{name}.py", "--workdir=/tmp/w"] + [
    f"--config.{key}=gs://b/{key}" for key in unset if key.startswith("data.")
  ]
  parsed = parse_only("simdino_jax.main", argv)
  assert parsed["config"].data.data_dir == "gs://b/data.data_dir" and parsed["config"].data.path == "gs://b/data.path"


def _flat_items(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _flat_items(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value
