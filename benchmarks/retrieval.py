r"""Retrieval memory benchmarks.

  python benchmarks/retrieval.py                 # both parts
  python benchmarks/retrieval.py --part=ann --n=1000000
  python benchmarks/retrieval.py --part=sampler --steps=100
  python benchmarks/retrieval.py --part=calibrated      # new distributions
  python benchmarks/retrieval.py --part=big --n=4000000 --reorder_dtype=int8

ann: recall@10 of the ScaNN searcher against exact search, and the ratio of
  their queries per second, on N clustered 512-d unit vectors (default
  1M); also build time and index bytes per entry, from which the 18M x 1024
  estimate in RESULTS.md is derived.
calibrated: build-time calibration (index.calibrate_scann, target recall
  0.95) on distributions nobody tuned the defaults on: 'topics' (unit
  vectors from topics with power-law sizes, each a random 24-dim subspace
  plus noise) and 'neardup' (the same, heavy in exact and near duplicates:
  multi-panel figures sharing one caption, templated captions). Recall@10
  and QPS on held-out queries (another seed than the calibration sample)
  at the calibrated setting and at the uncalibrated defaults, and recall
  after the sharded searcher's top-k merge (build_index with 4 shards).
big: one default-size index shard (4M x 512; 2M on the shared 23 GiB
  machine, see RESULTS.md): topics distribution, data in a
  memory-mapped .npy under --big_dir, one reorder dtype per process: build
  time, peak host memory, index bytes, calibrated setting, recall@10 and
  QPS against exact search (NumPy, blocked) on held-out queries.
quality: precision of the reference sets with the contrastively pretrained
  tiny model (README's initial model): the fraction of each task-level
  query's kept results whose caption names the query's finding, per stage
  configuration (all stages / no BM25 / dense only), against the fraction
  expected from random corpus entries.
sampler: step time of a jitted CLIP contrastive step (tiny preset) fed by the
  live reference source through the background prefetcher, divided by the
  step time with the same reference batches placed on the mesh beforehand.
  The two arms alternate (ABAB...) and the median of the per-pair ratios
  is reported, because the CPU is shared with other jobs.

Prints tables and writes benchmarks/results/retrieval_<platform>.json.
"""

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import mgtil_synth  # pylint: disable=g-import-not-at-top
from configs import retrieval as retrieval_cfg  # pylint: disable=g-import-not-at-top
from mgtil_jax import training as train  # pylint: disable=g-import-not-at-top
from mgtil_jax.retrieval import build_reference_source, prefetch  # pylint: disable=g-import-not-at-top
from mgtil_jax.retrieval import index as index_lib  # pylint: disable=g-import-not-at-top


