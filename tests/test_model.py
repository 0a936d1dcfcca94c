"""Tests for mgtil_jax.models.clip: shapes, parameter count of the real
preset (derived from the architecture), padding mask, the zero-shot
classifier against NumPy, and bfloat16 agreement."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgtil_jax.models import clip


# Everything runs under jax.jit: one compile per function is much faster
# than op-by-op dispatch on CPU.


@functools.lru_cache(maxsize=None)
def _encoders(model):
  """Jitted (params, x) -> embeddings for a model (models are hashable)."""
  image = jax.jit(lambda p, x: model.apply({'params': p}, x,
                                           method=clip.CLIP.encode_image))
  text = jax.jit(lambda p, x: model.apply({'params': p}, x,
                                          method=clip.CLIP.encode_text))
  return image, text


@pytest.fixture(scope='module')
def tiny():
  cfg = clip.get_preset('tiny')
  model = clip.make_model(cfg)
  # An rbg key: the values do not matter here, and it compiles in half the
  # time of the default threefry on CPU.
  params = nn.unbox(jax.jit(lambda r: clip.init_params(model, r))(
      jax.random.key(0, impl='rbg')))
  return cfg, model, params


def _rel_diff(a, b):
  """||a - b|| / ||b||: embeddings at init are small, so an absolute
  tolerance would say nothing."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# Batch sizes are the same everywhere (4 images, 6 texts) so that each jitted
# encoder compiles once.


def _images(cfg, b, seed=0):
  v = cfg.vision
  return jnp.asarray(np.random.default_rng(seed).normal(
      size=(b, v.image_size, v.image_size, v.channels)), jnp.float32)


def _tokens_with_padding(cfg, lengths, seed=0):
  """int32[B, L]: random non-pad ids in the first `length` slots, pad after."""
  t = cfg.text
  rng = np.random.default_rng(seed)
  tokens = np.full((len(lengths), t.context_length), t.pad_id, np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(1, t.vocab_size, n)
  assert (tokens[:, 0] != t.pad_id).all()
  return jnp.asarray(tokens)


def test_tiny_output_shapes(tiny):
  cfg, model, params = tiny
  encode_image, encode_text = _encoders(model)
  img = encode_image(params, _images(cfg, 4))
  txt = encode_text(params, _tokens_with_padding(cfg, [4, 16, 1, 2, 9, 5]))
  assert img.shape == (4, 64) and img.dtype == jnp.float32
  assert txt.shape == (6, 64) and txt.dtype == jnp.float32
  assert np.isfinite(np.asarray(img)).all()
  assert np.isfinite(np.asarray(txt)).all()


def test_wrong_image_size_raises(tiny):
  cfg, model, params = tiny
  with pytest.raises(ValueError, match='images'):
    model.apply({'params': params}, jnp.zeros((1, 16, 16, 3)),
                method=clip.CLIP.encode_image)


def _expected_param_count():
  """Derived from the published architectures, not from the code.

  Dense d_in -> d_out with bias: d_in * d_out + d_out; LayerNorm: 2 * d.
  A transformer layer (ViT pre-LN and BERT post-LN have the same parameters):
  q, k, v, out (d x d + bias each), two LayerNorms, MLP d -> 4d -> d.
  """
  d, mlp = 768, 3072
  dense = lambda i, o, bias=True: i * o + (o if bias else 0)
  ln = 2 * d
  layer = 4 * dense(d, d) + 2 * ln + dense(d, mlp) + dense(mlp, d)

  # ViT-B/16 at 224: patch embedding as a 16x16x3 -> 768 dense with bias,
  # CLS token, 197 = (224 / 16)^2 + 1 position embeddings, 12 layers, final
  # LayerNorm, projection 768 -> 512 without bias.
  vision_trunk = (dense(16 * 16 * 3, d) + d + 197 * d + 12 * layer + ln)
  # Published: timm vit_base_patch16_224 has 86,567,656 parameters including
  # its 768 -> 1000 classification head.
  assert vision_trunk == 86_567_656 - dense(d, 1000)
  vision = vision_trunk + dense(d, 512, bias=False)

  # BERT-base uncased (PubMedBERT): word (30522), position (512) and token
  # type (2) embeddings, embedding LayerNorm, 12 layers; no pooler is used.
  bert_no_pooler = (30522 * d + 512 * d + 2 * d + ln + 12 * layer)
  # Published: HF BertModel (bert-base-uncased) has 109,482,240 parameters
  # including the 768 -> 768 pooler.
  assert bert_no_pooler == 109_482_240 - dense(d, d)
  # MLP projection 768 -> (768 + 512) / 2 = 640 -> 512, no biases.
  text = bert_no_pooler + dense(d, 640, bias=False) + dense(640, 512,
                                                            bias=False)
  return vision, text, 1  # + the scalar logit scale


def test_real_preset_param_count_without_compute():
  model = clip.make_model(clip.get_preset('vit_b16_pubmedbert'))
  shapes = jax.eval_shape(lambda r: clip.init_params(model, r),
                          jax.random.key(0))
  shapes = nn.unbox(shapes)
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  vision, text, scale = _expected_param_count()
  assert count(shapes['visual']) == vision
  assert count(shapes['text']) == text
  assert count(shapes['logit_scale']) == scale
  assert count(shapes) == vision + text + scale


def test_text_cls_output_ignores_pad_embedding(tiny):
  """In post-LN BERT pad positions are still computed but masked as keys, so
  the [CLS] output must not depend on the pad id's embedding row."""
  cfg, model, params = tiny
  _, encode_text = _encoders(model)
  tokens = _tokens_with_padding(cfg, [3, 7, 12, 2, 15, 5], seed=1)
  base = encode_text(params, tokens)
  table = params['text']['word_embed']['embedding']
  noise = jnp.asarray(
      5.0 * np.random.default_rng(9).normal(size=table.shape[1:]), table.dtype)

  def with_row_perturbed(row):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.at[row].add(noise) if 'word_embed' in str(path)
        else x, params)

  pad_out = encode_text(with_row_perturbed(cfg.text.pad_id), tokens)
  assert _rel_diff(pad_out, base) < 1e-5

  # Control: perturbing the row of a real token (sequence 0's first token
  # after [CLS]) does change that sequence's output.
  real_out = encode_text(with_row_perturbed(int(tokens[0, 1])), tokens)
  assert _rel_diff(real_out[0], base[0]) > 1e-2
  # Control: with nothing masked (a pad id that never occurs), the same pad
  # perturbation does leak into [CLS] through attention.
  unmasked = clip.make_model(clip.get_preset('tiny', **{'text.pad_id': -1}))
  _, encode_unmasked = _encoders(unmasked)
  leaked = encode_unmasked(with_row_perturbed(cfg.text.pad_id), tokens)
  assert _rel_diff(leaked, encode_unmasked(params, tokens)) > 1e-3


