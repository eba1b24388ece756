"""`python -m simdino_jax.convert {from-torch,to-torch} --flags`: official PyTorch checkpoints in and out.

    # An official checkpoint (backbone file, or DINO's checkpoint.pth with student/teacher and heads) -> a step-0
    # checkpoint in DIR: evaluate it (python -m simdino_jax.evaluate --workdir=DIR) or train from it
    # (--config.init_from=DIR).
    python -m simdino_jax.convert from-torch --checkpoint=dino_deitsmall16_pretrain.pth \
        --config=configs/dino.py:model=ViT-S/16 --config.model.dtype=float32 --workdir=runs/dino_s16
    # Our teacher backbone (and with --head the head) as an official state dict.
    python -m simdino_jax.convert to-torch --workdir=runs/my_run --out=teacher.pth
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from simdino_jax import cli
from simdino_jax.convert import torch_layout

COMMANDS = ("from-torch", "to-torch")

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "from-torch: the experiment config whose model receives the weights.", lock_config=True
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "from-torch: the official .pth / .safetensors file.")
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "from-torch: where to write the converted checkpoint (empty); to-torch: the run whose checkpoint to export.",
)
_IGNORE = flags.DEFINE_list(
  "ignore_keys",
  [],
  "from-torch: official key prefixes to leave out on purpose, e.g. ibot_head. (relative to a network).",
)
_OFFSET = flags.DEFINE_float(
  "interpolate_offset",
  None,
  "from-torch: the reference's position-embedding "
  "interpolation offset (default: the config's model.interpolate_offset; DINOv2's _reg4 "
  "releases: 0, the others 0.1).",
)
_ANTIALIAS = flags.DEFINE_bool(
  "interpolate_antialias",
  None,
  "from-torch: antialiased interpolation (default: the "
  "config's model.interpolate_antialias; True for DINOv2's _reg4 releases).",
)
_OUT = flags.DEFINE_string("out", None, "to-torch: the file to write.")
_FORMAT = flags.DEFINE_enum("format", "pth", ("pth", "safetensors"), "to-torch: file format.")
_NETWORK = flags.DEFINE_enum("network", "teacher", ("teacher", "student"), "to-torch: which network.")
_HEAD = flags.DEFINE_bool("head", False, "to-torch: also write the head (keys backbone.* and head.*).")
_LAYOUT = flags.DEFINE_enum(
  "layout",
  None,
  torch_layout.LAYOUTS,
  "to-torch: dino (no mask token) or dinov2 (default: dinov2 for models with registers or LayerScale, else dino).",
)
_STEP = flags.DEFINE_integer("step", None, "to-torch: checkpoint step (default: the latest).")


def _require(names_and_values) -> None:
  missing = [name for name, value in names_and_values if value is None]
  if missing:
    raise app.UsageError(f"Missing {', '.join('--' + n for n in missing)}.")


def main(argv) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"Give one command first: {' or '.join(COMMANDS)} (got {argv[1:]}).")
  from simdino_jax.convert import torch_checkpoints  # pylint: disable=import-outside-toplevel

  if argv[1] == "from-torch":
    _require((("checkpoint", _CHECKPOINT.value), ("config", _CONFIG.value), ("workdir", _WORKDIR.value)))
    summary = torch_checkpoints.from_torch(
      _CHECKPOINT.value,
      _CONFIG.value,
      _WORKDIR.value,
      ignore_keys=_IGNORE.value,
      interpolate_offset=_OFFSET.value,
      interpolate_antialias=_ANTIALIAS.value,
    )
    for note in summary["notes"]:
      print(note)
    print(f"Imported {', '.join(summary['imported'])} into {_WORKDIR.value}/checkpoints (step 0).")
  else:
    _require((("workdir", _WORKDIR.value), ("out", _OUT.value)))
    keys = torch_checkpoints.to_torch(
      _WORKDIR.value,
      _OUT.value,
      step=_STEP.value,
      network=_NETWORK.value,
      head=_HEAD.value,
      layout=_LAYOUT.value,
      file_format=_FORMAT.value,
    )
    print(f"Wrote {len(keys)} tensors of the {_NETWORK.value} to {_OUT.value}.")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