def clustered(n, d, clusters, seed, noise=0.6, chunk=100_000,
              centers_seed=0):
  """Unit vectors around `clusters` random unit centres (float32, built in
  chunks to stay within memory). The centres depend on `centers_seed` only,
  so database and queries (other `seed`s) share them."""
  centers = np.random.default_rng(centers_seed).standard_normal(
      (clusters, d), dtype=np.float32)
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  rng = np.random.default_rng([centers_seed, seed])
  out = np.empty((n, d), np.float32)
  for s in range(0, n, chunk):
    m = min(chunk, n - s)
    x = centers[rng.integers(clusters, size=m)] + (
        noise / math.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
    out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def topics(n, d, num_topics, seed, sub_dim=24, alpha=1.1,
           weights=(0.28, 0.68, 0.6, 0.2), chunk=65536, topic_seed=0,
           out=None):
  """Unit vectors from `num_topics` topics with power-law sizes (p ~
  rank^-alpha): w_g * global direction + w_c * topic centre + w_s * a point
  of the topic's random `sub_dim`-dim subspace + w_n * isotropic noise.
  Topics depend on `topic_seed` only (database and queries share them);
  written chunk by chunk into `out` (e.g. a memory map)."""
  rt = np.random.default_rng([topic_seed, 7])
  g = rt.standard_normal(d, dtype=np.float32)
  g /= np.linalg.norm(g)
  c = rt.standard_normal((num_topics, d), dtype=np.float32)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  basis = rt.standard_normal((num_topics, sub_dim, d), dtype=np.float32) / (
      np.float32(math.sqrt(d)))
  p = (np.arange(num_topics) + 1.0) ** -alpha
  p /= p.sum()
  rng = np.random.default_rng([topic_seed, seed])
  out = np.empty((n, d), np.float32) if out is None else out
  wg, wc, ws, wn = weights
  for s in range(0, n, chunk):
    m = min(chunk, n - s)
    t = rng.choice(num_topics, m, p=p)
    z = rng.standard_normal((m, sub_dim), dtype=np.float32) / np.float32(
        math.sqrt(sub_dim))
    x = wg * g + wc * c[t] + wn * rng.standard_normal(
        (m, d), dtype=np.float32) / np.float32(math.sqrt(d))
    order = np.argsort(t, kind='stable')
    for idx in np.split(order, np.flatnonzero(np.diff(t[order])) + 1):
      x[idx] += ws * (z[idx] @ basis[t[idx[0]]])
    out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def neardup(n, d, num_topics, seed, family_fraction=0.1, family_size=20,
            family_noise=0.15, panels_p=0.45, max_panels=8):
  """Caption vectors of a figure corpus: distinct captions from `topics`;
  a `family_fraction` of them spawn families of ~family_size templated
  near-duplicates (cosine ~0.99); each caption is repeated once per panel
  of its figure (1 + geometric(panels_p) panels, at most max_panels:
  exact duplicates, as multi-panel figures share one caption). Rows are
  shuffled."""
  rng = np.random.default_rng([seed, 11])
  panels = np.minimum(rng.geometric(panels_p, size=n), max_panels)
  captions = int(np.searchsorted(np.cumsum(panels), n)) + 1
  base = topics(captions, d, num_topics, seed)
  fam = rng.random(captions) < family_fraction / family_size
  heads = np.flatnonzero(fam)
  # Captions right after a family head become its variants.
  for h in heads:
    size = rng.integers(family_size // 2, 2 * family_size)
    idx = np.arange(h + 1, min(captions, h + 1 + size))
    x = base[h] + family_noise / math.sqrt(d) * rng.standard_normal(
        (len(idx), d)).astype(np.float32)
    base[idx] = x / np.linalg.norm(x, axis=1, keepdims=True)
  out = np.repeat(base, panels[:captions], axis=0)[:n]
  return out[rng.permutation(len(out))]


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def _timed(fn, reps):
  best = float('inf')
  for _ in range(reps):
    t = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t)
  return best, out


def bench_ann(n, d, queries, clusters, k, fractions, reorder_factors, reps,
              scale_ns=()):
  db = clustered(n, d, clusters, 0)
  q = clustered(queries, d, clusters, 1)
  cfg = retrieval_cfg.defaults().scann
  exact = index_lib.ExactSearcher(db)
  exact.search(q[:64], k)  # compile
  t_exact, (truth_scores, truth) = _timed(lambda: exact.search(q, k), reps)
  truth_scores = np.asarray(truth_scores, np.float32)
  exact = None  # frees its device copy of the vectors before the ScaNN build
  params = index_lib.scann_params(n, cfg)
  t = time.perf_counter()
  scann = index_lib.ScannSearcher.build(db, params, k)
  build_s = time.perf_counter() - t
  with tempfile.TemporaryDirectory() as tmp:
    scann.save(tmp)
    index_bytes = _dir_bytes(tmp)
    files = {f: os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)}
  rows = []
  for frac, factor in [(f, r) for r in reorder_factors for f in fractions]:
    leaves = max(1, math.ceil(frac * params['num_leaves']))
    pre = k * factor

    def search(leaves=leaves, pre=pre):
      fn = scann._searcher.search_batched_parallel  # pylint: disable=protected-access
      return fn(q, leaves_to_search=leaves, final_num_neighbors=k,
                pre_reorder_num_neighbors=pre)[0]

    search()  # warm-up
    t_scann, got = _timed(search, reps)
    got = np.asarray(got, np.int64)
    # Tie-aware (issue 25): a returned row scoring the k-th exact score
    # counts as a hit, whichever copy of a repeated vector it is.
    recall = index_lib.search_recall(db, q, got, truth_scores, k)
    rows.append({'search_fraction': frac, 'leaves_to_search': leaves,
                 'reorder_factor': factor, 'pre_reorder': pre,
                 'recall_at_10': recall,
                 'recall_at_10_by_position': _id_recall(got, np.asarray(truth)),
                 'scann_qps': queries / t_scann,
                 'exact_qps': queries / t_exact,
                 'qps_ratio': t_exact / t_scann,
                 'default': (frac == cfg.search_fraction and
                             factor == cfg.reorder_factor)})
  scann = None
  scaling = []  # build time at smaller N: how it grows with N
  for n2 in scale_ns:
    db2 = clustered(n2, d, clusters, 2)
    p2 = index_lib.scann_params(n2, cfg)
    t = time.perf_counter()
    index_lib.ScannSearcher.build(db2, p2, k)
    scaling.append({'n': n2, 'num_leaves': p2['num_leaves'],
                    'build_s': time.perf_counter() - t})
  scaling.append({'n': n, 'num_leaves': params['num_leaves'],
                  'build_s': build_s})
  if len(scaling) > 1:
    a, b = scaling[0], scaling[-1]
    exponent = math.log(b['build_s'] / a['build_s']) / math.log(b['n'] / a['n'])
  else:
    exponent = None
  return {'n': n, 'dim': d, 'queries': queries, 'clusters': clusters, 'k': k,
          'params': params, 'build_s': build_s, 'build_scaling': scaling,
          'build_time_exponent': exponent,
          'build_us_per_entry': 1e6 * build_s / n,
          'index_bytes': index_bytes, 'index_bytes_per_entry': index_bytes / n,
          'index_files': files, 'rows': rows}


