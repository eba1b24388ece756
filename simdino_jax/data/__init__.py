"""Data: host-side sources and iterators, on-device multi-crop augmentation and iBOT masks.

`sources` and `host_crops` import only numpy (and, lazily, PIL, OpenCV, libjpeg-turbo's simplejpeg, grain and
TFDS): they run in grain's worker processes, which never import JAX. `augment` and `masking` run on the accelerator
(jax); `default_config` needs ml_collections. Preparing datasets is a program: `simdino_jax/tools/prepare.py`.
The names below are imported from their modules when first used, so importing one submodule imports nothing else.
"""

import importlib

__all__ = [
  "block_masks",
  "create_train_iterator",
  "default_config",
  "eval_batches",
  "load_split",
  "multicrop",
  "open_split",
]

_HOMES = {
  "multicrop": "augment",
  "block_masks": "masking",
  "create_train_iterator": "sources",
  "eval_batches": "sources",
  "load_split": "sources",
  "open_split": "sources",
}


def __getattr__(name: str):
  if name in _HOMES:
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
  if name in ("augment", "host_crops", "masking", "sources"):
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_config():
  """The `data`, `aug` and `masking` sections: the small-image recipe (digits/CIFAR, 32-pixel crops).

  For ImageNet set data.image_size = 256 (or 224), aug.global_size = 224, aug.local_size = 96.
  """
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ml_collections import config_dict  # pylint: disable=import-outside-toplevel

  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict(
    dict(
      name="digits",  # "digits" | "npz" | "cifar10" | any TFDS dataset prepared in data_dir
      # Path fields are typed placeholders: None by default, a string from the command line (local or gs://).
      data_dir=config_dict.placeholder(str),  # TFDS data_dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets)
      path=config_dict.placeholder(str),  # npz: "image" uint8 [N,H,W,C] and "label"; "{split}" is replaced
      image_size=32,  # S: images cropped on the device (and evaluation images) are resized (shorter side)
      # and center-cropped to S x S first
      train_split="train",
      eval_split="test",
      read_threads=8,  # TFDS: grain read/decode threads
      on_device=False,  # Hold the whole training split on every accelerator; the host sends only indices.
      crops_on_host="auto",  # Cut the crops on the host from the original images: "auto" (when the dataset's
      # images have varied sizes: imagenet2012, image folders), "true" or "false".
      workers=0,  # Host crops: grain worker processes decoding images (0: threads in this process;
      # -1: one per CPU this process may use).
    )
  )
  config.aug = ml_collections.ConfigDict(
    dict(
      global_size=32,
      local_size=16,
      n_local=10,
      global_scale=(0.4, 1.0),
      local_scale=(0.05, 0.4),
      interpolation="bicubic",  # jax.image method for the resized crop (antialiased)
      flip_p=0.5,
      color_jitter_p=0.8,
      brightness=0.4,
      contrast=0.4,
      saturation=0.2,
      hue=0.1,
      grayscale_p=0.2,
      blur_p=(1.0, 0.1, 0.5),  # global 1, global 2, locals (the intended values, not DINOv2's inverted ones)
      blur_sigma=(0.1, 2.0),
      solarize_p=0.2,  # global 2 only
      solarize_threshold=128,
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
    )
  )
  config.masking = ml_collections.ConfigDict(
    dict(
      enabled=True,
      probability=0.5,  # fraction of the 2B global crops that are masked
      ratio_min=0.1,
      ratio_max=0.5,
      min_block=4,  # minimum block area in patches
      aspect_ratio=0.3,  # block aspect ratio log-uniform in [0.3, 1/0.3]
      group_size=0,  # images per draw of stratified ratios and per masked-token buffer (DINOv2: the batch
      # per GPU); 0 = each data-parallel shard's (micro-)batch (objectives/ibot.py, MaskPlan)
    )
  )
  return config
