"""WordPiece tokenization (BERT style) through the `tokenizers` library.

Sequences are `[CLS] tokens [SEP] [PAD]...`, truncated and padded to the
context length, exactly as HF `BertTokenizer(..., padding='max_length',
truncation=True)` produces them for BiomedCLIP.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
from tokenizers import BertWordPieceTokenizer

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


class Tokenizer:
  """Callable: list of strings -> int32[N, context_length]."""

  def __init__(self, vocab_file: str, context_length: int,
               lowercase: bool = True):
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
    self._tok.enable_padding(length=context_length, pad_id=self.pad_id,
                             pad_token='[PAD]')

  def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
    if isinstance(texts, str):
      texts = [texts]
    encodings = self._tok.encode_batch(list(texts))
    return np.asarray([e.ids for e in encodings], np.int32).reshape(
        len(texts), self.context_length)


def write_vocab(words: Iterable[str], path: str) -> str:
  """Writes a WordPiece vocab: special tokens, then whole words, then single
  characters as `##` continuations so that unseen words never map to [UNK]
  entirely."""
  words = sorted(set(words) - set(SPECIAL_TOKENS))
  chars = sorted({c for w in words for c in w})
  lines = list(SPECIAL_TOKENS) + words
  lines += [c for c in chars if c not in words]
  lines += ['##' + c for c in chars]
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path
