"""Searchers against NumPy brute force; ScaNN recall; sharded merge; saved
indices and their identity checks; build-time recall calibration (exact
top-k with held-out copies, tie-aware recall, the calibrated choice against
fresh queries, the manifest, small-N exact search, unreachable targets,
recall after the cross-shard merge)."""

import os

import numpy as np
import pytest

from configs import retrieval as retrieval_cfg
from mgtil_jax.retrieval import index as index_lib


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n, d, clusters, seed, noise=0.35):
  """Points around fixed centres (the same for every seed: queries and
  database share them)."""
  centers = np.random.default_rng(0).normal(size=(clusters, d))
  rng = np.random.default_rng(seed + 1)
  x = centers[rng.integers(clusters, size=n)] + noise * rng.normal(size=(n, d))
  return _unit(x)


def _brute(db, q, k):
  """Reference: full score matrix, sorted by (-score, position)."""
  s = q.astype(np.float64) @ db.astype(np.float64).T
  order = np.lexsort((np.broadcast_to(np.arange(len(db)), s.shape), -s),
                     axis=-1)[:, :k]
  return order


def test_exact_searcher_equals_brute_force_across_blocks():
  db = _clustered(1000, 16, 20, 0)
  db[500] = db[10]  # an exact duplicate: ties go to the smaller position
  q = _unit(np.random.default_rng(1).normal(size=(70, 16)))
  q[0] = db[10]
  s = index_lib.ExactSearcher(db, block_rows=137)  # 8 blocks, merged
  scores, pos = s.search(q, 12)
  ref = _brute(db, q, 12)
  np.testing.assert_array_equal(pos, ref)
  np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, ref, 1),
                             rtol=1e-5, atol=1e-6)
  assert pos[0, :2].tolist() == [10, 500]
  # k larger than N is clamped.
  assert s.search(q[:2], 5000)[1].shape == (2, 1000)


def test_scann_recall_against_exact():
  db = _clustered(20000, 32, 100, 2)
  q = _clustered(200, 32, 100, 3, noise=0.4)
  cfg = retrieval_cfg.defaults().scann
  params = index_lib.scann_params(len(db), cfg)
  assert params['num_leaves'] == round(np.sqrt(20000))
  s = index_lib.ScannSearcher.build(db, params, k=10)
  _, got = s.search(q, 10)
  _, ref = index_lib.ExactSearcher(db).search(q, 10)
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref)])
  assert recall >= 0.95, recall


def _cfg(**kw):
  c = retrieval_cfg.defaults()
  for k, v in kw.items():
    c[k] = v
  return c


def test_sharded_build_equals_unsharded_and_reloads(tmp_path):
  db = _clustered(3000, 16, 30, 4)
  rows = np.arange(0, 6000, 2)  # corpus rows the index positions stand for
  table = {int(r): db[i] for i, r in enumerate(rows)}
  vectors_fn = lambda r: np.stack([table[int(i)] for i in r])
  q = _clustered(40, 16, 30, 5)
  ident = {'corpus_snapshot': 'abc', 'embeddings_checksum': 'def',
           'vectors': 'text'}
  cfg = _cfg()
  one = index_lib.build_index(vectors_fn, rows, str(tmp_path / 'one'),
                              identity=ident, searcher='exact',
                              scann_cfg=cfg.scann, shard_rows=10**6)
  many = index_lib.build_index(vectors_fn, rows, str(tmp_path / 'many'),
                               identity=ident, searcher='exact',
                               scann_cfg=cfg.scann, shard_rows=700)
  assert len(many.manifest['shards']) == 5
  s1, r1 = one.search(q, 15)
  s2, r2 = many.search(q, 15)
  np.testing.assert_array_equal(r1, r2)
  np.testing.assert_array_equal(r1, rows[_brute(db, q, 15)])
  again = index_lib.load_index(str(tmp_path / 'many'), vectors_fn,
                               identity=ident)
  np.testing.assert_array_equal(again.search(q, 15)[1], r2)
  assert again.snapshot == many.snapshot


