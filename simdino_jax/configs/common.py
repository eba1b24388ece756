"""Defaults shared by every recipe (run length, logging, checkpoints, evaluation) and the data presets.

The recipe files set the method's numbers themselves (docs/recipes.md lists each with its official source). The
`:key=value,...` argument after a config path picks the backbone, the data, a run-size preset and the batch, e.g.
`--config=configs/simdino.py:model=ViT-S/16,data=cifar10` or `configs.load("dino", "data=digits,preset=evidence")`
(`arguments`); any field is also overridable with `--config.a.b=value`.
"""

import ml_collections

from simdino_jax import data as data_lib
from simdino_jax import models
from simdino_jax import objectives

DATASETS = ("imagenet2012", "cifar10", "digits")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`"a=1,b=x"` -> ConfigDict, typed by the defaults; unknown keys fail with the valid ones listed."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r}; valid: {', '.join(sorted(defaults))}.")
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = type(default)(value) if default is not None else value
  return out


def base() -> ml_collections.ConfigDict:
  """Fields every run has. Durations are in epochs: passes over the training split, or `epoch_length_steps`."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 64  # Global batch over all devices and hosts (one optimizer step).
  c.grad_accum_steps = 1  # > 1: the batch runs as this many micro-batches, one optimizer step.
  c.total_epochs = 100.0
  c.total_examples = 0  # > 0 overrides total_epochs (images seen, all crops of one image count once).
  c.total_steps = 0  # > 0 overrides total_examples and total_epochs.
  c.epoch_length_steps = 0  # > 0: an "epoch" of the schedules is this many steps (DINOv2: 1250), not a pass.
  c.fsdp = False  # Shard large parameters and optimizer state over the data axis.
  c.fsdp_min_size = 2**18  # FSDP shards tensors of at least this many elements; smaller ones stay replicated.
  c.model = models.default_config()
  c.objective = objectives.default_config()
  data_sections = data_lib.default_config()
  c.data = data_sections.data
  c.aug = data_sections.aug
  c.masking = data_sections.masking
  c.optim = ml_collections.ConfigDict(
    dict(
      base_lr=5e-4,
      lr_scaling="linear",
      min_lr=1e-6,
      warmup_epochs=10.0,
      warmup_from_min_lr=False,
      weight_decay=0.04,
      weight_decay_end=0.4,
      clip_grad=3.0,
      clip_mode="per_tensor",
      layer_decay=1.0,
      patch_embed_lr_mult=1.0,  # DINOv2-style lr multipliers; 1.0 = off.
      freeze_last_layer_epochs=1.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      # How the last layer is frozen: DINO's cancelled gradients (drop_gradient: Adam's moments wait) or DINOv2's
      # lr of 0 (zero_lr: the moments move); docs/recipes.md, "Optimizer rules".
      freeze_rule="drop_gradient",
    )
  )
  c.teacher = ml_collections.ConfigDict(
    dict(
      momentum=0.996,
      momentum_end=1.0,
      warmup_temp=0.04,
      temp=0.07,
      warmup_temp_epochs=30,
      warmup_temp_per_iteration=False,
    )
  )  # False: DINO's per-epoch steps; True: DINOv2's per-iteration ramp.
  c.eval_settings = ml_collections.ConfigDict(
    dict(
      knn_k=(20,),
      knn_temperature=0.07,
      max_train_examples=0,
      max_test_examples=0,
      batch_size=256,
      prototype_threshold=0.025,
      feature_dtype="float32",
    )
  )  # float32 features, as DINO evaluates; or "bfloat16".
  c.log_every_steps = 50
  c.eval_every_epochs = 10.0  # 0 disables the in-training kNN.
  # Evaluators (simdino_jax/evaluation/evaluators.py): name -> options; every_epochs -1: eval_every_epochs, 0: off.
  c.evals = ml_collections.ConfigDict(dict(knn=dict(every_epochs=-1.0), diagnostics=dict(every_epochs=-1.0)))
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.tensorboard = True
  c.max_consecutive_skips = 10
  # Collapse warning: a signature (DINO loss within dino_rel_tol of log K, or teacher feature std below
  # min_feature_std) held over `patience` consecutive log steps is reported in the log.
  c.collapse = ml_collections.ConfigDict(dict(patience=10, dino_rel_tol=0.02, min_feature_std=1e-3))
  c.allow_config_mismatch = False
  c.init_from = ""  # A workdir (e.g. a converted official checkpoint) whose networks start the run.
  # JAX's persistent compilation cache, so a restarted or resumed job skips the compile: "auto" = WORKDIR/xla_cache
  # for a local workdir, ~/.cache/simdino_jax/xla_cache on each host for a gs:// one; a path; "" = off. The
  # JAX_COMPILATION_CACHE_DIR environment variable, when set, wins.
  c.compilation_cache = "auto"
  return c


def apply_model(c: ml_collections.ConfigDict, model: str) -> None:
  """`ViT-S/16`-style names fix the patch size; `vit_small` keeps config.model.patch_size. The local crops take
  the nearest multiple of the patch size (a /14 model: 98 pixels for 96, as DINOv2's vitl14.yaml and vitg14.yaml
  set `local_crops_size: 98`)."""
  c.model.name = model
  if "/" in model:
    c.model.patch_size = int(model.split("/")[1])
  if model.startswith(("ViT-g/", "vit_giant2")):
    c.model.ffn = "swiglu"  # DINOv2 builds vit_giant2 with its fused SwiGLU (hubconf.py, vitg14.yaml)
  patch = c.model.patch_size
  if c.aug.local_size % patch:
    c.aug.local_size = max(1, round(c.aug.local_size / patch)) * patch


def apply_registers(c: ml_collections.ConfigDict, registers: int) -> None:
  """DINOv2's backbones with `registers` register tokens (4) or none (0), with the position-embedding
  interpolation each release uses (hubconf.py: `_reg4` models offset 0 with antialiasing, the others offset 0.1
  without); -1 keeps the recipe's."""
  if registers < 0:
    return
  c.model.num_registers = registers
  c.model.interpolate_offset = 0.0 if registers else 0.1
  c.model.interpolate_antialias = bool(registers)


