"""The retrieval memory end to end on the tiny synthetic benchmark: sharded
jitted embedding (against a plain model.apply, and 1 vs 4 fake devices),
float16 shards with checksums and per-shard resume, precomputed vectors,
identity checks; then the reference source (corpus -> embeddings -> leakage
-> index -> Dynamic Siphon / PRIMED_uni -> batches), its determinism across
a rebuild from the workdir, and the background prefetcher. One experiment
is shared by all tests (compiles are the cost on CPU)."""

import copy
import hashlib
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from configs import mgtil_synth
from configs import retrieval as retrieval_cfg
from mgtil_jax.data import reference
from mgtil_jax import training as train
from mgtil_jax.data import synth
from mgtil_jax.data import tasks as tasks_lib
from mgtil_jax.models import clip
from mgtil_jax.retrieval import build_reference_source, prefetch, stages
from mgtil_jax.retrieval import corpus as corpus_lib
from mgtil_jax.retrieval import embed

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import retrieval_embed_probe  # pylint: disable=g-import-not-at-top,wrong-import-position


def _config(**retrieval):
  # same_scanner's corpus: these tests check retrieval mechanics, and the
  # default regime's repeated uninformative captions (identical vectors)
  # make the id-based recall estimate read lower than the tie-aware NumPy
  # check below (0.92 vs 0.96; benchmarks/RESULTS.md, "The MGTIL regime").
  cfg = mgtil_synth.get_config('runlocal,regime=same_scanner')
  cfg.retrieval = retrieval_cfg.defaults()
  cfg.retrieval.k = 24
  cfg.retrieval.embed_batch_size = 16  # one compiled shape for every test
  for k, v in retrieval.items():
    node, _, leaf = k.rpartition('.')
    (cfg.retrieval[node] if node else cfg.retrieval)[leaf] = v
  return cfg


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ref') / 'run')
  exp = train.setup(_config(), workdir)
  params = train.init_params(exp, 0)
  source = build_reference_source(exp, 16)
  first = source.prepare(0, params)
  return exp, params, source, first


@pytest.fixture(scope='module')
def setup(run, tmp_path_factory):
  """A second, smaller corpus (3 shards of 16) for the embedding tests."""
  exp, params, source, _ = run
  work = tmp_path_factory.mktemp('embed')
  spec = {'kind': 'synth', 'data_cfg': exp.config.data, 'per_class': 1}
  corpus_lib.ingest(corpus_lib.read_sources([spec]), str(work / 'corpus'),
                    shard_size=16)
  corpus = corpus_lib.Corpus(str(work / 'corpus'))
  return exp, params, source.memory.towers, corpus, work


def _plain(exp, params, images=None, tokens=None):
  """Reference: the model applied directly, normalised in NumPy."""
  if images is not None:
    x = exp.model.apply({'params': params}, tasks_lib.preprocess(images),
                        method=clip.CLIP.encode_image)
  else:
    x = exp.model.apply({'params': params}, tokens,
                        method=clip.CLIP.encode_text)
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.slow
def test_towers_match_plain_apply_and_four_fake_devices(setup, tmp_path):
  exp, params, towers, _, _ = setup
  images, texts = retrieval_embed_probe.probe_inputs()
  got_i = towers.image(params, images)   # 13 rows: padded batches of 6
  got_t = towers.text(params, exp.tokenizer(texts))
  np.testing.assert_allclose(got_i, _plain(exp, params, images=images),
                             atol=2e-5)
  np.testing.assert_allclose(got_t, _plain(exp, params,
                                           tokens=exp.tokenizer(texts)),
                             atol=2e-5)
  out = str(tmp_path / 'four.npz')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  subprocess.run([sys.executable, os.path.join(HERE,
                                               'retrieval_embed_probe.py'),
                  out, str(tmp_path / 'w4')], check=True, env=env,
                 cwd=os.path.dirname(HERE), capture_output=True)
  four = np.load(out)
  assert int(four['devices']) == 4 and int(four['batch']) % 4 == 0
  np.testing.assert_allclose(four['image'], got_i, atol=2e-5)
  np.testing.assert_allclose(four['text'], got_t, atol=2e-5)