def test_scann_index_save_load_and_checks(tmp_path):
  db = _clustered(4000, 16, 40, 6)
  rows = np.arange(4000)
  vectors_fn = lambda r: db[r]
  ident = {'corpus_snapshot': 'c1', 'embeddings_checksum': 'e1',
           'vectors': 'text'}
  cfg = _cfg()
  cfg.scann.min_size = 100
  built = index_lib.build_index(vectors_fn, rows, str(tmp_path / 'ix'),
                                identity=ident, searcher='auto',
                                scann_cfg=cfg.scann, shard_rows=2000)
  assert [s['kind'] for s in built.manifest['shards']] == ['scann', 'scann']
  q = _clustered(30, 16, 40, 7)
  want = built.search(q, 10)
  for lazy in (False, True):
    got = index_lib.load_index(str(tmp_path / 'ix'), vectors_fn,
                               identity=ident, lazy=lazy).search(q, 10)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0])
  # A corpus or embedding snapshot that differs is refused, naming it.
  with pytest.raises(ValueError, match='corpus_snapshot'):
    index_lib.load_index(str(tmp_path / 'ix'), vectors_fn,
                         identity=dict(ident, corpus_snapshot='other'))
  # A changed index file is caught by its checksum.
  shard = tmp_path / 'ix' / 'shard-00001'
  victim = sorted(os.listdir(shard))[0]
  with open(shard / victim, 'ab') as f:
    f.write(b'x')
  with pytest.raises(ValueError, match='differ from the manifest'):
    index_lib.load_index(str(tmp_path / 'ix'), vectors_fn, identity=ident)


def test_choose_kind_and_errors():
  assert index_lib.choose_kind(100, 'auto', 20000) == 'exact'
  assert index_lib.choose_kind(10**6, 'auto', 20000) == 'scann'
  with pytest.raises(ValueError, match='config.retrieval.searcher'):
    index_lib.choose_kind(10, 'faiss', 1)
  with pytest.raises(FileNotFoundError):
    index_lib.load_index('/nonexistent', None, identity={})


# ------------------------------------------------------------ calibration --


def _topics(n, d, seed, topics=150, sub_dim=8):
  """Unit vectors from topics with power-law sizes, each a random
  `sub_dim`-dim subspace plus noise (a distribution on which the
  uncalibrated defaults miss neighbours); topics fixed, rows per seed."""
  t_rng = np.random.default_rng(100)
  centres = t_rng.normal(size=(topics, d))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  basis = t_rng.normal(size=(topics, sub_dim, d)) / np.sqrt(d)
  p = (np.arange(topics) + 1.0) ** -1.1
  rng = np.random.default_rng(seed)
  t = rng.choice(topics, n, p=p / p.sum())
  z = rng.normal(size=(n, sub_dim))
  x = (0.6 * centres[t] + 0.7 * np.einsum('nr,nrd->nd', z, basis[t]) +
       0.25 * rng.normal(size=(n, d)) / np.sqrt(d))
  return _unit(x)


def _recall(got, ref):
  return np.mean([len(set(a) & set(b)) / ref.shape[1]
                  for a, b in zip(got, ref)])


def test_exact_topk_copies_and_tie_aware_recall():
  db = _clustered(700, 16, 10, 8)
  db[600] = db[3]  # a caption shared by two panels
  q = np.concatenate([db[[3, 50]], _clustered(5, 16, 10, 9)])
  held = np.array([True, True] + [False] * 5)
  s, p, copies = index_lib.exact_topk(db, q, 6, held, block_rows=128)
  ref = q.astype(np.float64) @ db.astype(np.float64).T
  ref[0, [3, 600]] = ref[1, 50] = -np.inf  # NumPy reference: copies masked
  want = _brute(db, q, 6)
  order = np.argsort(-ref, axis=1, kind='stable')[:, :6]
  np.testing.assert_array_equal(p[2:], want[2:])
  np.testing.assert_array_equal(p[:2], order[:2])
  assert copies.tolist() == [2, 1, 0, 0, 0, 0, 0]
  np.testing.assert_allclose(s, np.take_along_axis(ref, p, 1), atol=1e-5)
  # Tie-aware recall: a returned copy of a true neighbour counts.
  truth = np.array([[0.9, 0.8, 0.7]], np.float32)
  found = np.array([[0.9, 0.7, 0.1]], np.float32)  # 2 of 3
  assert index_lib.recall_at_k(found, truth, 3)[0] == pytest.approx(2 / 3)
  # Fewer true neighbours than k (tiny shard): recall over those.
  assert index_lib.recall_at_k(np.array([[0.5, -np.inf]], np.float32),
                               np.array([[0.5, -np.inf]], np.float32),
                               2)[0] == 1.0