def apply_data(c: ml_collections.ConfigDict, dataset: str) -> None:
  """ImageNet at 224/96 keeps the recipe's batch; 32-pixel data (CIFAR-10, the embedded digits) at 32/16 with
  patch 4, 4,096 prototypes and a batch of 256 for one accelerator."""
  if dataset not in DATASETS:
    raise ValueError(f"Unknown dataset preset {dataset!r}; valid: {', '.join(DATASETS)}.")
  c.data.name = dataset
  if dataset == "imagenet2012":
    c.data.image_size = 256
    c.aug.global_size = 224
    c.aug.local_size = 96
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.workers = -1  # Crops are cut on the host (images of varied sizes): one decoding process per core.
    c.eval_settings.max_train_examples = 0
  else:
    c.data.image_size = 32
    c.aug.global_size = 32
    c.aug.local_size = 16
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.model.patch_size = 4
    c.model.image_size = 32
    c.model.head.out_dim = 4096  # Prototypes for 10-class, 50k-image data; ImageNet keeps 65536.
    c.batch_size = 256
    c.epoch_length_steps = 0  # Epochs are passes over the small split.
    c.eval_every_epochs = 5.0


PRESETS = ("", "quick", "evidence", "full", "dry_run")


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> None:
  """The run-size presets of `python -m simdino_jax.tools.reproduce` and `gpu_check` (each keeps the method's objective,
  temperatures, centering and loss weights):
  quick: the smallest digits run, a pipeline check; evidence: the small-image recipe of docs/small_image_recipe.md
  (16-pixel crops, 4 locals, 128/32/4096 head, base lr 2e-3, teacher momentum 0.95); full: the 32-pixel
  comparison (10-epoch lr warm-up, 30-epoch teacher temperature warm-up); dry_run: a 1-block ViT on 16-pixel crops
  at batch 16 (gpu_check --dry_run). quick, evidence and full hold the split on the device."""
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; valid: {', '.join(map(repr, PRESETS))} ('': none).")
  if preset in ("quick", "evidence", "full"):
    c.data.on_device = True  # 32-pixel data sets fit on the accelerator: no host pipeline in the step's way.
  if preset in ("quick", "evidence", "dry_run"):
    c.data.image_size = 16
    c.aug.global_size = 16
    c.aug.local_size = 8
    c.model.image_size = 16
  if preset in ("quick", "evidence"):
    c.checkpoint_every_steps = 0
    c.log_every_steps = 10
    c.tensorboard = False
  if preset == "quick":
    c.aug.n_local = 2
    c.model.head.hidden_dim = 128
    c.model.head.bottleneck_dim = 32
    c.model.head.out_dim = 256
    c.optim.warmup_epochs = 1.0
    c.teacher.warmup_temp_epochs = 2
  elif preset == "evidence":
    c.aug.global_scale = (0.5, 1.0)
    c.aug.local_scale = (0.25, 0.6)
    c.aug.flip_p = 0.0  # A mirrored digit is another glyph.
    c.aug.n_local = 4
    c.model.head.hidden_dim = 128
    c.model.head.bottleneck_dim = 32
    c.model.head.out_dim = 4096
    c.optim.base_lr = 2e-3
    c.optim.warmup_epochs = 2.0
    c.teacher.momentum = 0.95  # 0.99 and above: DINO stays at its untrained kNN.
    c.teacher.warmup_temp_epochs = 2
  elif preset == "full":
    c.optim.warmup_epochs = 10.0
    c.teacher.warmup_temp_epochs = 30
    c.checkpoint_every_steps = 2000
  elif preset == "dry_run":
    c.model.name = "vit_nano"
    c.model.patch_size = 4
    c.model.dtype = "float32"
    c.model.head.hidden_dim = 32
    c.model.head.bottleneck_dim = 16
    c.model.head.out_dim = 64
    c.aug.n_local = 2
    c.batch_size = 16


def apply_batch(c: ml_collections.ConfigDict, batch: int) -> None:
  """Global batch `batch`; group sizes that do not divide it become one group (covariance: 0, KoLeo: the batch)."""
  c.batch_size = batch
  if c.objective.covariance_group_size and batch % c.objective.covariance_group_size:
    c.objective.covariance_group_size = 0
  if c.objective.koleo_group_size and batch % c.objective.koleo_group_size:
    c.objective.koleo_group_size = batch


def arguments(arg: str | None, **extra) -> ml_collections.ConfigDict:
  """The command-line argument `key=value,...` of a recipe: `data=` (DATASETS, default imagenet2012), `model=`
  (default: the recipe's published backbone on ImageNet, ViT-T/4 on 32-pixel data), `preset=` (PRESETS, default
  none: the recipe as published), `batch=` (0: the recipe's or the data preset's) and the recipe's own `extra` keys
  with their defaults."""
  return parse_arg(arg, model="", data="imagenet2012", preset="", batch=0, **extra)


def finish(c: ml_collections.ConfigDict, args: ml_collections.ConfigDict, *, model: str) -> ml_collections.ConfigDict:
  """Applies the parsed `arguments` to the recipe `c`: data, then model, preset and batch."""
  apply_data(c, args.data)
  apply_model(c, args.model or (model if args.data == "imagenet2012" else "ViT-T/4"))
  apply_preset(c, args.preset)
  apply_batch(c, args.batch or c.batch_size)
  return c