class _Counting:

  def __init__(self, inner):
    self.inner, self.calls = inner, 0
    self.encoder_id, self.dim = inner.encoder_id, inner.dim
    self.image_size = getattr(inner, 'image_size', None)

  def encode(self, x):
    self.calls += 1
    return self.inner.encode(x)

  def encode_rows(self, corpus, rows):
    self.calls += 1
    return self.inner.encode_rows(corpus, rows)


def test_embed_corpus_float16_manifest_and_resume(setup, tmp_path):
  exp, params, towers, corpus, _ = setup
  text = _Counting(embed.ClipTextEncoder(towers, params, exp.tokenizer))
  image = _Counting(embed.ClipImageEncoder(towers, params))
  out = str(tmp_path / 'emb')
  m = embed.embed_corpus(corpus, out, text_encoder=text, image_encoder=image,
                         batch_size=16)
  assert m['complete'] and len(m['shards']) == corpus.num_shards >= 3
  assert (m['text_dim'], m['image_dim']) == (64, 64)
  for info in m['shards'].values():
    for kind in ('text', 'image'):
      path = os.path.join(out, info[f'{kind}_file'])
      with open(path, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == info[f'{kind}_sha256']
      assert np.load(path).dtype == np.float16
  emb = embed.Embeddings(out, corpus)
  rows = np.arange(len(corpus))
  all_images, captions = tasks_lib.synth_corpus(exp.config.data, 1, None)
  np.testing.assert_allclose(emb.image(rows), _plain(
      exp, params, images=all_images), atol=2e-3)  # float16 storage
  np.testing.assert_allclose(emb.text(rows), _plain(
      exp, params, tokens=exp.tokenizer(captions)), atol=2e-3)
  # Resume: a finished run does nothing; a lost shard is redone alone.
  calls = image.calls
  embed.embed_corpus(corpus, out, text_encoder=text, image_encoder=image,
                     batch_size=16)
  assert image.calls == calls
  os.remove(os.path.join(out, m['shards']['00001']['image_file']))
  embed.embed_corpus(corpus, out, text_encoder=text, image_encoder=image,
                     batch_size=16)
  assert image.calls == calls + 1  # one shard of 16 rows = one batch call
  np.testing.assert_array_equal(embed.Embeddings(out, corpus).image(rows),
                                emb.image(rows))
  # A tampered shard is refused on load.
  with open(os.path.join(out, m['shards']['00000']['text_file']), 'r+b') as f:
    f.seek(-2, 2)
    f.write(b'\x01\x02')
  with pytest.raises(ValueError, match='checksum'):
    embed.Embeddings(out, corpus)


def test_identity_mismatches_are_errors(setup, tmp_path):
  exp, params, towers, corpus, work = setup
  text = embed.ClipTextEncoder(towers, params, exp.tokenizer)
  image = embed.ClipImageEncoder(towers, params)
  out = str(tmp_path / 'emb')
  embed.embed_corpus(corpus, out, text_encoder=text, image_encoder=image)
  other = params.copy()
  other['logit_scale'] = other['logit_scale'] + 1.0
  with pytest.raises(ValueError, match='another corpus or encoder'):
    embed.embed_corpus(corpus, out, text_encoder=embed.ClipTextEncoder(
        towers, other, exp.tokenizer), image_encoder=image)
  entries = list(corpus_lib.read_sources([{'kind': 'synth', 'per_class': 1,
                                           'data_cfg': exp.config.data}]))
  corpus_lib.ingest(entries[:-1], str(work / 'smaller'), shard_size=16)
  with pytest.raises(ValueError, match='corpus snapshot'):
    embed.Embeddings(out, corpus_lib.Corpus(str(work / 'smaller')))


def test_precomputed_vectors(setup, tmp_path):
  exp, params, towers, corpus, _ = setup
  n = len(corpus)
  rng = np.random.default_rng(0)
  vecs = rng.normal(size=(n, 12)).astype(np.float32)
  np.save(tmp_path / 'cap-000.npy', vecs[:10])   # not aligned with the
  np.save(tmp_path / 'cap-001.npy', vecs[10:])   # corpus's 16-row shards
  np.savez(tmp_path / 'q.npz', texts=np.asarray(['nodule', 'mass']),
           vectors=rng.normal(size=(2, 12)))
  enc = embed.PrecomputedTextEncoder(str(tmp_path / 'cap-*.npy'),
                                     str(tmp_path / 'q.npz'))
  rows = np.array([3, 12, 25, 0])
  want = vecs[rows] / np.linalg.norm(vecs[rows], axis=1, keepdims=True)
  np.testing.assert_allclose(enc.encode_rows(corpus, rows), want, rtol=1e-6)
  assert enc.encode(['mass']).shape == (1, 12)
  with pytest.raises(KeyError, match='q.npz: no precomputed vector'):
    enc.encode(['effusion'])
  out = str(tmp_path / 'emb')
  embed.embed_corpus(corpus, out, text_encoder=enc,
                     image_encoder=embed.ClipImageEncoder(towers, params))
  e = embed.Embeddings(out, corpus)
  assert e.text_dim == 12 and e.text_encoder.startswith('precomputed:')
  np.testing.assert_allclose(e.text(rows), want, atol=1e-3)
  np.save(tmp_path / 'cap-001.npy', vecs[10:-1])
  with pytest.raises(ValueError, match='the corpus has'):
    embed.PrecomputedTextEncoder(str(tmp_path / 'cap-*.npy'),
                                 str(tmp_path / 'q.npz')).encode_rows(
                                     corpus, rows)


def test_reference_batches_are_corpus_pairs(run):
  exp, _, source, stats = run
  assert stats['size'] == len(source) > 0
  json.dumps(stats)  # the trainer logs it
  assert stats['queries']['task'] == 0 and stats['queries']['domain'] == 0
  assert stats['queries']['general'] == exp.config.retrieval.n
  b = source.batch(0, 5)
  assert b['image'].shape == (16, 32, 32, 3) and b['image'].dtype == np.uint8
  assert b['tokens'].shape == (16, 16) and b['tokens'].dtype == np.int32
  # Independent: the pretraining corpus arrays and the tokenizer.
  images, captions = tasks_lib.synth_corpus(exp.config.data, 8, None)
  idx = tasks_lib.batch_indices(len(source), 16, 5, exp.config.seed,
                                reference.REFERENCE_STREAM + 0)
  rows = source.rows[idx]
  np.testing.assert_array_equal(b['image'], images[rows])
  np.testing.assert_array_equal(b['tokens'],
                                exp.tokenizer([captions[r] for r in rows]))
  mem = stats['memory']
  assert mem['corpus_entries'] == len(captions)
  assert mem['index_kinds'] == ['exact']  # a small corpus: exact search
  recall = mem['index_recall']
  assert recall['estimate'] == 1.0 and recall['reached']
  assert recall['k'] == exp.config.retrieval.k and recall['pool_queries'] > 0


def test_scann_memory_reports_its_calibrated_recall(run):
  exp, params, source, _ = run
  cfg = copy.deepcopy(exp.config)
  cfg.retrieval.searcher = 'scann'  # a ScaNN index over the same embeddings
  cfg.retrieval.scann.max_search_fraction = 1.0
  exp2 = train.setup(cfg, exp.workdir)
  src = build_reference_source(exp2, 16)
  stats = src.prepare(0, params)
  json.dumps(stats)  # into results.json
  recall = stats['memory']['index_recall']
  assert recall['kinds'] == ['scann'] and recall['k'] == cfg.retrieval.k
  assert recall['reached'] and recall['shards'][0]['recall_lcb'] >= 0.95
  memory = src.memory
  texts = sorted(memory._queries)  # pylint: disable=protected-access
  assert recall['pool_queries'] == min(len(texts), 1000)
  # Independent: NumPy scores over the indexed rows' vectors, for the
  # run's queries (the pool part of the calibration sample). The synthetic
  # captions repeat (identical vectors), so a returned row counts when it
  # scores at least the exact k-th score: any copy of a tie is right.
  dense, _ = memory.query_vectors(texts)
  rows = memory.index.rows
  scores = dense.astype(np.float64) @ memory.embeddings.vectors(
      'text', rows).astype(np.float64).T
  k = cfg.retrieval.k
  kth = -np.sort(-scores, 1)[:, k - 1]
  got = np.searchsorted(rows, memory.index.search(dense, k)[1])
  hits = np.take_along_axis(scores, got, 1) >= kth[:, None] - 1e-5
  assert abs(hits.mean() - recall['estimate_pool_queries']) < 0.03


def test_task_boundary_levels_and_a_fresh_rebuild_agree(run):
  exp, params, source, _ = run
  stats = source.prepare(4, params)
  n_names = sum(len(synth.TASKS[t].class_names) for t in
                synth.ORDERS['domain'][:4])
  assert stats['queries']['task'] == n_names
  assert stats['earlier_domains'] == ['pathology', 'xray']
  # Domain level: M0 queries the model puts in an earlier task's domain,
  # except those already asked at the task level.
  domains = source.pool_domains(params)
  task_texts = {f'A {synth.DOMAINS[synth.TASKS[t].domain].modality[0]} photo '
                f'of {c}.' for t in synth.ORDERS['domain'][:4]
                for c in synth.TASKS[t].class_names}
  assert stats['queries']['domain'] == sum(
      d in ('pathology', 'xray') and q.text not in task_texts
      for q, d in zip(source.pool, domains))
  batches = [source.batch(4, s) for s in (0, 7, 1000)]
  # A resumed run: new objects, everything reloaded from the workdir, and
  # the first prepare is at task 4 (not 0).
  exp2 = train.setup(copy.deepcopy(exp.config), exp.workdir)
  again = build_reference_source(exp2, 16)
  stats2 = again.prepare(4, params)
  assert stats2['rows_sha256'] == stats['rows_sha256']
  assert stats2['size'] == stats['size']
  for s, b in zip((0, 7, 1000), batches):
    got = again.batch(4, s)
    np.testing.assert_array_equal(got['image'], b['image'])
    np.testing.assert_array_equal(got['tokens'], b['tokens'])
  with pytest.raises(RuntimeError, match='before prepare'):
    again.batch(3, 0)


def test_stage_one_fetching_matches_full_corpus_scores(run):
  _, _, source, _ = run
  memory = source.memory
  text = source.pool[5].text
  dense, _ = memory.query_vectors([text])
  # Reference: the whole ranking in one call (no fetch-more loop).
  scores, rows = memory.index.search(dense, len(memory.index))
  k, tol = memory.cfg.k, memory.cfg.tie_tolerance
  want = stages.dense_cutoff(rows[0], scores[0], k, tol)[0]
  assert len(want) >= k
  got_rows, got_scores = memory._stage1(dense, k)[0]  # pylint: disable=protected-access
  np.testing.assert_array_equal(
      stages.dense_cutoff(got_rows, got_scores, k, tol)[0], want)


def test_bm25_on_the_finding_is_a_separate_retrieval(run):
  _, _, source, _ = run
  memory = source.memory
  q = next(q for q in source.pool if q.finding == 'nodule')
  whole = memory.retrieve([q.text])[q.text]
  finding = memory.retrieve([q.text], lexical={q.text: 'nodule'})[q.text]
  assert finding is not whole  # not served from the other one's cache
  assert whole.counts['visual'] > memory.cfg.k  # so the gate did select
  # The gate on 'nodule' ranks every candidate naming it (BM25 > 0) above
  # every other (BM25 = 0): it keeps min(k, such candidates) of them.
  dense, clip_q = memory.query_vectors([q.text])
  rows, scores = memory._stage1(dense, memory.cfg.k)[0]  # pylint: disable=protected-access
  rows, _ = stages.dense_cutoff(rows, scores, memory.cfg.k,
                                memory.cfg.tie_tolerance)
  rows, _ = stages.visual_rerank(rows, memory.corpus.caption_group[rows],
                                 memory.embeddings.image(rows) @ clip_q[0],
                                 memory.cfg.k_v)
  caps = memory.corpus.captions
  named = lambda r: sum('nodule' in c.lower() for c in caps.take(r))
  assert named(finding.rows) == min(memory.cfg.k, named(rows))
  assert named(finding.rows) >= named(whole.rows)


def test_uni_mode_fixed_size_and_leak_drop(run, tmp_path):
  exp, params, _, _ = run
  # An aggressive leakage threshold flags many entries: none may reach the
  # index or the reference set.
  cfg = _config(mode='uni', reference_size=12,
                **{'leakage.max_pixel_diff': 255.0})
  exp2 = train.setup(cfg, exp.workdir)
  source = build_reference_source(exp2, 16)
  stats = source.prepare(0, params)
  dropped = set(source.memory.dropped.tolist())
  assert dropped and stats['memory']['leaked_dropped'] == len(dropped)
  assert not dropped & set(source.memory.index.rows.tolist())
  assert not dropped & set(source.rows.tolist())
  # 12 synthetic keywords x 1 each (every list holds k = 24 > 12 rows).
  assert stats['size'] == 12
  assert set(stats['per_keyword'].values()) == {1}
  assert source.prepare(3, params)['rows_sha256'] == stats['rows_sha256']


def test_later_task_without_memory_is_a_clear_error(tmp_path, run):
  _, params, _, _ = run
  exp = train.setup(_config(), str(tmp_path / 'fresh'))
  with pytest.raises(FileNotFoundError, match='initial model'):
    build_reference_source(exp, 16).prepare(2, params)


def test_bad_config_fields_are_named(tmp_path):
  exp = train.setup(_config(mode='mixed'), str(tmp_path / 'w'))
  with pytest.raises(ValueError, match='config.retrieval.mode'):
    build_reference_source(exp, 16)
  exp.config.retrieval.mode = 'dyn'
  exp.config.retrieval.k_v = 0
  with pytest.raises(ValueError, match='config.retrieval.k_v'):
    build_reference_source(exp, 16)
  exp.config.retrieval.k_v = 2
  exp.config.retrieval.bm25_query = 'caption'
  with pytest.raises(ValueError, match='config.retrieval.bm25_query'):
    build_reference_source(exp, 16)


class _Toy:

  def __init__(self, fail_at=None):
    self.fail_at = fail_at

  def batch(self, task_index, step):
    if step == self.fail_at:
      raise ValueError(f'boom at {step}')
    return {'x': np.full(3, 100 * task_index + step)}


def test_prefetch_order_placement_errors_and_early_close():
  placed = []

  def place(b):
    placed.append(int(b['x'][0]))
    return {'x': b['x'] * 2}

  got = [int(b['x'][0]) for b in prefetch(_Toy(), 2, range(5, 12), place)]
  assert got == [2 * (200 + s) for s in range(5, 12)]
  with pytest.raises(ValueError, match='boom at 3'):
    list(prefetch(_Toy(fail_at=3), 0, range(10), lambda b: b))
  before = threading.active_count()
  gen = prefetch(_Toy(), 0, range(10**6), lambda b: b, depth=3)
  assert int(next(gen)['x'][0]) == 0
  gen.close()  # the worker stops instead of running a million steps
  assert threading.active_count() == before
  with pytest.raises(ValueError, match='depth'):
    next(prefetch(_Toy(), 0, range(3), lambda b: b, depth=0))


def test_prefetch_places_reference_batches_on_the_mesh(run):
  exp, _, source, _ = run
  source.prepare(0, run[1])
  want = [source.batch(0, s) for s in range(3)]
  for w, got in zip(want, prefetch(source, 0, range(3), exp.put_batch)):
    assert got['image'].sharding.spec[0] == ('data', 'fsdp')
    np.testing.assert_array_equal(np.asarray(got['image']), w['image'])
    np.testing.assert_array_equal(np.asarray(got['tokens']), w['tokens'])
