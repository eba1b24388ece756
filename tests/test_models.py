"""Tests for simdino_jax.models: parameter counts, output contract, masking, drop path, heads, attention padding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from simdino_jax import configs
from simdino_jax import models
from simdino_jax import validation
from simdino_jax.models import heads, vit
from simdino_jax.numerics import l2_normalize

DIM, DEPTH, HEADS, PATCH, IMAGE = 32, 2, 2, 4, 16
K, P = 64, 16
B, N_LOCAL, LOCAL = 3, 2, 8
N = (IMAGE // PATCH) ** 2


def tiny_backbone(seed=0, **overrides):
  kwargs = dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, patch_size=PATCH, image_size=IMAGE, dtype=jnp.float32)
  kwargs.update(overrides)
  return vit.VisionTransformer(**kwargs, rngs=nnx.Rngs(seed))


def tiny_head(kind, seed=1, norm_last_layer=True, dtype=jnp.float32):
  rngs = nnx.Rngs(seed)
  if kind == "dino":
    return heads.DINOHead(
      DIM,
      out_dim=K,
      hidden_dim=24,
      bottleneck_dim=P,
      n_layers=3,
      norm_last_layer=norm_last_layer,
      dtype=dtype,
      rngs=rngs,
    )
  return heads.SimDINOHead(DIM, hidden_dim=24, bottleneck_dim=P, n_layers=3, dtype=dtype, rngs=rngs)


def tiny_model(kind="dino", norm_last_layer=True, **backbone_overrides):
  dtype = backbone_overrides.get("dtype", jnp.float32)
  return models.MultiCropModel(
    tiny_backbone(**backbone_overrides), tiny_head(kind, norm_last_layer=norm_last_layer, dtype=dtype)
  )


def make_crops(seed=0, n_local=N_LOCAL):
  key_global, key_local = jax.random.split(jax.random.key(seed))
  crops = [jax.random.normal(key_global, (2, B, IMAGE, IMAGE, 3))]
  if n_local:
    crops.append(jax.random.normal(key_local, (n_local, B, LOCAL, LOCAL, 3)))
  return crops


def make_masks(seed=0):
  return jax.random.bernoulli(jax.random.key(seed + 100), 0.4, (2, B, N))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jitted_call(graphdef, state, args, static_kwargs, array_kwargs):
  return nnx.merge(graphdef, state)(*args, **array_kwargs, **dict(static_kwargs))


def call(module, *args, **kwargs):
  """`module(*args, **kwargs)` compiled as one program, cached by structure (much faster than op-by-op)."""
  graphdef, state = nnx.split(module)
  array_kwargs = {name: value for name, value in kwargs.items() if isinstance(value, jax.Array)}
  static_kwargs = tuple(sorted((name, value) for name, value in kwargs.items() if name not in array_kwargs))
  return _jitted_call(graphdef, state, args, static_kwargs, array_kwargs)


def abstract_model(name, patch_size, head_kind="dino", **fields):
  config = models.default_config()
  config.name = name
  config.patch_size = patch_size
  for field, value in fields.items():
    setattr(config, field, value)
  return nnx.eval_shape(lambda: models.create_model(config, head_kind=head_kind, rngs=nnx.Rngs(0)))


def count_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def param_paths(state):
  return {
    "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path[:-1]): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(state)
  }


# Parameter counts and paths (shapes only, nothing big is allocated).


@pytest.mark.parametrize("name,patch_size,expected", [("ViT-S/16", 16, 21_665_664), ("vit_base", 16, 85_798_656)])
def test_reference_backbone_param_counts(name, patch_size, expected):
  model = abstract_model(name, patch_size)
  params = nnx.state(model.backbone, nnx.Param)
  dim = model.backbone.embed_dim
  assert param_paths(params)["mask_token"].shape == (1, 1, dim)
  assert count_params(params) - dim == expected


def test_reference_dino_head_param_count():
  model = abstract_model("ViT-S/16", 16)
  params = nnx.state(model.head, nnx.Param)
  assert count_params(params) == 22_352_128
  assert param_paths(params)["last_layer/v"].shape == (65536, 256)
  assert param_paths(params)["last_layer/g"].shape == (65536,)


@pytest.mark.parametrize(
  "name,dim,depth,num_heads",
  [("vit_tiny", 192, 12, 3), ("ViT-T/16", 192, 12, 3), ("vit_large", 1024, 24, 16), ("ViT-L/14", 1024, 24, 16)],
)
def test_architecture_sizes(name, dim, depth, num_heads):
  architecture = models.MODELS.get(name)
  assert (architecture.embed_dim, architecture.depth, architecture.num_heads) == (dim, depth, num_heads)


def test_created_backbone_follows_architecture():
  backbone = abstract_model("ViT-T/16", 16).backbone
  assert (backbone.embed_dim, len(backbone.blocks), backbone.blocks[0].attn.num_heads) == (192, 12, 3)
  assert param_paths(nnx.state(backbone, nnx.Param))["blocks/0/mlp/fc1/kernel"].shape == (192, 4 * 192)


def test_patch_size_and_registers_from_config():
  paths = param_paths(nnx.state(abstract_model("vit_small", 14, num_registers=4).backbone, nnx.Param))
  assert paths["pos_embed"].shape == (1, 1 + 16 * 16, 384)
  assert paths["register_tokens"].shape == (1, 4, 384)


def test_parameter_paths():
  model = tiny_model("dino", layerscale=0.1)
  paths = param_paths(nnx.state(model, nnx.Param))
  assert paths["head/last_layer/v"].shape == (K, P)
  assert paths["head/last_layer/g"].shape == (K,)
  assert sorted(p for p in paths if "last_layer" in p) == ["head/last_layer/g", "head/last_layer/v"]
  assert "head/mlp/layers/0/bias" in paths and "backbone/blocks/1/attn/qkv/bias" in paths
  np.testing.assert_allclose(paths["backbone/blocks/0/ls1/gamma"], np.full((DIM,), 0.1))
  np.testing.assert_array_equal(paths["backbone/mask_token"], np.zeros((1, 1, DIM)))
  assert all(np.all(leaf == 0) for path, leaf in paths.items() if path.endswith("/bias"))
  assert all(leaf.dtype == jnp.float32 for leaf in paths.values())


# Configuration and errors.


def test_unknown_model_name_lists_valid_names():
  config = models.default_config()
  config.name = "vit_huge"
  with pytest.raises(ValueError, match="vit_small.*|.*vit_small") as error:
    models.create_model(config, head_kind="dino", rngs=nnx.Rngs(0))
  for valid in ("vit_tiny", "vit_base", "vit_large", "ViT-S/16", "ViT-B/8"):
    assert valid in str(error.value)


@pytest.mark.parametrize(
  "fields,message",
  [
    ({"image_size": 100}, "image_size 100"),
    ({"attention_impl": "cudnn", "dtype": "float32"}, "cudnn"),
  ],
)
def test_invalid_model_arguments_raise(fields, message):
  """The backbone's own argument checks (the config's field checks: validation.validate_model, test_guards.py)."""
  config = models.default_config()
  config.name = "vit_tiny"
  config.update(fields)
  with pytest.raises(ValueError, match=message):
    nnx.eval_shape(lambda: models.create_model(config, head_kind="dino", rngs=nnx.Rngs(0)))


def test_invalid_head_kind_and_crop_size_raise():
  with pytest.raises(ValueError, match="simdino"):
    models.create_model(models.default_config(), head_kind="ibot", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="not divisible"):
    tiny_backbone()(jnp.zeros((1, 10, 12, 3)))


def test_cudnn_attention_pads_to_64():
  attention = tiny_backbone(attention_impl="cudnn", dtype=jnp.bfloat16).blocks[0].attn
  assert (attention.implementation, attention.token_multiple) == ("cudnn", 64)
  assert tiny_backbone().blocks[0].attn.token_multiple == 1


# Output contract.


@pytest.mark.parametrize(
  "kind,with_masks,n_local",
  [("dino", True, N_LOCAL), ("dino", False, 0), ("simdino", True, 0), ("simdino", False, N_LOCAL)],
)
def test_output_shapes_and_dtypes(kind, with_masks, n_local):
  model = tiny_model(kind, dtype=jnp.bfloat16)
  masks = make_masks() if with_masks else None
  out = call(model, make_crops(n_local=n_local), masks)
  views = 2 + n_local
  out_dim = K if kind == "dino" else P
  expected = {"cls": (views, B, DIM), "head": (views, B, out_dim)}
  if with_masks:
    expected["patch_head"] = (2, B, N, out_dim)
  if kind == "dino":
    expected["prototypes"] = (K, P)
  assert {name: value.shape for name, value in out.items()} == expected
  assert all(value.dtype == jnp.float32 for value in out.values())
  assert all(bool(jnp.all(jnp.isfinite(value))) for value in out.values())


def test_simdino_head_outputs_unit_norm():
  out = call(tiny_model("simdino"), make_crops(), make_masks())
  for name in ("head", "patch_head"):
    np.testing.assert_allclose(jnp.linalg.norm(out[name], axis=-1), 1.0, atol=1e-5)


def test_backbone_outputs_and_registers_excluded():
  backbone = tiny_backbone(num_registers=3)
  images = make_crops()[0][0]
  out = call(backbone, images, n_last=2)
  assert out["cls"].shape == (B, DIM) and out["patch"].shape == (B, N, DIM)
  assert out["last_cls"].shape == (2, B, DIM)
  np.testing.assert_allclose(out["last_cls"][-1], out["cls"], atol=1e-6)
  assert not np.allclose(out["last_cls"][0], out["cls"], atol=1e-3)
  model = models.MultiCropModel(backbone, tiny_head("dino"))
  assert call(model, make_crops(), make_masks())["patch_head"].shape == (2, B, N, K)


def test_multicrop_equals_per_view_backbone_calls():
  model = tiny_model("dino")
  crops, masks = make_crops(), make_masks()
  out = call(model, crops, masks)
  views = [crops[0][0], crops[0][1]] + [crops[1][i] for i in range(N_LOCAL)]
  for index, images in enumerate(views):
    view_masks = masks[index] if index < 2 else None
    single = call(model.backbone, images, view_masks)
    np.testing.assert_allclose(out["cls"][index], single["cls"], atol=1e-5)
    np.testing.assert_allclose(out["head"][index], call(model.head, single["cls"]), atol=1e-5)
    if index < 2:
      np.testing.assert_allclose(out["patch_head"][index], call(model.head, single["patch"]), atol=1e-5)
  np.testing.assert_array_equal(out["prototypes"], model.head.last_layer.v[...])


# Mask token.


def test_fully_masked_image_ignores_content():
  backbone = tiny_backbone()
  all_masked = jnp.ones((B, N), bool)
  images_a, images_b = make_crops(seed=1)[0][0], make_crops(seed=2)[0][0]
  out_a, out_b = call(backbone, images_a, all_masked), call(backbone, images_b, all_masked)
  np.testing.assert_allclose(out_a["cls"], out_b["cls"], atol=1e-6)
  np.testing.assert_allclose(out_a["patch"], out_b["patch"], atol=1e-6)
  assert not np.allclose(call(backbone, images_a)["cls"], call(backbone, images_b)["cls"], atol=1e-3)


def test_mask_token_replaces_patch_embedding_before_position_embedding():
  backbone = tiny_backbone()
  # A constant image: every patch has the same embedding e. Masking with mask_token = e must change nothing,
  # which holds only if the token replaces the patch embedding before the (position-dependent) pos_embed.
  images = jnp.full((B, IMAGE, IMAGE, 3), 0.7)
  patch_embedding = backbone.patch_embed(jnp.full((PATCH * PATCH * 3,), 0.7))
  backbone.mask_token[...] = patch_embedding.reshape(1, 1, DIM)
  masks = make_masks()[0]
  unmasked, masked = call(backbone, images), call(backbone, images, masks)
  np.testing.assert_allclose(masked["patch"], unmasked["patch"], atol=1e-5)
  np.testing.assert_allclose(masked["cls"], unmasked["cls"], atol=1e-5)
  backbone.mask_token[...] = jax.random.normal(jax.random.key(3), (1, 1, DIM))
  assert not np.allclose(call(backbone, images, masks)["cls"], unmasked["cls"], atol=1e-3)


# Position embeddings.


def test_pos_embed_interpolation():
  pos_embed = jax.random.normal(jax.random.key(0), (1, 16, 5))
  np.testing.assert_array_equal(vit.interpolate_pos_embed(pos_embed, (4, 4)), pos_embed)
  for grid in [(2, 2), (6, 6), (3, 5)]:
    resized = vit.interpolate_pos_embed(pos_embed, grid)
    assert resized.shape == (1, grid[0] * grid[1], 5)
  constant = jnp.broadcast_to(jnp.arange(5.0), (1, 16, 5))
  np.testing.assert_allclose(
    vit.interpolate_pos_embed(constant, (7, 3)), jnp.broadcast_to(jnp.arange(5.0), (1, 21, 5)), atol=1e-5
  )
  upsampled = vit.interpolate_pos_embed(pos_embed, (8, 8)).reshape(8, 8, 5)
  assert not np.allclose(upsampled[0, 0], upsampled[7, 7])


@pytest.mark.parametrize("offset, antialias", [(0.1, False), (0.0, True), (0.0, False), (0.1, True)])
@pytest.mark.parametrize("side, grid", [(4, (7, 5)), (6, (3, 4)), (14, (6, 6))])
def test_pos_embed_interpolation_equals_pytorch(side, grid, offset, antialias):
  """PyTorch's `F.interpolate(mode="bicubic")` (a = −0.75; a = −0.5 antialiased) with the recipes' offset rule
  (scale factor (h + offset)/M, or the output size at offset 0), up and down, on a random grid."""
  pos_embed = np.random.default_rng(side).normal(size=(1, side * side, 3)).astype(np.float32)
  grid_in = torch.from_numpy(pos_embed).reshape(1, side, side, 3).permute(0, 3, 1, 2)
  size = {"scale_factor": ((grid[0] + offset) / side, (grid[1] + offset) / side)} if offset else {"size": grid}
  expected = torch.nn.functional.interpolate(grid_in, mode="bicubic", antialias=antialias, **size)
  expected = expected.permute(0, 2, 3, 1).reshape(1, -1, 3).numpy()
  resized = vit.interpolate_pos_embed(jnp.asarray(pos_embed), grid, offset=offset, antialias=antialias)
  np.testing.assert_allclose(resized, expected, atol=1e-5)


@pytest.mark.parametrize("size", [8, 16, 24])
def test_backbone_runs_at_any_crop_size(size):
  out = call(tiny_backbone(), jnp.ones((2, size, size, 3)))
  assert out["patch"].shape == (2, (size // PATCH) ** 2, DIM)


# Drop path.


def test_drop_path_rates_schedules():
  np.testing.assert_allclose(vit.drop_path_rates(0.3, 4, "linear"), [0.0, 0.1, 0.2, 0.3])
  assert vit.drop_path_rates(0.3, 4, "uniform") == [0.3] * 4


def test_drop_path_is_per_sample():
  x = jnp.ones((64, 5, 3))
  out = vit.drop_path(x, 0.5, jax.random.key(0))
  per_sample = out[:, 0, 0]
  assert set(np.unique(per_sample).tolist()) == {0.0, 2.0}
  np.testing.assert_array_equal(out, per_sample[:, None, None] * x)
  np.testing.assert_array_equal(vit.drop_path(x, 0.5, None), x)


def test_drop_path_deterministic_without_key_and_stochastic_with_key():
  backbone = tiny_backbone(drop_path_rate=0.5, drop_path_schedule="uniform")
  images = make_crops()[0][0]
  cls = lambda **kwargs: call(backbone, images, **kwargs)["cls"]
  key_1, key_2 = jax.random.key(1), jax.random.key(2)
  np.testing.assert_array_equal(cls(), cls())
  np.testing.assert_array_equal(cls(key=key_1), cls(key=key_1))
  assert not np.allclose(cls(key=key_1), cls(key=key_2))
  assert not np.allclose(cls(key=key_1), cls())


def test_rate_zero_model_ignores_key():
  backbone = tiny_backbone(drop_path_rate=0.0)
  images = make_crops()[0][0]
  np.testing.assert_array_equal(call(backbone, images, key=jax.random.key(3))["cls"], call(backbone, images)["cls"])


# Heads.


def test_norm_last_layer_freezes_gain_and_gives_cosine_logits():
  for norm_last_layer in (True, False):
    model = tiny_model("dino", norm_last_layer=norm_last_layer)
    graphdef, params = nnx.split(model)
    crops = make_crops(n_local=0)

    def loss(params):
      logits = nnx.merge(graphdef, params)(crops)["head"]
      return jnp.sum(jax.nn.log_softmax(logits / 0.1)[..., 0])

    grads = jax.jit(jax.grad(loss))(params)
    gain_grad = grads["head"]["last_layer"]["g"][...]
    direction_grad = grads["head"]["last_layer"]["v"][...]
    assert float(jnp.abs(direction_grad).max()) > 0
    if norm_last_layer:
      np.testing.assert_array_equal(gain_grad, 0.0)
    else:
      assert float(jnp.abs(gain_grad).max()) > 0
  head = tiny_head("dino")
  features = jax.random.normal(jax.random.key(0), (7, DIM))
  logits = call(head, features)
  z = l2_normalize(call(head.mlp, features))
  v = head.last_layer.v[...]
  cosines = z @ (v / jnp.linalg.norm(v, axis=-1, keepdims=True)).T
  np.testing.assert_allclose(logits, cosines, atol=1e-5)
  assert float(jnp.abs(logits).max()) <= 1.0 + 1e-6


def test_heads_say_what_they_are():
  dino, simdino = tiny_model("dino"), tiny_model("simdino")
  assert (dino.head.out_dim, dino.head.num_prototypes) == (K, K)
  assert (simdino.head.out_dim, simdino.head.num_prototypes) == (P, 0)
  np.testing.assert_array_equal(dino.head.prototypes(), dino.head.last_layer.v[...])
  assert simdino.head.prototypes() is None
  for model, expected in ((dino, dino.head.last_layer.v[...]), (simdino, None)):
    graphdef, params = nnx.split(model)
    found = models.prototypes(graphdef, nnx.to_pure_dict(params))
    assert found is None if expected is None else np.array_equal(found, expected)


def test_l2_normalize_eps():
  np.testing.assert_array_equal(l2_normalize(jnp.zeros((2, 3))), 0.0)
  np.testing.assert_allclose(l2_normalize(jnp.array([[3.0, 4.0]])), [[0.6, 0.8]])


# Attention padding (the cuDNN path, run here with the XLA implementation).


@pytest.mark.parametrize("tokens", [17, 37, 197])
def test_padded_attention_equals_unpadded(tokens):
  keys = jax.random.split(jax.random.key(tokens), 3)
  q, k, v = (jax.random.normal(key, (2, tokens, 2, 8)) for key in keys)

  @jax.jit
  def value_and_grads(q, k, v):
    def attend(multiple):
      loss = lambda *qkv: jnp.sum(jnp.sin(vit.dot_product_attention(*qkv, token_multiple=multiple)))
      return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

    return attend(64), attend(1)

  padded, plain = value_and_grads(q, k, v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), padded, plain)


def test_padded_backbone_equals_unpadded():
  plain, padded = tiny_backbone(), tiny_backbone(attention_token_multiple=64)
  nnx.update(padded, nnx.state(plain, nnx.Param))
  images = make_crops()[0][0]
  out_padded, out_plain = call(padded, images), call(plain, images)
  np.testing.assert_allclose(out_padded["cls"], out_plain["cls"], atol=1e-5)
  np.testing.assert_allclose(out_padded["patch"], out_plain["patch"], atol=1e-5)


# Functional API and rematerialization.


def test_split_merge_round_trip_under_jit():
  model = tiny_model("dino", drop_path_rate=0.2)
  graphdef, params = nnx.split(model)
  crops, masks, key = make_crops(), make_masks(), jax.random.key(5)

  @jax.jit
  def forward(params, crops, masks, key):
    return nnx.merge(graphdef, params)(crops, masks, key=key)

  functional = forward(params, crops, masks, key)
  direct = call(model, crops, masks, key=key)
  assert set(functional) == set(direct)
  for name in direct:
    np.testing.assert_allclose(functional[name], direct[name], atol=1e-5)
  _, params_again = nnx.split(nnx.merge(graphdef, params))
  jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_remat_matches_plain_forward_and_gradient():
  plain, remat = tiny_backbone(drop_path_rate=0.3), tiny_backbone(drop_path_rate=0.3, remat=True)
  images, key = make_crops()[0][0], jax.random.key(7)
  results = []
  for backbone in (plain, remat):
    graphdef, params = nnx.split(backbone)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(images, key=key)["cls"] ** 2)
    results.append(jax.jit(jax.value_and_grad(loss))(params))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), results[0][1], results[1][1])


def test_scanned_blocks_equal_unrolled_blocks():
  """scan_blocks (here with remat, i.e. the scanned body checkpointed): the same parameters (paths and values),
  outputs, drop-path draws and gradients as the unrolled blocks, with registers, LayerScale, a linear drop-path
  schedule and the last blocks' CLS."""
  overrides = dict(depth=3, drop_path_rate=0.3, layerscale=0.1, num_registers=1)
  unrolled, scanned = tiny_backbone(**overrides), tiny_backbone(**overrides, scan_blocks=True, remat=True)
  images, key = make_crops()[0][0], jax.random.key(7)
  assert jax.tree.structure(nnx.state(scanned)) == jax.tree.structure(nnx.state(unrolled))
  results = []
  for backbone in (unrolled, scanned):
    graphdef, params = nnx.split(backbone)
    outputs = nnx.merge(graphdef, params)(images, key=None, n_last=2)

    def loss(p):
      out = nnx.merge(graphdef, p)(images, key=key, n_last=2)
      return jnp.sum(out["cls"] ** 2) + jnp.sum(jnp.sin(out["patch"])) + jnp.sum(0.3 * out["last_cls"])

    results.append((outputs, jax.jit(jax.value_and_grad(loss))(params)))
  (eval_unrolled, (loss_unrolled, grad_unrolled)), (eval_scanned, (loss_scanned, grad_scanned)) = results
  for name in ("cls", "patch", "last_cls"):
    np.testing.assert_allclose(eval_scanned[name], eval_unrolled[name], rtol=1e-5, atol=1e-6, err_msg=name)
  assert eval_scanned["last_cls"].shape == (2, B, DIM)
  np.testing.assert_allclose(loss_scanned, loss_unrolled, rtol=1e-5)  # drop path on: the same samples dropped
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad_scanned, grad_unrolled)
  assert float(jnp.abs(grad_unrolled["blocks"][2]["mlp"]["fc2"]["kernel"][...]).max()) > 0


