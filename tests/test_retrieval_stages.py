"""The three retrieval stages on hand-made cases (expected outputs worked out
by hand from docs/retrieval.md), and BM25 against the textbook formula."""

import math

import numpy as np
import pytest

from mgtil_jax.retrieval import stages


def test_dense_cutoff_keeps_every_tie_at_the_kth_distinct_score():
  rows = np.array([10, 11, 12, 13, 14, 15, 16])
  scores = np.array([0.7, 0.9, 0.8, 0.7, 0.6, 0.8, 0.7], np.float32)
  # distinct scores 0.9 > 0.8 > 0.7 > 0.6; k = 3 -> cutoff 0.7: six rows.
  got_rows, got_scores = stages.dense_cutoff(rows, scores, k=3)
  assert got_rows.tolist() == [11, 12, 15, 10, 13, 16]
  np.testing.assert_allclose(got_scores, [0.9, 0.8, 0.8, 0.7, 0.7, 0.7])


def test_dense_cutoff_fewer_candidates_or_distinct_scores_than_k():
  rows, scores = stages.dense_cutoff([3, 1], [0.2, 0.5], k=5)
  assert rows.tolist() == [1, 3]  # k' = 2: everything
  rows, _ = stages.dense_cutoff([5, 4, 6], [0.5, 0.5, 0.5], k=2)
  assert rows.tolist() == [4, 5, 6]  # one distinct score: all tie
  rows, scores = stages.dense_cutoff([], [], k=3)
  assert rows.shape == (0,) and scores.shape == (0,)


def test_dense_cutoff_ignores_empty_slots():
  rows, scores = stages.dense_cutoff([7, -1, 8, 9], [0.3, 0.9, -np.inf, 0.1],
                                     k=1)
  assert rows.tolist() == [7]


def test_ties_within_tolerance_without_chaining():
  # Float noise between identical captions is a tie ...
  rows, _ = stages.dense_cutoff([1, 2, 3], [0.9, 0.9 - 1e-8, 0.8], k=1,
                                tol=1e-6)
  assert rows.tolist() == [1, 2]
  # ... but small steps do not chain into one wide group.
  s = np.array([1.0, 1.0 - 0.6e-6, 1.0 - 1.2e-6, 1.0 - 1.8e-6])
  assert stages.tie_groups(s, 1e-6).tolist() == [0, 0, 1, 1]
  assert stages.tie_groups(s, 0.0).tolist() == [0, 1, 2, 3]


def test_cutoff_is_settled_only_past_the_kth_group():
  assert not stages.cutoff_is_settled(np.array([0.9, 0.8, 0.8]), 2, 0.0,
                                      exhausted=False)
  assert stages.cutoff_is_settled(np.array([0.9, 0.8, 0.8, 0.7]), 2, 0.0,
                                  exhausted=False)
  assert stages.cutoff_is_settled(np.array([0.9]), 2, 0.0, exhausted=True)
  assert not stages.cutoff_is_settled(np.array([]), 2, 0.0, exhausted=False)


def test_visual_rerank_keeps_top_kv_images_per_caption():
  rows = np.array([100, 101, 102, 103, 104])
  groups = np.array([7, 7, 7, 8, 9], np.uint64)  # rows 100-102 share a caption
  s_v = np.array([0.1, 0.5, 0.3, 0.2, 0.4])
  got_rows, got_sv = stages.visual_rerank(rows, groups, s_v, k_v=2)
  assert got_rows.tolist() == [101, 104, 102, 103]
  np.testing.assert_allclose(got_sv, [0.5, 0.4, 0.3, 0.2])
  got_rows, _ = stages.visual_rerank(rows, groups, s_v, k_v=1)
  assert got_rows.tolist() == [101, 104, 103]
  assert stages.visual_rerank(rows[:0], groups[:0], s_v[:0], 2)[0].size == 0


def test_visual_rerank_ties_broken_by_row():
  rows, _ = stages.visual_rerank([9, 4, 6], [1, 1, 1], [0.5, 0.5, 0.5], k_v=2)
  assert rows.tolist() == [4, 6]


