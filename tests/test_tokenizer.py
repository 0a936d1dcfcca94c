"""Tests for mgtil_jax.tokenizer against an independent WordPiece reference."""

import re
import unicodedata

import numpy as np
import pytest

from mgtil_jax.models import tokenizer as tokenizer_lib

WORDS = ['a', 'photo', 'of', 'chest', 'x', 'ray', 'nodule', 'nod', 'pleural',
         'effusion', 'pneumothorax', 'the', 'is', 'seen', 'on', '-', '.', ',']


@pytest.fixture
def vocab_file(tmp_path):
  return tokenizer_lib.write_vocab(WORDS, str(tmp_path / 'vocab.txt'))


def read_vocab(path):
  """The vocab file format: one token per line, id = line number."""
  with open(path) as f:
    return {line.rstrip('\n'): i for i, line in enumerate(f)}


def _is_punctuation(ch):
  # BERT's definition: all non-alphanumeric ASCII, plus Unicode P* classes.
  cp = ord(ch)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(ch).startswith('P')


def reference_ids(text, vocab, context_length, lowercase=True):
  """Independent BERT tokenization: lowercase, split on whitespace and
  punctuation, greedy longest-match-first WordPiece (a word with any
  unmatchable rest becomes a single [UNK]), then [CLS] ... [SEP], truncate,
  pad with [PAD]. ASCII input only (no accent stripping needed)."""
  if lowercase:
    text = text.lower()
  words = []
  for chunk in text.split():
    current = ''
    for ch in chunk:
      if _is_punctuation(ch):
        words += [current, ch] if current else [ch]
        current = ''
      else:
        current += ch
    if current:
      words.append(current)
  ids = []
  for word in words:
    pieces, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else '##' + word[start:end]
        if piece in vocab:
          break
        end -= 1
      if end == start:
        pieces = [vocab['[UNK]']]
        break
      pieces.append(vocab[piece])
      start = end
    ids += pieces
  ids = [vocab['[CLS]']] + ids[:context_length - 2] + [vocab['[SEP]']]
  return ids + [vocab['[PAD]']] * (context_length - len(ids))


SENTENCES = [
    'A photo of nodules.',              # nodule ##s: longest match first
    'Chest X-Ray, pleural effusion',    # case, punctuation inside a word
    'the nodal pneumothoraxes',         # nod ##a ##l; pneumothorax ##e ##s
    'zebra is seen on the chest',       # 'z' is in no word: zebra -> [UNK]
    '   the   effusion  ',               # extra whitespace
    '',                                  # empty: [CLS] [SEP] then padding
]


def test_matches_reference_wordpiece(vocab_file):
  vocab = read_vocab(vocab_file)
  tok = tokenizer_lib.Tokenizer(vocab_file, context_length=16)
  ids = tok(SENTENCES)
  assert ids.shape == (len(SENTENCES), 16) and ids.dtype == np.int32
  for row, text in zip(ids, SENTENCES):
    assert row.tolist() == reference_ids(text, vocab, 16), text


def test_reference_cases_exercise_subwords_and_unk(vocab_file):
  # Guards the test itself: the sentences above do hit '##' pieces and [UNK].
  vocab = read_vocab(vocab_file)
  inverse = {i: t for t, i in vocab.items()}
  pieces = [inverse[i] for text in SENTENCES
            for i in reference_ids(text, vocab, 16)]
  assert '##s' in pieces and 'nodule' in pieces and 'nod' in pieces
  assert '[UNK]' in pieces


def test_special_tokens_and_padding(vocab_file):
  vocab = read_vocab(vocab_file)
  tok = tokenizer_lib.Tokenizer(vocab_file, context_length=10)
  ids = tok(['chest x-ray', 'the effusion'])
  assert tok.pad_id == vocab['[PAD]']
  assert (ids[:, 0] == vocab['[CLS]']).all()
  # 'chest x - ray' is 4 tokens: [CLS] at 0, tokens at 1..4, [SEP] at 5.
  assert ids[0, 5] == vocab['[SEP]']
  assert (ids[0, 6:] == vocab['[PAD]']).all()
  # 'the effusion': 2 tokens, [SEP] at 3, pads after.
  assert ids[1, 3] == vocab['[SEP]']
  assert (ids[1, 4:] == vocab['[PAD]']).all()
  assert (ids[:, 1:3] != vocab['[PAD]']).all()


