"""WordPiece tokenization (BERT style) through the `tokenizers` library.

Sequences are `[CLS] tokens [SEP] [PAD]...`, truncated to the context
length exactly as HF `BertTokenizer(..., truncation=True)` does for
BiomedCLIP. With `bucket=None` every row is padded to the context length
(HF's `padding='max_length'`); with `bucket=b` (the default, 16) a call pads
only to its longest row, rounded up to a multiple of b and capped at the
context length, so the text tower pays for real tokens and only a few shapes
compile. The text tower masks [PAD] keys and pools at [CLS], so trailing
padding changes nothing but float rounding (tests/test_text_trim.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Sequence

import numpy as np
from tokenizers import BertWordPieceTokenizer

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')

# Default padding multiple: prompts (~8 tokens) and captions (~40) then run
# at 16 and 48 tokens instead of BiomedCLIP's 256, with <= 16 shapes in all.
DEFAULT_BUCKET = 16


def bucketed_length(longest: int, bucket: int | None, cap: int) -> int:
  """`longest` rounded up to a multiple of `bucket`, at most `cap` (and at
  least 1); `bucket=None` (or 0) means `cap`."""
  if not bucket:
    return cap
  if bucket < 0:
    raise ValueError(f'tokenizer bucket: expected a positive multiple or '
                     f'None, got {bucket}')
  return max(1, min(cap, -(-max(longest, 1) // bucket) * bucket))


def trim_padding(tokens, bucket: int | None = DEFAULT_BUCKET,
                 pad_id: int = 0) -> np.ndarray:
  """int[N, L] -> int[N, L'] without the trailing columns that are [PAD] in
  every row, L' rounded up to a multiple of `bucket` (capped at L).

  For arrays tokenized once and sliced per batch (reference sets, exemplar
  prompts): each batch then costs its own longest caption, not the set's.
  Only trailing padding is cut, so rows keep their [SEP] and ids.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f'tokens: expected int[N, L], got shape {tokens.shape}')
  real = tokens != pad_id
  any_real = real.any(axis=0)
  longest = int(np.flatnonzero(any_real)[-1]) + 1 if any_real.any() else 1
  return tokens[:, :bucketed_length(longest, bucket, tokens.shape[1])]


class Tokenizer:
  """Callable: list of strings -> int32[N, L], L = context_length when
  `bucket` is None, else the longest row rounded up to `bucket` (capped)."""

  def __init__(self, vocab_file: str, context_length: int,
               lowercase: bool = True,
               bucket: int | None = DEFAULT_BUCKET):
    if not os.path.exists(vocab_file):
      raise FileNotFoundError(f'tokenizer vocab_file: {vocab_file} not found')
    with open(vocab_file, encoding='utf-8') as f:
      tokens = {line.rstrip('\n') for line in f}
    # Checked before `tokenizers` sees the file: it would fail with a bare
    # TypeError that does not name the file.
    missing = [t for t in SPECIAL_TOKENS[:4] if t not in tokens]
    if missing:
      raise ValueError(f'tokenizer vocab_file {vocab_file}: missing special '
                       f'tokens {missing}')
    self._tok = BertWordPieceTokenizer(vocab_file, lowercase=lowercase)
    vocab = self._tok.get_vocab()
    self.pad_id = vocab['[PAD]']
    self.vocab_size = self._tok.get_vocab_size()
    self.context_length = context_length
    self._tok.enable_truncation(max_length=context_length)
    self.bucket = bucket

  @property
  def bucket(self) -> int | None:
    return self._bucket

  @bucket.setter
  def bucket(self, bucket: int | None):
    bucketed_length(1, bucket, self.context_length)  # validates `bucket`
    self._bucket = bucket or None
    if self._bucket:  # to the batch's longest row, rounded up
      self._tok.enable_padding(pad_id=self.pad_id, pad_token='[PAD]',
                               pad_to_multiple_of=self._bucket)
    else:
      self._tok.enable_padding(length=self.context_length, pad_id=self.pad_id,
                               pad_token='[PAD]')

  def vocab_digest(self) -> str:
    """sha256 of the token -> id table: keys caches of models trained
    with these ids (the pretraining cache)."""
    vocab = sorted(self._tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]

  def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
      return np.zeros((0, bucketed_length(1, self.bucket,
                                          self.context_length)), np.int32)
    encodings = self._tok.encode_batch(texts)
    # Rounding up may pass the context length; those columns are all [PAD].
    return np.asarray([e.ids for e in encodings],
                      np.int32)[:, :self.context_length]


def write_vocab(words: Iterable[str], path: str) -> str:
  """Writes a WordPiece vocab: special tokens, then whole words, then single
  characters as `##` continuations so that unseen words never map to [UNK]
  entirely."""
  words = sorted(set(words) - set(SPECIAL_TOKENS))
  chars = sorted({c for w in words for c in w})
  lines = list(SPECIAL_TOKENS) + words
  lines += [c for c in chars if c not in words]
  lines += ['##' + c for c in chars]
  text = '\n'.join(lines) + '\n'
  try:  # an existing workdir's vocab stays untouched (not even its mtime)
    with open(path) as f:
      if f.read() == text:
        return path
  except (OSError, UnicodeDecodeError):
    pass
  with open(path, 'w') as f:
    f.write(text)
  return path