def test_calibration_reaches_target_where_defaults_do_not(tmp_path):
  db = _topics(30000, 32, 0)
  q = _topics(1000, 32, 1)  # held-out queries, not the calibration sample
  ref = _brute(db, q, 10)  # NumPy float64 brute force
  cfg = retrieval_cfg.defaults().scann
  params = index_lib.scann_params(len(db), cfg)
  s = index_lib.ScannSearcher.build(db, params, k=10)
  default = _recall(s.search(q, 10)[1], ref)
  assert default < 0.9, default  # the old fixed 2% of leaves falls short
  built = index_lib.build_index(
      lambda r: db[r], np.arange(len(db)), str(tmp_path / 'ix'),
      identity={}, searcher='auto', scann_cfg=cfg, shard_rows=10**6, k=10)
  cal = built.manifest['shards'][0]['calibration']
  assert cal['reached'] and cal['recall_lcb'] >= 0.95
  assert cal['leaves_to_search'] > params['num_leaves_to_search']
  calibrated = _recall(built.search(q, 10)[1], ref)
  # Target 0.95 on fresh queries, less 0.01 for their sampling error.
  assert calibrated >= 0.94, (calibrated, cal)


def test_manifest_records_calibration_and_load_uses_it(tmp_path):
  db = _topics(6000, 16, 2)
  pool = _topics(50, 16, 3)
  ident = {'corpus_snapshot': 'c', 'embeddings_checksum': 'e',
           'vectors': 'text'}
  cfg = _cfg()
  cfg.scann.min_size = 1000
  cfg.scann.max_search_fraction = 1.0  # 3000-row shards need many leaves
  built = index_lib.build_index(
      lambda r: db[r], np.arange(6000), str(tmp_path / 'ix'), identity=ident,
      searcher='auto', scann_cfg=cfg.scann, shard_rows=3000, k=10,
      extra_queries=pool)
  m = built.manifest
  assert m['recall']['queries'] == 1050 and m['recall']['pool_queries'] == 50
  assert m['recall']['k'] == 10 and m['recall']['target'] == 0.95
  for shard in m['shards']:
    cal = shard['calibration']
    assert shard['kind'] == 'scann'
    assert cal['curve'] and cal['curve'][0]['leaves'] == 1
    assert shard['params']['num_leaves_to_search'] == cal['leaves_to_search']
    assert shard['params']['reorder_factor'] == cal['reorder_factor']
  # Merged recall of both shards, against a NumPy check on the pool queries
  # (not held out: plain top-10 by position over all 6000 rows).
  got = index_lib.load_index(str(tmp_path / 'ix'), lambda r: db[r],
                             identity=ident)
  assert [s.params['num_leaves_to_search'] for _, s in got.searcher.shards
          ] == [s['calibration']['leaves_to_search'] for s in m['shards']]
  independent = _recall(got.search(pool, 10)[1], _brute(db, pool, 10))
  assert abs(independent - m['recall']['estimate_pool_queries']) < 0.02
  assert 'timing' in m and m['timing'][0]['exact_qps'] > 0


