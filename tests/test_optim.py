"""Optimizer semantics of the recipes (docs/objectives.md#training-recipe), each checked directly against the
PyTorch behaviour it reproduces."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from simdino_jax import optim


def _config(**optim_overrides):
  c = ml_collections.ConfigDict()
  c.total_epochs, c.total_steps, c.total_examples, c.epoch_length_steps = 10.0, 0, 0, 0
  c.optim = ml_collections.ConfigDict(
    dict(
      base_lr=5e-4,
      lr_scaling="linear",
      min_lr=1e-6,
      warmup_epochs=2.0,
      warmup_from_min_lr=False,
      weight_decay=0.04,
      weight_decay_end=0.4,
      clip_grad=3.0,
      clip_mode="per_tensor",
      freeze_last_layer_epochs=1.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      freeze_rule="drop_gradient",
    )
  )
  c.optim.update(optim_overrides)
  c.model = ml_collections.ConfigDict(dict(head=dict(norm_last_layer=False)))
  c.teacher = ml_collections.ConfigDict(
    dict(momentum=0.996, momentum_end=1.0, warmup_temp=0.04, temp=0.07, warmup_temp_epochs=4)
  )
  return c


def _params():
  rng = np.random.default_rng(0)
  return {
    "backbone": {
      "dense": {
        "kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
      },
      "norm": {"scale": jnp.ones((3,), jnp.float32)},
      "pos_embed": jnp.asarray(rng.normal(size=(1, 5, 3)), jnp.float32),
    },
    "head": {"last_layer": {"v": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), "g": jnp.ones((6,), jnp.float32)}},
  }


def test_dino_cosine_scheduler_matches_reference():
  """DINO's utils.cosine_scheduler: linspace warm-up, then a cosine over the remaining iterations."""
  base, final, total, warmup = 1e-3, 1e-6, 50, 10
  warm = np.linspace(0.0, base, warmup)
  iters = np.arange(total - warmup)
  reference = np.concatenate([warm, final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))])
  ours = np.array(
    [
      float(optim.cosine_schedule(s, base=base, final=final, total_steps=total, warmup_steps=warmup))
      for s in range(total)
    ]
  )
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-9)


def test_schedules_resolve_epochs_and_follow_the_recipe():
  steps_per_epoch = 7
  s = optim.make_schedules(_config(), steps_per_epoch=steps_per_epoch, batch_size=512)
  assert s.total_steps == 70 and s.warmup_steps == 14 and s.freeze_last_layer_steps == 7
  assert s.peak_lr == pytest.approx(5e-4 * 512 / 256)
  assert float(s(13).lr) == pytest.approx(s.peak_lr, rel=1e-6)
  assert float(s(0).wd) == pytest.approx(0.04) and float(s(70).wd) == pytest.approx(0.4, rel=1e-6)
  # Momentum: m_t = 1 − (1 − 0.996)(1 + cos(π t/T))/2.
  for t in (0, 20, 69):
    expected = 1 - (1 - 0.996) * (1 + math.cos(math.pi * t / 70)) / 2
    assert float(s(t).momentum) == pytest.approx(expected, abs=1e-7)
  # Teacher temperature is indexed by epoch: linspace(0.04, 0.07, 4)[epoch], then 0.07.
  temps = np.linspace(0.04, 0.07, 4)
  for epoch in range(6):
    for t in (epoch * steps_per_epoch, epoch * steps_per_epoch + steps_per_epoch - 1):
      assert float(s(t).teacher_temp) == pytest.approx(temps[epoch] if epoch < 4 else 0.07, abs=1e-7)
  assert not bool(s(6).train_last_layer) and bool(s(7).train_last_layer)


