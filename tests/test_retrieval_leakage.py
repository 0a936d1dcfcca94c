"""Near-duplicate detection between the corpus and evaluation splits."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from mgtil_jax.data import synth
from mgtil_jax.retrieval import corpus as corpus_lib
from mgtil_jax.retrieval import leakage


def test_hash_pairs_equals_brute_force():
  rng = np.random.default_rng(0)
  evals = rng.integers(0, 2**63, 150, dtype=np.int64).astype(np.uint64)
  corpus = rng.integers(0, 2**63, 1000, dtype=np.int64).astype(np.uint64)
  for i in range(60):  # plant copies with 0..5 flipped bits
    h = int(evals[i])
    for b in rng.choice(64, size=i % 6, replace=False):
      h ^= 1 << int(b)
    corpus[i * 15] = np.uint64(h)
  # Reference: every pair's popcount, written with Python ints.
  every = [(c, e, bin(int(corpus[c]) ^ int(evals[e])).count('1'))
           for c in range(len(corpus)) for e in range(len(evals))]
  for d in (0, 2, 4):
    ci, ei, dist = leakage.hash_pairs(corpus, evals, d, block=333)
    ref = {p for p in every if p[2] <= d}
    assert set(zip(ci.tolist(), ei.tolist(), dist.tolist())) == ref
    assert len(ref) >= 10


def _jpeg_resized(image, size=80, quality=70):
  buf = io.BytesIO()
  Image.fromarray(image).resize((size, size), Image.BICUBIC).save(
      buf, format='JPEG', quality=quality)
  return buf.getvalue()


@dataclasses.dataclass
class _Task:
  name: str
  test_images: np.ndarray


def test_check_finds_a_reencoded_copy_but_not_lookalike_draws(tmp_path):
  # fundus_disc draws hash alike at 32 px (pHash distance 0 between distinct
  # draws is common); only the real copy must be reported.
  task = synth.TASKS['fundus_disc']
  test = synth.make_split(task, 'test', 8, 32, seed=0).images
  lit = synth.make_corpus(6, 32, seed=0, tasks=['fundus_disc'])
  entries = [corpus_lib.Entry(f'lit{i}', corpus_lib.encode_png(im), cap, 's')
             for i, (im, cap) in enumerate(zip(lit.images, lit.captions))]
  entries.insert(5, corpus_lib.Entry('copy', _jpeg_resized(test[11]),
                                     'A fundus photograph of glaucoma.', 's'))
  corpus_lib.ingest(entries, str(tmp_path / 'c'))
  c = corpus_lib.Corpus(str(tmp_path / 'c'))
  hashes = leakage.corpus_phashes(c)
  cand = leakage.hash_pairs(hashes, leakage.phashes(test), 4)[0]
  assert len(set(cand.tolist())) > 1  # pHash alone flags lookalikes too
  report = leakage.check(c, [_Task('fundus_disc', test)], method='phash',
                         max_distance=4, max_pixel_diff=5.0,
                         corpus_hashes=hashes)
  assert report['leaked_rows'] == [5]
  assert {(p['corpus_id'], p['task'], p['index']) for p in report['pairs']
          } >= {('copy', 'fundus_disc', 11)}
  assert report['leaked_per_task'] == {'fundus_disc': 1}
  assert report['corpus_images'] == len(c)


def test_embedding_method_and_errors(tmp_path):
  rng = np.random.default_rng(1)
  entries = [corpus_lib.Entry(f'e{i}', corpus_lib.encode_png(
      rng.integers(0, 255, (8, 8, 3), np.uint8)), f'cap {i}', 's')
             for i in range(6)]
  corpus_lib.ingest(entries, str(tmp_path / 'c'))
  c = corpus_lib.Corpus(str(tmp_path / 'c'))
  vecs = rng.normal(size=(6, 4)).astype(np.float32)
  vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
  evals = np.stack([vecs[3] + 0.01, rng.normal(size=4)]).astype(np.float32)
  evals /= np.linalg.norm(evals, axis=1, keepdims=True)
  report = leakage.check(c, [_Task('t', np.zeros((2, 8, 8, 3), np.uint8))],
                         method='embedding', min_cosine=0.99,
                         corpus_vectors_fn=lambda r: vecs[r],
                         eval_embed_fn=lambda images: evals)
  assert report['leaked_rows'] == [3]
  assert report['pairs'][0]['cosine'] > 0.99
  with pytest.raises(ValueError, match='leakage.method'):
    leakage.check(c, [], method='md5')