def test_swiglu_feed_forward_equals_float64_numpy():
  """DINOv2's fused SwiGLU: hidden (int(h · 2/3) + 7) // 8 · 8, out = W3 (silu(x W1) ⊙ x W2) with [W1 W2] = W12."""
  from simdino_jax.models import vit  # pylint: disable=import-outside-toplevel

  assert vit.swiglu_hidden_dim(4 * 1536) == 4096 and vit.swiglu_hidden_dim(4 * 192) == 512
  ffn = vit.SwiGLU(24, 96, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(3, 5, 24))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(ffn)))
  hidden = x @ p["w12"]["kernel"] + p["w12"]["bias"]
  x1, x2 = hidden[..., :64], hidden[..., 64:]
  expected = (x1 / (1 + np.exp(-x1)) * x2) @ p["w3"]["kernel"] + p["w3"]["bias"]
  np.testing.assert_allclose(ffn(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5, atol=1e-5)


def test_vit_giant2_is_dinov2s_vit_g14_with_swiglu():
  config = configs.load("dinov2_meta_vitg14")
  assert (config.model.name, config.model.ffn, config.aug.local_size) == ("ViT-g/14", "swiglu", 98)
  backbone = nnx.eval_shape(lambda: models.create_backbone(config.model, rngs=nnx.Rngs(0)))
  state = nnx.to_pure_dict(nnx.state(backbone))
  assert len(state["blocks"]) == 40 and backbone.blocks[0].attn.num_heads == 24
  assert state["blocks"][0]["mlp"]["w12"]["kernel"].shape == (1536, 8192)
  assert state["blocks"][0]["mlp"]["w3"]["kernel"].shape == (4096, 1536)
  # vit_giant2 at 518 px has 1,136,480,768 parameters (mask token included) in DINOv2's released file; ours at 224
  # px differs by the position embeddings: (37² − 16²) · 1536.
  count = sum(x.size for x in jax.tree.leaves(state))
  assert count + (37**2 - 16**2) * 1536 == 1_136_480_768


def test_separate_ibot_head_scores_the_patch_tokens():
  config = models.default_config()
  config.name, config.patch_size, config.image_size, config.dtype = "vit_nano", 4, 16, "float32"
  config.head.out_dim, config.head.hidden_dim, config.head.bottleneck_dim = 64, 32, 16
  config.ibot_head.separate = True
  config.ibot_head.out_dim, config.ibot_head.hidden_dim, config.ibot_head.bottleneck_dim = 48, 24, 8
  model = models.create_model(config, head_kind="dino", rngs=nnx.Rngs(0))
  crops = [jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 16, 16, 3)), jnp.float32)]
  masks = jnp.zeros((2, 3, 16), bool).at[:, :, :5].set(True)
  out = model(crops, masks)
  assert out["head"].shape == (2, 3, 64) and out["patch_head"].shape == (2, 3, 16, 48)
  patch = model.backbone(crops[0].reshape(6, 16, 16, 3), masks.reshape(6, 16))["patch"]
  np.testing.assert_allclose(out["patch_head"].reshape(6, 16, 48), model.ibot_head(patch), rtol=1e-5, atol=1e-5)
  assert models.patch_head_out_dim(config) == 48
  with pytest.raises(ValueError, match="needs a DINO head"):
    validation.validate_model(config, "simdino")