def test_teacher_temperature_warms_up_per_iteration_for_dinov2():
  """DINOv2's CosineScheduler (dinov2/train/train.py, `build_schedulers`): linspace(0.04, 0.07, W·L)[step], then
  0.07, against the float64 ramp; DINO's per-epoch steps stay where they were."""
  steps_per_epoch, warmup_epochs = 7, 4
  ramp = np.linspace(0.04, 0.07, warmup_epochs * steps_per_epoch)
  for per_iteration, expected in ((True, ramp), (False, np.repeat(np.linspace(0.04, 0.07, 4), steps_per_epoch))):
    temps = [
      float(
        optim.teacher_temp_schedule(
          t,
          steps_per_epoch=steps_per_epoch,
          warmup_temp=0.04,
          temp=0.07,
          warmup_epochs=warmup_epochs,
          per_iteration=per_iteration,
        )
      )
      for t in range(warmup_epochs * steps_per_epoch + 3)
    ]
    np.testing.assert_allclose(temps, np.concatenate([expected, [0.07] * 3]), atol=1e-7)
  config = _config()
  config.teacher.warmup_temp_per_iteration = True
  s = optim.make_schedules(config, steps_per_epoch=steps_per_epoch, batch_size=256)
  assert (
    s.teacher_temp_per_iteration
    and not optim.make_schedules(_config(), steps_per_epoch=steps_per_epoch, batch_size=256).teacher_temp_per_iteration
  )


def test_lr_scaling_rules():
  assert optim.peak_learning_rate(5e-4, 1024, "linear") == pytest.approx(2e-3)
  assert optim.peak_learning_rate(4e-3, 256, "sqrt") == pytest.approx(2e-3)
  with pytest.raises(ValueError, match="linear, sqrt, none"):
    optim.peak_learning_rate(1.0, 1, "cubic")


def test_weight_decay_mask_excludes_biases_and_1d_parameters():
  mask = optim.weight_decay_mask(_params())
  assert mask["backbone"]["dense"]["kernel"] and mask["backbone"]["pos_embed"] and mask["head"]["last_layer"]["v"]
  assert not mask["backbone"]["dense"]["bias"] and not mask["backbone"]["norm"]["scale"]
  assert mask["head"]["last_layer"]["g"]  # the official weight_g is [K, 1]: decayed by DINO's and DINOv2's rules
  assert not optim.weight_decay_mask(_params(), trained_gain=False)["head"]["last_layer"]["g"]  # fixed: untouched
  frozen = optim.frozen_mask(_params())
  assert frozen["head"]["last_layer"]["v"] and frozen["head"]["last_layer"]["g"]
  assert not frozen["backbone"]["dense"]["kernel"]


def test_per_tensor_clipping_differs_from_global():
  grads = {"a": jnp.array([30.0, 40.0]), "b": jnp.array([0.3, 0.4])}
  clipped, _ = optim.clip_per_tensor(3.0).update(grads, optax.EmptyState())
  np.testing.assert_allclose(clipped["a"], np.array([30.0, 40.0]) * 3.0 / (50.0 + 1e-6), rtol=1e-6)
  np.testing.assert_allclose(clipped["b"], grads["b"], rtol=1e-6)  # Norm 0.5 < 3: untouched.


def _torch_adamw_reference(p, grads, lrs, wds, b1=0.9, b2=0.999, eps=1e-8, decay=True):
  """PyTorch AdamW in float64: p ← p − lr·wd·p, then the Adam step with bias correction."""
  p, m, v = p.astype(np.float64), np.zeros_like(p, np.float64), np.zeros_like(p, np.float64)
  for t, (g, lr, wd) in enumerate(zip(grads, lrs, wds), start=1):
    if decay:
      p = p * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  return p