def _bm25_reference(query, docs, k1=1.5, b=0.75):
  """Robertson/Lucene BM25 written out from the formula (whitespace tokens)."""
  toks = [d.lower().split() for d in docs]
  avgdl = sum(map(len, toks)) / len(toks)
  out = []
  for t in toks:
    s = 0.0
    for term in set(query.lower().split()):
      df = sum(term in d for d in toks)
      if not df:
        continue
      idf = math.log(1 + (len(toks) - df + 0.5) / (df + 0.5))
      tf = t.count(term)
      s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(t) / avgdl))
    out.append(s)
  return np.asarray(out)


def test_bm25_scores_match_the_formula_up_to_lucenes_constant():
  docs = ['chest nodule nodule', 'chest radiograph mass', 'fundus exudates',
          'nodule granuloma calcified', 'liver cyst']
  query = 'chest nodule'
  got = stages.bm25_scores(query, docs)
  ref = _bm25_reference(query, docs)
  # bm25s' Lucene variant drops the constant (k1 + 1) factor.
  np.testing.assert_allclose(got * 2.5, ref, rtol=1e-5)


def test_bm25_gate_keeps_bm25_top_k_then_orders_by_sv():
  rows = np.array([1, 2, 3, 4])
  captions = ['liver cyst', 'chest nodule', 'fundus exudates',
              'nodule seen chest radiograph']
  s_v = np.array([0.9, 0.1, 0.8, 0.5])
  got_rows, got_sv = stages.bm25_gate('chest nodule', rows, captions, s_v, k=2)
  assert got_rows.tolist() == [4, 2]  # the two matching captions, by S_v
  np.testing.assert_allclose(got_sv, [0.5, 0.1])
  # At most k candidates: no gate, only the S_v order.
  got_rows, _ = stages.bm25_gate('chest nodule', rows, captions, s_v, k=4)
  assert got_rows.tolist() == [1, 3, 4, 2]


def test_bm25_gate_query_without_known_terms_falls_back_to_sv():
  rows, _ = stages.bm25_gate('the of and', [1, 2, 3], ['ab cd', 'ef gh',
                                                       'ij kl'],
                             [0.1, 0.3, 0.2], k=2)
  assert rows.tolist() == [2, 3]
  assert stages.bm25_gate('x', [], [], [], k=2)[0].size == 0


def test_run_stages_switches():
  rows = np.array([0, 1, 2, 3, 4, 5])
  dense = np.array([0.9, 0.9, 0.8, 0.7, 0.6, 0.5])
  groups = np.array([1, 1, 2, 3, 4, 5])  # rows 0 and 1 share a caption
  caps = {0: 'nodule chest', 1: 'nodule chest', 2: 'mass chest',
          3: 'nodule lung', 4: 'cyst', 5: 'cyst'}
  s_v = {0: 0.2, 1: 0.6, 2: 0.5, 3: 0.4, 4: 0.3, 5: 0.1}
  kw = dict(k=3, k_v=1, tol=0.0, visual_fn=lambda r: [s_v[i] for i in r],
            groups_fn=lambda r: groups[r],
            captions_fn=lambda r: [caps[i] for i in r])
  # dense k=3 -> {0, 1, 2, 3}; visual k_v=1 drops row 0; 3 left = k -> no gate
  res = stages.run_stages('nodule', rows, dense, **kw)
  assert res.rows.tolist() == [1, 2, 3]
  assert res.counts == {'dense': 4, 'visual': 3, 'bm25': 3}
  # Without the visual stage: 4 candidates > k, BM25 keeps the 3 that say
  # 'nodule' or tie at 0 broken by the dense score; order = dense score.
  res = stages.run_stages('nodule', rows, dense, visual=False, **kw)
  assert res.rows.tolist() == [0, 1, 3]
  res = stages.run_stages('nodule', rows, dense, visual=False, bm25=False,
                          **kw)
  assert res.rows.tolist() == [0, 1, 2, 3]
  np.testing.assert_allclose(res.scores, [0.9, 0.9, 0.8, 0.7])


@pytest.mark.parametrize('k', [1, 2, 5])
def test_dense_cutoff_matches_a_brute_force_definition(k):
  rng = np.random.default_rng(k)
  scores = rng.integers(0, 6, 40) / 10.0  # many ties
  rows = rng.permutation(40)
  got, _ = stages.dense_cutoff(rows, scores, k)
  distinct = sorted(set(scores.tolist()), reverse=True)
  cut = distinct[min(k, len(distinct)) - 1]
  assert sorted(got.tolist()) == sorted(rows[scores >= cut].tolist())
