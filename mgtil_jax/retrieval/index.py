"""Maximum inner-product search over L2-normalised vectors (cosine).

One interface, `search(queries float32[Q, D], k) -> (scores float32[Q, k'],
positions int64[Q, k'])`, best first, k' = min(k, N), with:

- `ExactSearcher`: jitted matmul + top-k over row blocks; the ground truth,
  and the right choice for small corpora.
- `ScannSearcher`: ScaNN tree (k-means partitions, num_leaves ~ sqrt(N)) +
  asymmetric hashing + exact reordering, parameters scaled with N.
- `ShardedSearcher`: one searcher per shard of rows, top-k merged; shards
  may be loaded one at a time so the corpus can exceed one machine's memory.

ScaNN's recall depends on the data, so `build_index` calibrates every ScaNN
shard: on >= 1000 calibration queries (held-out corpus rows, plus the
question pool's vectors when given) it compares ScaNN with exact top-k and
picks the smallest leaves-to-search and reorder depth reaching
`target_recall` (`calibrate_scann`); the recall curve, the chosen values and
the recall after the cross-shard merge go into the manifest.

`build_index` / `load_index` write and check an index directory: a manifest
with the identity of what was indexed (corpus snapshot, embedding checksum,
which vectors, which rows), the parameters, and a sha256 per file; loading
an index whose identity differs from the corpus and embeddings at hand is a
clear error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from mgtil_jax.retrieval import corpus as corpus_lib

log = logging.getLogger(__name__)

MANIFEST = 'index_manifest.json'
INDEX_VERSION = 2  # 2: calibrated ScaNN parameters and recall in the manifest
# A returned entry counts as a true neighbour when its exact score reaches
# the k-th exact score minus this (float32 rounding; exact duplicates, e.g.
# panels of one figure sharing a caption, are interchangeable).
RECALL_TOLERANCE = 1e-5
# Rows within this of a held-out query's own score are its copies.
DUPLICATE_TOLERANCE = 1e-5
# Calibration looks past at most this many copies of a held-out query.
MAX_COPIES = 1024


def merge_topk(scores: np.ndarray, positions: np.ndarray, k: int):
  """Best k of candidate lists float32[Q, M], int64[Q, M] (-inf = empty),
  ties broken by the smaller position so results are deterministic."""
  k = min(k, scores.shape[1])
  order = np.lexsort((positions, -scores), axis=-1)[:, :k]
  return (np.take_along_axis(scores, order, -1),
          np.take_along_axis(positions, order, -1))


@functools.partial(jax.jit, static_argnames=('k',))
def _block_topk(block, queries, k):
  scores = jnp.dot(queries, block.T, preferred_element_type=jnp.float32)
  return jax.lax.top_k(scores, k)


class ExactSearcher:
  kind = 'exact'

  def __init__(self, vectors: np.ndarray, block_rows: int = 262144):
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
      raise ValueError(f'exact searcher: expected vectors [N, D], got '
                       f'{vectors.shape}')
    self.n, self.dim = vectors.shape
    self.block_rows = block_rows
    self._blocks = [jnp.asarray(vectors[i:i + block_rows], jnp.float32)
                    for i in range(0, self.n, block_rows)]

  def search(self, queries: np.ndarray, k: int):
    queries = np.asarray(queries, np.float32)
    q = len(queries)
    k = min(k, self.n)
    if not q or not k:
      return np.zeros((q, k), np.float32), np.zeros((q, k), np.int64)
    # Queries padded to a multiple of 64: a handful of compiled shapes.
    pad = -q % 64
    qp = np.concatenate([queries, np.zeros((pad, self.dim), np.float32)])
    scores, positions = [], []
    for b, block in enumerate(self._blocks):
      s, i = _block_topk(block, qp, k=min(k, block.shape[0]))
      scores.append(np.asarray(s)[:q])
      positions.append(np.asarray(i)[:q].astype(np.int64) + b *
                       self.block_rows)
    if len(scores) == 1:
      return merge_topk(scores[0], positions[0], k)
    return merge_topk(np.concatenate(scores, 1), np.concatenate(positions, 1),
                      k)


def scann_params(n: int, cfg) -> dict:
  """ScaNN parameters scaled with the number of rows N."""
  num_leaves = max(2, int(round(cfg.leaves_per_sqrt * math.sqrt(n))))
  num_leaves = min(num_leaves, max(2, n // 50))  # >= ~50 points per leaf
  return dict(num_leaves=num_leaves,
              num_leaves_to_search=max(1, math.ceil(cfg.search_fraction *
                                                    num_leaves)),
              training_sample_size=int(min(n, cfg.training_sample)),
              spherical=bool(cfg.spherical),
              dims_per_block=int(cfg.dims_per_block),
              aq_threshold=float(cfg.aq_threshold),
              reorder_factor=int(cfg.reorder_factor),
              reorder_dtype=str(cfg.reorder_dtype))


class ScannSearcher:
  kind = 'scann'

  def __init__(self, searcher, n: int, dim: int, params: dict):
    self._searcher, self.n, self.dim, self.params = searcher, n, dim, params

  @classmethod
  def build(cls, vectors: np.ndarray, params: dict, k: int = 10):
    from scann import scann_ops_pybind  # pylint: disable=g-import-not-at-top
    from scann.scann_ops.py import scann_builder  # pylint: disable=g-import-not-at-top
    vectors = np.ascontiguousarray(vectors, np.float32)
    n, dim = vectors.shape
    reorder = {'float32': scann_builder.ReorderType.FLOAT32,
               'bfloat16': scann_builder.ReorderType.BFLOAT16,
               'int8': scann_builder.ReorderType.INT8}
    if params['reorder_dtype'] not in reorder:
      raise ValueError(f'config.retrieval.scann.reorder_dtype: expected one '
                       f'of {sorted(reorder)}, got {params["reorder_dtype"]!r}')
    builder = scann_ops_pybind.builder(vectors, k, 'dot_product')
    builder = builder.tree(
        num_leaves=params['num_leaves'],
        num_leaves_to_search=params['num_leaves_to_search'],
        training_sample_size=params['training_sample_size'],
        spherical=params.get('spherical', False))
    builder = builder.score_ah(
        params['dims_per_block'],
        anisotropic_quantization_threshold=params['aq_threshold'],
        training_sample_size=params['training_sample_size'])
    # Always reorder after AH (ScaNN's advice): the returned scores are then
    # exact dot products, which the tie-robust cutoff relies on.
    builder = builder.reorder(k * params['reorder_factor'],
                              quantize=reorder[params['reorder_dtype']])
    from mgtil_jax.core import logs  # pylint: disable=g-import-not-at-top
    with logs.quiet_native_stderr():  # ScaNN's C++ INFO lines, unless verbose
      searcher = builder.build()
    return cls(searcher, n, dim, params)

  def search(self, queries: np.ndarray, k: int, leaves: int | None = None,
             reorder_factor: int | None = None, extra: int = 0):
    """Top-k with the (calibrated) parameters, or the given leaves to
    search / reorder factor (reordered candidates = k * reorder_factor);
    extra: that many more results and reordered candidates (calibration
    skips a held-out query's copies)."""
    queries = np.ascontiguousarray(queries, np.float32)
    leaves = int(leaves or self.params['num_leaves_to_search'])
    factor = int(reorder_factor or self.params['reorder_factor'])
    pre = min(self.n, max(k, k * factor) + extra)
    k = min(k + extra, self.n)
    if not len(queries) or not k:
      return (np.zeros((len(queries), k), np.float32),
              np.zeros((len(queries), k), np.int64))
    fn = (self._searcher.search_batched_parallel if len(queries) >= 256
          else self._searcher.search_batched)
    positions, scores = fn(queries, final_num_neighbors=k,
                           pre_reorder_num_neighbors=pre,
                           leaves_to_search=leaves)
    positions = np.asarray(positions, np.int64)
    scores = np.asarray(scores, np.float32)
    # ScaNN pads short result lists (fewer points in the searched leaves).
    bad = ~np.isfinite(scores) | (positions < 0) | (positions >= self.n)
    scores = np.where(bad, -np.inf, scores)
    positions = np.where(bad, -1, positions)
    return scores, positions

  def save(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    # Relative asset paths: the index folder can be moved (and is renamed
    # from its .partial name when complete).
    self._searcher.serialize(directory, relative_path=True)

  @classmethod
  def load(cls, directory: str, n: int, dim: int, params: dict):
    from scann import scann_ops_pybind  # pylint: disable=g-import-not-at-top
    return cls(scann_ops_pybind.load_searcher(directory), n, dim, params)


class ShardedSearcher:
  """Searches each shard (positions offset by its start), merges top-k.

  shards: list of (start, searcher) or (start, loader) where loader() builds
  the searcher on demand (then dropped after the call: bounded memory).
  """

  kind = 'sharded'

  def __init__(self, shards, n: int):
    self.shards, self.n = shards, n

  def search(self, queries: np.ndarray, k: int):
    scores, positions = [], []
    for start, s in self.shards:
      searcher = s() if callable(s) and not hasattr(s, 'search') else s
      sc, pos = searcher.search(queries, k)
      scores.append(sc)
      positions.append(np.where(pos >= 0, pos + start, -1))
    if len(scores) == 1:
      return scores[0], positions[0]
    return merge_topk(np.concatenate(scores, 1), np.concatenate(positions, 1),
                      k)


# ------------------------------------------------------------ calibration --


def copy_threshold(queries: np.ndarray, copy_cosine: float = 1.0):
  """Score from which a row counts as a copy of a held-out query: cosine
  >= copy_cosine, or equal up to DUPLICATE_TOLERANCE."""
  own = np.einsum('qd,qd->q', queries, queries)
  return np.minimum(own - DUPLICATE_TOLERANCE, copy_cosine * own)


def exact_topk(vectors, queries: np.ndarray, k: int,
               held_out: np.ndarray | None = None, block_rows: int = 65536,
               copy_cosine: float = 1.0):
  """Exact top-k by NumPy over row blocks (vectors may be a memory map: one
  block in memory at a time) -> scores float32[Q, k'], positions int64[Q,
  k'], copies int64[Q], best first, -inf / -1 where fewer than k rows.

  held_out[q] True: query q is a corpus row standing for a caption outside
  the corpus, so its copies are left out: its own row, the rows of a
  caption shared by several panels of a figure, and rows at cosine >=
  copy_cosine (templated near-verbatim captions), which would make a
  near-duplicate-heavy corpus look easier than it is for new queries;
  `copies` counts them."""
  queries = np.asarray(queries, np.float32)
  n, nq = len(vectors), len(queries)
  k = min(k, n)
  self_score = copy_threshold(queries, copy_cosine)
  copies = np.zeros(nq, np.int64)
  best_s = np.full((nq, 0), -np.inf, np.float32)
  best_p = np.zeros((nq, 0), np.int64)
  for start in range(0, n, block_rows):
    block = np.asarray(vectors[start:start + block_rows], np.float32)
    s = queries @ block.T
    if held_out is not None and held_out.any():
      same = (s >= self_score[:, None]) & held_out[:, None]
      copies += same.sum(1)
      s[same] = -np.inf
    kk = min(k, len(block))
    top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
    best_p = np.concatenate([best_p, top.astype(np.int64) + start], 1)
    if best_s.shape[1] > k:
      best_s, best_p = merge_topk(best_s, best_p, k)
  best_s, best_p = merge_topk(best_s, best_p, k)
  best_p = np.where(np.isfinite(best_s), best_p, -1)
  return best_s, best_p, copies


def _drop_copies(scores, positions, found, queries, held_out, k,
                 copy_cosine):
  """Top-k lists without the copies of held-out queries."""
  if held_out is not None and held_out.any():
    self_score = copy_threshold(queries, copy_cosine)
    same = (found >= self_score[:, None]) & held_out[:, None]
    order = np.argsort(same, axis=1, kind='stable')[:, :k]
    scores, positions, found = (np.take_along_axis(x, order, 1) for x in (
        np.where(same, -np.inf, scores), np.where(same, -1, positions),
        np.where(same, -np.inf, found)))
  return scores[:, :k], positions[:, :k], found[:, :k]


def true_scores(vectors, queries, positions):
  """Exact dot products of the returned positions (-inf where -1)."""
  safe = np.maximum(positions, 0)
  flat = np.unique(safe)
  table = np.asarray(vectors[flat], np.float32)
  where = np.searchsorted(flat, safe)
  queries = np.asarray(queries, np.float32)
  s = np.empty(positions.shape, np.float32)
  step = max(1, 2**24 // max(1, positions.shape[1] * table.shape[1]))
  for i in range(0, len(queries), step):  # [step, k, D] at a time
    s[i:i + step] = np.einsum('qd,qkd->qk', queries[i:i + step],
                              table[where[i:i + step]])
  return np.where(positions >= 0, s, -np.inf)


def recall_at_k(found_scores, truth_scores, k: int,
                tol: float = RECALL_TOLERANCE) -> np.ndarray:
  """Per-query recall@k of returned entries given their *exact* scores
  [Q, >=k] against the exact top-k scores [Q, k]: a returned entry is a
  true neighbour when it scores at least the k-th exact score (- tol), so
  ties (duplicates) count whichever copy is returned."""
  truth_scores = truth_scores[:, :k]
  want = np.isfinite(truth_scores).sum(1)
  kth = np.take_along_axis(truth_scores, np.maximum(want - 1, 0)[:, None],
                           1)[:, 0]
  hits = (found_scores[:, :k] >= kth[:, None] - tol).sum(1)
  return np.where(want > 0, np.minimum(hits, want) / np.maximum(want, 1), 1.)


def search_recall(vectors, queries, positions, truth_scores, k: int) -> float:
  """Mean tie-aware recall@k of returned `positions` [Q, >=k] against the
  exact top-k scores [Q, k]: each returned row is scored exactly
  (`true_scores`), so a copy of a true neighbour is a hit (`recall_at_k`),
  where comparing ids would count it a miss."""
  found = true_scores(vectors, queries, np.asarray(positions, np.int64))
  return float(recall_at_k(found, np.asarray(truth_scores, np.float32),
                           k).mean())


def _grid(lo: int, hi: int, ratio: float) -> list[int]:
  out, x = [], float(lo)
  while x < hi:
    out.append(int(round(x)))
    x *= ratio
  return sorted(set(out + [hi]))


REORDER_FACTORS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300)


def calibrate_scann(searcher: 'ScannSearcher', vectors, queries: np.ndarray,
                    k: int, cfg, held_out: np.ndarray | None = None,
                    truth=None) -> dict:
  """Smallest leaves-to-search, then smallest reorder factor, reaching
  cfg.target_recall (recall@k over `queries` against exact search; see
  exact_topk for `held_out`).

  The criterion is the one-sided 97.5% lower confidence bound of the mean
  recall (mean - 1.96 standard errors over the queries), so the choice
  holds beyond the sample. Leaves grow by x1.4 from 1 to
  cfg.max_search_fraction of the leaves, with the largest allowed reorder
  factor (cfg.max_reorder_factor); at the first number of leaves that
  reaches the target, the reorder factor grows from 1 until it does too.
  truth: precomputed exact_topk(..., held_out) (+ its seconds, for the
  QPS). Returns the chosen values, the measured curve, whether the target
  was reached, and the recall, exact / ScaNN queries per second and
  results at the chosen setting.
  """
  queries = np.ascontiguousarray(queries, np.float32)
  t = time.perf_counter()
  copy_cosine = float(cfg.calibration_copy_cosine)
  truth = truth or exact_topk(vectors, queries, k, held_out,
                              copy_cosine=copy_cosine)
  exact_s = truth[3] if len(truth) > 3 else time.perf_counter() - t
  k = truth[0].shape[1]
  # Each query asks for k + its number of copies (at most MAX_COPIES) and
  # reorders that many more, in groups of equal extra (powers of 2 when
  # there are many distinct counts).
  extra = np.minimum(truth[2], MAX_COPIES)
  if len(np.unique(extra)) > 16:
    extra = np.where(extra > 0, 2 ** np.ceil(np.log2(np.maximum(extra, 1))),
                     0).astype(np.int64)
  groups = [(int(e), np.flatnonzero(extra == e)) for e in np.unique(extra)]
  width = k + int(extra.max(initial=0))
  num_leaves = searcher.params['num_leaves']
  max_leaves = max(1, min(num_leaves, math.ceil(cfg.max_search_fraction *
                                                num_leaves)))
  factors = [f for f in REORDER_FACTORS if f < cfg.max_reorder_factor] + [
      int(cfg.max_reorder_factor)]
  curve = []

  def measure(leaves, factor, record=True):
    s = np.full((len(queries), width), -np.inf, np.float32)
    p = np.full((len(queries), width), -1, np.int64)
    t = time.perf_counter()
    for e, idx in groups:
      gs, gp = searcher.search(queries[idx], k, leaves, factor, e)
      s[idx, :gs.shape[1]], p[idx, :gs.shape[1]] = gs, gp
    seconds = time.perf_counter() - t
    found = true_scores(vectors, queries, p)
    s, p, found = _drop_copies(s, p, found, queries, held_out, k,
                               copy_cosine)
    per_query = recall_at_k(found, truth[0], k)
    r = float(per_query.mean())
    # One-sided 97.5% lower confidence bound of the mean recall: the
    # choice must hold on other queries, not only on this sample.
    lcb = r - 1.96 * float(per_query.std()) / math.sqrt(len(per_query))
    if record:
      curve.append({'leaves': int(leaves), 'reorder_factor': int(factor),
                    'recall': r, 'recall_lcb': lcb})
    return lcb, seconds, (s, p, found), r

  target = float(cfg.target_recall)
  if not cfg.calibrate:
    leaves, factor = (searcher.params['num_leaves_to_search'],
                      searcher.params['reorder_factor'])
  else:
    leaves = None
    for leaves in _grid(1, max_leaves, 1.4):
      if measure(leaves, factors[-1])[0] >= target:
        break
    factor = factors[-1]
    if curve[-1]['recall_lcb'] >= target:
      for f in factors[:-1]:
        if measure(leaves, f)[0] >= target:
          factor = f
          break
  lcb, seconds, result, recall = measure(leaves, factor, record=not curve)
  return {'k': int(k), 'target': target, 'queries': int(len(queries)),
          'held_out_rows': int(0 if held_out is None else held_out.sum()),
          'copy_cosine': copy_cosine,
          'mean_copies_left_out': float(truth[2].mean()),
          'num_leaves': int(num_leaves), 'leaves_to_search': int(leaves),
          'reorder_factor': int(factor), 'recall': recall,
          'recall_lcb': lcb, 'reached': lcb >= target,
          'calibrated': bool(cfg.calibrate),
          'max_leaves_to_search': int(max_leaves),
          'max_reorder_factor': int(factors[-1]), 'curve': curve,
          'exact_qps': len(queries) / max(exact_s, 1e-9),
          'scann_qps': len(queries) / max(seconds, 1e-9),
          'result': result, 'truth': truth}


# ----------------------------------------------------- build, save, load --


def _hash_rows(rows: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(rows, np.int64).tobytes()
                        ).hexdigest()[:32]


def _dir_files(directory: str) -> dict:
  return {f: corpus_lib.sha256_file(os.path.join(directory, f))
          for f in sorted(os.listdir(directory))
          if os.path.isfile(os.path.join(directory, f))}


class Index:
  """Searcher + the corpus rows its positions stand for."""

  def __init__(self, searcher, rows: np.ndarray, manifest: dict):
    self.searcher, self.rows, self.manifest = searcher, rows, manifest

  def __len__(self):
    return len(self.rows)

  @property
  def snapshot(self) -> str:
    return self.manifest['snapshot']

  def search(self, queries: np.ndarray, k: int):
    """-> scores float32[Q, k'], corpus rows int64[Q, k'] (-1 = empty)."""
    scores, positions = self.searcher.search(queries, k)
    rows = np.where(positions >= 0, self.rows[np.maximum(positions, 0)], -1)
    return scores, rows


def choose_kind(n: int, searcher: str, min_size: int) -> str:
  if searcher == 'auto':
    return 'exact' if n < min_size else 'scann'
  if searcher not in ('exact', 'scann'):
    raise ValueError(f"config.retrieval.searcher: expected 'auto', 'exact' "
                     f"or 'scann', got {searcher!r}")
  return searcher


def _calibration_queries(vectors_fn, rows, scann_cfg, extra_queries):
  """-> queries, held_out: calibration_queries corpus rows (a fixed-seed
  sample of `rows`, held out: their copies are not counted as neighbours)
  + up to calibration_pool_queries of `extra_queries` (the question pool)."""
  rng = np.random.default_rng(0)
  m = min(len(rows), int(scann_cfg.calibration_queries))
  own = np.sort(rng.choice(len(rows), m, replace=False))
  queries = [np.asarray(vectors_fn(rows[own]), np.float32)]
  if extra_queries is not None and len(extra_queries):
    extra = np.asarray(extra_queries, np.float32)
    p = min(len(extra), int(scann_cfg.calibration_pool_queries))
    queries.append(extra[np.sort(rng.choice(len(extra), p, replace=False))])
  queries = np.concatenate(queries)
  return queries, np.arange(len(queries)) < m


def _merged_recall(parts, k):
  """Recall@k after the cross-shard top-k merge: parts = per shard (start,
  returned scores, positions, exact scores of them, exact top-k scores)."""
  cat = lambda i: np.concatenate([p[i] for p in parts], 1)
  # Merged on the searchers' own scores, as ShardedSearcher does.
  pos = np.concatenate([np.where(p[2] >= 0, p[2] + p[0], -1) for p in parts],
                       1)
  order = np.lexsort((pos, -cat(1)), axis=-1)[:, :k]
  found = np.take_along_axis(cat(3), order, 1)
  truth = -np.sort(-cat(4), axis=1)[:, :k]
  return recall_at_k(found, truth, k)


def build_index(vectors_fn, rows: np.ndarray, directory: str, *,
                identity: dict, searcher: str, scann_cfg, shard_rows: int,
                block_rows: int = 262144, k: int = 10,
                extra_queries: np.ndarray | None = None) -> Index:
  """Builds (and saves) an index over the vectors of corpus `rows`.

  vectors_fn(rows) -> float[len(rows), D] reads the vectors (e.g. from the
  embedding store); identity: what was indexed (corpus snapshot, embedding
  checksum, vector kind), checked by `load_index`; k: the number of
  neighbours the retrieval asks for (recall is calibrated at k);
  extra_queries: vectors of the queries the retrieval will ask (the
  question pool), added to the calibration queries.
  """
  rows = np.asarray(rows, np.int64)
  if not len(rows):
    raise ValueError(f'retrieval index {directory}: nothing to index (0 rows)')
  tmp = directory.rstrip('/') + '.partial'
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  np.save(os.path.join(tmp, 'rows.npy'), rows)
  queries, held_out = _calibration_queries(vectors_fn, rows, scann_cfg,
                                           extra_queries)
  shards, searchers, parts, timing = [], [], [], []
  for i, start in enumerate(range(0, len(rows), shard_rows)):
    part = rows[start:start + shard_rows]
    kind = choose_kind(len(part), searcher, scann_cfg.min_size)
    vectors = vectors_fn(part)
    info = {'start': int(start), 'rows': int(len(part)), 'kind': kind,
            'dim': int(vectors.shape[1]), 'dir': f'shard-{i:05d}'}
    t = time.perf_counter()
    truth = exact_topk(vectors, queries, k, held_out,
                       copy_cosine=scann_cfg.calibration_copy_cosine)
    truth = truth + (time.perf_counter() - t,)
    s = None
    if kind == 'scann':
      params = scann_params(len(part), scann_cfg)
      s = ScannSearcher.build(vectors, params, k)
      cal = calibrate_scann(s, vectors, queries, k, scann_cfg, held_out,
                            truth)
      if not cal['reached']:
        fallback = len(part) <= scann_cfg.exact_fallback_rows
        log.warning(
            'retrieval index %s shard %d (%d rows): ScaNN reaches recall@%d '
            '%.3f < target %.2f within the caps (%d of %d leaves, reorder x%d)'
            '; %s', directory, i, len(part), cal['k'], cal['recall'],
            cal['target'], cal['max_leaves_to_search'], cal['num_leaves'],
            cal['max_reorder_factor'],
            'using exact search for it' if fallback else
            'keeping the best setting (raise config.retrieval.scann.'
            'max_search_fraction / max_reorder_factor, or searcher=exact)')
        if fallback:
          kind = info['kind'] = 'exact'
          info['calibration_failed'] = _public(cal)
          s = None
    if kind == 'scann':
      params.update(num_leaves_to_search=cal['leaves_to_search'],
                    reorder_factor=cal['reorder_factor'])
      sub = os.path.join(tmp, info['dir'])
      s.save(sub)
      info['calibration'] = _public(cal)
      timing.append({'shard': i, 'exact_qps': cal['exact_qps'],
                     'scann_qps': cal['scann_qps']})
      info.update(params=params, files=_dir_files(sub))
      got_s, got_p, found = cal['result']
      log.info('retrieval index shard %d: %d rows, ScaNN %d of %d leaves, '
               'reorder x%d: recall@%d %.3f (target %.2f)', i, len(part),
               cal['leaves_to_search'], cal['num_leaves'],
               cal['reorder_factor'], cal['k'], cal['recall'], cal['target'])
    else:
      s = ExactSearcher(vectors, block_rows)
      got_s, got_p = truth[:2]
      found = truth[0]
      info['calibration'] = {'k': int(truth[0].shape[1]), 'recall': 1.0,
                             'reached': True, 'queries': int(len(queries))}
    parts.append((int(start), got_s, got_p, found, truth[0]))
    shards.append(info)
    searchers.append((int(start), s))
  merged = _merged_recall(parts, min(k, len(rows)))
  recall = {'k': int(k), 'target': float(scann_cfg.target_recall),
            'queries': int(len(queries)),
            'pool_queries': int((~held_out).sum()),
            'tolerance': RECALL_TOLERANCE,
            # Mean over the calibration queries of recall@k of the merged
            # top-k of all shards against exact search over all rows.
            'estimate': float(merged.mean()),
            'estimate_corpus_queries': float(merged[held_out].mean()),
            'estimate_pool_queries': float(merged[~held_out].mean())
                                     if (~held_out).any() else None,
            'per_shard': [s_['calibration']['recall'] for s_ in shards]}
  recall['reached'] = recall['estimate'] >= recall['target']
  manifest = {'version': INDEX_VERSION, 'identity': dict(identity),
              'rows_sha256': _hash_rows(rows), 'num_rows': int(len(rows)),
              'shards': shards, 'recall': recall}
  manifest['snapshot'] = hashlib.sha256(json.dumps(
      manifest, sort_keys=True).encode()).hexdigest()[:32]
  # Queries per second measured while calibrating (machine- and load-
  # dependent, so outside the snapshot hash).
  manifest['timing'] = timing
  corpus_lib._write_json(os.path.join(tmp, MANIFEST), manifest)  # pylint: disable=protected-access
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(tmp, directory)
  return Index(_combine(searchers, len(rows)), rows, manifest)


def _public(cal: dict) -> dict:
  """The manifest's part of a calibration: no arrays, no timings."""
  return {x: v for x, v in cal.items()
          if x not in ('result', 'truth', 'exact_qps', 'scann_qps')}


def _combine(searchers, n):
  if len(searchers) == 1 and hasattr(searchers[0][1], 'search'):
    return searchers[0][1]
  return ShardedSearcher(searchers, n)


def load_index(directory: str, vectors_fn, *, identity: dict,
               block_rows: int = 262144, lazy: bool = False,
               verify: bool = True) -> Index:
  """Loads an index saved by `build_index`, checking that it was built from
  the corpus and embeddings described by `identity`."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f'retrieval index: {path} not found')
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get('version') != INDEX_VERSION:
    raise ValueError(f'{path}: index version {manifest.get("version")}, '
                     f'expected {INDEX_VERSION}; build the index again')
  saved = manifest['identity']
  diff = {k: {'index': saved.get(k), 'expected': v}
          for k, v in identity.items() if saved.get(k) != v}
  if diff:
    raise ValueError(f'retrieval index {directory} does not match the '
                     f'corpus / embeddings at hand: {diff}. Rebuild the index '
                     '(delete the directory) or point to the matching corpus')
  rows = np.load(os.path.join(directory, 'rows.npy'))
  if _hash_rows(rows) != manifest['rows_sha256'] or len(rows) != manifest[
      'num_rows']:
    raise ValueError(f'retrieval index {directory}: rows.npy does not match '
                     'its manifest (the file changed)')
  searchers = []
  for info in manifest['shards']:
    part = rows[info['start']:info['start'] + info['rows']]
    if info['kind'] == 'scann':
      sub = os.path.join(directory, info['dir'])
      if verify:
        got = _dir_files(sub)
        if got != info['files']:
          bad = sorted(f for f in set(got) | set(info['files'])
                       if got.get(f) != info['files'].get(f))
          raise ValueError(f'retrieval index {sub}: files {bad} are missing '
                           'or differ from the manifest checksums')
      load = functools.partial(ScannSearcher.load, sub, len(part),
                               info['dim'], info['params'])
      searchers.append((info['start'], load if lazy else load()))
    else:
      vectors = vectors_fn(part)
      if vectors.shape[1] != info['dim']:
        raise ValueError(f'retrieval index {directory}: vectors of dim '
                         f'{vectors.shape[1]}, the index was built with '
                         f'{info["dim"]}')
      searchers.append((info['start'], ExactSearcher(vectors, block_rows)))
  return Index(_combine(searchers, len(rows)), rows, manifest)