def test_adamw_matches_pytorch_semantics_and_frozen_layer_skips_updates():
  params = _params()
  tx = optim.make_optimizer(_config(clip_mode="none"), params)
  state = tx.init(params)
  rng = np.random.default_rng(1)
  lrs, wds = [1e-2, 2e-2, 3e-2, 3e-2], [0.1, 0.2, 0.3, 0.3]
  grads_seq = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in lrs]
  frozen_steps = 2
  p = params
  for i, (g, lr, wd) in enumerate(zip(grads_seq, lrs, wds)):
    updates, state = tx.update(g, state, p, lr=lr, wd=wd, train_last_layer=i >= frozen_steps)
    p = optax.apply_updates(p, updates)
    if i == frozen_steps - 1:
      groups = state[1][0].inner_states  # scheduled_adamw: one Adam state per group, each with its own count.
      frozen, trained = groups[optim.FROZEN_AT_START].inner_state.inner_state[0], groups[optim.TRAINED].inner_state[0]
      # During the freeze the prototype layer's moments and step counter never move, nor does the layer.
      np.testing.assert_array_equal(frozen.mu["head"]["last_layer"]["v"], 0.0)
      np.testing.assert_array_equal(frozen.nu["head"]["last_layer"]["v"], 0.0)
      assert int(frozen.count) == 0
      assert int(trained.count) == frozen_steps
      np.testing.assert_array_equal(p["head"]["last_layer"]["v"], params["head"]["last_layer"]["v"])
  # A trained kernel follows PyTorch's AdamW over all steps.
  ref = _torch_adamw_reference(
    np.asarray(params["backbone"]["dense"]["kernel"]),
    [np.asarray(g["backbone"]["dense"]["kernel"], np.float64) for g in grads_seq],
    lrs,
    wds,
  )
  np.testing.assert_allclose(p["backbone"]["dense"]["kernel"], ref, rtol=2e-5, atol=1e-6)
  # A bias gets no weight decay.
  ref_bias = _torch_adamw_reference(
    np.asarray(params["backbone"]["dense"]["bias"]),
    [np.asarray(g["backbone"]["dense"]["bias"], np.float64) for g in grads_seq],
    lrs,
    wds,
    decay=False,
  )
  np.testing.assert_allclose(p["backbone"]["dense"]["bias"], ref_bias, rtol=2e-5, atol=1e-6)
  # The frozen layer starts its own count after the freeze: it equals AdamW run on the last two steps only.
  ref_v = _torch_adamw_reference(
    np.asarray(params["head"]["last_layer"]["v"]),
    [np.asarray(g["head"]["last_layer"]["v"], np.float64) for g in grads_seq[2:]],
    lrs[2:],
    wds[2:],
  )
  np.testing.assert_allclose(p["head"]["last_layer"]["v"], ref_v, rtol=2e-5, atol=1e-6)


def test_unknown_clip_mode_lists_valid_ones():
  with pytest.raises(ValueError, match="per_tensor, per_module, global, none"):
    optim.make_optimizer(_config(clip_mode="bogus"), _params())


def test_run_length_in_steps_examples_or_epochs():
  resolve = lambda **fields: optim.resolve_total_steps(
    ml_collections.ConfigDict(dict(dict(total_epochs=2.5, total_examples=0, total_steps=0), **fields)),
    steps_per_epoch=40,
    batch_size=64,
  )
  assert resolve() == 100  # 2.5 epochs of 40 steps
  assert resolve(total_examples=6400) == 100  # 6400 images / 64 per step
  assert resolve(total_examples=6401) == 101  # a partial last batch is one more step
  assert resolve(total_examples=6400, total_steps=7) == 7  # steps win over examples and epochs


def _vit_params():
  """A 2-block ViT-shaped tree: embeddings, blocks, final norm, registers and a head."""
  rng = np.random.default_rng(2)
  leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  block = lambda: {"attn": {"qkv": {"kernel": leaf(4, 12), "bias": leaf(12)}}, "norm1": {"scale": leaf(4)}}
  return {
    "backbone": {
      "patch_embed": {"kernel": leaf(12, 4), "bias": leaf(4)},
      "pos_embed": leaf(1, 5, 4),
      "cls_token": leaf(1, 1, 4),
      "mask_token": leaf(1, 1, 4),
      "register_tokens": leaf(1, 2, 4),
      "blocks": {"0": block(), "1": block()},
      "norm": {"scale": leaf(4)},
    },
    "head": {"mlp": {"layers": {"0": {"kernel": leaf(4, 3)}}}, "last_layer": {"v": leaf(5, 3)}},
  }