def test_single_string_gives_one_row(vocab_file):
  tok = tokenizer_lib.Tokenizer(vocab_file, context_length=8)
  assert tok('a photo').shape == (1, 8)


def test_truncation_keeps_sep_last(vocab_file):
  vocab = read_vocab(vocab_file)
  context_length = 8
  tok = tokenizer_lib.Tokenizer(vocab_file, context_length=context_length)
  text = 'a photo of the chest is seen on the pleural effusion'  # 11 words
  ids = tok([text])[0]
  assert ids.shape == (context_length,)
  assert ids[0] == vocab['[CLS]'] and ids[-1] == vocab['[SEP]']
  assert vocab['[PAD]'] not in ids.tolist()
  # The kept tokens are the first context_length - 2 words.
  expected = [vocab[w] for w in text.split()[:context_length - 2]]
  assert ids[1:-1].tolist() == expected
  assert ids.tolist() == reference_ids(text, vocab, context_length)


def test_lowercasing(vocab_file):
  tok = tokenizer_lib.Tokenizer(vocab_file, context_length=12)
  upper, lower = tok(['CHEST X-Ray Of A Nodule', 'chest x-ray of a nodule'])
  assert upper.tolist() == lower.tolist()
  assert read_vocab(vocab_file)['[UNK]'] not in lower.tolist()


def test_no_lowercasing_keeps_case(vocab_file):
  vocab = read_vocab(vocab_file)
  tok = tokenizer_lib.Tokenizer(vocab_file, context_length=12, lowercase=False)
  text = 'Chest x-ray'  # 'C' is not in the vocab -> 'Chest' is [UNK]
  ids = tok([text])[0]
  assert ids[1] == vocab['[UNK]']
  assert ids.tolist() == reference_ids(text, vocab, 12, lowercase=False)


def test_write_vocab_layout(vocab_file):
  vocab = read_vocab(vocab_file)
  lines = list(vocab)
  assert lines[:5] == list(tokenizer_lib.SPECIAL_TOKENS)
  assert len(set(lines)) == len(lines)  # no duplicate tokens
  for w in WORDS:
    assert w in vocab
    for ch in w:  # every character can continue a word
      assert '##' + ch in vocab


def test_missing_vocab_file(tmp_path):
  path = str(tmp_path / 'nope' / 'vocab.txt')
  with pytest.raises(FileNotFoundError, match='nope/vocab.txt'):
    tokenizer_lib.Tokenizer(path, context_length=8)


@pytest.mark.parametrize('missing', ['[PAD]', '[UNK]'])
def test_vocab_missing_special_tokens(tmp_path, missing):
  path = tmp_path / 'vocab.txt'
  tokens = [t for t in ('[PAD]', '[UNK]', '[CLS]', '[SEP]') if t != missing]
  path.write_text('\n'.join(tokens + ['chest']) + '\n')
  with pytest.raises(ValueError,
                     match='missing special tokens.*' + re.escape(missing)):
    tokenizer_lib.Tokenizer(str(path), context_length=8)


@pytest.mark.parametrize('missing', ['[CLS]', '[SEP]'])
def test_vocab_missing_cls_or_sep_raises_value_error(tmp_path, missing):
  path = tmp_path / 'vocab.txt'
  tokens = [t for t in ('[PAD]', '[UNK]', '[CLS]', '[SEP]') if t != missing]
  path.write_text('\n'.join(tokens + ['chest']) + '\n')
  with pytest.raises(ValueError, match='missing special tokens'):
    tokenizer_lib.Tokenizer(str(path), context_length=8)
