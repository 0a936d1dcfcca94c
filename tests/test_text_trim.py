"""Text padding trimmed to real tokens (bucketed) is exact under the mask.

References: a plain-Python scan for the last real column (trim_padding), the
full-length tokenizer output (the trimmed ids must be its prefix), the padded
model itself (embeddings and gradients), and open_clip's own embeddings of
tests/fixtures/biomedclip_tiny (golden.npz, computed by PyTorch).
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgtil_jax import api
from mgtil_jax.data import reference
from mgtil_jax.models import tokenizer as tokenizer_lib
from mgtil_jax.models import clip, preprocessing

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'biomedclip_tiny'
WORDS = ['a', 'photo', 'of', 'chest', 'x', 'ray', 'pleural', 'effusion',
         'the', 'is', 'seen', 'on', 'nodule', '.', '-']


def last_real_column(tokens, pad_id):
  """Plain loops: 1 + the largest column index holding a non-pad id."""
  last = 0
  for row in tokens.tolist():
    for j, t in enumerate(row):
      if t != pad_id:
        last = max(last, j + 1)
  return last


@pytest.mark.parametrize('bucket', [None, 1, 4, 16, 48])
def test_trim_padding_matches_a_plain_scan(bucket):
  rng = np.random.default_rng(0)
  width = 40
  lengths = rng.integers(1, 23, size=7)
  tokens = np.zeros((7, width), np.int32)
  for row, n in zip(tokens, lengths):
    row[:n] = rng.integers(1, 50, n)
  tokens[2, 5] = 0  # an interior pad never shortens a row
  out = tokenizer_lib.trim_padding(tokens, bucket, pad_id=0)
  longest = last_real_column(tokens, 0)
  expected = width if bucket is None else min(width,
                                              -(-longest // bucket) * bucket)
  assert out.shape == (7, expected)
  np.testing.assert_array_equal(out, tokens[:, :expected])
  assert not tokens[:, expected:].any()  # nothing real was cut


def test_trim_padding_edge_cases():
  all_pad = np.full((3, 20), 7, np.int32)
  assert tokenizer_lib.trim_padding(all_pad, 16, pad_id=7).shape == (3, 16)
  full = np.ones((2, 20), np.int32)
  assert tokenizer_lib.trim_padding(full, 16).shape == (2, 20)  # capped
  with pytest.raises(ValueError, match='int\\[N, L\\]'):
    tokenizer_lib.trim_padding(np.ones(5, np.int32))
  with pytest.raises(ValueError, match='bucket'):
    tokenizer_lib.trim_padding(full, -4)


@pytest.fixture
def vocab_file(tmp_path):
  return tokenizer_lib.write_vocab(WORDS, str(tmp_path / 'vocab.txt'))


TEXTS = ['a photo of the chest.',
         'pleural effusion is seen on the chest x-ray',
         'nodule ' * 30,  # truncated at the context length
         '']


@pytest.mark.parametrize('bucket', [4, 16])
def test_tokenizer_bucket_is_a_prefix_of_full_padding(vocab_file, bucket):
  full = tokenizer_lib.Tokenizer(vocab_file, 40, bucket=None)
  trimmed = tokenizer_lib.Tokenizer(vocab_file, 40, bucket=bucket)
  for texts in (TEXTS[:1], TEXTS[:2], TEXTS, TEXTS[3:]):
    ref = full(texts)
    assert ref.shape == (len(texts), 40)
    ids = trimmed(texts)
    longest = last_real_column(ref, full.pad_id)
    assert ids.shape[1] == min(40, -(-longest // bucket) * bucket)
    np.testing.assert_array_equal(ids, ref[:, :ids.shape[1]])
    assert (ref[:, ids.shape[1]:] == full.pad_id).all()
  assert trimmed(TEXTS[:1]).shape[1] < 40  # the guard: something was cut


def test_tokenizer_default_bucket_and_open_clip_default(vocab_file):
  assert tokenizer_lib.Tokenizer(vocab_file, 256).bucket == 16
  assert tokenizer_lib.Tokenizer(vocab_file, 256)(['a photo']).shape == (1, 16)
  tok = preprocessing.OpenClipTokenizer(vocab_file, 256)
  assert tok.bucket is None and tok(['a photo']).shape == (1, 256)
  tok.bucket = 16
  assert tok(['a photo']).shape == (1, 16)
  assert tok([]).shape == (0, 16)


@functools.lru_cache(maxsize=None)
def tiny_text_tower():
  """The tiny preset's BERT text tower with a 64-token context."""
  cfg = clip.get_preset('tiny', **{'text.context_length': 64,
                                   'text.max_positions': 64})
  tower = clip.TextTower(cfg.text, cfg.embed_dim)
  params = clip.nn.unbox(jax.jit(tower.init)(
      jax.random.key(3), jnp.zeros((1, 64), jnp.int32))['params'])
  return tower, params