def test_layer_decay_and_patch_embed_multipliers_follow_dinov2():
  """s = 0.9^(L+1−layer) with L = 2: embeddings and register tokens layer 0 (dinov2/utils/param_groups.py at
  2007c5b, lines 24-39), block i layer i+1, the rest L+1; patch embedding ×0.2."""
  scales = optim.lr_multipliers(_vit_params(), layer_decay=0.9, patch_embed_lr_mult=0.2)
  by_hand = {
    "backbone/patch_embed/kernel": 0.9**3 * 0.2,
    "backbone/patch_embed/bias": 0.9**3 * 0.2,
    "backbone/pos_embed": 0.9**3,
    "backbone/cls_token": 0.9**3,
    "backbone/mask_token": 0.9**3,
    "backbone/blocks/0/attn/qkv/kernel": 0.9**2,
    "backbone/blocks/0/norm1/scale": 0.9**2,
    "backbone/blocks/1/attn/qkv/bias": 0.9,
    "backbone/norm/scale": 1.0,
    "backbone/register_tokens": 0.9**3,
    "head/mlp/layers/0/kernel": 1.0,
    "head/last_layer/v": 1.0,
  }
  names = jax.tree.leaves(optim.path_strings(_vit_params()))
  flat = dict(zip(names, jax.tree.leaves(scales)))
  for name, expected in by_hand.items():
    assert flat[name] == pytest.approx(expected), name
  assert set(jax.tree.leaves(optim.lr_multipliers(_vit_params()))) == {1.0}  # The defaults change nothing.


def test_lr_multipliers_scale_each_parameters_adamw_step():
  params = _vit_params()
  config = _config(clip_mode="none", layer_decay=0.9, patch_embed_lr_mult=0.2)
  tx = optim.make_optimizer(config, params)
  rng = np.random.default_rng(3)
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(2)]
  state, p = tx.init(params), params
  for g in grads:
    updates, state = tx.update(g, state, p, lr=1e-2, wd=0.1, train_last_layer=True)
    p = optax.apply_updates(p, updates)
  for path, scale in (("patch_embed", 0.9**3 * 0.2), ("pos_embed", 0.9**3)):
    get = lambda tree: tree["backbone"][path]["kernel"] if path == "patch_embed" else tree["backbone"][path]
    expected = _torch_adamw_reference(
      np.asarray(get(params)), [np.asarray(get(g), np.float64) for g in grads], [1e-2 * scale] * 2, [0.1, 0.1]
    )
    np.testing.assert_allclose(get(p), expected, rtol=2e-5, atol=1e-6)


def test_per_module_clipping_uses_each_modules_global_norm():
  """DINOv2 clips the backbone and the head separately by their own global norms (c = 3)."""
  grads = {
    "backbone": {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0, 12.0])},  # ‖g‖ = 13 > 3: scaled
    "head": {"c": jnp.array([0.6, 0.8])},
  }  # ‖g‖ = 1 < 3: untouched
  tx = optim.clip_per_module(3.0, optim.module_labels(grads))
  clipped, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(clipped["backbone"]["a"], np.array([3.0, 4.0]) * 3.0 / 13.0, rtol=1e-6)
  np.testing.assert_allclose(clipped["backbone"]["b"], np.array([0.0, 12.0]) * 3.0 / 13.0, rtol=1e-6)
  np.testing.assert_allclose(clipped["head"]["c"], grads["head"]["c"], rtol=1e-6)
  full = optim.make_optimizer(_config(clip_mode="per_module"), _vit_params())
  assert len(full.init(_vit_params())) == 2  # clipping, then AdamW


def test_fixed_epoch_length_overrides_passes_over_the_data():
  config = ml_collections.ConfigDict(dict(epoch_length_steps=0))
  assert optim.epoch_length(config, num_examples=1000, batch_size=64) == 15
  config.epoch_length_steps = 1250  # DINOv2's OFFICIAL_EPOCH_LENGTH
  assert optim.epoch_length(config, num_examples=1000, batch_size=64) == 1250


def _official_groups(named: dict, family: str) -> tuple[set, set]:
  """(decayed names, last-layer names) by the official rules on the official names and shapes: DINO's
  utils.get_params_groups (`.bias` or 1-D: no decay) and DINOv2's utils/param_groups.py (`.bias`, `norm` or
  `gamma` in the name: no decay); `last_layer` in the name marks the frozen layer."""
  if family == "dino":
    decayed = {n for n, p in named.items() if not (n.endswith(".bias") or p.dim() == 1)}
  else:
    decayed = {n for n in named if not (n.endswith(".bias") or "norm" in n or "gamma" in n)}
  return decayed, {n for n in named if "last_layer" in n}