def _id_recall(got, truth):
  return float(np.mean([len(set(a) & set(b)) / truth.shape[1]
                        for a, b in zip(got, truth)]))


def _test(db, q, k, truth, search, reps):
  """recall@k (tie-aware and by position) and seconds of a search."""
  search()  # warm-up
  seconds, (_, got) = _timed(search, reps)
  found = index_lib.true_scores(db, q, got)
  return {'recall': float(index_lib.recall_at_k(found, truth[0], k).mean()),
          'recall_by_position': _id_recall(got, truth[1]),
          'qps': len(q) / seconds}


def _cos_stats(db, q, truth):
  rng = np.random.default_rng(5)
  a, b = rng.integers(len(db), size=(2, 20000))
  return {'top10_cosine': float(truth[0][:, :10].mean()),
          'random_pair_cosine': float(np.einsum('nd,nd->n', db[a],
                                                db[b]).mean())}


def bench_calibrated(dist, n, d, num_topics, queries, k, reps, shards,
                     target=0.95):
  """Calibrated ScaNN vs the uncalibrated defaults vs exact, on one
  distribution; then the same data as `shards` calibrated shards."""
  gen = {'topics': topics, 'neardup': neardup}[dist]
  db = gen(n, d, num_topics, 0)
  q = gen(queries, d, num_topics, 1)
  cfg = retrieval_cfg.defaults().scann
  cfg.target_recall = target
  t = time.perf_counter()
  truth = index_lib.exact_topk(db, q, k)
  exact_s = time.perf_counter() - t
  exact = index_lib.ExactSearcher(db)  # the jitted searcher, for its QPS
  exact.search(q[:64], k)
  jax_s, _ = _timed(lambda: exact.search(q, k), reps)
  exact = None
  params = index_lib.scann_params(n, cfg)
  t = time.perf_counter()
  scann = index_lib.ScannSearcher.build(db, params, k)
  build_s = time.perf_counter() - t
  cal_q, held_out = index_lib._calibration_queries(  # pylint: disable=protected-access
      lambda r: db[r], np.arange(n), cfg, None)
  t = time.perf_counter()
  cal = index_lib.calibrate_scann(scann, db, cal_q, k, cfg, held_out)
  calibrate_s = time.perf_counter() - t
  run = lambda leaves, factor: lambda: scann.search(q, k, leaves, factor)
  default_leaves = max(1, math.ceil(cfg.search_fraction *
                                    params['num_leaves']))
  rows = []
  for name, leaves, factor in (
      ('defaults (uncalibrated)', default_leaves, cfg.reorder_factor),
      ('calibrated', cal['leaves_to_search'], cal['reorder_factor'])):
    r = _test(db, q, k, truth, run(leaves, factor), reps)
    r.update(setting=name, leaves=leaves, reorder_factor=factor,
             exact_qps=queries / exact_s, exact_jax_qps=queries / jax_s,
             qps_ratio=r['qps'] * exact_s / queries)
    rows.append(r)
  scann = None
  # The sharded searcher: build_index with `shards` shards (each calibrated
  # on its own), recall of the merged top-k against exact search over all.
  sharded = {}
  if shards > 1:
    with tempfile.TemporaryDirectory() as tmp:
      t = time.perf_counter()
      built = index_lib.build_index(
          lambda r: db[r], np.arange(n), os.path.join(tmp, 'ix'),
          identity={}, searcher='scann', scann_cfg=cfg,
          shard_rows=-(-n // shards), k=k)
      sharded_build_s = time.perf_counter() - t
      r = _test(db, q, k, truth, lambda: built.search(q, k), reps)
      sharded = dict(r, shards=shards, build_s=sharded_build_s,
                     qps_ratio=r['qps'] * exact_s / queries,
                     per_shard=[{x: sh['calibration'][x] for x in (
                         'leaves_to_search', 'num_leaves', 'reorder_factor',
                         'recall')} for sh in built.manifest['shards']],
                     manifest_estimate=built.manifest['recall']['estimate'])
  cal.pop('result')
  cal.pop('truth')
  return {'distribution': dist, 'n': n, 'dim': d, 'topics': num_topics,
          'queries': queries, 'k': k, 'target': target,
          **_cos_stats(db, q, truth), 'params': params, 'build_s': build_s,
          'calibrate_s': calibrate_s, 'calibration': cal, 'rows': rows,
          'sharded': sharded}


def _anon_gb():
  """Anonymous resident memory (GiB) of this process: without the pages
  of the memory-mapped input, which the kernel can drop."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('RssAnon:'):
        return int(line.split()[1]) / 2**20
  return float('nan')


class _PeakAnon:
  """Samples RssAnon every 0.2 s on a thread; .peak after the block."""

  def __enter__(self):
    import threading  # pylint: disable=g-import-not-at-top
    self.peak, self._stop = _anon_gb(), threading.Event()
    def loop():
      while not self._stop.wait(0.2):
        self.peak = max(self.peak, _anon_gb())
    self._thread = threading.Thread(target=loop, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _anon_gb())


def _rss_gb():
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_big(n, d, num_topics, queries, k, reorder_dtype, big_dir, reps):
  """One default-size shard: data generated once into a memory-mapped
  .npy (chunks), exact truth of the held-out queries cached beside it."""
  import psutil  # pylint: disable=g-import-not-at-top
  os.makedirs(big_dir, exist_ok=True)
  path = os.path.join(big_dir, f'topics_{n}x{d}.npy')
  # A larger file of the same distribution serves its first n rows.
  larger = sorted((int(f.split('_')[1].split('x')[0]), f)
                  for f in os.listdir(big_dir)
                  if f.startswith('topics_') and f.endswith(f'x{d}.npy'))
  larger = [f for m, f in larger if m > n]
  if not os.path.exists(path) and larger:
    path = os.path.join(big_dir, larger[0])
  elif not os.path.exists(path):
    out = np.lib.format.open_memmap(path + '.tmp.npy', 'w+', np.float32,
                                    (n, d))
    topics(n, d, num_topics, 0, out=out)
    out.flush()
    del out
    os.replace(path + '.tmp.npy', path)
  db = np.load(path, mmap_mode='r')[:n]
  q = topics(queries, d, num_topics, 1)
  tpath = os.path.join(big_dir, f'truth_{n}x{d}_{queries}_{k}.npz')
  if not os.path.exists(tpath):
    t = time.perf_counter()
    s_, p_, _ = index_lib.exact_topk(db, q, k)
    np.savez(tpath, scores=s_, positions=p_,
             seconds=time.perf_counter() - t)
  with np.load(tpath) as f:
    truth = (f['scores'], f['positions'])
    exact_s = float(f['seconds'])
  cfg = retrieval_cfg.defaults().scann
  cfg.reorder_dtype = reorder_dtype
  params = index_lib.scann_params(n, cfg)
  proc = psutil.Process()
  rss_before = proc.memory_info().rss / 2**30
  anon_before = _anon_gb()
  t = time.perf_counter()
  with _PeakAnon() as peak_anon:
    scann = index_lib.ScannSearcher.build(db, params, k)
  build_s = time.perf_counter() - t
  rss_after_build = proc.memory_info().rss / 2**30
  peak_build = _rss_gb()
  cal_q, held_out = index_lib._calibration_queries(  # pylint: disable=protected-access
      lambda r: np.asarray(db[r]), np.arange(n), cfg, None)
  cpath = os.path.join(big_dir, f'caltruth_{n}x{d}_{len(cal_q)}_{k}.npz')
  if not os.path.exists(cpath):  # the same for every reorder dtype
    t = time.perf_counter()
    s_, p_, c_ = index_lib.exact_topk(
        db, cal_q, k, held_out, copy_cosine=cfg.calibration_copy_cosine)
    np.savez(cpath, scores=s_, positions=p_, copies=c_,
             seconds=time.perf_counter() - t)
  with np.load(cpath) as f:
    cal_truth = (f['scores'], f['positions'], f['copies'],
                 float(f['seconds']))
  t = time.perf_counter()
  cal = index_lib.calibrate_scann(scann, db, cal_q, k, cfg, held_out,
                                  cal_truth)
  calibrate_s = time.perf_counter() - t
  r = _test(db, q, k, truth, lambda: scann.search(
      q, k, cal['leaves_to_search'], cal['reorder_factor']), reps)
  with tempfile.TemporaryDirectory(dir=big_dir) as tmp:
    scann.save(tmp)
    index_bytes = _dir_bytes(tmp)
    files = {f: os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)}
  cal.pop('result')
  cal.pop('truth')
  return {'n': n, 'dim': d, 'topics': num_topics, 'queries': queries, 'k': k,
          'data_file': path, 'reorder_dtype': reorder_dtype, 'params': params,
          'build_s': build_s, 'calibrate_s': calibrate_s,
          'rss_gb_before_build': rss_before,
          'rss_gb_after_build': rss_after_build,
          'peak_rss_gb_build': peak_build, 'peak_rss_gb': _rss_gb(),
          'anon_gb_before_build': anon_before,
          'peak_anon_gb_build': peak_anon.peak,
          'anon_gb_end': _anon_gb(),
          'index_bytes': index_bytes, 'index_bytes_per_entry': index_bytes / n,
          'index_files': files, 'calibration': cal,
          'exact_qps': queries / exact_s, **r,
          'qps_ratio': r['qps'] * exact_s / queries,
          **_cos_stats(db, q, truth)}


def bench_sampler(steps, batch, pairs):
  """Step time with the live prefetched source / with pre-placed batches."""
  config = mgtil_synth.get_config('tasks=3')
  config.model.init = 'random'  # retrieval cost does not depend on weights
  config.retrieval = retrieval_cfg.defaults()
  workdir = tempfile.mkdtemp()
  exp = train.setup(config, workdir)
  params = train.init_params(exp, 0)
  source = build_reference_source(exp, batch)
  t = time.perf_counter()
  stats = source.prepare(0, params)
  first_prepare_s = time.perf_counter() - t
  t = time.perf_counter()
  stats = source.prepare(2, params)
  boundary_prepare_s = time.perf_counter() - t
  tx = train.make_optimizer(lr=1e-4, steps=10**6, warmup_steps=1,
                            weight_decay=0.0, freeze_logit_scale=False)
  shardings = train.state_shardings(exp, tx, with_anchor=False)
  with exp.context():
    state = {'params': params,
             'opt': jax.jit(tx.init, out_shardings=shardings['opt'])(params)}
  step = train.make_pretrain_step(exp, tx, shardings)

  def run(batches, n):
    nonlocal state
    t = time.perf_counter()
    with exp.context():
      for b in batches:
        state, m = step(state, b)
      jax.block_until_ready(m)
    return (time.perf_counter() - t) / n

  run([exp.put_batch(source.batch(2, s)) for s in range(3)], 3)  # compile
  # Host cost of one reference batch (gather + placement), no overlap: an
  # upper bound of what the prefetcher can add to a step.
  t = time.perf_counter()
  for s in range(200):
    jax.block_until_ready(exp.put_batch(source.batch(2, s)))
  host_ms = 1e3 * (time.perf_counter() - t) / 200
  live, pre, ratios = [], [], []
  for p in range(pairs):
    start = (p + 1) * steps
    span = range(start, start + steps)
    placed = [exp.put_batch(source.batch(2, s)) for s in span]
    jax.block_until_ready(placed)
    t_pre = run(placed, steps)
    del placed
    t_live = run(prefetch(source, 2, span, exp.put_batch,
                          depth=config.retrieval.prefetch_depth), steps)
    live.append(t_live)
    pre.append(t_pre)
    ratios.append(t_live / t_pre)
  mem = stats['memory']
  return {'steps_per_block': steps, 'batch': batch, 'pairs': pairs,
          'step_ms_live': [1e3 * x for x in live],
          'step_ms_prematerialised': [1e3 * x for x in pre],
          'ratios': ratios, 'median_ratio': float(np.median(ratios)),
          # 95% bootstrap interval of the median ratio (CPU noise is large)
          'median_ratio_ci95': [float(x) for x in np.percentile(
              [np.median(np.random.default_rng(i).choice(ratios, len(ratios)))
               for i in range(2000)], [2.5, 97.5])],
          'pooled_ratio': float(np.sum(live) / np.sum(pre)),
          'host_ms_per_batch': host_ms,
          'host_bound_ratio': 1 + host_ms / (1e3 * float(np.median(pre))),
          'reference_set_size': stats['size'],
          'corpus_entries': mem['corpus_entries'],
          'first_prepare_s': first_prepare_s,
          'boundary_prepare_s': boundary_prepare_s}


def bench_quality(pretrain_steps):
  """Precision@a of task-level queries with a pretrained tiny model."""
  config = mgtil_synth.get_config('')
  config.pretrain.steps = pretrain_steps
  config.retrieval = retrieval_cfg.defaults()
  workdir = tempfile.mkdtemp()
  exp = train.setup(config, workdir)
  params = train.pretrain(exp, None)
  rows = []
  variants = [('all stages, k_v=2', {'k_v': 2}),
              ('all stages, k_v=4', {'k_v': 4}),
              ('all stages, k_v=8', {'k_v': 8}),
              ('all stages, k_v=8, BM25 on the finding',
               {'k_v': 8, 'bm25_query': 'finding'}),
              ('no BM25 gate, k_v=8', {'k_v': 8, 'bm25': False}),
              ('dense only', {'visual': False, 'bm25': False})]
  default = config.retrieval.to_dict()
  for name, change in variants:
    config.retrieval.k_v = change.get('k_v', default['k_v'])
    config.retrieval.bm25_query = change.get('bm25_query', 'query')
    config.retrieval.stages.update({k: v for k, v in change.items()
                                    if k in ('dense', 'visual', 'bm25')})
    source = build_reference_source(exp, 32)
    task = len(exp.tasks) - 1  # every class name but the last task's
    source.prepare(0, params)  # task 0 builds the memory from these params
    source.prepare(task, params)
    memory = source.memory
    captions = memory.corpus.captions
    from mgtil_jax.retrieval import queries as queries_lib  # pylint: disable=g-import-not-at-top
    qs = queries_lib.task_queries(exp.tasks, task,
                                  config.retrieval.query_template,
                                  source.descriptions)
    results = memory.retrieve(
        [q.text for q in qs],
        lexical={q.text: q.finding for q in qs}
        if config.retrieval.bm25_query == 'finding' else None)
    precision, base = [], []
    everything = captions.take(memory.index.rows)
    for q in qs:
      top = results[q.text].rows[:config.retrieval.a]
      hit = [q.finding.lower() in c.lower() for c in captions.take(top)]
      precision.append(float(np.mean(hit)) if hit else 0.0)
      base.append(float(np.mean([q.finding.lower() in c.lower()
                                 for c in everything])))
    rows.append({'variant': name, 'queries': len(qs),
                 'precision_at_a': float(np.mean(precision)),
                 'random_precision': float(np.mean(base)),
                 'reference_set_size': int(len(source))})
    config.retrieval.k_v = default['k_v']
    config.retrieval.stages.update(default['stages'])
  return {'pretrain_steps': pretrain_steps, 'a': config.retrieval.a,
          'rows': rows}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--part', default='ann,sampler,quality')
  p.add_argument('--pretrain_steps', type=int, default=600)
  p.add_argument('--n', type=int, default=1_000_000)
  p.add_argument('--dim', type=int, default=512)
  p.add_argument('--queries', type=int, default=1000)
  p.add_argument('--clusters', type=int, default=2000)
  p.add_argument('--fractions', default='0.01,0.02,0.04')
  p.add_argument('--reorder_factors', default='10,30,100')
  p.add_argument('--scale_n', default='250000')  # build-time scaling points
  p.add_argument('--reps', type=int, default=3)
  p.add_argument('--steps', type=int, default=10)  # per block
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--pairs', type=int, default=40)
  p.add_argument('--dists', default='topics,neardup')
  p.add_argument('--cal_n', type=int, default=300_000)
  p.add_argument('--cal_dim', type=int, default=384)
  p.add_argument('--topics', type=int, default=3000)
  p.add_argument('--shards', type=int, default=4)
  p.add_argument('--target', type=float, default=0.95)
  p.add_argument('--reorder_dtype', default='float32')
  p.add_argument('--big_dir', default='/tmp/mgtil_retrieval_big')
  p.add_argument('--big_topics', type=int, default=4000)
  p.add_argument('--out', default=None)
  args = p.parse_args()
  dev = jax.devices()[0]
  result = {'device': dev.device_kind, 'platform': dev.platform,
            'cpu_count': os.cpu_count(), 'jax': jax.__version__,
            'python': platform.python_version(),
            'load_average_at_start': os.getloadavg()}
  parts = args.part.split(',')
  if 'ann' in parts:
    r = bench_ann(args.n, args.dim, args.queries, args.clusters, 10,
                  [float(x) for x in args.fractions.split(',')],
                  [int(x) for x in args.reorder_factors.split(',')], args.reps,
                  [int(x) for x in args.scale_n.split(',') if x])
    result['ann'] = r
    scaling = ', '.join(f"{x['n']:,}: {x['build_s']:.0f} s"
                        for x in r['build_scaling'])
    print(f"ANN: N={r['n']:,} x {r['dim']}, {r['queries']} queries, "
          f"{r['clusters']} clusters; ScaNN {r['params']['num_leaves']} "
          f"leaves, build {r['build_s']:.1f} s "
          f"({r['build_us_per_entry']:.1f} us/entry), index "
          f"{r['index_bytes_per_entry']:.0f} B/entry; build time ~ N^"
          f"{r['build_time_exponent'] or float('nan'):.2f} ({scaling})")
    print('| leaves searched | reordered | recall@10 | ScaNN QPS | exact QPS '
          '| QPS ratio |')
    print('|---|---|---|---|---|---|')
    for row in r['rows']:
      mark = ' **default**' if row['default'] else ''
      print(f"| {row['leaves_to_search']} ({100 * row['search_fraction']:g}"
            f"%){mark} | {row['pre_reorder']} | {row['recall_at_10']:.3f} | "
            f"{row['scann_qps']:.0f} | {row['exact_qps']:.0f} | "
            f"{row['qps_ratio']:.1f}x |")
  if 'calibrated' in parts:
    result['calibrated'] = []
    for dist in args.dists.split(','):
      r = bench_calibrated(dist, args.cal_n, args.cal_dim, args.topics,
                           args.queries, 10, args.reps, args.shards,
                           args.target)
      result['calibrated'].append(r)
      c = r['calibration']
      print(f"{dist}: N={r['n']:,} x {r['dim']}, {r['topics']} topics; "
            f"top-10 cosine {r['top10_cosine']:.2f}, random pairs "
            f"{r['random_pair_cosine']:.2f}; ScaNN {r['params']['num_leaves']}"
            f" leaves, build {r['build_s']:.0f} s, calibration "
            f"{r['calibrate_s']:.0f} s ({len(c['curve'])} settings, "
            f"{c['queries']} held-out rows: recall {c['recall']:.3f}, lower "
            f"bound {c['recall_lcb']:.3f})")
      print('| setting | leaves searched | reorder | recall@10 | by position '
            '| ScaNN QPS | exact QPS | ratio |')
      print('|---|---|---|---|---|---|---|---|')
      for row in r['rows']:
        print(f"| {row['setting']} | {row['leaves']} | x{row['reorder_factor']}"
              f" | {row['recall']:.3f} | {row['recall_by_position']:.3f} | "
              f"{row['qps']:.0f} | {row['exact_qps']:.0f} | "
              f"{row['qps_ratio']:.1f}x |")
      sh = r['sharded']
      if sh:
        print(f"| {sh['shards']} calibrated shards, merged | "
              + ', '.join(str(x['leaves_to_search']) for x in sh['per_shard'])
              + ' | ' + ', '.join(f"x{x['reorder_factor']}"
                                  for x in sh['per_shard'])
              + f" | {sh['recall']:.3f} | {sh['recall_by_position']:.3f} | "
              f"{sh['qps']:.0f} | {r['rows'][0]['exact_qps']:.0f} | "
              f"{sh['qps_ratio']:.1f}x |")
  if 'big' in parts:
    r = bench_big(args.n, args.dim, args.big_topics, args.queries, 10,
                  args.reorder_dtype, args.big_dir, args.reps)
    result['big'] = r
    c = r['calibration']
    print(f"big: N={r['n']:,} x {r['dim']} ({r['topics']} topics, top-10 "
          f"cosine {r['top10_cosine']:.2f}), reorder {r['reorder_dtype']}: "
          f"build {r['build_s']:.0f} s, peak RSS {r['peak_rss_gb']:.1f} GiB "
          f"(with the memory-mapped input's pages; anonymous memory peak "
          f"{r.get('peak_anon_gb_build', float('nan')):.1f} GiB in the "
          f"build), index {r['index_bytes'] / 1e9:.2f} GB "
          f"({r['index_bytes_per_entry']:.0f} B/entry); calibrated "
          f"{c['leaves_to_search']} of {c['num_leaves']} leaves, reorder "
          f"x{c['reorder_factor']} in {r['calibrate_s']:.0f} s; held-out "
          f"recall@10 {r['recall']:.3f}, {r['qps']:.0f} QPS vs exact "
          f"{r['exact_qps']:.1f} ({r['qps_ratio']:.0f}x)")
  if 'sampler' in parts:
    r = bench_sampler(args.steps, args.batch, args.pairs)
    result['sampler'] = r
    print(f"sampler: reference set {r['reference_set_size']} of "
          f"{r['corpus_entries']} entries; first prepare "
          f"{r['first_prepare_s']:.1f} s (ingest + embed + index), task "
          f"boundary {r['boundary_prepare_s']:.2f} s")
    q = lambda x: np.percentile(x, [25, 50, 75])
    print(f"{r['pairs']} alternating pairs of {r['steps_per_block']}-step "
          'blocks (live, pre-placed)')
    print('| | live ms/step | pre-placed ms/step | live / pre-placed |')
    print('|---|---|---|---|')
    for name, i in (('25th pct', 0), ('median', 1), ('75th pct', 2)):
      print(f"| {name} | {q(r['step_ms_live'])[i]:.1f} | "
            f"{q(r['step_ms_prematerialised'])[i]:.1f} | "
            f"{q(r['ratios'])[i]:.3f} |")
    lo, hi = r['median_ratio_ci95']
    print(f"median ratio {r['median_ratio']:.3f} (95% CI {lo:.3f}-{hi:.3f}), "
          f"pooled ratio "
          f"{r['pooled_ratio']:.3f}; host cost of a reference batch "
          f"{r['host_ms_per_batch']:.3f} ms -> bound "
          f"{r['host_bound_ratio']:.4f}")
  if 'quality' in parts:
    r = bench_quality(args.pretrain_steps)
    result['quality'] = r
    print(f"quality: task-level queries before the last task, pretrained "
          f"tiny model ({r['pretrain_steps']} steps), top-{r['a']} kept")
    print('| stages | queries | precision@a | random entry | reference set |')
    print('|---|---|---|---|---|')
    for row in r['rows']:
      print(f"| {row['variant']} | {row['queries']} | "
            f"{row['precision_at_a']:.3f} | {row['random_precision']:.3f} | "
            f"{row['reference_set_size']} |")
  result['load_average_at_end'] = os.getloadavg()
  out = args.out or os.path.join(ROOT, 'benchmarks', 'results',
                                 f'retrieval_{dev.platform}.json')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
