"""The published evaluation protocols by name: each is an evaluator of evaluators.py with the options the official
code runs (docs/objectives.md, "Evaluation protocols", gives every value with its file and line).

All evaluate the teacher's backbone on the evaluation view `Resize(256, bicubic) + CenterCrop(224)`
(`data.sources.evaluation_image`: Resize(config.data.image_size) + CenterCrop(config.aug.global_size)), features in
float32 (`config.eval_settings.feature_dtype`).
"""

import ml_collections

DINOV2_LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)

KNN_K = (10, 20, 100, 200)  # the k of DINO's and DINOv2's kNN evaluations

PROTOCOLS = {
  # dino eval_knn.py: CLS after the final norm, l2-normalized; weights exp(cos / T), T = 0.07; k ∈ {10, 20, 100, 200}.
  "dino_knn": {"knn": dict(k=KNN_K, temperature=0.07)},
  # dinov2/eval/knn.py: the same features and k; softmax(cos / T) weights, the same vote up to a constant factor.
  "dinov2_knn": {"knn": dict(k=KNN_K, temperature=0.07)},
  # dino eval_linear.py: CLS of the last 4 blocks (ViT-S; --n_last_blocks 1 --avgpool_patchtokens for ViT-B),
  # RandomResizedCrop(224) (bilinear) + flip, 100 epochs, lr 1e-3 · B/256 with B = 8 × 128, cosine per epoch,
  # SGD momentum 0.9, no weight decay; the best validation accuracy over the epochs.
  "dino_linear": {
    "linear_probe": dict(
      augment=True,
      interpolation="bilinear",
      epochs=100,
      steps_per_epoch=0,
      batch_size=1024,
      learning_rates=(1e-3,),
      blocks=(4,),
      avgpools=(False,),
      per_epoch_schedule=True,
      report="best",
    )
  },
  # dinov2/eval/linear.py: 10 epochs of 1,250 iterations, batch 8 × 128, RandomResizedCrop(224, bicubic) + flip,
  # a grid of 13 lrs × n ∈ {1, 4} × avgpool ∈ {off, on} trained together, cosine per iteration; the best head on
  # the validation set after the last iteration.
  "dinov2_linear": {
    "linear_probe": dict(
      augment=True,
      interpolation="bicubic",
      epochs=10,
      steps_per_epoch=1250,
      batch_size=1024,
      learning_rates=DINOV2_LEARNING_RATES,
      blocks=(1, 4),
      avgpools=(False, True),
      per_epoch_schedule=False,
      report="final",
    )
  },
  # SimDINOv2's simdinov2/eval/linear.py: DINOv2's probe with the lrs from 2e-4 to 5e-2, n ∈ {1, 2}, avgpool on.
  "simdinov2_linear": {
    "linear_probe": dict(
      augment=True,
      interpolation="bicubic",
      epochs=10,
      steps_per_epoch=1250,
      batch_size=1024,
      learning_rates=DINOV2_LEARNING_RATES[4:12],
      blocks=(1, 2),
      avgpools=(True,),
      per_epoch_schedule=False,
      report="final",
    )
  },
}


def protocol_options(name: str) -> ml_collections.ConfigDict:
  """The `config.evals` entries of protocol `name`."""
  if name not in PROTOCOLS:
    raise ValueError(f"Unknown evaluation protocol {name!r}; valid: {', '.join(PROTOCOLS)}.")
  return ml_collections.ConfigDict({evaluator: dict(options) for evaluator, options in PROTOCOLS[name].items()})