def test_small_n_exact_and_unreachable_target(tmp_path, caplog):
  db = _topics(5000, 16, 4)
  fn = lambda r: db[r]
  cfg = _cfg().scann
  small = index_lib.build_index(fn, np.arange(500), str(tmp_path / 's'),
                                identity={}, searcher='auto', scann_cfg=cfg,
                                shard_rows=10**6)
  assert small.manifest['shards'][0]['kind'] == 'exact'  # N < min_size
  assert small.manifest['recall']['estimate'] == 1.0
  cfg.min_size = 100
  cfg.target_recall = 0.999
  cfg.max_search_fraction = 0.01  # one leaf of 71
  cfg.max_reorder_factor = 1
  with caplog.at_level('WARNING', logger=index_lib.__name__):
    fell_back = index_lib.build_index(fn, np.arange(5000), str(tmp_path / 'f'),
                                      identity={}, searcher='auto',
                                      scann_cfg=cfg, shard_rows=10**6)
  lines = [r for r in caplog.records if r.levelname == 'WARNING']
  assert len(lines) == 1 and 'using exact search' in lines[0].getMessage()
  shard = fell_back.manifest['shards'][0]
  assert shard['kind'] == 'exact' and not shard['calibration_failed'][
      'reached']
  assert fell_back.manifest['recall']['estimate'] == 1.0
  cfg.exact_fallback_rows = 0  # too big for exact: keep ScaNN, say so
  caplog.clear()
  with caplog.at_level('WARNING', logger=index_lib.__name__):
    kept = index_lib.build_index(fn, np.arange(5000), str(tmp_path / 'k'),
                                 identity={}, searcher='auto', scann_cfg=cfg,
                                 shard_rows=10**6)
  assert 'keeping the best setting' in caplog.records[-1].getMessage()
  assert kept.manifest['shards'][0]['kind'] == 'scann'
  assert not kept.manifest['recall']['reached']


def test_merged_recall_against_a_full_sort():
  rng = np.random.default_rng(0)
  q, k, parts, every = 20, 5, [], []
  for start in (0, 100, 200):
    truth = -np.sort(-rng.random((q, k)).astype(np.float32), 1)
    pos = rng.permuted(np.tile(np.arange(100), (q, 1)), axis=1)[:, :k]
    found = truth.copy()
    found[:, ::2] -= 0.5  # the searcher misses every other neighbour
    parts.append((start, found, pos, found, truth))
    every.append((truth, found))
  got = index_lib._merged_recall(parts, k)  # pylint: disable=protected-access
  truth = np.concatenate([t for t, _ in every], 1)
  found = np.concatenate([f for _, f in every], 1)
  kth = -np.sort(-truth, 1)[:, k - 1]
  best = -np.sort(-found, 1)[:, :k]
  want = (best >= kth[:, None] - 1e-5).sum(1) / k
  np.testing.assert_allclose(got, want)


def test_search_recall_counts_a_returned_copy_as_a_hit():
  # Issue 25: repeated vectors. Rows 0..4 hold two copies of each of two
  # vectors; a search that returns the other copy found a true neighbour.
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(2, 8)).astype(np.float32)
  far = rng.normal(size=(20, 8)).astype(np.float32) * 0.1
  db = np.concatenate([np.stack([a, a, b, b]), far])
  q = (a + 0.05 * b)[None].astype(np.float32)
  exact = q.astype(np.float64) @ db.astype(np.float64).T  # NumPy reference
  truth_ids = np.argsort(-exact, axis=1, kind='stable')[:, :2]
  truth_scores = np.take_along_axis(exact, truth_ids, 1).astype(np.float32)
  assert sorted(truth_ids[0].tolist()) == [0, 1]
  swapped = np.array([[1, 0]])        # the same two copies, other order
  other = np.array([[0, 2]])          # one copy of a, one of b: 1 of 2
  assert index_lib.search_recall(db, q, swapped, truth_scores, 2) == 1.0
  assert index_lib.search_recall(db, q, other, truth_scores, 2) == 0.5
  # A third copy of a, returned in place of the truth's second: a tie
  # with the k-th exact score, so a hit; by ids it would be a miss.
  db3 = np.concatenate([db, a[None]])
  assert index_lib.search_recall(db3, q, np.array([[0, len(db3) - 1]]),
                                 truth_scores, 2) == 1.0
  by_id = len(set([0, len(db3) - 1]) & set(truth_ids[0].tolist())) / 2
  assert by_id == 0.5