@pytest.mark.parametrize("family,freeze_rule", [("dino", "drop_gradient"), ("dinov2", "zero_lr")])
def test_freeze_and_decay_match_torch_adamw_with_the_official_groups(family, freeze_rule):
  """One frozen step, then two trained ones, against torch.optim.AdamW on the same gradients with the official
  parameter groups and freeze: DINO cancels the last layer's gradient (its moments and count wait), DINOv2 sets its
  lr to 0 (its moments and count move)."""
  import torch  # pylint: disable=import-outside-toplevel

  params = _params()
  params["backbone"]["blocks"] = {"0": {"ls1": {"gamma": jnp.full((3,), 0.5, jnp.float32)}}}
  flat = {
    jax.tree_util.keystr(k, simple=True, separator="."): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  torch_shape = lambda name, x: x.reshape(-1, 1) if name.endswith("last_layer.g") else x  # weight_g [K, 1]
  named = {
    n: torch.nn.Parameter(torch.tensor(np.asarray(torch_shape(n, v)), dtype=torch.float64)) for n, v in flat.items()
  }
  decayed, last_layer = _official_groups(named, family)
  assert ("head.last_layer.g" in decayed) and ("backbone.norm.scale" not in decayed)
  assert "backbone.blocks.0.ls1.gamma" not in decayed and "backbone.dense.bias" not in decayed
  groups = [
    {"params": [named[n] for n in named if (n in decayed) == d and (n in last_layer) == l], "decay": d, "last": l}
    for d in (True, False)
    for l in (True, False)
  ]
  groups = [g for g in groups if g["params"]]
  reference = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

  tx = optim.scheduled_adamw(
    decay_mask=optim.weight_decay_mask(params), frozen=optim.frozen_mask(params), freeze_rule=freeze_rule
  )
  state, p = tx.init(params), params
  rng = np.random.default_rng(3)
  for step, (lr, wd) in enumerate([(1e-2, 0.1), (2e-2, 0.2), (3e-2, 0.3)]):
    train_last_layer = step > 0
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    updates, state = tx.update(grads, state, p, lr=lr, wd=wd, train_last_layer=train_last_layer)
    p = optax.apply_updates(p, updates)

    grad_of = {
      jax.tree_util.keystr(k, simple=True, separator="."): v for k, v in jax.tree_util.tree_flatten_with_path(grads)[0]
    }
    for name, parameter in named.items():
      parameter.grad = torch.tensor(np.asarray(torch_shape(name, grad_of[name])), dtype=torch.float64)
      if family == "dino" and name in last_layer and not train_last_layer:
        parameter.grad = None  # cancel_gradients_last_layer
    for group in groups:
      frozen_now = group["last"] and not train_last_layer
      group["lr"] = 0.0 if frozen_now else lr  # DINOv2's train.py: last_layer_lr 0 during the freeze
      group["weight_decay"] = wd if group["decay"] else 0.0
    reference.step()

    ours = {
      jax.tree_util.keystr(k, simple=True, separator="."): v for k, v in jax.tree_util.tree_flatten_with_path(p)[0]
    }
    for name, parameter in named.items():
      np.testing.assert_allclose(
        np.asarray(ours[name]).reshape(-1),
        parameter.detach().numpy().reshape(-1),
        rtol=2e-5,
        atol=1e-6,
        err_msg=f"{family} step {step} {name}",
      )
    if step == 0:  # the freeze: do the last layer's moments move?
      torch_state = reference.state[named["head.last_layer.v"]]
      if family == "dino":
        assert not torch_state
        adam = state[0].inner_states[optim.FROZEN_AT_START].inner_state.inner_state[0]
        np.testing.assert_array_equal(adam.mu["head"]["last_layer"]["v"], 0.0)
        assert int(adam.count) == 0
      else:
        assert int(torch_state["step"]) == 1
        adam = state[0][0]
        np.testing.assert_allclose(adam.mu["head"]["last_layer"]["v"], torch_state["exp_avg"].numpy(), rtol=1e-5)
        assert int(adam.count) == 1
