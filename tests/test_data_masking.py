"""iBOT block masks: shapes, which images are masked, stratified ratios, the 0.5·N cap, block shapes."""

import functools
import types

import jax
import numpy as np
import pytest

from simdino_jax import data
from simdino_jax.data import masking

BATCH = 64
GRID = (8, 8)
N = 64


@pytest.fixture(scope="module")
def config():
  return data.default_config().masking


@pytest.fixture(scope="module")
def masks(config):
  fn = jax.jit(functools.partial(masking.block_masks, batch_size=BATCH, grid=GRID, config=config))
  return np.stack([np.asarray(fn(jax.random.key(seed))) for seed in range(4)])  # [4, 2, B, N]


def test_shape_and_exactly_half_of_the_images_masked(masks):
  assert masks.shape == (4, 2, BATCH, N) and masks.dtype == bool
  per_call = masks.reshape(4, 2 * BATCH, N).any(axis=-1).sum(axis=-1)
  np.testing.assert_array_equal(per_call, BATCH)
  # A random half: both views, and many positions, get masks across calls.
  masked = masks.any(axis=-1)
  assert masked[:, 0].sum() > 0.3 * 4 * BATCH and masked[:, 1].sum() > 0.3 * 4 * BATCH
  assert masked.reshape(4, -1).std(axis=0).mean() > 0.3


def test_ratios_are_within_range_and_stratified(masks):
  counts = masks.reshape(4, 2 * BATCH, N).sum(axis=-1)
  for call in counts:
    ratios = np.sort(call[call > 0]) / N
    assert ratios.min() >= 4 / N and ratios.max() <= 0.5
    # Targets are floor(N · U(bin)) with bins linspace(0.1, 0.5, 65): the k-th smallest never exceeds the top
    # of bin k, and the fill reaches the target or close to it.
    bins = np.linspace(0.1, 0.5, BATCH + 1)
    assert (ratios <= np.floor(N * bins[1:] + 1e-6) / N).all()
    assert (ratios >= np.floor(N * bins[:-1] + 1e-6) / N - 4 / N).mean() > 0.9
    # Stratified, not i.i.d.: each quarter of [0.1, 0.5] holds about a quarter of the masked images.
    quarters = np.histogram(ratios, bins=np.linspace(0.1, 0.5 + 1e-9, 5))[0]
    assert np.abs(quarters - BATCH / 4).max() <= 5


def test_masks_are_blocks_not_scattered_patches(config):
  low = types.SimpleNamespace(**{**config.to_dict(), "ratio_min": 0.1, "ratio_max": 0.2})
  masks = np.asarray(masking.block_masks(jax.random.key(3), 32, (16, 16), low)).reshape(-1, 16, 16)
  masks = masks[masks.any(axis=(1, 2))]
  assert len(masks) == 32
  padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
  neighbour = padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]
  # Scattered patches at density <= 0.2 would have a masked neighbour about half the time; blocks almost always.
  assert (neighbour & masks).sum() / masks.sum() > 0.9
  # Blocks of either orientation (log-uniform aspect ratio): some masks are taller than wide and some wider.
  heights = masks.any(axis=2).sum(axis=1)
  widths = masks.any(axis=1).sum(axis=1)
  assert (heights > widths).any() and (widths > heights).any()


def test_disabled_gives_no_masks(config):
  off = types.SimpleNamespace(**{**config.to_dict(), "enabled": False})
  assert not masking.block_masks(jax.random.key(0), 4, (4, 4), off).any()