def test_tiny_text_tower_trimmed_equals_padded():
  tower, params = tiny_text_tower()
  rng = np.random.default_rng(1)
  tokens = np.zeros((6, 64), np.int32)
  for row, n in zip(tokens, [3, 9, 17, 5, 2, 12]):
    row[:n] = rng.integers(1, tower.cfg.vocab_size, n)
  trimmed = tokenizer_lib.trim_padding(tokens, 16)
  assert trimmed.shape == (6, 32)

  def loss(p, t):
    emb = tower.apply({'params': p}, t)
    return jnp.sum(jnp.sin(emb)), emb

  # Training differentiates through the tower: the gradients must agree too.
  fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, padded_emb), g_pad = fn(params, tokens)
  (_, trimmed_emb), g_trim = fn(params, trimmed)
  np.testing.assert_allclose(trimmed_emb, padded_emb, atol=1e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_trim), jax.tree.leaves(g_pad)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


@functools.lru_cache(maxsize=None)
def fixture_model(bucket):
  return api.load(str(FIXTURE), text_bucket=bucket)


def test_biomedclip_fixture_trimmed_matches_open_clip():
  with np.load(FIXTURE / 'golden.npz') as f:
    golden = f['text_embeddings']
    ids = f['token_ids']
  with open(FIXTURE / 'golden.json', encoding='utf-8') as f:
    texts = json.load(f)['texts']
  trimmed, padded = fixture_model(16), fixture_model(None)
  # One text per call: each runs at its own bucket (16 for most, 256 for
  # the truncated one).
  widths = [tokenizer_lib.trim_padding(ids[i:i + 1], 16).shape[1]
            for i in range(len(texts))]
  assert min(widths) == 16 and max(widths) == 256
  one_by_one = trimmed.encode_text(texts, batch_size=1)
  assert np.abs(one_by_one - golden).max() <= 1e-4  # the parity bar
  np.testing.assert_allclose(one_by_one,
                             padded.encode_text(texts, batch_size=1),
                             atol=1e-5)
  short = texts[:6]  # the class prompts: one 16-token batch
  np.testing.assert_allclose(trimmed.encode_text(short),
                             padded.encode_text(short), atol=1e-5)
  np.testing.assert_allclose(
      trimmed.class_embeddings(['pleural effusion', 'pneumothorax']),
      padded.class_embeddings(['pleural effusion', 'pneumothorax']),
      atol=1e-5)


def test_reference_batches_are_trimmed():
  rng = np.random.default_rng(0)
  tokens = np.zeros((10, 64), np.int32)
  for row, n in zip(tokens, rng.integers(2, 30, 10)):
    row[:n] = rng.integers(1, 99, n)
  images = rng.integers(0, 256, (10, 4, 4, 3), np.uint8)
  src = reference.FixedReferenceSet(images, tokens, batch_size=4, seed=0)
  full = reference.FixedReferenceSet(images, tokens, batch_size=4, seed=0,
                                     bucket=None)
  for step in range(3):
    b, ref = src.batch(0, step), full.batch(0, step)
    assert ref['tokens'].shape == (4, 64)
    width = b['tokens'].shape[1]
    assert width % 16 == 0 and width < 64
    np.testing.assert_array_equal(b['tokens'], ref['tokens'][:, :width])
    assert not ref['tokens'][:, width:].any()
    np.testing.assert_array_equal(b['image'], ref['image'])
