"""The retrieval memory: corpus + embeddings + leakage filter + index +
query vectors, built once and answering queries with the multi-stage
retrieval.

Everything is built at the first `ensure(params, task_index=0, ...)` from
the initial model (docs/retrieval.md, "Built once, from the initial model")
and saved under `root`; later calls (other tasks, a resumed process) load it.
Query vectors of every query the run can ask (M0, every task's class names,
the uni keywords) are computed at that point too, because the initial params
are not kept (the trainer donates its buffers); retrieval of a new task's
queries then runs on demand at its task boundary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys

import numpy as np

from mgtil_jax.core import hosts
from mgtil_jax.retrieval import corpus as corpus_lib
from mgtil_jax.retrieval import embed as embed_lib
from mgtil_jax.retrieval import index as index_lib
from mgtil_jax.retrieval import leakage as leakage_lib
from mgtil_jax.retrieval import stages

log = logging.getLogger(__name__)


def _sync(name: str):
  hosts.sync(name)  # a barrier with a timeout (hosts.py)


def _key(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()
                        ).hexdigest()[:12]


def _to_dict(cfg):
  return cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)


class RetrievalMemory:

  def __init__(self, cfg, *, root: str, corpus_specs, corpus_dir: str,
               towers, tokenizer, tasks, progress: bool = True):
    self.cfg, self.root = cfg, root
    self.corpus_specs, self.corpus_dir = corpus_specs, corpus_dir
    self.towers, self.tokenizer, self.tasks = towers, tokenizer, tasks
    self.progress = progress
    self.corpus = self.embeddings = None
    self.index = None            # stage-1 index (text, or image if dense off)
    self.leakage = None
    self.dropped = np.zeros(0, np.int64)
    self._queries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    self._results: dict[tuple[str, int, str], stages.Result] = {}
    self.embed_dir = None

  # ------------------------------------------------------------- building --

  def ensure(self, params, task_index: int, query_texts) -> None:
    """Builds or loads every piece; makes sure `query_texts` have vectors."""
    query_texts = list(dict.fromkeys(query_texts))
    if self.corpus is None:
      self._open_corpus()
    encoders = None
    if self.embeddings is None:
      self.embed_dir = os.path.join(
          self.root, f'embeddings-{self.corpus.snapshot[:12]}-'
          f'{self.cfg.text_encoder}')
      # Process 0's view for all: a process that saw process 0's files
      # appear would skip the barrier the others wait at (hosts.py).
      done = hosts.lead_value('retrieval_embed_done',
                              _complete(self.embed_dir))
      if task_index == 0 or not done:
        if task_index != 0:
          raise FileNotFoundError(
              f'retrieval memory: no embeddings in {self.embed_dir}. They are '
              'made from the initial model at the first prepare() of task 0; '
              'a run that starts at a later task needs them (restore the '
              'retrieval folder of the original run)')
        encoders = self._encoders(params)
        if done:
          self._check_encoders(encoders)
        else:
          # Every process must read the same resume state (the lead writes
          # the manifest as it goes), or their sharded calls would differ.
          _sync('retrieval_embed_start')
          embed_lib.embed_corpus(
              self.corpus, self.embed_dir, text_encoder=encoders[0],
              image_encoder=encoders[1], batch_size=self.cfg.embed_batch_size,
              threads=self.cfg.decode_threads, write=hosts.is_lead(),
              progress=self.progress)
          _sync('retrieval_embed')
      self.embeddings = embed_lib.Embeddings(
          self.embed_dir, self.corpus, verify=self.cfg.verify_checksums)
    self._load_queries()
    missing = [t for t in query_texts if t not in self._queries]
    if missing:
      if task_index != 0:
        raise KeyError(
            f'retrieval memory: no vectors for {len(missing)} queries (e.g. '
            f'{missing[:3]}) in {self.embed_dir}/queries.npz; query vectors '
            'come from the initial model at task 0, so queries must not '
            'change during a run')
      encoders = encoders or self._encoders(params)
      self._add_queries(missing, encoders)
    if self.leakage is None and self.cfg.leakage.check:
      self._check_leakage(encoders if task_index == 0 else None)
    if self.index is None:
      self._open_index()

  def _open_corpus(self):
    if hosts.is_lead():
      corpus_lib.open_or_ingest(self.corpus_specs, self.corpus_dir,
                                shard_size=self.cfg.corpus.shard_size,
                                check_images=self.cfg.corpus.check_images,
                                progress=self.progress)
    _sync('retrieval_corpus')
    self.corpus = corpus_lib.Corpus(self.corpus_dir)
    if not self.corpus.has_image.any():
      raise ValueError(f'retrieval corpus {self.corpus_dir}: no entry has an '
                       'image (reference batches need image-caption pairs)')

  def _encoders(self, params):
    fingerprint = embed_lib.params_fingerprint(params)
    image = embed_lib.ClipImageEncoder(self.towers, params, fingerprint)
    clip_text = embed_lib.ClipTextEncoder(self.towers, params, self.tokenizer,
                                          fingerprint)
    kind = self.cfg.text_encoder
    if kind == 'clip':
      text = clip_text
    elif kind == 'precomputed':
      text = embed_lib.PrecomputedTextEncoder(
          self.cfg.precomputed.caption_vectors,
          self.cfg.precomputed.query_vectors)
    else:
      raise ValueError(f"config.retrieval.text_encoder: expected 'clip' or "
                       f"'precomputed', got {kind!r}")
    return text, image, clip_text

  def _check_encoders(self, encoders):
    with open(os.path.join(self.embed_dir, embed_lib.MANIFEST)) as f:
      m = json.load(f)
    want = {'text_encoder': encoders[0].encoder_id,
            'image_encoder': encoders[1].encoder_id}
    diff = {k: (m[k], v) for k, v in want.items() if m[k] != v}
    if diff:
      raise ValueError(f'retrieval embeddings {self.embed_dir} were made by '
                       f'another model than the initial params given to '
                       f'prepare(0) ({diff}); delete the folder to re-embed')

  # -------------------------------------------------------------- queries --

  def _queries_path(self):
    return os.path.join(self.embed_dir, 'queries.npz')

  def _load_queries(self):
    path = self._queries_path()
    if self._queries or not os.path.exists(path):
      return
    with np.load(path, allow_pickle=False) as f:
      for t, d, c in zip(f['texts'], f['dense'], f['clip']):
        self._queries[str(t)] = (d, c)

  def _add_queries(self, texts, encoders):
    dense = encoders[0].encode(texts)
    clip_vecs = encoders[2].encode(texts)
    for t, d, c in zip(texts, dense, clip_vecs):
      self._queries[t] = (d.astype(np.float32), c.astype(np.float32))
    if hosts.is_lead():
      texts_all = sorted(self._queries)
      tmp = self._queries_path() + '.tmp.npz'
      np.savez(tmp, texts=np.asarray(texts_all),
               dense=np.stack([self._queries[t][0] for t in texts_all]),
               clip=np.stack([self._queries[t][1] for t in texts_all]))
      os.replace(tmp, self._queries_path())
    _sync('retrieval_queries')

  # -------------------------------------------------------------- leakage --

  def _check_leakage(self, encoders):
    lk = self.cfg.leakage
    key = _key({'leakage': _to_dict(lk), 'corpus': self.corpus.snapshot,
                'embeddings': self.embeddings.checksum,
                'eval': [(t.name, hashlib.sha256(np.ascontiguousarray(
                    t.test_images).tobytes()).hexdigest()[:16])
                         for t in self.tasks]})
    path = os.path.join(self.root, f'leakage-{key}.json')
    if not hosts.lead_exists(path, 'retrieval_leakage_done'):
      if lk.method == 'embedding' and encoders is None:
        raise FileNotFoundError(
            f'retrieval leakage report {path} not found; the embedding '
            'method needs the initial model (task 0)')
      eval_fn = None
      if encoders and lk.method == 'embedding':
        # The image tower is a sharded call: every process embeds the
        # evaluation images, process 0 alone then compares and writes.
        vectors = [encoders[1].encode(t.test_images) for t in self.tasks]
        lookup = {id(t.test_images): v for t, v in zip(self.tasks, vectors)}
        eval_fn = lambda images: lookup[id(images)]
      if hosts.is_lead():
        report = leakage_lib.check(
            self.corpus, self.tasks, method=lk.method,
            max_distance=lk.max_distance, max_pixel_diff=lk.max_pixel_diff,
            min_cosine=lk.min_cosine, corpus_vectors_fn=self.embeddings.image,
            eval_embed_fn=eval_fn)
        report['drop'] = bool(lk.drop)
        corpus_lib._write_json(path, report)  # pylint: disable=protected-access
      _sync('retrieval_leakage')
    with open(path) as f:
      self.leakage = json.load(f)
    self.leakage['path'] = path
    if lk.drop:
      self.dropped = np.asarray(self.leakage['leaked_rows'], np.int64)

  # ---------------------------------------------------------------- index --

  def index_rows(self) -> np.ndarray:
    keep = self.corpus.has_image.copy()
    keep[self.dropped] = False
    return np.flatnonzero(keep).astype(np.int64)

  def _open_index(self):
    vectors = 'text' if self.cfg.stages.dense else 'image'
    rows = self.index_rows()
    if not len(rows):
      raise ValueError('retrieval index: no corpus entry left to index '
                       f'(with image: {int(self.corpus.has_image.sum())}, '
                       f'dropped as leaked: {len(self.dropped)})')
    identity = {'corpus_snapshot': self.corpus.snapshot,
                'embeddings_checksum': self.embeddings.checksum,
                'vectors': vectors}
    params = {'searcher': self.cfg.searcher, 'scann': _to_dict(
        self.cfg.scann), 'shard_rows': self.cfg.index_shard_rows}
    directory = os.path.join(self.root, f'index-{vectors}-' + _key(
        [identity, params, index_lib._hash_rows(rows)]))  # pylint: disable=protected-access
    vectors_fn = lambda r: self.embeddings.vectors(vectors, r)
    if not hosts.lead_exists(os.path.join(directory, index_lib.MANIFEST),
                             'retrieval_index_done'):
      if hosts.is_lead():
        # The queries the run will ask (question pool, class names,
        # keywords) join the held-out rows in ScaNN's recall calibration.
        asked = [self._queries[t][0 if vectors == 'text' else 1]
                 for t in sorted(self._queries)]
        index_lib.build_index(
            vectors_fn, rows, directory, identity=identity,
            searcher=self.cfg.searcher, scann_cfg=self.cfg.scann,
            shard_rows=self.cfg.index_shard_rows,
            block_rows=self.cfg.exact_block_rows, k=self.cfg.k,
            extra_queries=np.stack(asked) if asked else None)
      _sync('retrieval_index')
    self.index = index_lib.load_index(directory, vectors_fn,
                                      identity=identity,
                                      block_rows=self.cfg.exact_block_rows,
                                      verify=self.cfg.verify_checksums)
    if not np.array_equal(self.index.rows, rows):
      raise ValueError(f'retrieval index {directory} covers other corpus rows '
                       'than the current leakage filter leaves; delete it')
    r = self.index_recall()
    line = (f'retrieval index {directory}: {len(rows)} rows in '
            f'{len(r["kinds"])} shard(s) ({", ".join(r["kinds"])}); '
            f'estimated recall@{r["k"]} {r["estimate"]:.3f} against exact '
            f'search (target {r["target"]:.2f}, {r["queries"]} calibration '
            'queries)')
    log.info(line)
    if self.progress and hosts.is_lead():  # the run log, beside the progress bars
      print(line, file=sys.stderr, flush=True)
    if not r['reached']:
      log.warning('retrieval index %s: estimated recall@%d %.3f is below the '
                  'target %.2f (see its %s)', directory, r['k'],
                  r['estimate'], r['target'], index_lib.MANIFEST)

  def index_recall(self) -> dict:
    """The stage-1 index's estimated recall@k (after the cross-shard
    merge) and each shard's calibrated setting, from its manifest."""
    m = self.index.manifest
    r = {x: m['recall'][x] for x in ('k', 'target', 'estimate', 'reached',
                                      'queries', 'pool_queries',
                                      'estimate_corpus_queries',
                                      'estimate_pool_queries')}
    r['kinds'] = [s['kind'] for s in m['shards']]
    r['shards'] = [
        {x: s['calibration'].get(x) for x in (
            'recall', 'recall_lcb', 'leaves_to_search', 'num_leaves',
            'reorder_factor', 'reached') if x in s['calibration']}
        for s in m['shards']]
    return r

  # ------------------------------------------------------------ retrieval --

  def query_vectors(self, texts):
    """(dense float32[Q, Dt], clip float32[Q, E]) of known query texts."""
    missing = [t for t in texts if t not in self._queries]
    if missing:
      raise KeyError(f'retrieval memory: no vectors for queries {missing[:3]}')
    if not texts:
      return (np.zeros((0, self.embeddings.text_dim), np.float32),
              np.zeros((0, self.embeddings.image_dim), np.float32))
    return (np.stack([self._queries[t][0] for t in texts]),
            np.stack([self._queries[t][1] for t in texts]))

  def _stage1(self, qvecs: np.ndarray, k: int):
    """Per query: candidate (rows, scores) whose prefix settles the
    tie-robust cutoff (fetching more while the k'-th tie group may
    continue past what was fetched)."""
    cfg = self.cfg
    n = len(self.index)
    fetch = min(n, max(k * cfg.fetch_factor, k + 1))
    pending = list(range(len(qvecs)))
    out = {}
    while pending:
      scores, rows = self.index.search(qvecs[pending], fetch)
      exhausted = fetch >= n or fetch >= cfg.max_fetch
      still = []
      for j, qi in enumerate(pending):
        valid = rows[j] >= 0
        s = scores[j][valid]
        if stages.cutoff_is_settled(s, k, cfg.tie_tolerance, exhausted):
          out[qi] = (rows[j][valid], s)
        else:
          still.append(qi)
      pending = still
      fetch = min(n, fetch * 2, max(cfg.max_fetch, k + 1))
    return out

  def retrieve(self, texts, k: int | None = None,
               lexical: dict | None = None) -> dict:
    """{text: stages.Result} for known query texts (cached per (text, k,
    BM25 string)).

    lexical: text -> the string the BM25 gate matches (default the text).
    """
    k = int(k or self.cfg.k)
    lexical = lexical or {}
    key = lambda t: (t, k, lexical.get(t, t))
    todo = [t for t in dict.fromkeys(texts) if key(t) not in self._results]
    if todo:
      dense, clip_q = self.query_vectors(todo)
      first = dense if self.cfg.stages.dense else clip_q
      candidates = self._stage1(first, k)
      emb, corpus = self.embeddings, self.corpus
      for i, text in enumerate(todo):
        rows, scores = candidates[i]
        q = clip_q[i]
        self._results[key(text)] = stages.run_stages(
            lexical.get(text, text), rows, scores, k=k, k_v=self.cfg.k_v,
            tol=self.cfg.tie_tolerance,
            visual_fn=lambda r, q=q: emb.image(r) @ q,
            groups_fn=lambda r: corpus.caption_group[r],
            captions_fn=corpus.captions.take,
            visual=self.cfg.stages.visual, bm25=self.cfg.stages.bm25,
            k1=self.cfg.bm25.k1, b=self.cfg.bm25.b)
    return {t: self._results[key(t)] for t in texts}

  def describe(self) -> dict:
    out = {'corpus_dir': self.corpus_dir,
           'corpus_snapshot': self.corpus.snapshot,
           'corpus_entries': len(self.corpus),
           'corpus_with_image': int(self.corpus.has_image.sum()),
           'ingest': self.corpus.report['counts'],
           'ingest_skipped': self.corpus.report['skipped'],
           'embeddings_checksum': self.embeddings.checksum,
           'text_encoder': self.embeddings.text_encoder,
           'image_encoder': self.embeddings.image_encoder,
           'index_snapshot': self.index.snapshot,
           'index_rows': len(self.index),
           'index_kinds': sorted({s['kind'] for s in
                                  self.index.manifest['shards']}),
           'index_recall': self.index_recall(),
           'leaked_dropped': int(len(self.dropped))}
    if self.leakage is not None:
      out['leakage_report'] = self.leakage['path']
      out['leaked_rows'] = self.leakage['num_leaked_rows']
    return out


def _complete(directory: str) -> bool:
  path = os.path.join(directory, embed_lib.MANIFEST)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return bool(json.load(f).get('complete'))