def test_text_output_depends_on_non_pad_tokens(tiny):
  cfg, model, params = tiny
  _, encode_text = _encoders(model)
  tokens = _tokens_with_padding(cfg, [5] * 6, seed=2)
  changed = tokens.at[0, 3].set((tokens[0, 3] % (cfg.text.vocab_size - 1)) + 1)
  assert int(changed[0, 3]) != int(tokens[0, 3])
  a, b = encode_text(params, tokens), encode_text(params, changed)
  assert _rel_diff(b[0], a[0]) > 1e-3
  np.testing.assert_allclose(np.asarray(b[1:]), np.asarray(a[1:]), rtol=1e-5,
                             atol=1e-7)  # rows are independent


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_classify_logits_matches_numpy(tiny):
  cfg, model, params = tiny
  images = _images(cfg, 4, seed=3)
  num_classes, num_templates = 3, 2
  # Class-major: rows 2c and 2c + 1 are the two templates of class c.
  prompts = _tokens_with_padding(cfg, [4, 6, 5, 9, 3, 8], seed=4)
  got = jax.jit(clip.classify_logits, static_argnums=(0, 4))(
      model, params, images, prompts, num_templates)

  # Reference in NumPy from the raw tower outputs.
  encode_image, encode_text = _encoders(model)
  img = np.asarray(encode_image(params, images), np.float64)
  txt = np.asarray(encode_text(params, prompts), np.float64)
  txt = _np_normalize(txt).reshape(num_classes, num_templates, -1)
  class_emb = _np_normalize(txt.mean(axis=1))
  expected = (np.exp(float(params['logit_scale'])) *
              _np_normalize(img) @ class_emb.T)
  assert got.shape == (4, num_classes)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def test_get_preset_unknown_name():
  with pytest.raises(ValueError, match=r'config\.model\.preset'):
    clip.get_preset('vit_h14_nonexistent')


def test_get_preset_overrides():
  cfg = clip.get_preset('tiny', **{'vision.depth': 1, 'text.heads': 4,
                                   'embed_dim': 32})
  assert cfg.vision.depth == 1 and cfg.text.heads == 4 and cfg.embed_dim == 32
  # The preset table itself is unchanged.
  assert clip.get_preset('tiny').vision.depth == 2


def test_bfloat16_close_to_float32(tiny):
  cfg, model, params = tiny
  model_bf16 = clip.make_model(cfg, dtype='bfloat16')
  images = _images(cfg, 4, seed=5)
  tokens = _tokens_with_padding(cfg, [3, 8, 16, 11, 2, 6], seed=6)
  for f32_fn, bf16_fn, x in zip(_encoders(model), _encoders(model_bf16),
                                (images, tokens)):
    f32, bf16 = f32_fn(params, x), bf16_fn(params, x)
    assert bf16.dtype == jnp.float32  # towers return float32 either way
    assert 0 < _rel_diff(bf16, f32) < 1e-2  # > 0: bf16 really was used


def test_make_model_bad_dtype():
  with pytest.raises(ValueError, match=r'config\.model\.dtype'):
    clip.make_model(clip.get_preset('tiny'), dtype='float16')
