"""Tests of the evaluation and collapse-diagnostics modules against independent float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simdino_jax.data import eval_batches
from simdino_jax.data.sources import ArraySplit
from simdino_jax.evaluation import (
  effective_rank,
  feature_diagnostics,
  feature_std,
  knn_classify,
  knn_predict,
  linear_probe_optimizer,
  normalized_coding_rate,
  probe_features,
  prototype_diagnostics,
  split_features,
  train_linear_probe,
)
from simdino_jax.numerics import marginal_entropy, mean_entropy
from simdino_jax.objectives.dino import teacher_probs


def _mesh():
  return jax.sharding.Mesh(np.array(jax.devices()), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _numpy_knn_scores(train, train_labels, test, num_classes, k, temperature=0.07):
  """float64 reference: (class scores [n_test, C], sorted similarities [n_test, n_train])."""
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  test = test / np.linalg.norm(test, axis=1, keepdims=True)
  sims = test.astype(np.float64) @ train.astype(np.float64).T
  order = np.argsort(-sims, axis=1, kind="stable")
  k = min(k, train.shape[0])
  scores = np.zeros((test.shape[0], num_classes))
  for row in range(test.shape[0]):
    np.add.at(scores[row], train_labels[order[row, :k]], np.exp(sims[row, order[row, :k]] / temperature))
  return scores, np.take_along_axis(sims, order, axis=1)


def _random_knn_data(seed, n_train, n_test, dim, num_classes):
  rng = np.random.default_rng(seed)
  return (
    rng.normal(size=(n_train, dim)).astype(np.float32),
    rng.integers(0, num_classes, n_train),
    rng.normal(size=(n_test, dim)).astype(np.float32),
    rng.integers(0, num_classes, n_test),
  )


def test_knn_matches_float64_numpy_for_several_k():
  num_classes, ks = 10, (10, 20, 100, 300)
  train, train_labels, test, test_labels = _random_knn_data(0, 240, 50, 16, num_classes)
  with pytest.warns(UserWarning, match="k=300 exceeds the 240 train samples"):
    predicted = knn_predict(train, train_labels, test, num_classes=num_classes, k=ks, test_chunk=16)
  with pytest.warns(UserWarning, match="k=300"):
    metrics = knn_classify(train, train_labels, test, test_labels, num_classes=num_classes, k=ks, test_chunk=16)
  assert set(predicted) == set(ks)
  for k in ks:
    scores, sorted_sims = _numpy_knn_scores(train, train_labels, test, num_classes, k)
    if k < 240:  # no near-tie at the k-th neighbour, so float32 picks the same neighbours
      assert np.min(sorted_sims[:, k - 1] - sorted_sims[:, k]) > 1e-5
    ranked_scores = -np.sort(-scores, axis=1)
    reference = np.argsort(-scores, axis=1, kind="stable")
    # Compare the ranking as far as the float64 scores are clearly distinct (relative gap > 1e-4, non-zero).
    gaps = (ranked_scores[:, :5] - ranked_scores[:, 1:6]) > 1e-4 * ranked_scores[:, :1]
    assert gaps[:, 0].all()
    for row in range(test.shape[0]):
      depth = 5 if gaps[row].all() else int(np.argmin(gaps[row])) + 1
      np.testing.assert_array_equal(predicted[k][row, :depth], reference[row, :depth])
    assert metrics[f"knn_top1_k{k}"] == pytest.approx(np.mean(reference[:, 0] == test_labels))
    assert metrics[f"knn_top5_k{k}"] == pytest.approx(np.mean(np.any(reference[:, :5] == test_labels[:, None], 1)))
  np.testing.assert_array_equal(
    predicted[300], knn_predict(train, train_labels, test, num_classes=num_classes, k=240, test_chunk=16)[240]
  )


@pytest.mark.parametrize("temperature", [0.07, 1.0])  # at T = 1 stray pad rows would shift the class scores
def test_knn_sharded_equals_unsharded(temperature):
  train, train_labels, test, _ = _random_knn_data(1, 203, 45, 12, 7)  # 203 train rows: 8 shards need padding
  ks = (1, 10, 20, 100, 203)
  unsharded = knn_predict(train, train_labels, test, num_classes=7, k=ks, temperature=temperature, test_chunk=16)
  with jax.set_mesh(_mesh()):
    sharded = knn_predict(train, train_labels, test, num_classes=7, k=ks, temperature=temperature, test_chunk=16)
  for k in ks:
    np.testing.assert_array_equal(sharded[k], unsharded[k])
  assert not np.array_equal(unsharded[1][:, 0], unsharded[203][:, 0])  # the ks really differ


def test_knn_separated_clusters_are_perfect():
  rng = np.random.default_rng(2)
  num_classes, dim = 6, 32
  centers = np.eye(dim)[:num_classes] * 10.0
  train_labels, test_labels = rng.integers(0, num_classes, 300), rng.integers(0, num_classes, 100)
  train = (centers[train_labels] + rng.normal(size=(300, dim))).astype(np.float32)
  test = (centers[test_labels] + rng.normal(size=(100, dim))).astype(np.float32)
  metrics = knn_classify(train, train_labels, test, test_labels, num_classes=num_classes, k=(10, 20))
  assert metrics == {"knn_top1_k10": 1.0, "knn_top5_k10": 1.0, "knn_top1_k20": 1.0, "knn_top5_k20": 1.0}


def test_knn_random_labels_are_at_chance():
  # Test labels are independent of the predictions, so #correct ~ Binomial(2000, 1/10): 0.1 ± 0.0067 (1 sd).
  train, train_labels, test, test_labels = _random_knn_data(3, 400, 2000, 16, 10)
  accuracy = knn_classify(train, train_labels, test, test_labels, num_classes=10, k=20)["knn_top1_k20"]
  assert 0.1 - 5 * 0.0067 < accuracy < 0.1 + 5 * 0.0067


def test_eval_batches_cap_before_reading_and_give_each_process_its_rows():
  images = np.arange(23, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  source = ArraySplit(images, np.arange(23) % 4)
  read = []
  source.read = lambda rows, read_rows=source.read: read.append(rows.copy()) or read_rows(rows)
  per_process = [
    list(eval_batches(source, batch_size=4, process_index=p, process_count=3, max_examples=20)) for p in range(3)
  ]
  # 20 rows over 3 processes: 7 per process (the last process pads), two batches of 4 each, nothing past row 19.
  assert [len(batches) for batches in per_process] == [2, 2, 2]
  assert np.concatenate(read).max() == 19 and sorted(np.concatenate(read)) == list(range(20))
  for p, batches in enumerate(per_process):
    valid = np.concatenate([b["valid"] for b in batches])
    image_rows = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])[valid]
    np.testing.assert_array_equal(image_rows, np.arange(p, 20, 3))
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[valid], np.arange(p, 20, 3) % 4)
    assert not np.concatenate([b["image"] for b in batches])[~valid].any()


_TRACES = []


def _affine_features(params, images):
  _TRACES.append(images.shape)
  return images.reshape(images.shape[0], -1)[:, :2].astype(jnp.float32) * params["w"] + params["b"]


def test_extract_features_drops_the_padding_and_compiles_once():
  images = np.random.default_rng(14).integers(0, 255, size=(21, 2, 2, 3), dtype=np.uint8)
  source = ArraySplit(images, np.arange(21))
  for scale in (1.0, 2.0):
    params = {"w": np.full(2, scale, np.float32), "b": np.full(2, 1.0, np.float32)}  # pad rows would be all ones
    features, labels = split_features(_affine_features, params, source, batch_size=8, mesh=_mesh())
    order = np.argsort(labels)
    np.testing.assert_array_equal(labels[order], np.arange(21))
    np.testing.assert_allclose(features[order], scale * images.reshape(21, -1)[:, :2] + 1.0, rtol=1e-6)
    assert features.dtype == np.float32
  assert _TRACES == [(8 // _mesh().devices.size, 2, 2, 3)]  # traced once, on each device's own rows of the batch


class _SyntheticSplit:
  """A split of n 32 x 32 images made on demand from their row index, never held whole."""

  image_shape = (32, 32, 3)

  def __init__(self, n: int):
    self.n = n

  def __len__(self) -> int:
    return self.n

  def read(self, rows):
    images = np.broadcast_to((rows % 251).astype(np.uint8)[:, None, None, None], (len(rows), 32, 32, 3))
    return images, (rows % 10).astype(np.int32)


def test_streaming_features_of_200k_images_keep_host_memory_at_a_batch():
  import resource
  import tracemalloc

  source = _SyntheticSplit(200_000)  # 614 MB of images if materialized.
  feature_fn = lambda params, images: jnp.mean(images.astype(jnp.float32), axis=(1, 2)) * params
  tracemalloc.start()
  try:
    features, labels = split_features(feature_fn, jnp.float32(2.0), source, batch_size=2048, mesh=_mesh())
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  print(
    f"200,000 images of 32x32x3 (614 MB): traced host peak {peak / 2**20:.1f} MiB (features "
    f"{features.nbytes / 2**20:.1f} MiB), process peak RSS "
    f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB"
  )
  assert features.shape == (200_000, 3) and labels.shape == (200_000,)
  np.testing.assert_allclose(np.sort(features[:, 0]), 2.0 * np.sort(np.arange(200_000) % 251), rtol=1e-6)
  np.testing.assert_array_equal(np.bincount(labels), np.full(10, 20_000))
  # Features (2.3 MB) and their per-batch pieces, a few batches of images (6 MB each): far below the split.
  assert peak < 64 * 2**20, peak


def test_probe_features_layout():
  rng = np.random.default_rng(5)
  out = {"cls": rng.normal(size=(3, 4)), "patch": rng.normal(size=(3, 9, 4)), "last_cls": rng.normal(size=(4, 3, 4))}
  np.testing.assert_allclose(
    probe_features(out, n_last_blocks=4, avgpool=False), np.concatenate(list(out["last_cls"]), axis=1), rtol=1e-6
  )
  np.testing.assert_allclose(
    probe_features(out, n_last_blocks=1, avgpool=True),
    np.concatenate([out["last_cls"][-1], out["patch"].mean(1)], axis=1),
    rtol=1e-6,
  )
  with pytest.raises(ValueError, match="n_last_blocks"):
    probe_features(out, n_last_blocks=5, avgpool=False)


def test_linear_probe_optimizer_is_cosine_sgd_with_momentum():
  total, lr = 10, 0.5
  cosine = lambda t: lr * 0.5 * (1 + np.cos(np.pi * min(t, total) / total))
  for momentum in (0.0, 0.9):
    tx = linear_probe_optimizer(lr, total, momentum)
    params, state, buffer = jnp.zeros(2), None, 0.0
    state = tx.init(params)
    for t in range(total + 2):
      updates, state = tx.update(jnp.ones(2), state, params)
      buffer = momentum * buffer + 1.0  # torch SGD: buf = m·buf + g; step = -lr_t · buf
      np.testing.assert_allclose(updates, -cosine(t) * buffer * np.ones(2), rtol=1e-5, atol=1e-7)
  assert cosine(total // 2) == pytest.approx(lr / 2) and cosine(total) == pytest.approx(0.0)


def _numpy_accuracy(params, features, labels):
  return np.mean(np.argmax(features @ params["kernel"] + params["bias"], axis=1) == labels)


def test_linear_probe_separates_linearly_separable_features():
  rng = np.random.default_rng(6)
  num_classes, dim = 4, 8
  centers = 4.0 * np.eye(dim)[:num_classes]
  labels = rng.integers(0, num_classes, 640)
  features = (centers[labels] + 0.3 * rng.normal(size=(640, dim))).astype(np.float32)
  result = train_linear_probe(
    features[:512],
    labels[:512],
    features[512:],
    labels[512:],
    num_classes=num_classes,
    epochs=4,
    batch_size=64,
    learning_rates=(0.4, 4.0),
  )
  assert result.best_val_acc == 1.0
  np.testing.assert_allclose(result.learning_rates, [0.1, 1.0])
  assert _numpy_accuracy(result.best_params, features[512:], labels[512:]) == 1.0


def test_linear_probe_best_validation_bookkeeping():
  # Random validation labels: the accuracy fluctuates, so the best epoch is not the last one.
  rng = np.random.default_rng(7)
  train, val = rng.normal(size=(256, 6)).astype(np.float32), rng.normal(size=(300, 6)).astype(np.float32)
  train_labels, val_labels = rng.integers(0, 3, 256), rng.integers(0, 3, 300)
  result = train_linear_probe(
    train,
    train_labels,
    val,
    val_labels,
    num_classes=3,
    epochs=6,
    batch_size=32,
    learning_rates=(0.5, 5.0),
    eval_chunk=128,
  )
  history = result.val_acc
  assert history.shape == (6, 2)
  best_epoch, best_head = np.unravel_index(np.argmax(history), history.shape)
  assert best_epoch < 5
  assert (result.best_val_acc, result.best_epoch) == (history.max(), best_epoch)
  assert result.best_lr == pytest.approx(result.learning_rates[best_head])
  assert result.final_val_acc == history[-1].max()
  assert _numpy_accuracy(result.best_params, val, val_labels) == pytest.approx(result.best_val_acc)
  for head in range(2):
    final = {name: value[head] for name, value in result.final_params.items()}
    assert _numpy_accuracy(final, val, val_labels) == pytest.approx(history[-1, head])
  assert result.metrics()["linear_top1_best"] == result.best_val_acc


def _numpy_effective_rank(x):
  s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
  p = s / s.sum()
  p = p[p > 0]
  return np.exp(-np.sum(p * np.log(p)))


def test_effective_rank():
  rng = np.random.default_rng(8)
  whitened = np.linalg.qr(rng.normal(size=(256, 32)))[0]
  assert float(effective_rank(whitened)) == pytest.approx(32.0, rel=1e-4)
  rank_one = rng.normal(size=(256, 1)) * rng.normal(size=(1, 32))
  assert float(effective_rank(rank_one)) == pytest.approx(1.0, abs=1e-2)
  rank_five = whitened[:, :5] @ np.linalg.qr(rng.normal(size=(32, 5)))[0].T
  assert float(effective_rank(rank_five)) == pytest.approx(5.0, rel=1e-3)
  anisotropic = rng.normal(size=(200, 16)) * np.linspace(0.1, 3.0, 16)
  assert float(effective_rank(anisotropic)) == pytest.approx(_numpy_effective_rank(anisotropic), rel=1e-4)


def test_teacher_entropies():
  """numerics' entropies of teacher probabilities (the objectives' "teacher_entropy", "teacher_marginal_entropy")."""
  num_classes = 16
  probs = lambda logits, center: teacher_probs(jnp.asarray(logits, jnp.float32), center, 0.04)
  uniform = probs(np.full((16, num_classes), 3.0), 0.0)
  assert float(marginal_entropy(uniform)) == pytest.approx(np.log(num_classes), rel=1e-5)
  assert float(mean_entropy(uniform)) == pytest.approx(np.log(num_classes), rel=1e-5)
  collapsed = probs(np.tile(10.0 * np.eye(num_classes)[3], (32, 1)), np.zeros(num_classes))
  assert float(marginal_entropy(collapsed)) == pytest.approx(0.0, abs=1e-4)
  spread = probs(10.0 * np.eye(num_classes)[np.arange(64) % num_classes], 0.0)
  assert float(marginal_entropy(spread)) == pytest.approx(np.log(num_classes), rel=1e-4)
  assert float(mean_entropy(spread)) == pytest.approx(0.0, abs=1e-4)


def test_feature_std():
  rng = np.random.default_rng(10)
  isotropic = rng.normal(size=(4096, 64))
  assert float(feature_std(isotropic)) == pytest.approx(1 / 8, rel=0.03)
  collapsed = rng.normal(size=(1, 64)) + 1e-5 * rng.normal(size=(512, 64))
  assert float(feature_std(collapsed)) < 1e-4


@pytest.mark.parametrize("n,dim", [(64, 16), (16, 64)])
def test_coding_rate_of_normalized_features_matches_numpy(n, dim):
  features = np.random.default_rng(11).normal(size=(n, dim))
  z = features / np.linalg.norm(features, axis=1, keepdims=True)
  expected = 0.5 * np.linalg.slogdet(np.eye(dim) + dim / (n * 0.05) * z.T @ z)[1]
  assert float(normalized_coding_rate(features.astype(np.float32), 0.05)) == pytest.approx(expected, rel=1e-4)


def test_feature_diagnostics_collects_the_scalars():
  rng = np.random.default_rng(12)
  features = rng.normal(size=(2, 32, 8))
  values = feature_diagnostics(features)
  expected = {
    "effective_rank": effective_rank(features),
    "coding_rate": normalized_coding_rate(features, 0.05),
    "feature_std": feature_std(features),
  }
  assert values.keys() == expected.keys()
  for name, value in expected.items():
    assert values[name] == pytest.approx(float(value), rel=1e-5), name


def test_prototype_diagnostics_counts_groups():
  rng = np.random.default_rng(13)
  distinct = rng.normal(size=(7, 16))
  prototypes = np.concatenate(
    [distinct, distinct[0] + 1e-4 * rng.normal(size=(3, 16)), 2.0 * distinct[1:2]]
  )  # 3 near-copies of #0, a rescaled copy of #1
  assert prototype_diagnostics(prototypes) == {"unique_prototypes": 7, "largest_group": 4}
